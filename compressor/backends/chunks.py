"""Feeding a batch to an engine in chunks of its own batch size. Standard library and numpy only:
the TensorRT runner that imports it is also copied to devices without compressor installed."""
from __future__ import annotations

import numpy as np


def run_in_chunks(fn, arrays: tuple[np.ndarray, ...], batch: int) -> np.ndarray:
    outs = []
    n = arrays[0].shape[0]
    for start in range(0, n, batch):
        chunk = [a[start:start + batch] for a in arrays]
        short = batch - chunk[0].shape[0]
        if short:  # pad the last chunk by repeating its last sample
            chunk = [np.concatenate([c, np.repeat(c[-1:], short, axis=0)]) for c in chunk]
        outs.append(fn(*chunk)[: batch - short])
    return np.concatenate(outs)
