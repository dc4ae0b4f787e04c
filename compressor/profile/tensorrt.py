"""TensorRT's per-layer profiler. A plan runs only with the TensorRT release and GPU it was built on, so
the profiler takes a plan built on the device, or the run folder's recipe (build_config.json and the
QDQ ONNX it names), which scripts/trt_device.py builds on the device before it times the engine; each
layer's time comes from an IProfiler the execution context reports to."""
from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np

from ..backends import chunks
from ..backends.tensorrt import device_build, runner
from ..backends.tensorrt.scripts import is_recipe
from ..artifacts import write_atomic
from ..errors import CompressError
from .devices import Device
from .profiler import EngineProfiler, Settings, job_names, json_job

SCRIPT = Path(__file__).parent / "scripts" / "trt_device.py"
NEEDS = "Python 3 with numpy, tensorrt (JetPack: python3-libnvinfer) and cuda-python"
# what the device script imports, under the names it imports them by
SUPPORT = {"build_engine.py": Path(device_build.__file__), "trt_runner.py": Path(runner.__file__),
           "chunks.py": Path(chunks.__file__)}


def _recipe_files(config_path: Path, folder: str, tmp: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """The recipe and what it names, under `folder` in the job: the ONNX and the timing cache (which
    makes a rebuild faster) beside the config, whose paths are rewritten to match; and where the
    timing cache the device leaves comes back to."""
    try:
        config = json.loads(config_path.read_text())
        onnx_path = (config_path.parent / config["onnx"]).resolve()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CompressError(f"{config_path}: not a TensorRT build recipe ({e})") from None
    if not onnx_path.exists():
        raise CompressError(f"{config_path}: the ONNX it builds from, {onnx_path}, is missing")
    files = {f"{folder}/{onnx_path.name}": onnx_path}
    back = {}
    if config.get("timing_cache"):
        cache = config_path.parent / config["timing_cache"]
        config["timing_cache"] = cache.name
        back[f"{folder}/{cache.name}"] = cache
        if cache.is_file():
            files[f"{folder}/{cache.name}"] = cache
    config["onnx"] = onnx_path.name
    rewritten = tmp / f"{folder}_{device_build.CONFIG_NAME}"
    rewritten.write_text(json.dumps(config))
    return {f"{folder}/{device_build.CONFIG_NAME}": rewritten, **files}, back


def _job(engines: list[Path], tmp: Path) -> tuple[list[dict], dict[str, Path], dict[str, Path]]:
    """The request's engine entries, the job's files, and the timing caches to bring back (job name -> here)."""
    entries, files, back = [], dict(SUPPORT), {}
    for name, path in zip(job_names(engines), engines):
        if is_recipe(path):
            folder = name.split("_", 1)[0]
            recipe, caches = _recipe_files(Path(path), folder, tmp)
            files.update(recipe)
            back.update(caches)
            entries.append({"recipe": f"{folder}/{device_build.CONFIG_NAME}"})
        else:
            files[name] = Path(path)
            entries.append({"plan": name})
    return entries, files, back


def _keep_caches(fetched: dict[str, bytes], back: dict[str, Path]) -> None:
    """The device's timing caches beside their recipes, so the next build there is faster."""
    for name, path in back.items():
        if name in fetched:
            write_atomic(path, fetched[name])


def _inputs_file(tmp: Path, arrays: list[np.ndarray]) -> Path:
    path = tmp / "inputs.npz"
    np.savez(path, **{f"x{i}": np.asarray(a) for i, a in enumerate(arrays)})
    return path


class TensorRTProfiler(EngineProfiler):
    kind = "tensorrt"

    def profile(self, engines: list[Path], settings: Settings, device: Device) -> dict:
        if device.emulated:
            raise CompressError("a TensorRT engine runs on an NVIDIA GPU: profile it here or on the device "
                                "(--device ssh://...)")
        with tempfile.TemporaryDirectory() as tmp:
            entries, files, back = _job(engines, Path(tmp))
            request = {"mode": "profile", "engines": entries, "runs": settings.runs, "warmup": settings.warmup,
                       "per_layer_runs": settings.per_layer_runs}
            if settings.inputs is not None:
                files["inputs.npz"] = _inputs_file(Path(tmp), settings.inputs)
                request["inputs"] = "inputs.npz"
            result, fetched = json_job(device, SCRIPT, request, files, fetch=tuple(back), needs=NEEDS)
        _keep_caches(fetched, back)
        for entry, path in zip(result["engines"], engines):
            entry["engine"] = str(path)
        return result

    def check(self, device: Device) -> None:
        if device.remote:
            json_job(device, SCRIPT, {"mode": "check"}, dict(SUPPORT), needs=NEEDS)

    def outputs(self, engine: Path, arrays: list[np.ndarray], device: Device, batch: int = 64) -> tuple[np.ndarray, dict]:
        with tempfile.TemporaryDirectory() as tmp:
            entries, files, back = _job([engine], Path(tmp))
            files["inputs.npz"] = _inputs_file(Path(tmp), arrays)
            request = {"mode": "outputs", "engines": entries, "inputs": "inputs.npz", "outputs": "outputs.npz"}
            result, fetched = json_job(device, SCRIPT, request, files, fetch=("outputs.npz", *back), needs=NEEDS)
        _keep_caches(fetched, back)
        with np.load(io.BytesIO(fetched["outputs.npz"])) as data:
            return data["y"], result


PROFILER = TensorRTProfiler()
