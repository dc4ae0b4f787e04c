"""The QNN profiler: context models timed here on the HTP backend (the simulator on x86), and per
layer from the QNN EP's own profiler, which counts cycles per HTP op.

A layer's "ms" is its share of the op cycles times the measured time per call: the simulator's
cycles are not a phone's, so the table is where the HTP spends its work, labelled as simulated
(timing_note), never device time. Runs here only: the device is the phone, not an SSH host."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..backends.qnn.profiling import profile_nodes
from .devices import Device
from .profiler import Settings
from .runner_profiler import RunnerProfiler

# the simulator's cycle counts repeat exactly from run to run; a call takes 0.3-10 s there
PER_LAYER_RUNS = 3


def _op(node: str) -> str:
    """The op type in a QNN node name ("/conv1/Conv_token_7" -> "Conv")."""
    return node.rsplit("/", 1)[-1].split("_", 1)[0] or node


class QnnProfiler(RunnerProfiler):
    def __init__(self):
        from ..backends.qnn.backend import BACKEND

        super().__init__(BACKEND)

    def profile(self, engines: list[Path], settings: Settings, device: Device) -> dict:
        result, engine_inputs = self.timed(engines, settings, device)
        if settings.per_layer_runs:
            for entry, path, inputs in zip(result["engines"], engines, engine_inputs):
                nodes = profile_nodes(path, [np.asarray(a) for a in inputs],
                                      runs=min(settings.per_layer_runs, PER_LAYER_RUNS))
                per_call = float(np.median(entry["times_ms"]))
                entry["layers"] = [{"name": r["node"], "op": _op(r["node"]), "ms": per_call * r["share"],
                                    "cycles": r["cycles"]} for r in nodes["nodes"]]
            result["timing_note"] = ("QNN HTP simulator on x86, not device speed: per-layer times are each op's "
                                     "share of the simulator's cycles times the measured time per call")
        return result


PROFILER = QnnProfiler()
