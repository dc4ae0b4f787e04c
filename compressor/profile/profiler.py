"""What a backend's profiler does, and the settings of one profiling run.

A backend names its profiler (`Backend.profiler()`); the profiler runs one or more engines of its
kind on a device (profile.devices) and returns the raw measurements, which `profile.engine` turns
into statistics, a table, JSON and a chart:

    {"engines": [{"engine": name, "times_ms": [...], "layers": [{"name", "op", "ms", ...}],
                  "input_shapes": [...], ...}],
     "host": ..., "pid": ..., "runtime": ..., "peak_rss_bytes": ...}

"times_ms" are the per-call times in the order taken (engines alternately, A B A B ...); "layers"
are in execution order, each with its mean time per call ("ms") and, where the device counts them,
"instructions". "host" and "pid" are the measuring process's, so a caller can tell where the numbers
were taken.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CompressError
from .devices import Device, Job


@dataclass
class Settings:
    runs: int = 200
    warmup: int = 20
    threads: int = 1
    per_layer_runs: int = 0  # 0: no per-layer breakdown
    inputs: list[np.ndarray] | None = None  # one sample per engine input (batch first); None: example inputs


class EngineProfiler:
    """One engine kind's measurements. `outputs` runs an engine on a batch on the device (for
    parity checks there); a profiler without it cannot verify on a device."""

    kind = ""
    emulates = False  # runs builds for another ISA under the host's emulator (--device qemu)

    def profile(self, engines: list[Path], settings: Settings, device: Device) -> dict:
        raise NotImplementedError

    def check(self, device: Device) -> None:
        """Raise now where `device` lacks what this profiler runs engines with (before minutes of work)."""

    def outputs(self, engine: Path, arrays: list[np.ndarray], device: Device,
                batch: int = 64) -> tuple[np.ndarray, dict]:
        """The engine's first output over the batch `arrays`, and the measuring process's host and pid."""
        raise CompressError(f"the {self.kind} profiler cannot run an engine on {device.label}")


def job_names(engines: list[Path]) -> list[str]:
    """Each engine's file name in the job folder (the position first: two engines may share a name)."""
    return [f"e{i}_{Path(e).name}" for i, e in enumerate(engines)]


DEVICE_JOB = Path(__file__).parent / "scripts" / "device_job.py"  # what every device script imports


def json_job(device: Device, script: Path, request: dict, files: dict[str, Path], fetch: tuple[str, ...] = (),
             needs: str = "") -> tuple[dict, dict[str, bytes]]:
    """Run a device script as `{python} SCRIPT request.json result.json` with `files`; its result
    and the fetched files."""
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp, "request.json")
        req.write_text(json.dumps(request))
        job = Job(files={script.name: script, DEVICE_JOB.name: DEVICE_JOB, "request.json": req, **files},
                  argv=["{python}", script.name, "request.json", "result.json"], fetch=["result.json", *fetch],
                  needs=needs)
        done = device.run(job)
    if "result.json" not in done.files:
        raise CompressError(f"{device.label}: the profiler wrote no result ({done.stderr.strip()[-300:]})")
    return json.loads(done.files.pop("result.json")), done.files
