"""What data a run used, as report fields and in words: real (a `--calib` recipe or file),
synthetic (made by this package from the model) or random (plain random inputs, for pipelines
that only export and verify)."""
from __future__ import annotations

from typing import Any

from ..calibration import CalibrationData

REAL, SYNTHETIC, RANDOM = "real", "synthetic", "random"
_REPORTED = ("method", "description", "synthesis_seconds", "bn_mismatch", "bn_mismatch_at_start")


def data_source(data: CalibrationData) -> dict[str, Any]:
    source = data.extras.get("data_source", REAL)
    fields = {"data_source": source}
    if source == SYNTHETIC:
        fields.update({k: data.extras[k] for k in _REPORTED if k in data.extras})
    return fields


def data_source_words(data: CalibrationData) -> str:
    """One sentence for the summary and report.md: where the inputs came from, and what that leaves unmeasured."""
    source = data.extras.get("data_source", REAL)
    if source == SYNTHETIC:
        return (f"data-free: no real data was used; calibration, fine-tuning and verification ran on inputs "
                f"synthesised from the model ({data.extras['method']}: {data.extras['description']}). The engine's "
                f"agreement with the teacher was measured on {data.num_holdout} held-out synthetic inputs; its "
                f"accuracy on real inputs is unmeasured (give --calib with real data to measure it)")
    if source == RANDOM:
        return ("no --calib given: no real data was used; verified on random inputs, so the task metric compares "
                "with the teacher only and accuracy on real inputs is unmeasured")
    return f"calibrated and verified on real data ({data.recipe})"
