"""The `search` pass: find a student architecture for the teacher under the constraints (DisWOT for
CNNs, AutoDistil for Transformer encoders: searchers.py), and hand the student module on to the
passes that train it (`distill`) and deploy it.

Writes into its pass folder: student.json (the chosen architecture), pareto.json (the scored
candidates and the front of score against latency or MACs) and pareto.png; the search's cost
(candidates scored, seconds) goes into the report.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..artifacts import MODULE, Artifact, write_atomic
from ..capture import to_graph_module
from ..errors import CompressError
from ..quantize.graph import fold_batchnorm
from ..passes import Pass, PassResult, RunContext, register
from .config import SearchConfig
from .constraints import Constraints, from_fractions
from .cost import measure_cost
from .data import SearchData
from .outcome import Candidate, SearchOutcome
from .pareto import pareto_front, plot_front
from .searchers import family_of, load_searcher


def teacher_candidate(teacher, spec, example, family: str) -> Candidate:
    """The teacher's costs, on the same scale as the candidates' (a CNN's aten graph, BatchNorm
    folded into the convs as in every derived candidate)."""
    graph = None
    if family == "cnn":
        graph = to_graph_module(teacher, spec)[0]
        fold_batchnorm(graph)
    cost = measure_cost(graph if graph is not None else teacher, example, graph)
    per_sample = example[0].shape[0]
    return Candidate({"teacher": True}, 0.0, cost.macs // per_sample, cost.params, None, cost.peak_activation_bytes)


def make_constraints(cfg: SearchConfig, teacher: Candidate, teacher_module, data: SearchData, ctx: RunContext,
                     example) -> tuple[Constraints, dict]:
    """The constraints of the budgets; a latency budget through the target's latency table, or the
    MACs budget it stands for where search.latency = "macs" (the report names the proxy)."""
    latency, macs, source, table_info = cfg.latency_budget, cfg.macs_budget, "none", {}
    model = None
    if latency is not None and cfg.latency == "table":
        from .latency_table import target_latency_model

        model, table_info = target_latency_model(teacher_module, data, ctx, example)
        teacher.latency_ms = model.predict_teacher()
        source = f"latency table ({model.runtime})"
    elif latency is not None:
        macs = min(latency, macs) if macs is not None else latency
        latency, source = None, "MACs as a proxy for latency (search.latency = \"macs\")"
    if teacher.peak_activation_bytes is None and cfg.memory_budget is not None:
        raise CompressError("search.memory_budget: the teacher's peak activation memory is not known (its graph does not trace)")
    constraints = from_fractions(teacher, params=cfg.params_budget, macs=macs, memory=cfg.memory_budget,
                                 latency=latency, latency_source=source)
    return dataclasses.replace(constraints, latency_model=model), table_info


def write_outputs(outcome: SearchOutcome, chosen: Candidate, cost: str, workdir: Path, title: str) -> dict:
    front = pareto_front(outcome.candidates, cost)
    write_atomic(workdir / "student.json", json.dumps(outcome.spec, indent=2) + "\n")
    write_atomic(workdir / "pareto.json", json.dumps({
        "score": outcome.score_name, "cost": cost, "front": [c.to_json() for c in front],
        "candidates": [c.to_json() for c in outcome.candidates]}, indent=2) + "\n")
    plot_front(outcome.candidates, front, chosen, cost, "latency (ms, predicted)" if cost == "latency_ms" else "MACs",
               workdir / "pareto.png", title)
    return {"front_size": len(front), "spec_file": "student.json", "pareto_file": "pareto.json", "chart": "pareto.png"}


@register
class SearchPass(Pass):
    name = "search"
    takes = (MODULE,)
    returns = MODULE
    needs_calibration = True  # DisWOT compares the networks on real samples
    trains = True  # AutoDistil's supernet
    Config = SearchConfig

    def run(self, artifact: Artifact, ctx: RunContext, workdir: Path) -> PassResult:
        cfg, spec = self.config, artifact.spec
        data = SearchData(spec, ctx.data)
        example = data.example(spec.static_batch or 1)
        family = family_of(artifact.module, spec, example)
        searcher = load_searcher(family)
        teacher = teacher_candidate(artifact.module, spec, example, family)
        constraints, table_info = make_constraints(cfg, teacher, artifact.module, data, ctx, example)
        ctx.progress.log(f"  {family} teacher: {teacher.macs / 1e6:.2f}M MACs, {teacher.params / 1e6:.3f}M params; "
                         f"constraints: {constraints.describe()}")
        outcome = searcher(artifact.module, data, constraints, cfg, ctx.progress)
        chosen = outcome.chosen
        cost = "latency_ms" if chosen.latency_ms is not None else "macs"
        files = write_outputs(outcome, chosen, cost, workdir, f"{outcome.method}: score vs {cost}, "
                                                              f"{len(outcome.candidates)} candidates")
        ctx.progress.log(f"  chose {chosen.macs / 1e6:.2f}M MACs ({chosen.macs / teacher.macs:.1%} of the teacher), "
                         f"{chosen.params / 1e6:.3f}M params after scoring {len(outcome.candidates)} candidates "
                         f"in {outcome.seconds:.1f} s")
        metrics = {
            "family": family, "method": outcome.method, "score_name": outcome.score_name,
            "constraints": {**constraints.limits(), "latency_source": constraints.latency_source},
            "teacher": teacher.to_json(), "chosen": chosen.to_json(),
            "fractions": {"macs": chosen.macs / teacher.macs, "params": chosen.params / teacher.params},
            "candidates_scored": len(outcome.candidates), "seconds": outcome.seconds,
            "notes": outcome.notes, "details": outcome.details, "pareto_cost": cost, **files,
        }
        if table_info:
            table = constraints.latency_model.table
            metrics["latency_table"] = {**table_info, "entries": len(table.entries), "measured_now": table.measured,
                                        **{k: outcome.details.pop(k) for k in ("holdout", "holdout_error")
                                           if k in outcome.details}}
        meta = {**artifact.meta, "searched": True}
        return PassResult(Artifact(MODULE, spec, artifact.fingerprint, module=outcome.student, meta=meta), metrics)
