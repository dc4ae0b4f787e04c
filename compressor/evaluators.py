"""Task metrics, shared by the passes and by verification.

An evaluator scores a model's outputs on the held-out samples, given the teacher's outputs on
the same samples and the labels when the calibration recipe has them. The first key of the
returned dict is the headline metric ("metric"), higher is better.
"""
from __future__ import annotations

import importlib
from typing import Callable

import numpy as np

from .errors import CompressError

Evaluator = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], dict[str, float]]


def top1(outputs: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """Top-1 accuracy against the labels, or agreement with the teacher when there are none."""
    pred = outputs.argmax(axis=-1)
    agreement = float((pred == teacher.argmax(axis=-1)).mean())
    if labels is None:
        return {"metric": agreement, "top1_agreement": agreement}
    return {"metric": float((pred == labels).mean()), "top1_agreement": agreement}


def cosine(outputs: np.ndarray, teacher: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """Mean cosine of embeddings to the teacher's, and rank-1 retrieval agreement between them."""
    a = _normalize(outputs.reshape(len(outputs), -1))
    b = _normalize(teacher.reshape(len(teacher), -1))
    cos = (a * b).sum(axis=1)
    return {"metric": float(cos.mean()), "cosine_min": float(cos.min()), "retrieval_agreement": retrieval_agreement(a, b)}


def retrieval_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of samples whose nearest other sample is the same under both embeddings."""
    if len(a) < 3:
        return 1.0
    sim_a, sim_b = a @ a.T, b @ b.T
    np.fill_diagonal(sim_a, -np.inf)
    np.fill_diagonal(sim_b, -np.inf)
    return float((sim_a.argmax(axis=1) == sim_b.argmax(axis=1)).mean())


def _normalize(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


EVALUATORS: dict[str, Evaluator] = {"top1": top1, "cosine": cosine}
DEFAULT_FOR_TASK = {"classification": "top1", "embedding": "cosine", "regression": "cosine"}


def get_evaluator(name: str | None, task: str) -> tuple[str, Evaluator]:
    """By name, by 'package.module:function' for a user callable, or the task's default."""
    name = name or DEFAULT_FOR_TASK[task]
    if name in EVALUATORS:
        return name, EVALUATORS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise CompressError(f"--metric {name}: cannot import: {e}") from None
        return name, _user_metric(fn, name)
    raise CompressError(f"unknown metric '{name}'; known: {', '.join(EVALUATORS)} or package.module:function")


def _user_metric(fn: Callable, name: str) -> Evaluator:
    def evaluate(outputs, teacher, labels):
        value = fn(outputs, teacher, labels)
        try:
            return {"metric": float(value)}
        except (TypeError, ValueError):
            raise CompressError(f"metric {name} returned {type(value).__name__}; expected a number") from None
    return evaluate
