"""Structured pruning side by side: the MNIST sample teacher pruned to 30% of its MACs by our
CoFi pass, against Torch-Pruning's magnitude pruning to the same MACs with the same fine-tune,
and against our pruned architecture trained from scratch with the same distillation.

    python bench/prune_bench.py [--budget 0.3] [--keep DIR]

All three students get the same training budget: our pass's gate-learning epochs plus its
fine-tune epochs, as distillation epochs on the same 3600 training digits (teacher-labelled
shift augmentation, logit KL at T=4) at our fine-tune's learning rate and warmup, best epoch by
the same validation slice. Then ours goes on
through the x86-cpu int8 pipeline (quantize, export, lower, verify). Latency: FP32 ONNX of each in
onnxruntime and our int8 engine, 1 thread, batch 1, interleaved in one run; ratios to the
teacher's FP32 ONNX. Needs `pip install torch-pruning==1.6.1` (the benchmark's peer only).
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import compress_measured, distill_student, log, log_criteria, markdown_table, new_record, write_record  # noqa: E402

from compressor.artifacts import load_module  # noqa: E402
from compressor.calibration import load_calibration, load_recipe  # noqa: E402
from compressor.distill import batched_outputs  # noqa: E402
from compressor.export.onnx_export import export_onnx  # noqa: E402
from compressor.model_io import LoadOptions, load_model  # noqa: E402
from compressor.backends import get_backend  # noqa: E402
from compressor.profile.latency import measure  # noqa: E402
from compressor.prune.prune_pass import FAMILY_LR, FAMILY_WARMUP, PruneConfig  # noqa: E402
from samples.mnist.model import MnistResNet, count_macs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "samples" / "mnist" / "teacher.pt2"
OUT = ROOT / "bench" / "results" / "prune_bench.json"
RUNS = 200


def top1(module, data) -> float:
    out = batched_outputs(module, data.holdout, 200).numpy()
    return float((out.argmax(1) == data.holdout_labels.numpy()).mean())


def torch_pruning_student(teacher_state: dict, macs_fraction: float) -> torch.nn.Module:
    """Torch-Pruning 1.6 MagnitudePruner (L2 magnitude, channels of coupled groups pruned
    together, the classifier kept) at the global ratio whose MACs match `macs_fraction`."""
    import torch_pruning as tp

    example = torch.rand(1, 1, 28, 28)
    full = count_macs(_resnet(teacher_state))
    lo, hi = 0.0, 0.95
    for _ in range(12):  # bisect the channel ratio for the MACs
        ratio = (lo + hi) / 2
        model = _resnet(teacher_state)
        pruner = tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                           pruning_ratio=ratio, ignored_layers=[model.fc], round_to=8)
        pruner.step()
        if count_macs(model) / full > macs_fraction:
            lo = ratio
        else:
            hi = ratio
    model = _resnet(teacher_state)
    tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=hi,
                              ignored_layers=[model.fc], round_to=8).step()
    return model.eval()


def _resnet(state: dict) -> torch.nn.Module:
    model = MnistResNet()
    model.load_state_dict(state)
    return model.eval()


def reinitialised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The same architecture with fresh weights (Kaiming for convs and linears, zero biases)."""
    fresh = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in fresh.named_parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            else:
                p.zero_()
    return fresh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="prune_bench."))
    work.mkdir(parents=True, exist_ok=True)
    record = new_record(benchmark="prune_bench", budget=args.budget)
    teacher = load_model(TEACHER, LoadOptions())
    data = load_calibration(load_recipe("mnist"), teacher.spec)

    log(f"ours: compress --target x86-cpu {TEACHER.name} --calib mnist --macs-budget {args.budget} ...")
    started = time.time()
    report, engine = compress_measured(TEACHER, record, work / "ours", target="x86-cpu", calib="mnist", force=True,
                                       quiet=False, macs_budget=args.budget)
    ours_seconds = time.time() - started
    passes = {p["name"]: p for p in report["passes"]}
    prune = passes["prune"]["metrics"]
    pruned = load_module(work / "ours" / passes["prune"]["output"])
    defaults = PruneConfig(macs_budget=args.budget)
    epochs = defaults.prune_epochs + defaults.epochs  # what our pass may train: gate learning + fine-tune
    # the peers' distillation is our fine-tune's: its learning rate and warmup, for all their epochs
    finetune = {"lr": defaults.lr if defaults.lr is not None else FAMILY_LR["cnn"][1],
                "lr_warmup": defaults.lr_warmup if defaults.lr_warmup is not None else FAMILY_WARMUP["cnn"]}
    verify = passes["verify"]["metrics"]

    log(f"Torch-Pruning magnitude to {prune['macs']['after'] / prune['macs']['before']:.3f} of the MACs ...")
    started = time.time()
    state = {k: v for k, v in teacher.module.state_dict().items()}
    tp_model = torch_pruning_student(state, prune["macs"]["after"] / prune["macs"]["before"])
    tp_macs = count_macs(tp_model)
    distill_student(tp_model, teacher.module, data, epochs, **finetune)
    tp_seconds = time.time() - started

    log(f"our pruned architecture from scratch, {epochs} epochs of distillation ...")
    started = time.time()
    scratch = reinitialised(pruned)
    distill_student(scratch, teacher.module, data, epochs, **finetune)
    scratch_seconds = time.time() - started

    paths = {"fp32": work / "teacher.onnx", "ours_fp32": work / "ours_fp32.onnx", "tp_fp32": work / "tp.onnx",
             "scratch_fp32": work / "scratch.onnx"}
    for key, module in (("fp32", teacher.module), ("ours_fp32", pruned), ("tp_fp32", tp_model),
                        ("scratch_fp32", scratch)):
        export_onnx(module, teacher.spec, paths[key])
    paths["ours_int8"] = engine
    run = get_backend("onnxruntime").runner
    x = data.holdout[0][:1].numpy()
    runners = {k: run(p, 1) for k, p in paths.items()}
    record["loadavg"]["before_latency"] = [round(v, 2) for v in __import__("os").getloadavg()]
    lat = measure({k: (lambda r: lambda: r(x))(r) for k, r in runners.items()}, runs=RUNS, warmup=20)
    rows = []
    accuracy = {"fp32": top1(teacher.module, data), "ours_fp32": prune["pruned_metric"],
                "ours_int8": verify["engine_metric"]["metric"], "tp_fp32": top1(tp_model, data),
                "scratch_fp32": top1(scratch, data)}
    labels = {"fp32": "teacher, FP32 (onnxruntime)", "ours_fp32": "ours: CoFi pruned, FP32",
              "ours_int8": "ours: CoFi pruned + QAD int8 (x86-cpu engine)",
              "tp_fp32": "Torch-Pruning magnitude, same MACs, same fine-tune, FP32",
              "scratch_fp32": "our pruned architecture from scratch, same distillation, FP32"}
    macs = {"fp32": prune["macs"]["before"], "ours_fp32": prune["macs"]["after"], "ours_int8": prune["macs"]["after"],
            "tp_fp32": tp_macs, "scratch_fp32": prune["macs"]["after"]}
    for key in paths:
        rows.append({"key": key, "label": labels[key], "top1": accuracy[key], "macs": macs[key],
                     "bytes": paths[key].stat().st_size, "latency": dict(lat[key], ratio=lat["fp32"]["median_ms"] / lat[key]["median_ms"])})
    record.update(rows=rows, peers_distillation={"epochs": epochs, **finetune}, seconds={"ours_pipeline": round(ours_seconds, 1), "torch_pruning": round(tp_seconds, 1),
                                      "scratch": round(scratch_seconds, 1)},
                  ours={"prune": {k: prune[k] for k in ("macs", "params", "structure", "kept_fraction")},
                        "passes": [{"name": p["name"], "seconds": round(p["seconds"], 1)} for p in report["passes"]]})
    table = markdown_table(["variant", "top-1 (1000 held-out)", "MACs", "ONNX size", "median ms", "speed vs teacher FP32"], rows,
                           lambda r: [f"{r['top1'] * 100:.1f}%", f"{r['macs'] / 1e6:.1f}M", f"{r['bytes'] / 1024:.0f} KiB",
                                      f"{r['latency']['median_ms']:.3f}", f"{r['latency']['ratio']:.2f}x"])
    log("\n" + table)
    t = accuracy["fp32"]
    record["criteria"] = log_criteria([
        ("int8 engine top-1 within 0.5 point of the teacher", accuracy["ours_int8"] >= t - 0.005,
         f"{accuracy['ours_int8']:.3f} vs {t:.3f}"),
        ("int8 engine at least 4x faster than the teacher's FP32 onnxruntime", rows[-1]["latency"]["ratio"] >= 4
         if rows[-1]["key"] == "ours_int8" else None, f"{lat['fp32']['median_ms'] / lat['ours_int8']['median_ms']:.2f}x"),
        ("ours (FP32) at least as accurate as Torch-Pruning magnitude", accuracy["ours_fp32"] >= accuracy["tp_fp32"],
         f"{accuracy['ours_fp32']:.3f} vs {accuracy['tp_fp32']:.3f}"),
        ("ours (FP32) at least as accurate as the architecture from scratch",
         accuracy["ours_fp32"] >= accuracy["scratch_fp32"], f"{accuracy['ours_fp32']:.3f} vs {accuracy['scratch_fp32']:.3f}"),
    ])
    record["table"] = table
    record["loadavg"]["end"] = [round(v, 2) for v in __import__("os").getloadavg()]
    write_record(record, OUT)
    log(f"wrote {OUT}")


if __name__ == "__main__":
    main()
