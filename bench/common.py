"""What the side-by-side benchmarks share: machine facts, our pipeline run, graph facts, the
markdown table and the result file. Each benchmark script imports this from its own folder."""
from __future__ import annotations

import collections
import json
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Callable

import onnx
import onnxruntime as ort
import torch

from compressor import compress
from compressor.backends.onnxruntime import INTEGER_KERNELS, OrtRunner
from compressor.errors import VerificationError, first_line
from compressor.export.onnx_export import export_onnx
from compressor.profile.engine import per_node
from compressor.profile.latency import measure

FLOAT_COMPUTE = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "NchwcConv")
CONV_KERNELS = ("Conv", "FusedConv", "NchwcConv", "QLinearConv", "ConvInteger")


def log(msg: str) -> None:
    print(msg, flush=True)


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_info() -> dict:
    info = {"processor": platform.processor(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "")
        flags = set(next((l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags")), []))
        info.update(model=model, avx2="avx2" in flags, avx512f="avx512f" in flags,
                    avx512_vnni="avx512_vnni" in flags, avx_vnni="avx_vnni" in flags)
    except OSError:
        pass
    return info


def new_record(**fields) -> dict:
    """The head of a result file: when, where, which versions, the load at the start."""
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "cpu": cpu_info(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "onnx": onnx.__version__, "onnxruntime": ort.__version__},
            "loadavg": {"start": loadavg()}, **fields}


def fmt_size(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


def build_fp32(teacher, path: Path) -> dict:
    exporter = export_onnx(teacher.module, teacher.spec, path)
    return {"how": f"compressor.export.onnx_export.export_onnx ({exporter} exporter)"}


def run_ours(model: Path, target: str, recipe: str, epochs: int | None, work: Path, resume: bool = False,
             passes: list[str] | None = None):
    """compressor.compress with the target's default passes (or `passes`; `epochs` of QAD): the
    result, each pass's metrics by name, and the details every benchmark records."""
    config, asked = None, list(passes or [])
    if epochs is not None or passes:
        config = work / "ours-pipeline.toml"
        config.write_text((f"passes = {list(passes)!r}\n".replace("'", '"') if passes else "")
                          + (f"[quantize]\nepochs = {epochs}\n" if epochs is not None else ""))
    started = time.time()
    result = compress(model, target=target, calib=recipe, out=work / "ours", quiet=True, config=config,
                      resume=resume, force=not resume)
    passes = {p["name"]: p.get("metrics", {}) for p in result.report["passes"]}
    details = {
        "how": f"compressor.compress(model, target='{target}', calib='{recipe}')"
               + (f" with [quantize] epochs = {epochs}" if epochs is not None else " (default quantize settings)")
               + (f", passes {', '.join(asked)}" if asked else ""),
        "seconds": round(time.time() - started, 1),
        "passes": [{"name": p["name"], "status": p.get("status"), "seconds": round(p.get("seconds") or 0, 1)}
                   for p in result.report["passes"]],
    }
    return result, passes, details


def build_row(key: str, label: str, build: Callable[[], tuple[Path, dict]]) -> dict:
    """One variant's row: build() gives its ONNX file and details; a failure is recorded in the
    row (a failed peer must not take the other rows down)."""
    row = {"key": key, "label": label}
    started = time.time()
    try:
        path, details = build()
        row.update(details=details, path=str(path), build_seconds=round(time.time() - started, 1))
    except Exception as e:  # noqa: BLE001 - recorded in the row and the table
        record_failure(row, e)
    return row


def record_failure(row: dict, e: Exception) -> None:
    """Call from an except block: the row shows why it has no numbers."""
    msg = first_line(e, limit=10_000, typed=True)
    log(f"[{row['key']}] FAILED: {msg}")
    row.update(error=msg, traceback=traceback.format_exc()[-4000:])


def time_rows(calls: dict[str, Callable], rows: list[dict], record: dict, runs: int, warmup: int,
              setting: str = "1 thread, batch 1") -> dict[str, dict]:
    """Time every variant's call interleaved (A B C ... A B C ...), recording the load average
    around it; each timed row gets its latency and its ratio to the "fp32" row."""
    record["loadavg"]["before_latency"] = loadavg()
    log(f"latency: {len(calls)} sessions, {setting}, interleaved, {runs} runs each "
        f"(load average {record['loadavg']['before_latency']}) ...")
    lat = measure(calls, runs=runs, warmup=warmup)
    record["loadavg"]["after_latency"] = loadavg()
    for row in rows:
        if row["key"] in lat:
            row["latency"] = dict(lat[row["key"]], ratio=lat[row["key"]]["median_ms"] / lat["fp32"]["median_ms"])
    return lat


def conv_kernel_split(paths: dict[str, Path], runs: int) -> dict[str, dict]:
    """onnxruntime's per-node profile of each engine (1 thread): milliseconds per inference in
    convolution kernels and in everything else. The conv kernels' own int8/FP32 ratio is the
    floor a whole int8 graph can reach on this CPU, whatever its layout."""
    split = {}
    for key, path in paths.items():
        nodes = per_node(path, runs=runs, threads=1)
        conv = sum(n["mean_ms"] for n in nodes if n["op"] in CONV_KERNELS)
        split[key] = {"conv_ms": conv, "other_ms": sum(n["mean_ms"] for n in nodes) - conv,
                      "conv_nodes": sum(1 for n in nodes if n["op"] in CONV_KERNELS)}
    return split


def graph_facts(path: Path, work: Path) -> dict:
    """What the file stores, and what onnxruntime (all optimizations, 1 thread) turns it into."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    int_weights = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                      and inits[n.input[0]].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
    float_weight_q = sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits)
    optimized = work / f"{path.stem}.optimized.onnx"
    OrtRunner(path, threads=1, optimized_path=optimized)
    ops = collections.Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    optimized.unlink()
    return {
        "stored_int8_weight_tensors": int_weights, "stored_float_weights_behind_quantizelinear": float_weight_q,
        "integer_kernels": sum(ops.get(op, 0) for op in INTEGER_KERNELS),
        "float_compute": sum(ops.get(op, 0) for op in FLOAT_COMPUTE),
        "q_dq_left": ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0),
        "optimized_ops": dict(sorted(ops.items())),
    }


def markdown_table(head: list[str], rows: list[dict], cells: Callable[[dict], list[str]]) -> str:
    """A markdown table: one line per row, `cells(row)` after its label; failed rows say why."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        body = ([f"failed: {r['error'][:120].replace('|', '/')}"] + [""] * (len(head) - 2)
                if "error" in r else cells(r))
        lines.append("| " + " | ".join([r["label"], *body]) + " |")
    return "\n".join(lines)


def log_criteria(criteria: list[tuple[str, bool | None, str]]) -> list[dict]:
    for name, ok, detail in criteria:
        log(f"{'PASS' if ok else 'FAIL' if ok is False else 'INFO'}  {name}: {detail}")
    return [{"criterion": n, "passed": ok, "detail": d} for n, ok, d in criteria]


def write_record(record: dict, out: Path) -> None:
    """Write the result file whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    tmp.replace(out)


def compress_measured(model, record: dict, out: Path, **options):
    """compressor.compress, keeping (report, engine) when verification fails (exit 3): a benchmark
    still measures a run that misses its budget, and records why in `record`."""
    try:
        result = compress(model, out=out, **options)
        return result.report, result.engine
    except VerificationError as e:  # the engine is in the lower pass's folder
        record["ours_verification"] = str(e)
        return e.report, out / next(p for p in e.report["passes"] if p["name"] == "lower")["output"]


def distill_student(student, teacher, data, epochs: int, lr: float = 1e-3, seed: int = 0, quiet: bool = False,
                    lr_warmup: float = 0.0) -> list[dict]:
    """The fine-tune every benchmarked classifier student gets: our distill loop, logit KL at the
    default temperature and teacher-labelled shifts (as the prune pass), the learning rate warmed
    up over `lr_warmup` of the steps then cosine, best epoch by the validation slice of the
    recipe's training samples."""
    from compressor.distill import DistillConfig, batched_outputs, fidelity_scorer, prediction_loss, split_validation, train
    from compressor.distill.augment import augmentation
    from compressor.evaluators import get_evaluator
    from compressor.model_io import first_output
    from compressor.progress import Progress

    cfg = DistillConfig(epochs=epochs, lr=lr, batch=64, patience=epochs, seed=seed, lr_warmup=lr_warmup)
    split = split_validation(*data.training(), cfg.val_fraction, cfg.seed)
    _, evaluate = get_evaluator(None, "classification")
    score = fidelity_scorer(split.val, batched_outputs(teacher, split.val, 64), evaluate, 64, "classification",
                            cfg.temperature)
    shift = augmentation("auto", split.train, seed)

    def loss(idx):
        batch = shift(tuple(x[idx] for x in split.train))
        with torch.no_grad():
            target = first_output(teacher(*batch)).float()
        return prediction_loss(first_output(student(*batch)), target, "classification", cfg)

    student.eval()
    return train(student, split.samples, loss, score, cfg, Progress(quiet=quiet), label="distill")
