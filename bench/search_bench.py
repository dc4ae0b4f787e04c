"""Student architecture search on the MNIST sample: DisWOT's training-free ranking against distilled
accuracy, and the one-command path search -> distill -> quantize to the x86 int8 engine.

    python bench/search_bench.py [--budget 0.25] [--population 20] [--generations 10] [--epochs 3]

1. compress --search --macs-budget B: the search pass scores >= 200 candidates (its report gives the
   count and seconds), then distill (the pass's defaults for a searched student), quantize, export,
   lower, verify on x86-cpu.
2. 8 of the scored candidates, spread evenly over the DisWOT score range, are rebuilt at random
   initialisation (then data-dependent: unit activations per channel) and distilled with one short
   budget (--epochs of logit KL at T=4 with shift augmentation, lr 3e-3, best epoch by the
   validation slice's KL); top-1 on the 1000 held-out digits.
   Spearman rank correlation with that accuracy of: the DisWOT score, MACs alone, and NASWOT (a
   zero-cost proxy, written here: log-determinant of the ReLU activation-pattern Hamming kernel).
   Ranking time: DisWOT scoring of the 8 against their distillation.
3. The chosen student's int8 engine against the teacher's FP32 ONNX in onnxruntime, 1 thread,
   batch 1, interleaved.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import compressor  # noqa: E402,F401 - before torch: it sets OpenMP's passive waiting (compressor/__init__.py)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import distill_student, log, log_criteria, loadavg, markdown_table, new_record, write_record  # noqa: E402

from compressor import compress  # noqa: E402
from compressor.backends import get_backend  # noqa: E402
from compressor.calibration import load_calibration, load_recipe  # noqa: E402
from compressor.distill import batched_outputs  # noqa: E402
from compressor.artifacts import load_module  # noqa: E402
from compressor.errors import CompressError  # noqa: E402
from compressor.export.onnx_export import export_onnx  # noqa: E402
from compressor.model_io import LoadOptions, load_model  # noqa: E402
from compressor.profile.latency import measure  # noqa: E402
from compressor.search.cnn_search import make_space, teacher_at_init  # noqa: E402
from compressor.search.config import SearchConfig  # noqa: E402
from compressor.search.data import SearchData  # noqa: E402
from compressor.search.diswot import DiswotScorer  # noqa: E402
from compressor.search.reinit import normalise_activations  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "samples" / "mnist" / "teacher.pt2"
OUT = ROOT / "bench" / "results" / "search_bench.json"
RUNS = 200
aten = torch.ops.aten
RELUS = {aten.relu.default, aten.relu_.default}


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = v.argsort()
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties share their mean rank
            r[v == value] = r[v == value].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def naswot(module: torch.fx.GraphModule, inputs: torch.Tensor) -> float:
    """NASWOT (Mellor et al. 2021): log|K| with K[i, j] the number of ReLUs on which samples i and j
    agree (both active or both inactive), at initialisation."""
    codes = []

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.op == "call_function" and n.target in RELUS:
                codes.append((out > 0).flatten(1).float())
            return out

    with torch.no_grad():
        Recorder(module).run(inputs)
    c = torch.cat(codes, dim=1).double()
    kernel = c @ c.T + (1 - c) @ (1 - c).T
    return float(torch.linalg.slogdet(kernel)[1])


def distill(student, teacher, data, epochs: int, seed: int = 0) -> float:
    """One short distillation from random initialisation (data-dependent: search.reinit's
    normalise_activations, as the search pass starts a random student; then common.distill_student,
    lr 3e-3); top-1 on the held-out digits."""
    normalise_activations(student, tuple(x[:256] for x in data.training()[0]))
    distill_student(student, teacher, data, epochs, lr=3e-3, seed=seed, quiet=True)
    out = batched_outputs(student, data.holdout, 200).numpy()
    return float((out.argmax(1) == data.holdout_labels.numpy()).mean())


def top1(module, data) -> float:
    out = batched_outputs(module, data.holdout, 200).numpy()
    return float((out.argmax(1) == data.holdout_labels.numpy()).mean())


def _student_engine(work: Path, passes: dict, data, record: dict):
    """The chosen student's x86 int8 engine: the pipeline's, or where the pipeline stopped (the quantize
    pass refuses a student more than 5 points below the teacher) the distilled student compressed on
    its own (quantize, export, lower, verify against itself): (engine, its top-1, quantize metrics)."""
    student = load_module(work / "ours" / passes["distill"]["output"])
    record["distilled_student_top1"] = top1(student, data)  # FP32, before quantization
    if "verify" in passes:
        v = passes["verify"]["metrics"]
        lower = passes["lower"]["output"]
        return work / "ours" / lower, v["engine_metric"]["metric"], passes["quantize"]["metrics"]
    log(f"pipeline stopped ({record.get('pipeline_error')}); the distilled student "
        f"(top-1 {record['distilled_student_top1']:.4f}) compressed on its own for its int8 engine ...")
    try:
        done = (work / "student_int8" / "run.json").exists()  # --resume reuses its finished passes
        result = compress(student, target="x86-cpu", calib="mnist", out=work / "student_int8", force=not done,
                          resume=done, quiet=True,
                          input_shape=(1, 1, 28, 28), passes=["quantize", "export", "lower", "verify"])
        report = result.report
    except CompressError as e:
        report = e.report
    own = {p["name"]: p for p in report["passes"]}
    record["student_engine_passes"] = [{"name": p["name"], "status": p["status"]} for p in report["passes"]]
    return (work / "student_int8" / own["lower"]["output"], own["verify"]["metrics"]["engine_metric"]["metric"],
            own["quantize"]["metrics"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.25)
    parser.add_argument("--population", type=int, default=20)
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3, help="distillation epochs of each of the 8 ranked candidates")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    parser.add_argument("--resume", action="store_true", help="reuse the finished passes of a kept work folder")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="search_bench."))
    work.mkdir(parents=True, exist_ok=True)
    record = new_record(benchmark="search_bench", budget=args.budget, population=args.population,
                        generations=args.generations, epochs=args.epochs, threads=torch.get_num_threads())
    teacher = load_model(TEACHER, LoadOptions())
    data = load_calibration(load_recipe("mnist"), teacher.spec)

    # 1. the one-command path
    config = work / "search.toml"
    config.write_text(f"[search]\npopulation = {args.population}\ngenerations = {args.generations}\n")
    log(f"compress {TEACHER.name} --target x86-cpu --calib mnist --search --macs-budget {args.budget} ...")
    started = time.time()
    try:
        result = compress(TEACHER, target="x86-cpu", calib="mnist", out=work / "ours", force=not args.resume,
                          resume=args.resume, quiet=False, macs_budget=args.budget, search=True, config=config)
        report = result.report
    except CompressError as e:  # the numbers measured so far are in e.report
        report = e.report
        record["pipeline_error"] = str(e)
    pipeline_seconds = time.time() - started
    passes = {p["name"]: p for p in report["passes"]}
    search = passes["search"]["metrics"]
    engine, engine_top1, quantize = _student_engine(work, passes, data, record)
    log(f"search: {search['candidates_scored']} candidates scored in {search['seconds']:.1f} s")

    # 2. DisWOT's ranking against distilled accuracy, on 8 candidates spread over the score range
    pareto = json.loads((work / "ours" / Path(passes["search"]["output"]).parent / "pareto.json").read_text())
    scored = sorted(pareto["candidates"], key=lambda c: c["score"])
    picks = [scored[round(i * (len(scored) - 1) / 7)] for i in range(8)]
    cfg = SearchConfig()
    sdata = SearchData(teacher.spec, data)
    example = sdata.example(1)
    space = make_space(teacher.module, sdata, cfg, example)
    started = time.perf_counter()
    scorer = DiswotScorer(teacher_at_init(teacher.module, space, sdata, cfg.seed), sdata.samples(cfg.score_batch),
                          example, True)
    diswot = [scorer(space.build(c["spec"]["genes"])).score for c in picks]
    diswot_seconds = time.perf_counter() - started
    naswot_inputs = sdata.samples(cfg.score_batch)[0]
    rows = []
    train_seconds = 0.0
    for i, (c, score) in enumerate(zip(picks, diswot)):
        module = space.build(c["spec"]["genes"])
        nw = naswot(module, naswot_inputs)
        log(f"candidate {i + 1}/8: {c['macs'] / 1e6:.2f}M MACs, DisWOT {score:.4f}, NASWOT {nw:.1f}: distilling "
            f"{args.epochs} epochs from random init ...")
        started = time.perf_counter()
        accuracy = distill(module, teacher.module, data, args.epochs)
        seconds = time.perf_counter() - started
        train_seconds += seconds
        rows.append({"key": f"c{i}", "label": f"candidate {i + 1}", "macs": c["macs"], "params": c["params"],
                     "diswot": score, "naswot": nw, "top1": accuracy, "distill_seconds": round(seconds, 1),
                     "genes": c["spec"]["genes"]})
        log(f"  top-1 {accuracy:.4f} in {seconds:.0f} s")
    accuracies = [r["top1"] for r in rows]
    correlation = {"diswot": spearman([r["diswot"] for r in rows], accuracies),
                   "macs": spearman([r["macs"] for r in rows], accuracies),
                   "naswot": spearman([r["naswot"] for r in rows], accuracies)}
    record["ranking"] = {"candidates": rows, "spearman_vs_distilled_top1": correlation,
                         "diswot_seconds": round(diswot_seconds, 2), "training_seconds": round(train_seconds, 1),
                         "training_over_diswot": train_seconds / diswot_seconds}

    # 3. the chosen student's engine against the teacher's FP32 onnxruntime
    teacher_onnx = work / "teacher.onnx"
    export_onnx(teacher.module, teacher.spec, teacher_onnx)
    run = get_backend("onnxruntime").runner
    x = data.holdout[0][:1].numpy()
    runners = {"teacher_fp32": run(teacher_onnx, 1), "student_int8": run(engine, 1)}
    record["loadavg"]["before_latency"] = loadavg()
    lat = measure({k: (lambda r: lambda: r(x))(r) for k, r in runners.items()}, runs=RUNS, warmup=20)
    record["loadavg"]["end"] = loadavg()
    speedup = lat["teacher_fp32"]["median_ms"] / lat["student_int8"]["median_ms"]
    teacher_top1 = top1(teacher.module, data)
    record.update(pipeline={"seconds": round(pipeline_seconds, 1),
                            "passes": [{"name": p["name"], "seconds": round(p["seconds"], 1)} for p in report["passes"]],
                            "search": {k: search[k] for k in ("candidates_scored", "seconds", "chosen", "teacher", "fractions",
                                                              "constraints", "notes")},
                            "distill": passes["distill"]["metrics"].get("after"),
                            "quantize": {k: quantize.get(k) for k in ("teacher_metric", "ptq_metric", "qad_metric")},
                            "distilled_student_top1": record.get("distilled_student_top1"),
                            "teacher_top1": teacher_top1, "engine_top1": engine_top1},
                  latency={k: v for k, v in lat.items()}, engine_speedup_vs_teacher_fp32=speedup)
    table = markdown_table(["candidate", "MACs", "DisWOT score", "NASWOT", f"top-1 after {args.epochs} epochs", "distill s"], rows,
                           lambda r: [f"{r['macs'] / 1e6:.2f}M", f"{r['diswot']:.4f}", f"{r['naswot']:.1f}",
                                      f"{r['top1'] * 100:.1f}%", f"{r['distill_seconds']:.0f}"])
    log("\n" + table)
    record["table"] = table
    record["criteria"] = log_criteria([
        ("score >= 200 candidates in under 2 minutes", search["candidates_scored"] >= 200 and search["seconds"] < 120,
         f"{search['candidates_scored']} in {search['seconds']:.1f} s (load average {record['loadavg']['start']})"),
        ("Spearman of DisWOT score vs distilled top-1 (reported whatever it is)", None,
         f"DisWOT {correlation['diswot']:.2f}, MACs {correlation['macs']:.2f}, NASWOT {correlation['naswot']:.2f}"),
        ("DisWOT ranking time vs training-based ranking of the same 8", None,
         f"{diswot_seconds:.1f} s vs {train_seconds:.0f} s ({train_seconds / diswot_seconds:.0f}x)"),
        (f"chosen student ({search['fractions']['macs']:.1%} of the MACs) int8 engine within 1.0 point of the teacher",
         engine_top1 >= teacher_top1 - 0.01, f"{engine_top1:.4f} vs {teacher_top1:.4f} (the distilled student in "
                                              f"FP32: {record['distilled_student_top1']:.4f})"),
        ("its x86 int8 engine at least 4x faster than the teacher's FP32 onnxruntime (1 thread, batch 1)",
         speedup >= 4, f"{speedup:.2f}x ({lat['student_int8']['median_ms']:.3f} vs {lat['teacher_fp32']['median_ms']:.3f} ms)"),
    ])
    write_record(record, OUT)
    log(f"wrote {OUT}")


if __name__ == "__main__":
    main()
