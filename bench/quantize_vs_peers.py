"""Our QAD int8 engine vs FP32 and two PTQ peers, on a bundled MNIST teacher, in a target's scheme.

    python bench/quantize_vs_peers.py [--sample mnist|mnist_mobilenet] [--target x86-cpu|jetson|npu|riscv]
        [--epochs N] [--runs 500] [--skip-nncf] [--out bench/results/quantize_vs_peers.json]

--sample picks the teacher (samples/mnist: a ResNet; samples/mnist_mobilenet: MobileNetV2-style,
depthwise convs, ReLU6, inverted residuals). --target picks our scheme; for every target but
x86-cpu our row is the exported QDQ model (passes quantize, export) run by onnxruntime on this CPU
(the device engines are built on the device; the QDQ file holds their arithmetic), the peers are
configured to the scheme's activation format (TensorRT: int8 symmetric; others: uint8), and
--runs 0 leaves the timing out (accuracy only).

Rows (all ONNX files, all run by onnxruntime on the CPU):
  * FP32: the teacher exported with compressor.export.onnx_export.export_onnx.
  * Ours: compressor.compress(teacher, target="x86-cpu", calib="mnist"), the target's default
    passes (quantize, export, lower, verify), default quantize settings (or --epochs N).
  * ORT quantize_static: quant_pre_process, then QDQ, per-channel, uint8 activations, int8 weights,
    MinMax calibration; once with full 8-bit weights and once with reduce_range=True (7-bit
    weights: onnxruntime's u8s8 x86 kernels can saturate with 8-bit weights on CPUs without VNNI).
  * NNCF 3.4 PTQ INT8: nncf.quantize (default settings) on the eager MnistResNet rebuilt from the
    teacher's weights; quantizers switched to ONNX Q/DQ pairs, legacy TorchScript exporter.
    NNCF's torch backend does not fold BatchNorm and its exported weights stay float, so a second
    row quantizes the same model with BatchNorm folded into the convs beforehand (a fairness row:
    FIELD-NOTES measured unfolded BN blocking onnxruntime's integer-kernel fusion).
Every quantizer sees the same calibration digits: the `calibration_samples` training digits of the
mnist recipe (`load_calibration(load_recipe("mnist"), spec).calib`).

Measured per row: top-1 on the recipe's 1000 held-out test digits through an onnxruntime session
with all graph optimizations (what users run), top-1 agreement with the FP32 engine, ONNX file
size and FP32/size ratio, the integer kernels in the optimized graph (optimized_model_filepath),
and single-thread batch-1 latency: every session alive at once, timed interleaved
(A B C ... A B C ...) by compressor.profile.latency.measure, median and p90, ratio to FP32.
The machine may be shared: the load average is recorded before, during and after timing.
Then onnxruntime's per-node profiler splits FP32 and ours into conv-kernel time and the rest: the
int8/FP32 ratio of the conv kernels alone is the floor any int8 graph of this net reaches on this
CPU (u8s8 kernels without VNNI are about 0.55x of FP32; with VNNI far lower).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from common import (build_fp32, build_row, conv_kernel_split, fmt_size, graph_facts, log,  # noqa: E402
                    log_criteria, markdown_table, new_record, run_ours, time_rows, write_record)
from compressor.backends import get_backend  # noqa: E402
from compressor.calibration import load_calibration, load_recipe  # noqa: E402
from compressor.model_io import load_model  # noqa: E402

SAMPLES = {  # the teacher, and its eager class (NNCF quantizes the eager module with the same weights)
    "mnist": (ROOT / "samples" / "mnist" / "teacher.pt2", "samples.mnist.model", "MnistResNet"),
    "mnist_mobilenet": (ROOT / "samples" / "mnist_mobilenet" / "teacher.pt2", "samples.mnist_mobilenet.model",
                        "MnistMobileNet"),
}
TEACHER, _, _ = SAMPLES["mnist"]
TARGET = "x86-cpu"
RECIPE = "mnist"
EAGER = ("samples.mnist.model", "MnistResNet")
NOTES = [
    "NNCF: the torch.export module (an FX GraphModule) is routed to NNCF's FX backend, which needs torchao "
    "(not installed); the eager samples.mnist.model.MnistResNet loaded with the program's state_dict is used instead.",
    "NNCF: its CPU C++ extension compiles on first use (68 s on this 2-core machine, over NNCF's default 60 s "
    "NNCF_EXTENSION_LOAD_TIMEOUT, which made the first attempt fail and left a stale build lock); this script "
    "sets NNCF_EXTENSION_LOAD_TIMEOUT=600 unless already set.",
    "NNCF: quantizers set_export_mode(ONNX_QUANTIZE_DEQUANTIZE_PAIRS) + torch.onnx.export(dynamo=False) give "
    "standard QDQ; weights stay float in the file (QuantizeLinear on float initializers), so the file is FP32-sized.",
    "NNCF's torch backend leaves BatchNorm unfolded: BN between Conv and its output Q/DQ blocks onnxruntime's "
    "QLinearConv fusion (Conv stays float); the extra 'BN folded first' row folds BN into the convs "
    "(torch.nn.utils.fusion.fuse_conv_bn_eval) before nncf.quantize.",
    "Top-1 is over 1000 digits: one digit is 0.1 point.",
]
CRITERIA_MAX_DROP_POINTS = 0.3
CRITERIA_MIN_SIZE_RATIO = 3.5
CRITERIA_MAX_LATENCY_RATIO = 0.5


# --- the variants ------------------------------------------------------------------------------

def build_ours(epochs: int | None, work: Path) -> tuple[Path, dict]:
    only = None if TARGET == "x86-cpu" else ["quantize", "export"]
    result, passes, details = run_ours(TEACHER, TARGET, RECIPE, epochs, work, passes=only)
    q, e, v = passes.get("quantize", {}), passes.get("export", {}), passes.get("verify", {})
    details.update({
        "observer": q.get("observer"), "native_kernels": q.get("native_kernels"),
        "quantized_layers": q.get("quantized_layers"), "bn_folded": q.get("bn_folded"),
        "pytorch_top1": {"teacher": q.get("teacher_metric"), "ptq": q.get("ptq_metric"), "qad": q.get("qad_metric")},
        "qad_history": q.get("qad_history"), "bias_correction": q.get("bias_correction"),
        "kept_float": q.get("kept_float"), "observer_trials": q.get("observer_trials"),
        "export": {k: e.get(k) for k in ("int8_weights", "int32_biases", "qdq_pairs", "exporter")},
        "verify": {"engine_top1": (v.get("engine_metric") or {}).get("metric"),
                   "top1_agreement_with_fake_quant_module": (v.get("parity") or {}).get("top1_agreement"),
                   "passed": v.get("passed")},
    })
    history = details["qad_history"] or []
    if history:
        best = [h for h in history if h.get("kept")][-1]  # the training loop ends in the last kept state
        details["qad_kept_epoch"] = best["epoch"]
        details["qad_kept_why"] = best["why"]
        steps = "; ".join(f"epoch {h['epoch']}: metric {h['val_metric']:.4f}, KL {h['val_divergence']:.3g}, "
                          f"{'kept' if h['kept'] else 'not kept'} ({h['why']})" for h in history)
        log(f"[ours] PyTorch top-1: teacher {q.get('teacher_metric')}, PTQ {q.get('ptq_metric')}, QAD {q.get('qad_metric')}; "
            f"kept epoch {best['epoch']} (0 = the PTQ state); {steps}")
    path = work / "ours.onnx"
    shutil.copyfile(result.engine, path)
    return path, details


def build_ort_static(fp32: Path, path: Path, calib: np.ndarray, reduce_range: bool, work: Path,
                     symmetric_int8: bool = False) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """The calibration digits, one per call."""

        def __init__(self, name: str, x: np.ndarray):
            self.name, self.x, self.i = name, x, 0

        def get_next(self):
            if self.i >= len(self.x):
                return None
            self.i += 1
            return {self.name: self.x[self.i - 1:self.i]}

        def rewind(self):
            self.i = 0

    pre = work / "fp32-preprocessed.onnx"
    if not pre.exists():
        quant_pre_process(str(fp32), str(pre))
    name = onnx.load(str(pre)).graph.input[0].name
    reader = Reader(name, calib)
    activations = QuantType.QInt8 if symmetric_int8 else QuantType.QUInt8
    quantize_static(str(pre), str(path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduce_range, activation_type=activations, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": symmetric_int8})
    return {"how": "onnxruntime.quantization.quant_pre_process + quantize_static(QDQ, per_channel=True, "
                   f"activation {activations.name}{' symmetric' if symmetric_int8 else ''}, weight QInt8, MinMax, "
                   f"reduce_range={reduce_range})",
            "calibration_samples": int(len(calib))}


def _fold_bn(model: torch.nn.Module) -> int:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Sequential):
            for i in range(len(m) - 1):
                if isinstance(m[i], torch.nn.Conv2d) and isinstance(m[i + 1], torch.nn.BatchNorm2d):
                    m[i] = fuse_conv_bn_eval(m[i], m[i + 1])
                    m[i + 1] = torch.nn.Identity()
                    folded += 1
    return folded


def build_nncf(calib: torch.Tensor, check: torch.Tensor, teacher, path: Path, fold_bn: bool) -> dict:
    # NNCF compiles a C++ extension on first use; on 2 busy cores that took 68 s here, past NNCF's
    # default 60 s limit (the run then fails and can leave a stale build lock behind).
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")
    import nncf
    from nncf.torch.quantization.layers import BaseQuantizer, QuantizerExportMode
    import importlib

    # The exported program's module is an FX GraphModule, which nncf.quantize sends to its FX
    # backend, and that needs torchao (not installed). The eager model takes the same weights.
    program = torch.export.load(str(TEACHER))
    model = getattr(importlib.import_module(EAGER[0]), EAGER[1])()
    model.load_state_dict(program.state_dict)
    model.eval()
    with torch.no_grad():
        rebuild_diff = float((model(check) - teacher.module(check)).abs().max())
    folded = _fold_bn(model) if fold_bn else 0
    dataset = nncf.Dataset([calib[i:i + 1] for i in range(calib.shape[0])])
    started = time.time()
    quantized = nncf.quantize(model, dataset, subset_size=calib.shape[0])
    seconds = time.time() - started
    quantizers = [m for m in quantized.modules() if isinstance(m, BaseQuantizer)]
    for m in quantizers:
        m.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer warnings
        torch.onnx.export(quantized, (calib[:2],), str(path), dynamo=False, opset_version=18, input_names=["x"],
                          output_names=["output"], dynamic_axes={"x": {0: "batch"}, "output": {0: "batch"}})
    return {"how": f"nncf.quantize({EAGER[1]} with the teacher's weights, nncf.Dataset(calibration digits, batch 1), "
                   "default settings); quantizers set_export_mode(ONNX_QUANTIZE_DEQUANTIZE_PAIRS); "
                   "torch.onnx.export(dynamo=False, opset 18)"
                   + (f"; {folded} BatchNorm folded into the convs before quantizing" if fold_bn else ""),
            "nncf_version": nncf.__version__, "seconds": round(seconds, 1), "quantizers": len(quantizers),
            "bn_folded": folded, "eager_rebuild_max_abs_diff": rebuild_diff}


def cached(kept: Path, path: Path, build) -> tuple[Path, dict]:
    """`build(path)`, or the file and details an earlier run kept at `kept` (the same teacher and data)."""
    import json

    notes = kept.with_suffix(".json")
    if kept.exists() and notes.exists():
        shutil.copyfile(kept, path)
        return path, {**json.loads(notes.read_text()), "reused_from": str(kept)}
    details = build(path)
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, kept)
    notes.write_text(json.dumps(details, default=str))
    return path, details


# --- measurements ------------------------------------------------------------------------------

def paired_sign_test(ours: np.ndarray, peer: np.ndarray, labels: np.ndarray) -> dict:
    """The digits exactly one of the two gets right, and the two-sided exact sign test on them (McNemar's
    exact test): how likely a split at least this uneven is when both are equally accurate."""
    from math import comb

    a = int(((ours == labels) & (peer != labels)).sum())
    b = int(((peer == labels) & (ours != labels)).sum())
    n, k = a + b, min(a, b)
    p = min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"only_ours_right": a, "only_peer_right": b, "p": p}


def predict(session: ort.InferenceSession, x: np.ndarray, batch: int = 100) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[s:s + batch]})[0] for s in range(0, len(x), batch)])


def table(rows: list[dict]) -> str:
    head = ["variant", "top-1", "vs FP32 (pts)", "agree w/ FP32", "ONNX size", "FP32/size", "weights stored",
            "int kernels", "float conv/gemm", "median ms", "p90 ms", "latency vs FP32"]
    return markdown_table(head, rows, lambda r: [
        f"{100 * r['top1']:.1f}% ({r['correct']})", f"{100 * r['top1_delta']:+.1f}", f"{100 * r['agreement_fp32']:.1f}%",
        fmt_size(r["bytes"]), f"{r['size_ratio']:.2f}x", r["weights_stored"], str(r["graph"]["integer_kernels"]),
        str(r["graph"]["float_compute"]), *((f"{r['latency']['median_ms']:.2f}", f"{r['latency']['p90_ms']:.2f}",
                                            f"{r['latency']['ratio']:.2f}x") if "latency" in r else ("-", "-", "-"))])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=None, help="QAD epochs for ours (default: the quantize pass default)")
    ap.add_argument("--runs", type=int, default=500, help="timed runs per variant (>= 300)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--skip-nncf", action="store_true", help="leave out the NNCF rows")
    ap.add_argument("--sample", choices=sorted(SAMPLES), default="mnist")
    ap.add_argument("--target", choices=["x86-cpu", "jetson", "npu", "riscv"], default="x86-cpu")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: bench/results/quantize_vs_peers.json (mnist, x86-cpu), else quantize_vs_peers_SAMPLE_TARGET.json")
    ap.add_argument("--keep", type=Path, default=None, help="keep the ONNX files and run folders in this directory")
    ap.add_argument("--nncf-cache", type=Path, default=None,
                    help="reuse NNCF's model from this folder across targets (its default settings do not depend on ours)")
    args = ap.parse_args()
    global TEACHER, TARGET, EAGER
    TEACHER, TARGET, EAGER = SAMPLES[args.sample][0], args.target, SAMPLES[args.sample][1:]
    default = (args.sample, args.target) == ("mnist", "x86-cpu")
    args.out = args.out or ROOT / "bench" / "results" / (
        "quantize_vs_peers.json" if default else f"quantize_vs_peers_{args.sample}_{args.target}.json")
    from compressor.quantize.scheme import QuantScheme
    from compressor.targets import load_target
    scheme = QuantScheme.from_target(load_target(TARGET))
    symmetric = scheme.activations.symmetric and scheme.activations.qrange[0] < 0
    if 0 < args.runs < 300:
        log(f"warning: --runs {args.runs} < 300: medians and p90 will be noisy")

    started = time.time()
    record = new_record(target=TARGET, recipe=RECIPE, teacher=str(TEACHER.relative_to(ROOT)))
    log(f"quantize_vs_peers: {record['date']}, CPU {record['cpu'].get('model', '?')} ({record['cpu']['cores']} cores, "
        f"avx512_vnni={record['cpu'].get('avx512_vnni')}, avx_vnni={record['cpu'].get('avx_vnni')}), "
        f"load average {record['loadavg']['start']}")

    work = Path(tempfile.mkdtemp(prefix="quantize_vs_peers-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    (work / "fp32-preprocessed.onnx").unlink(missing_ok=True)  # from an earlier run kept in --keep
    try:
        teacher = load_model(TEACHER)
        data = load_calibration(load_recipe(RECIPE), teacher.spec)
        calib_t, hold_t, labels = data.calib[0], data.holdout[0], data.holdout_labels.numpy()
        calib, hold = calib_t.numpy(), hold_t.numpy()
        record["data"] = {"calibration_samples": int(len(calib)), "holdout_samples": int(len(hold)),
                          "fingerprint": data.fingerprint}
        log(f"data: {len(calib)} calibration digits (train part), {len(hold)} held-out test digits")

        variants: list[tuple[str, str, object]] = [
            ("fp32", "FP32 (onnxruntime)", lambda p: build_fp32(teacher, p)),
            ("ours", f"Ours: QAD int8 ({TARGET})", None),
            ("ort_static", f"ORT quantize_static {'s8/s8 symmetric' if symmetric else 'u8/s8'}",
             lambda p: build_ort_static(work / "fp32.onnx", p, calib, False, work, symmetric)),
        ]
        if TARGET == "x86-cpu":  # 7-bit weights, as our x86 scheme (onnxruntime's u8s8 kernels)
            variants.append(("ort_static_rr", "ORT quantize_static u8/s8, reduce_range",
                             lambda p: build_ort_static(work / "fp32.onnx", p, calib, True, work)))
        if not args.skip_nncf:
            if args.runs:  # unfolded BN only matters for speed (it blocks fusion); the accuracy-only runs skip it
                variants.append(("nncf", "NNCF 3.4 PTQ INT8",
                                 lambda p: build_nncf(calib_t, hold_t[:64], teacher, p, fold_bn=False)))
            variants.append(("nncf_bnfold", "NNCF 3.4 PTQ INT8, BN folded first",
                             lambda p: build_nncf(calib_t, hold_t[:64], teacher, p, fold_bn=True)))

        rows: list[dict] = []
        for key, label, build in variants:
            log(f"[{key}] building ...")
            t0 = time.time()
            if key == "ours":
                row = build_row(key, label, lambda: build_ours(args.epochs, work))
            elif key.startswith("nncf") and args.nncf_cache is not None:
                row = build_row(key, label, lambda: cached(args.nncf_cache / f"{args.sample}_{key}.onnx", work / f"{key}.onnx", build))
            else:
                row = build_row(key, label, lambda: (work / f"{key}.onnx", build(work / f"{key}.onnx")))
            if key == "fp32" and "error" in row:
                raise RuntimeError(f"the FP32 export failed: {row['error']}")
            rows.append(row)
            log(f"[{key}] done in {time.time() - t0:.0f} s")

        # Accuracy and graph facts, one single-thread session per variant (kept alive for timing).
        sessions = {}
        predictions: dict[str, np.ndarray] = {}
        fp32_pred = None
        for row in rows:
            if "error" in row:
                continue
            path = Path(row["path"])
            row["bytes"] = path.stat().st_size
            row["graph"] = graph_facts(path, work)
            g = row["graph"]
            row["weights_stored"] = ("int8" if g["stored_int8_weight_tensors"] and not g["stored_float_weights_behind_quantizelinear"]
                                     else "float" if row["key"] == "fp32" or g["stored_float_weights_behind_quantizelinear"]
                                     else "?")
            session = get_backend("onnxruntime").runner(path, threads=1).session
            sessions[row["key"]] = session
            logits = predict(session, hold)
            pred = logits.argmax(-1)
            if fp32_pred is None:
                fp32_pred = pred
            row["top1"] = float((pred == labels).mean())
            row["correct"] = int((pred == labels).sum())
            row["agreement_fp32"] = float((pred == fp32_pred).mean())
            predictions[row["key"]] = pred
            log(f"[{row['key']}] top-1 {100 * row['top1']:.1f}%, {fmt_size(row['bytes'])}, "
                f"{g['integer_kernels']} integer kernels, {g['float_compute']} float conv/gemm")
        fp32 = rows[0]
        for row in rows:
            if "error" not in row:
                row["top1_delta"] = row["top1"] - fp32["top1"]
                row["size_ratio"] = fp32["bytes"] / row["bytes"]

        x1 = hold[:1]
        calls = {k: (lambda s=s, n=s.get_inputs()[0].name: s.run(None, {n: x1})) for k, s in sessions.items()}
        if args.runs:
            time_rows(calls, rows, record, args.runs, args.warmup)
        kernel_floor = None
        built = {r["key"]: Path(r["path"]) for r in rows if r["key"] in ("fp32", "ours") and "error" not in r}
        if len(built) == 2 and args.runs:
            split = conv_kernel_split(built, runs=args.runs)
            kernel_floor = split["ours"]["conv_ms"] / split["fp32"]["conv_ms"]
            record["conv_kernel_split"] = dict(split, int8_conv_over_fp32_conv=kernel_floor)
            log(f"onnxruntime profile ({args.runs} runs): FP32 {split['fp32']['conv_ms']:.3f} ms in "
                f"{split['fp32']['conv_nodes']} conv kernels + {split['fp32']['other_ms']:.3f} ms other; ours "
                f"{split['ours']['conv_ms']:.3f} ms in {split['ours']['conv_nodes']} conv kernels + "
                f"{split['ours']['other_ms']:.3f} ms other; int8/FP32 conv kernels alone {kernel_floor:.2f}x")

        md = table(rows)
        log("\n" + md + "\n")

        # Criteria from the issue.
        criteria = []
        ours = next((r for r in rows if r["key"] == "ours"), None)
        if ours is None or "error" in ours:
            criteria.append(("our int8 engine was built", False, ours.get("error", "missing") if ours else "missing"))
        else:
            drop = 100 * (fp32["top1"] - ours["top1"])
            criteria.append((f"QAD int8 top-1 within {CRITERIA_MAX_DROP_POINTS} points of FP32", drop <= CRITERIA_MAX_DROP_POINTS + 1e-9,
                             f"FP32 {100 * fp32['top1']:.1f}%, ours {100 * ours['top1']:.1f}% (drop {drop:+.1f} pts)"))
            peers = [r for r in rows if r["key"].startswith(("ort_static", "nncf"))]
            for r in peers:
                if "error" in r:
                    criteria.append((f"QAD int8 top-1 not below {r['label']}", None, f"peer not measured: {r['error'][:150]}"))
                else:
                    extra = " (extra fairness row)" if r["key"] == "nncf_bnfold" else ""
                    paired = paired_sign_test(predictions["ours"], predictions[r["key"]], labels)
                    r["paired_vs_ours"] = paired
                    criteria.append((f"QAD int8 top-1 not below {r['label']}{extra}", ours["top1"] >= r["top1"],
                                     f"ours {100 * ours['top1']:.1f}% ({ours['correct']}/{len(labels)}) vs "
                                     f"{100 * r['top1']:.1f}% ({r['correct']}/{len(labels)}); only ours right on "
                                     f"{paired['only_ours_right']}, only the peer on {paired['only_peer_right']}: "
                                     f"exact sign test p = {paired['p']:.2f}"
                                     + (" (a difference this size is within sampling noise)" if paired["p"] >= 0.05 else "")))
            if args.skip_nncf:
                criteria.append(("QAD int8 top-1 not below NNCF PTQ", None, "NNCF skipped (--skip-nncf)"))
            criteria.append((f"int8 file >= {CRITERIA_MIN_SIZE_RATIO}x smaller than FP32", ours["size_ratio"] >= CRITERIA_MIN_SIZE_RATIO,
                             f"{fmt_size(fp32['bytes'])} / {fmt_size(ours['bytes'])} = {ours['size_ratio']:.2f}x"))
            if args.runs:
                criteria.append((f"int8 latency <= {CRITERIA_MAX_LATENCY_RATIO}x FP32 (1 thread, batch 1, median)",
                                 ours["latency"]["ratio"] <= CRITERIA_MAX_LATENCY_RATIO,
                                 f"{ours['latency']['median_ms']:.2f} ms / {fp32['latency']['median_ms']:.2f} ms = "
                                 f"{ours['latency']['ratio']:.2f}x (p90 {ours['latency']['p90_ms']:.2f} / "
                                 f"{fp32['latency']['p90_ms']:.2f} ms)"
                                 + (f"; the conv kernels alone: {kernel_floor:.2f}x" if kernel_floor is not None else "")))
        criteria_record = log_criteria(criteria)
        log(f"load average: start {record['loadavg']['start']}, before timing {record['loadavg'].get('before_latency')}, "
            f"after timing {record['loadavg'].get('after_latency')} ({record['cpu']['cores']} cores)")

        record["notes"] = NOTES
        record.update(rows=rows, table_markdown=md, runs=args.runs, warmup=args.warmup,
                      criteria=criteria_record,
                      seconds=round(time.time() - started, 1),
                      files_kept=str(work) if args.keep is not None else None)
        for row in rows:
            if args.keep is None:
                row.pop("path", None)
        write_record(record, args.out)
        log(f"wrote {args.out} ({record['seconds']:.0f} s in all)")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
