"""Training checkpoints: a dict of tensors and plain values written atomically with torch.save and
read back with weights_only=True (the run directory is ours, but a checkpoint never needs code)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from .artifacts import write_atomic


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path | None) -> dict[str, Any] | None:
    """The saved state, or None where there is none to resume from."""
    if path is None or not path.is_file():
        return None
    return torch.load(path, weights_only=True)
