"""`search(teacher, data, constraints, cfg, progress) -> SearchOutcome`: AutoDistil end to end, as
the search pass calls it for a BERT-family teacher.

    1. the sub-spaces asked for (cfg.subspaces), less those whose every subnet breaks a cost
       constraint (no supernet is trained for nothing); none left: a clear error naming the
       binding constraint and the smallest subnet's cost
    2. per sub-space, a supernet trained task-agnostically on the training text (train.py)
    3. every subnet scored on the validation text without retraining, costed, checked (select.py)
    4. the best feasible subnet over all sub-spaces extracted as a standalone student (extract.py)
"""
from __future__ import annotations

import time

from ...distill import TrainingData, training_split
from ...errors import CompressError
from ...progress import Progress
from ..outcome import Candidate, SearchOutcome
from .config import settings
from .cost import subnet_cost
from .extract import extract_subnet
from .latency import onnx_latency_ms
from .select import FidelityScorer, relation_heads, search_subnets, violations
from .space import SubnetSpec, candidates, subspaces
from .supernet import teacher_dims
from .train import train_supernet

SCORE_NAMES = {True: "mean cosine of the sentence embedding to the teacher's on held-out text",
               False: "minus the last layer's self-attention relation loss to the teacher on held-out text"}


def training_data(data, cfg) -> TrainingData:
    """The pass's data as TrainingData: a recipe's CalibrationData is split as every training pass
    splits it (compressor.distill.training_split); TrainingData is taken as it is."""
    if isinstance(data, TrainingData):
        return data
    return training_split(data, cfg, "search")


def search(teacher, data, constraints=None, cfg=None, progress: Progress | None = None) -> SearchOutcome:
    started = time.time()
    cfg, progress = settings(cfg), progress or Progress(quiet=True)
    dims, _ = teacher_dims(teacher)
    text = training_data(data, cfg)
    sequence = cfg.sequence or int(text.train[0].shape[1])
    notes = [f"MACs per sample at {sequence} tokens (encoder matmuls, transformer_cost)"]
    if dims.hidden_fixed:
        notes.append(f"hidden size kept at the teacher's {dims.hidden}: the encoder's output is its hidden state")

    spaces = []
    for space in subspaces(cfg.subspaces):
        specs = candidates(space, dims)
        if any(not violations(subnet_cost(teacher, s, sequence), constraints) for s in specs):
            spaces.append((space, specs))
        else:
            notes.append(f"sub-space '{space.name}' skipped: none of its subnets meets the constraints")
    if not spaces:
        _raise_infeasible(teacher, [s for space in subspaces(cfg.subspaces) for s in candidates(space, dims)],
                          constraints, sequence)

    measure = None
    if getattr(constraints, "latency_ms", None) is not None:
        measure = getattr(constraints, "latency_of", None)
        if measure is None:
            notes.append("latency measured live: onnxruntime on this CPU, 1 thread, batch 1")
            measure = lambda module: onnx_latency_ms(module, sequence)  # noqa: E731

    rows: list[Candidate] = []
    best = None
    for space, specs in spaces:
        supernet, _history = train_supernet(teacher, text, space, cfg, progress)
        latency = None if measure is None else (lambda spec, net=supernet: measure(extract_subnet(net, spec)))
        scorer = FidelityScorer(teacher, supernet, text.val, relation_heads(supernet, specs, cfg.relation_heads), cfg.batch)
        found = search_subnets(supernet, specs, scorer, constraints, sequence, progress, latency)
        for c in found:
            c.spec["subspace"] = space.name
        rows += found
        top = found[0]
        progress.log(f"  autodistil '{space.name}': best {SubnetSpec.from_json(top.spec).describe()}, score "
                     f"{top.score:.4f}, {top.macs:,} MACs ({'feasible' if top.feasible else 'none feasible'})")
        if top.feasible and (best is None or top.score > best[0].score):
            best = (top, supernet)
    if best is None:
        _raise_infeasible(teacher, [s for _, specs in spaces for s in specs], constraints, sequence)
    chosen, supernet = best
    student = extract_subnet(supernet, SubnetSpec.from_json(chosen.spec))
    embedding = getattr(teacher, "task", "embedding") != "classification"
    return SearchOutcome(student=student, spec={**chosen.spec, "macs": chosen.macs, "params": chosen.params,
                                                      "latency_ms": chosen.latency_ms},
                         method="autodistil", score_name=SCORE_NAMES[embedding],
                         candidates=sorted(rows, key=lambda c: c.macs), seconds=time.time() - started, notes=notes,
                         chosen=chosen)


def _raise_infeasible(teacher, specs, constraints, sequence: int) -> None:
    smallest = min(specs, key=lambda s: subnet_cost(teacher, s, sequence)["macs"])
    cost = subnet_cost(teacher, smallest, sequence)
    broken = violations(cost, constraints) or ["latency"]
    raise CompressError(f"no AutoDistil subnet meets the constraints: the smallest ({smallest.describe()}) has "
                        f"{'; '.join(broken)} (params {cost['params']:,}, MACs {cost['macs']:,} at {sequence} tokens)")
