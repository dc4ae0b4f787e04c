"""Structured pruning of the MiniLM-L6 sentence encoder, side by side with truncation.

    python bench/prune_minilm_bench.py [--sparsity 0.61] [--prune-epochs 1] [--epochs 4] [--batch 32]
                                       [--training-samples 1600] [--keep DIR]

Ours: `compress --target x86-cpu <MiniLM> --calib minilm --sparsity S` (prune, quantize, export,
lower, verify), the prune pass trained for the given epochs on the recipe's training sentences
(the 320 calibration sentences plus the first of samples/minilm/training_sentences.txt, up to
--training-samples in all, less a validation slice; the whole 4016 took 17 minutes an epoch on
the 2 shared cores). Truncation: the same encoder cut to the same number of parameters by keeping the first
heads and the first FFN dimensions of every layer (uniformly), then refit and distilled exactly as
our shrunk model is (the same least-squares refit of the output projections on the same sentences;
the same loss with CoFi's layerwise term, sentences, batch, learning rate and number of epochs:
our gate-learning plus fine-tune epochs). Both are scored on the 320 held-out
sentences (mean cosine of the pooled embedding to the teacher's, rank-1 retrieval agreement).
Latency: FP32 ONNX of each in onnxruntime and our int8 engine, 1 thread, batch 1, 128 tokens,
interleaved in one run; ratios to the teacher's FP32 ONNX.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import compress_measured, loadavg, log, log_criteria, markdown_table, new_record, write_record  # noqa: E402

from compressor.artifacts import load_module  # noqa: E402
from compressor.backends import get_backend  # noqa: E402
from compressor.calibration import load_calibration, load_recipe  # noqa: E402
from compressor.distill import batched_outputs, fidelity_scorer, train, training_split  # noqa: E402
from compressor.evaluators import cosine, get_evaluator  # noqa: E402
from compressor.export.onnx_export import export_onnx  # noqa: E402
from compressor.model_io import LoadOptions, load_model  # noqa: E402
from compressor.profile.latency import measure  # noqa: E402
from compressor.progress import Progress  # noqa: E402
from compressor.prune.prune_pass import FAMILY_LR, BatchDistillation, PruneConfig, refit_projections  # noqa: E402
from compressor.prune.transformer import TransformerStructure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "prune_minilm_bench.json"
RUNS = 100


def minilm_folder() -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("minilm_locate", ROOT / "samples" / "minilm" / "locate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.model_folder()


def bench_recipe(work: Path, training_samples: int) -> Path:
    """The bundled minilm recipe with its own training_samples (paths made absolute)."""
    text = (ROOT / "calibration" / "minilm.toml").read_text()
    text = text.replace('"../samples/', f'"{ROOT}/samples/').replace("\ntraining_samples = 0", f"\ntraining_samples = {training_samples}")
    path = work / "minilm-bench.toml"
    path.write_text(text)
    return path


def encoder_params(module: torch.nn.Module) -> int:
    """Parameters of the encoder layers (embeddings and pooling excluded)."""
    return sum(p.numel() for n, p in module.named_parameters() if ".encoder.layer." in f".{n}")


def truncated(teacher: torch.nn.Module, params: int) -> torch.nn.Module:
    """The teacher with the first heads and FFN dimensions of every layer kept, the same share in
    every layer, at the largest share whose encoder has at most `params` parameters."""
    best = None
    for share in np.linspace(1.0, 0.02, 99):
        structure = TransformerStructure(copy.deepcopy(teacher))
        keep = {}
        for group in structure.groups:
            n = group.size if group.kind in ("mha_layer", "ffn_layer") else max(1, int(round(group.size * share)))
            if group.kind == "ffn_dims" and n > 8:
                n = n // 8 * 8
            keep[group.name] = torch.arange(group.size) < n
        small = structure.shrink(keep)
        if encoder_params(small) <= params:
            best = small
            break
    if best is None:
        raise SystemExit(f"no truncation reaches {params} encoder parameters")
    return best


def truncation_student(work: Path, teacher, data, cfg: PruneConfig, params: int):
    """The truncated encoder at `params` encoder parameters, distilled as our fine-tune distils for
    our gate-learning plus fine-tune epochs; cached in the work folder (module, history, seconds)."""
    cached = work / "truncated.pt"
    if cached.is_file():
        saved = torch.load(cached, weights_only=False)
        return saved["module"], saved["history"], saved["seconds"]  # history: {"refit", "history"}
    epochs = cfg.prune_epochs + cfg.epochs
    log(f"truncation to {params} encoder parameters, {epochs} epochs of the same distillation ...")
    started = time.time()
    trunc = truncated(teacher.module, params)
    trunc.eval()
    split = training_split(data, cfg, "prune")
    _, evaluate = get_evaluator(None, teacher.spec.task)
    score = fidelity_scorer(split.val, batched_outputs(teacher.module, split.val, cfg.batch), evaluate, cfg.batch,
                            teacher.spec.task, cfg.temperature)
    refit = refit_projections(TransformerStructure(teacher.module), trunc, teacher.module, split, teacher.spec, cfg, score)
    distillation = BatchDistillation(teacher.module, split, teacher.spec, cfg, TransformerStructure(trunc).layer_paths)
    history = train(trunc, split.samples, lambda idx: distillation.loss(trunc, idx), score,
                    dataclasses.replace(cfg, epochs=epochs, lr=FAMILY_LR["transformer"][1], patience=epochs),
                    Progress(False), label="truncation distill")
    seconds = round(time.time() - started, 1)
    torch.save({"module": trunc, "history": history, "seconds": seconds}, cached)
    return trunc, {"refit": refit, "history": history}, seconds


def scores(module: torch.nn.Module, data, teacher_out: np.ndarray, batch: int = 32) -> dict:
    with torch.no_grad():
        out = batched_outputs(module, data.holdout, batch).numpy()
    return cosine(out, teacher_out, None)


def engine_scores(path: Path, data, teacher_out: np.ndarray) -> dict:
    run = get_backend("onnxruntime").runner(path, None)
    return cosine(np.asarray(run(*(x.numpy() for x in data.holdout))), teacher_out, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.61, help="fraction of the prunable parameters removed")
    parser.add_argument("--prune-epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=4, help="our fine-tune epochs after the shrink")
    parser.add_argument("--batch", type=int, default=32, help="training batch (ours and truncation's)")
    parser.add_argument("--training-samples", type=int, default=1600,
                        help="sentences that train (the recipe's training_samples; 0: all 4016)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work folder here (and resume from it)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="prune_minilm."))
    work.mkdir(parents=True, exist_ok=True)
    record = new_record(benchmark="prune_minilm_bench", sparsity=args.sparsity, prune_epochs=args.prune_epochs,
                        epochs=args.epochs, batch=args.batch, training_samples=args.training_samples)
    folder = minilm_folder()
    teacher = load_model(folder, LoadOptions())
    recipe = bench_recipe(work, args.training_samples)
    data = load_calibration(load_recipe(str(recipe)), teacher.spec, folder)
    teacher_out = batched_outputs(teacher.module, data.holdout, 32).numpy()

    config = work / "prune.toml"
    config.write_text('passes = ["prune", "quantize", "export", "lower", "verify"]\n'
                      f"[prune]\nsparsity = {args.sparsity}\nprune_epochs = {args.prune_epochs}\nepochs = {args.epochs}\n"
                      f"batch = {args.batch}\n")
    log(f"ours: compress --target x86-cpu MiniLM --calib minilm --sparsity {args.sparsity} "
        f"({args.prune_epochs} gate + {args.epochs} fine-tune epochs) ...")
    started = time.time()
    resume = (work / "ours").is_dir()  # a kept folder: continue where it stopped
    report, engine = compress_measured(folder, record, work / "ours", target="x86-cpu", calib=str(recipe), config=config,
                                       quiet=False, resume=resume, force=not resume)
    ours_seconds = time.time() - started
    passes = {p["name"]: p for p in report["passes"]}
    prune = passes["prune"]["metrics"]
    pruned = load_module(work / "ours" / passes["prune"]["output"])
    kept_params = encoder_params(pruned)

    cfg = PruneConfig(sparsity=args.sparsity, prune_epochs=args.prune_epochs, epochs=args.epochs, batch=args.batch)
    trunc, trunc_history, trunc_seconds = truncation_student(work, teacher, data, cfg, kept_params)
    record["truncation"] = trunc_history

    paths = {"fp32": work / "teacher.onnx", "ours_fp32": work / "ours_fp32.onnx", "trunc_fp32": work / "trunc.onnx"}
    for key, module in (("fp32", teacher.module), ("ours_fp32", pruned), ("trunc_fp32", trunc)):
        export_onnx(module, teacher.spec, paths[key])
    paths["ours_int8"] = engine
    quality = {"fp32": scores(teacher.module, data, teacher_out), "ours_fp32": scores(pruned, data, teacher_out),
               "trunc_fp32": scores(trunc, data, teacher_out), "ours_int8": engine_scores(engine, data, teacher_out)}
    params = {"fp32": encoder_params(teacher.module), "ours_fp32": kept_params, "ours_int8": kept_params,
              "trunc_fp32": encoder_params(trunc)}

    run = get_backend("onnxruntime").runner
    x = tuple(t[:1].numpy() for t in data.holdout)
    runners = {k: run(p, 1) for k, p in paths.items()}
    record["loadavg"]["before_latency"] = loadavg()
    lat = measure({k: (lambda r: lambda: r(*x))(r) for k, r in runners.items()}, runs=RUNS, warmup=10)
    record["loadavg"]["after_latency"] = loadavg()
    labels = {"fp32": "teacher, FP32 (onnxruntime)", "ours_fp32": f"ours: CoFi --sparsity {args.sparsity}, FP32",
              "ours_int8": "ours: CoFi pruned + int8 (x86-cpu engine)",
              "trunc_fp32": "truncation (first heads and FFN dims), same size, same distillation, FP32"}
    rows = [{"key": k, "label": labels[k], **{m: quality[k][m] for m in ("metric", "cosine_min", "retrieval_agreement")},
             "encoder_params": params[k], "bytes": paths[k].stat().st_size,
             "latency": dict(lat[k], ratio=lat["fp32"]["median_ms"] / lat[k]["median_ms"])} for k in paths]
    removed = 1 - kept_params / params["fp32"]
    record.update(rows=rows, encoder_params_removed=removed,
                  seconds={"ours_pipeline": round(ours_seconds, 1), "truncation": round(trunc_seconds, 1)},
                  ours={"prune": {k: prune.get(k) for k in ("macs", "params", "kept_fraction", "ranked_by", "refit",
                                                            "validation", "structure")},
                        "passes": [{"name": p["name"], "seconds": round(p.get("seconds") or 0, 1)} for p in report["passes"]]})
    table = markdown_table(["variant", "mean cosine (320 held-out)", "retrieval agreement", "encoder params",
                            "ONNX size", "median ms", "speed vs teacher FP32"], rows,
                           lambda r: [f"{r['metric']:.4f}", f"{r['retrieval_agreement']:.3f}",
                                      f"{r['encoder_params'] / 1e6:.2f}M", f"{r['bytes'] / 2**20:.1f} MiB",
                                      f"{r['latency']['median_ms']:.2f}", f"{r['latency']['ratio']:.2f}x"])
    log("\n" + table)
    record["criteria"] = log_criteria([
        ("at least 60% of the encoder parameters removed", removed >= 0.6, f"{removed:.1%}"),
        ("pruned FP32 mean cosine to the teacher at least 0.95", quality["ours_fp32"]["metric"] >= 0.95,
         f"{quality['ours_fp32']['metric']:.4f}"),
        ("pruned FP32 onnxruntime at least 2.5x faster than the teacher's", rows[1]["latency"]["ratio"] >= 2.5,
         f"{rows[1]['latency']['ratio']:.2f}x"),
        ("pruned int8 engine at least 4x faster than the teacher's FP32", rows[3]["latency"]["ratio"] >= 4,
         f"{rows[3]['latency']['ratio']:.2f}x"),
        ("ours at least as close to the teacher as truncation of the same size",
         quality["ours_fp32"]["metric"] >= quality["trunc_fp32"]["metric"],
         f"{quality['ours_fp32']['metric']:.4f} vs {quality['trunc_fp32']['metric']:.4f}"),
    ])
    record["table"] = table
    record["loadavg"]["end"] = loadavg()
    write_record(record, OUT)
    log(f"wrote {OUT}")


if __name__ == "__main__":
    main()
