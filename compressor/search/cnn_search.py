"""The CNN searcher: DisWOT scores (diswot.py) under the constraints, evolutionary search
(evolution.py) over a space derived from the teacher's graph or a built-in family, no training.
It is the "cnn" entry of searchers.py and returns a SearchOutcome like every searcher."""
from __future__ import annotations

import time

import torch

from ..capture import to_graph_module
from ..model_io import StaticBatchAdapter, first_output
from ..progress import Progress
from ..quantize.graph import fold_batchnorm
from ..threads import torch_threads
from .config import SearchConfig
from .choice import choose, preference
from .constraints import Constraints
from .cost import as_graph, measure_graph
from .data import SearchData
from .derived_space import derived_space
from .diswot import DiswotScorer, Similarities
from .evolution import EvolutionSettings, evolve
from .family_space import family_space
from .outcome import Candidate, SearchOutcome
from .reinit import normalise_activations, reinitialise
from .space import SearchSpace, spec_key

RECALIBRATION_SAMPLES = 256  # samples an inherited student's channel statistics are matched on (recalibrate.py)


def make_space(teacher: torch.nn.Module, data: SearchData, cfg: SearchConfig, example) -> SearchSpace:
    if cfg.space == "derived":
        return derived_space(teacher, data.spec, example, cfg.seed, cfg.round_to)
    with torch.no_grad():
        outputs = first_output(teacher(*example)).shape[-1]
    return family_space(cfg.space, example, int(outputs), cfg.seed)


def teacher_at_init(teacher: torch.nn.Module, space: SearchSpace, data: SearchData, seed: int) -> torch.nn.Module:
    """The teacher's architecture at random initialisation (DisWOT compares networks at init)."""
    if space.name == "derived":
        return space.build(space.largest())  # the teacher's own graph, cut nowhere
    gm, _ = to_graph_module(teacher, data.spec)
    fold_batchnorm(gm)
    return reinitialise(gm, seed)


class CandidateEvaluator:
    """Costs of a spec's network, then (when feasible) its DisWOT similarities."""

    def __init__(self, space: SearchSpace, scorer: DiswotScorer, constraints: Constraints, example, per_sample: int):
        self.space, self.scorer, self.constraints, self.example = space, scorer, constraints, example
        self.per_sample = per_sample
        self.similarities: dict[str, Similarities] = {}

    def __call__(self, genes: dict) -> Candidate:
        module = as_graph(self.space.build(genes))
        cost, shapes = measure_graph(module, self.example)
        candidate = Candidate(self.space.spec(genes), float("-inf"), cost.macs // self.per_sample, cost.params,
                              self.constraints.latency_of(module, self.example, shapes), cost.peak_activation_bytes)
        candidate.feasible = self.constraints.feasible(candidate)
        if candidate.feasible:
            similarities = self.scorer(module, shapes)
            candidate.score = similarities.score
            self.similarities[spec_key(genes)] = similarities
        return candidate


def search(teacher: torch.nn.Module, data: SearchData, constraints: Constraints, cfg: SearchConfig,
           progress: Progress) -> SearchOutcome:
    with torch_threads(1):  # small networks, many ops: robust when the cores are shared (threads.py)
        return _search(teacher, data, constraints, cfg, progress)


def _search(teacher: torch.nn.Module, data: SearchData, constraints: Constraints, cfg: SearchConfig,
            progress: Progress) -> SearchOutcome:
    started = time.perf_counter()
    static = data.spec.static_batch
    example = data.example(static or 1)
    space = make_space(teacher, data, cfg, example)
    progress.log(f"  search space: {space.description}; {len(space.choices)} genes, {space.size():.3g} networks")
    inputs = data.samples(max(cfg.score_batch, static or 1))
    scorer = DiswotScorer(teacher_at_init(teacher, space, data, cfg.seed), inputs, example,
                          data.spec.task == "classification", static)
    evaluate = CandidateEvaluator(space, scorer, constraints, example, static or 1)

    smallest = evaluate(space.smallest())
    if not smallest.feasible:
        raise constraints.unreachable(smallest)
    settings = EvolutionSettings(cfg.population, cfg.generations, cfg.mutation, cfg.crossover, cfg.seed)
    prefer = preference(constraints, cfg.budget_use)
    result = evolve(space, evaluate, settings, progress, prefer)
    scored = result.scored + ([smallest] if smallest not in result.scored else [])
    chosen = choose(scored, constraints, cfg.budget_use)
    genes = chosen.spec["genes"]
    inherited = cfg.init == "teacher" and space.inherit is not None
    if inherited:
        student = space.inherit(genes, data.samples(static or RECALIBRATION_SAMPLES))
    else:
        student = normalise_activations(space.build(genes), inputs)
    if static:
        student = StaticBatchAdapter(student, static)
    seconds = time.perf_counter() - started
    details = {"space": space.description, "rejected_by_constraints": result.rejected, "generations": result.history}
    model = constraints.latency_model
    if model is not None and hasattr(model, "holdout_error") and cfg.latency_holdout:
        progress.log(f"  latency table: timing {cfg.latency_holdout} held-out candidates end to end")
        others = sorted(scored, key=lambda c: c.macs)
        picks = [chosen] + [others[round(i * (len(others) - 1) / max(1, cfg.latency_holdout - 1))]
                            for i in range(cfg.latency_holdout - 1)]
        modules = {f"candidate {i} ({c.macs / 1e6:.2f}M MACs)": space.build(c.spec["genes"]) for i, c in enumerate(picks)}
        details.update(model.holdout_error(modules, data.spec, example))

    notes = []
    if not scorer.semantic:
        notes.append("DisWOT used relation similarity only: the teacher has no classifier head (final Linear giving "
                     "class scores), so there are no class activation maps to compare")
    notes.append("the student starts from the teacher's weights of its kept channels, each channel's statistics "
                 "matched to the teacher's on real samples (search.init = \"teacher\")"
                 if inherited else "the student starts from random initialisation")
    parts = evaluate.similarities[spec_key(genes)]
    spec = {**chosen.spec, "semantic_distance": parts.semantic, "relation_distance": parts.relation,
            "init": "teacher" if inherited else "random"}
    outcome = SearchOutcome(student, spec, "diswot", "DisWOT score: -(semantic + relation distance to the teacher at "
                            "random initialisation)" if scorer.semantic else
                            "DisWOT score: -(relation distance to the teacher at random initialisation)",
                            scored, seconds, notes, details=details, chosen=chosen)
    return outcome
