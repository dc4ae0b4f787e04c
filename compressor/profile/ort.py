"""onnxruntime's profiler: ONNX engines run by scripts/ort_device.py, here or on a device, with
per-node times from onnxruntime's own profiler."""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np

from .devices import Device
from .profiler import EngineProfiler, Settings, job_names, json_job

SCRIPT = Path(__file__).parent / "scripts" / "ort_device.py"
NEEDS = "Python 3 with numpy and onnxruntime (pip install numpy onnxruntime)"


def _inputs_file(tmp: str, arrays: list[np.ndarray]) -> Path:
    path = Path(tmp, "inputs.npz")
    np.savez(path, **{f"x{i}": np.asarray(a) for i, a in enumerate(arrays)})
    return path


class OrtProfiler(EngineProfiler):
    kind = "onnxruntime"

    def profile(self, engines: list[Path], settings: Settings, device: Device) -> dict:
        names = job_names(engines)
        request = {"mode": "profile", "engines": names, "threads": settings.threads, "runs": settings.runs,
                   "warmup": settings.warmup, "per_layer_runs": settings.per_layer_runs}
        with tempfile.TemporaryDirectory() as tmp:
            files = dict(zip(names, map(Path, engines)))
            if settings.inputs is not None:
                files["inputs.npz"] = _inputs_file(tmp, settings.inputs)
                request["inputs"] = "inputs.npz"
            result, _ = json_job(device, SCRIPT, request, files, needs=NEEDS)
        for entry, path in zip(result["engines"], engines):
            entry["engine"] = str(path)
        return result

    def check(self, device: Device) -> None:
        if device.remote:
            json_job(device, SCRIPT, {"mode": "check"}, {}, needs=NEEDS)

    def outputs(self, engine: Path, arrays: list[np.ndarray], device: Device, batch: int = 64) -> tuple[np.ndarray, dict]:
        name = job_names([engine])[0]
        request = {"mode": "outputs", "engines": [name], "inputs": "inputs.npz", "outputs": "outputs.npz",
                   "batch": batch}
        with tempfile.TemporaryDirectory() as tmp:
            files = {name: Path(engine), "inputs.npz": _inputs_file(tmp, arrays)}
            result, fetched = json_job(device, SCRIPT, request, files, fetch=("outputs.npz",), needs=NEEDS)
        with np.load(io.BytesIO(fetched["outputs.npz"])) as data:
            return data["y"], result


PROFILER = OrtProfiler()
