"""Torch's intra-op thread count for a stretch of work, restored afterwards."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(count: int):
    """Many small ops (networks of a few MMACs at a batch of 32) gain nothing from a second thread
    and lose much when the cores are shared: OpenMP's threads spin at every op's barrier while
    another process holds the core. Scoring the MNIST sample's 61 search candidates took 7.0 s on
    one thread and 48.7 s on two at load average 3 (2 cores)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
