"""Data-free calibration side by side: the same engine calibrated on real data, on inputs
synthesised from the model (no --calib), and on plain random inputs, measured on REAL held-out data.

    python bench/datafree_bench.py [--targets x86-cpu,jetson] [--minilm] [--keep DIR] [--resume]

MNIST sample teacher, for each target, three runs of the target's default pipeline (quantize with
QAD, export, lower, verify), 256 calibration samples each:
  (a) real digits: the bundled `mnist` source cut to 256 calibration samples;
  (b) data-free: no --calib (BatchNorm-statistics inputs; the synthesis runs once and is reused by
      the second target through the run directory's cache, as --resume would);
  (c) plain random: 256 + 500 inputs uniform in [0, 1] given as a .npz.
Each published engine (x86-cpu: the int8 ONNX itself; jetson: the QDQ ONNX that TensorRT builds
from, run with onnxruntime's QDQ reference semantics, as verify does: TensorRT is not here) is then
scored on the 1000 real held-out digits (labels). Criterion: data-free within 1 point of real.
`--minilm`: the MiniLM sample on x86-cpu with the same three kinds of data ((b) is the tokenizer
vocabulary fallback; (c) uniform random token ids), scored by mean cosine to the FP32 teacher on
the 320 real held-out sentences of the `minilm` recipe.
Synthesis time is the run's own (torch threads as the run had them; this machine has 2 cores).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import compress_measured, log, log_criteria, markdown_table, new_record, write_record  # noqa: E402

from compressor.backends import get_backend  # noqa: E402
from compressor.calibration import load_calibration, load_recipe  # noqa: E402
from compressor.distill import batched_outputs  # noqa: E402
from compressor.model_io import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "samples" / "mnist" / "teacher.pt2"
OUT = ROOT / "bench" / "results" / "datafree_bench.json"
CALIBRATION = 256  # every variant calibrates on this many samples (the data-free default)
KINDS = {"real": "real data", "datafree": "data-free (no --calib)", "random": "plain random inputs"}


def _engine_outputs(engine: Path, inputs: tuple[torch.Tensor, ...], batch: int = 100) -> np.ndarray:
    runner = get_backend("onnxruntime").runner(engine, torch.get_num_threads())
    arrays = [x.numpy() for x in inputs]
    return np.concatenate([runner(*(a[s:s + batch] for a in arrays)) for s in range(0, len(arrays[0]), batch)])


def _run(model, kind: str, calib: str | None, target: str, work: Path, resume: bool, share: Path | None) -> dict:
    out = work / f"{target}-{kind}"
    row: dict = {"target": target, "kind": kind}
    continued = resume and out.is_dir()
    if not continued:
        shutil.rmtree(out, ignore_errors=True)
        if share is not None and (share / "datafree").is_dir():  # the synthesis is the model's, not the target's
            shutil.copytree(share / "datafree", out / "datafree")
            continued = True
    started = time.time()
    report, engine = compress_measured(model, row, out, target=target, calib=calib, quiet=True,
                                       resume=continued, force=not continued)
    row.update(seconds=round(time.time() - started, 1), engine=str(engine), status=report["status"],
               calibration={k: v for k, v in report["calibration"].items() if k != "in_words"})
    quantize = next((p["metrics"] for p in report["passes"] if p["name"] == "quantize"), {})
    row["equalization"] = quantize.get("equalization")
    row["out"] = str(out)
    log(f"[{target} {kind}] {report['status']} in {row['seconds']} s")
    return row


def mnist(targets: list[str], work: Path, resume: bool, kinds: list[str], shared: Path | None,
          collect: bool = False) -> tuple[list[dict], list]:
    real = load_calibration(load_recipe("mnist"), load_model(TEACHER).spec)
    labels = real.holdout_labels.numpy()
    recipe = work / "mnist256.toml"
    recipe.write_text(f'source = "mnist"\nseed = 0\ncalibration_samples = {CALIBRATION}\nholdout_samples = 1000\n')
    noise = work / "uniform.npz"
    np.savez(noise, x=np.random.default_rng(0).random((CALIBRATION + 500, 1, 28, 28), dtype=np.float32))
    teacher = load_model(TEACHER).module
    teacher_top1 = float((batched_outputs(teacher, real.holdout, 200).numpy().argmax(1) == labels).mean())
    rows, criteria = [], []
    for target in targets:
        for kind, calib in (("real", str(recipe)), ("datafree", None), ("random", str(noise))):
            if kind not in kinds:
                continue
            if collect and not (work / f"{target}-{kind}" / "report.json").is_file():
                log(f"[{target} {kind}] not finished: left out")
                continue
            row = _run(TEACHER, kind, calib, target, work, resume or collect, shared if kind == "datafree" else None)
            if kind == "datafree":
                shared = Path(row["out"])
            row["top1_real"] = float((_engine_outputs(Path(row["engine"]), real.holdout).argmax(1) == labels).mean())
            rows.append(row)
        by = {r["kind"]: r for r in rows if r["target"] == target}
        if not {"real", "datafree"} <= set(by):
            continue
        gap = by["real"]["top1_real"] - by["datafree"]["top1_real"]
        criteria.append((f"{target}: data-free within 1 point of real-data calibration", gap <= 0.01,
                         f"real {by['real']['top1_real']:.4f}, data-free {by['datafree']['top1_real']:.4f}, "
                         + (f"random {by['random']['top1_real']:.4f}" if "random" in by else "random not run")
                         + f" (teacher FP32 {teacher_top1:.4f})"))
    return rows, criteria, teacher_top1


def minilm(work: Path, resume: bool) -> tuple[list[dict], list]:
    sys.path.insert(0, str(ROOT))
    from samples.minilm.locate import model_folder

    folder = model_folder()
    teacher = load_model(folder)
    real = load_calibration(load_recipe("minilm"), teacher.spec, folder)
    reference = batched_outputs(teacher.module, real.holdout, 32).numpy()
    rows, criteria = [], []
    # no plain-random row: a .npz gives one input and MiniLM takes two (ids and attention mask)
    for kind, calib in (("real", "minilm"), ("datafree", None)):
        row = _run(folder, kind, calib, "x86-cpu", work / "minilm", resume, None)
        out = _engine_outputs(Path(row["engine"]), real.holdout, 32)
        cos = (out * reference).sum(1) / np.maximum(np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1), 1e-12)
        row.update(model="minilm", cosine_real=float(cos.mean()))
        rows.append(row)
    by = {r["kind"]: r for r in rows}
    criteria.append(("MiniLM x86-cpu: vocabulary fallback within 0.01 mean cosine of real sentences",
                     by["real"]["cosine_real"] - by["datafree"]["cosine_real"] <= 0.01,
                     f"real {by['real']['cosine_real']:.4f}, vocabulary {by['datafree']['cosine_real']:.4f}"))
    return rows, criteria


def table(rows: list[dict], targets: list[str], teacher_top1: float) -> str:
    head = ["calibration data (256 samples)", *[f"{t} int8 top-1 on 1000 real digits" for t in targets],
            "verification (on the run's own held-out data)", "synthesis s"]
    lines = [{"label": "none: teacher FP32 (PyTorch)", "cells": [f"{teacher_top1:.1%}"] * len(targets) + ["", ""]}]
    for kind, label in (("real", "real digits (`mnist` source)"), ("datafree", "data-free: BatchNorm-statistics inputs"),
                        ("random", "plain random, uniform [0, 1]")):
        by = {r["target"]: r for r in rows if r["kind"] == kind and "top1_real" in r}
        seconds = next((r["calibration"].get("synthesis_seconds") for r in by.values()), None)
        lines.append({"label": label, "cells": [f"{by[t]['top1_real']:.1%}" if t in by else "not run" for t in targets]
                      + [", ".join(f"{t} {by[t]['status']}" for t in targets if t in by), f"{seconds:.0f}" if seconds else ""]})
    return markdown_table(head, lines, lambda r: r["cells"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="x86-cpu,jetson")
    parser.add_argument("--minilm", action="store_true", help="also the MiniLM sample (x86-cpu)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    parser.add_argument("--resume", action="store_true", help="reuse the finished runs of a kept work folder")
    parser.add_argument("--kinds", default=",".join(KINDS), help="run only these (a partial run writes no result file)")
    parser.add_argument("--share", type=Path, default=None, help="a data-free run folder whose synthesis to reuse")
    parser.add_argument("--collect", action="store_true", help="only gather the finished runs of --keep DIR")
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    record = new_record(bench="datafree_bench", targets=targets, torch_threads=torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows, criteria, teacher_top1 = mnist(targets, work, args.resume, kinds, args.share, args.collect)
        if set(kinds) != set(KINDS):
            log(f"partial run ({', '.join(kinds)}): " + "; ".join(f"{r['target']} {r['kind']} top-1 {r['top1_real']:.4f}"
                                                                  for r in rows))
            return 0
        md = table(rows, targets, teacher_top1)
        if args.minilm:
            minilm_rows, minilm_criteria = minilm(work, args.resume)
            rows += minilm_rows
            criteria += minilm_criteria
            record["minilm_table"] = markdown_table(
                ["MiniLM x86-cpu, calibration data", "mean cosine to FP32 on 320 real held-out sentences", "verification"],
                [{"label": r["kind"], "cells": [f"{r['cosine_real']:.4f}", r["status"]]} for r in minilm_rows],
                lambda r: r["cells"])
    record.update(rows=rows, teacher_top1=teacher_top1, table=md, criteria=log_criteria(criteria))
    record["loadavg"]["end"] = list(np.round(np.array(__import__("os").getloadavg()), 2))
    write_record(record, OUT)
    log(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
