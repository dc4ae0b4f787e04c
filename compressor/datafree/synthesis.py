"""Choose a synthesis method for the model, and make (or reload) its calibration and held-out inputs.

Samples are made one batch at a time, each batch from its own seed, and every finished batch is
written to the run directory (`datafree/<key>/batch-NNNN.pt`, atomically), so a killed run
resumes with the batches it has, and `--resume` of a finished run reuses them all. The key hashes
the model, the method and the options: anything else makes new samples. The first
`calibration_samples` feed calibration and training; the rest, made the same way from other
seeds, are held out for verification.
"""
from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..artifacts import Artifact, sha256_json, sha256_tensor, write_atomic
from ..calibration import CalibrationData
from ..errors import CompressError
from ..progress import Progress
from .bn_statistics import BatchNormSynthesizer
from .input_range import InputRangeSynthesizer
from .source import SYNTHETIC
from .vocabulary import VocabularySynthesizer

# tried in order, the first whose `prepare` gives a synthesizer wins (input-range always does)
METHODS = (BatchNormSynthesizer, VocabularySynthesizer, InputRangeSynthesizer)


@dataclass(frozen=True)
class DataFreeConfig:
    calibration_samples: int = 256
    holdout_samples: int = 256
    batch: int = 64  # samples optimised together: BatchNorm statistics are batch statistics
    iterations: int = 30  # Adam steps per batch (bn-statistics)
    lr: float = 0.25
    tv_weight: float = 1e-3  # input prior: total variation of image inputs ...
    l2_weight: float = 1e-4  # ... and their mean square
    class_weight: float = 0.1  # cross-entropy to the dealt target classes (classifiers)
    seed: int = 0

    def __post_init__(self):
        if min(self.calibration_samples, self.holdout_samples, self.batch) < 1 or self.iterations < 0 or self.lr <= 0:
            raise CompressError("data-free synthesis: sample counts and batch must be >= 1, iterations >= 0, lr > 0")


def choose_method(reference: Artifact, model_path: Path | None, cfg: DataFreeConfig | None = None):
    """The first method of METHODS that applies to the model, prepared to make batches."""
    cfg = cfg or DataFreeConfig()
    for method in METHODS:
        synthesizer = method.prepare(reference.module, reference.spec, model_path, cfg)
        if synthesizer is not None:
            return synthesizer
    raise AssertionError("input-range applies to every model")


def synthesize(reference: Artifact, run_dir: Path, progress: Progress, model_path: Path | None = None,
               cfg: DataFreeConfig | None = None, synthesizer=None) -> CalibrationData:
    cfg = cfg or DataFreeConfig()
    synthesizer = synthesizer or choose_method(reference, model_path, cfg)
    key = sha256_json({"model": reference.fingerprint, "method": synthesizer.name, "config": asdict(cfg)})
    folder = run_dir / "datafree" / key[:16]
    sizes = _batch_sizes(cfg)
    cached = {i: _load(folder / f"batch-{i:04d}.pt") for i in range(len(sizes))}
    todo = [i for i, batch in cached.items() if batch is None]
    if todo:
        progress.log(f"data-free calibration ({synthesizer.name}): making {sum(sizes[i] for i in todo)} samples"
                     + (f", {len(sizes) - len(todo)} batches cached" if len(todo) < len(sizes) else ""))
    bar = progress.bar(range(len(todo) * synthesizer.steps_per_batch), desc=f"synthesize ({synthesizer.name})")
    for i in todo:
        started = time.perf_counter()
        tensors, info = synthesizer.batch(sizes[i], cfg.seed * 1_000_003 + i, lambda: bar.update(1))
        cached[i] = {"tensors": tensors, "info": info, "seconds": time.perf_counter() - started}
        _save(folder / f"batch-{i:04d}.pt", cached[i])
    bar.close()
    return _calibration_data(synthesizer, key, cfg, [cached[i] for i in range(len(sizes))])


def _batch_sizes(cfg: DataFreeConfig) -> list[int]:
    """Calibration batches, then held-out batches (no batch mixes the two)."""
    sizes = []
    for total in (cfg.calibration_samples, cfg.holdout_samples):
        sizes += [min(cfg.batch, total - start) for start in range(0, total, cfg.batch)]
    return sizes


def _calibration_data(synthesizer, key: str, cfg: DataFreeConfig, batches: list[dict]) -> CalibrationData:
    n_calib = -(-cfg.calibration_samples // cfg.batch)
    calib = tuple(torch.cat(parts) for parts in zip(*(b["tensors"] for b in batches[:n_calib])))
    holdout = tuple(torch.cat(parts) for parts in zip(*(b["tensors"] for b in batches[n_calib:])))
    digest = [sha256_tensor(t) for t in (*calib, *holdout)]
    extras: dict[str, Any] = {"data_source": SYNTHETIC, "method": synthesizer.name,
                              "description": synthesizer.description,
                              "synthesis_seconds": sum(b["seconds"] for b in batches), "options": asdict(cfg)}
    infos = [b["info"] for b in batches]
    for stat in ("bn_mismatch", "bn_mismatch_at_start"):  # the sample-weighted mean over batches
        if all(stat in i for i in infos):
            extras[stat] = sum(i[stat] * b["tensors"][0].shape[0] for i, b in zip(infos, batches)) / sum(
                b["tensors"][0].shape[0] for b in batches)
    if all("texts" in i for i in infos):
        extras["holdout_texts"] = [t for i in infos[n_calib:] for t in i["texts"]]
    return CalibrationData(f"data-free ({synthesizer.name})", calib, holdout, None,
                           sha256_json({"datafree": key, "digest": digest}), extras)


def _save(path: Path, batch: dict) -> None:
    buffer = io.BytesIO()
    torch.save(batch, buffer)
    write_atomic(path, buffer.getvalue())


def _load(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - missing, or damaged by a kill: made again
        return None
