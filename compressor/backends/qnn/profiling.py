"""Per-node HTP profiling of a context model: the QNN EP's own profiler (provider options
`profiling_level = detailed`, `profiling_file_path`), which the HTP backend fills with cycles per
op per execution. On x86 these are the simulator's cycle counts, not a phone's measured time.

    rows = profile_nodes(run_dir / "qnn" / "model_ctx.onnx", [x], runs=3)
    # [{"node": "/Conv_1_token_7", "op_id": 36, "cycles": 1622492, "share": 0.05}, ...] (median over runs)
"""
from __future__ import annotations

import csv
import statistics
import tempfile
from pathlib import Path

import numpy as np

from .runner import QnnRunner
from .runtime import HtpOptions

TOTAL = "Accelerator (execute) time (cycles)"


def parse_profile(path: Path) -> tuple[list[dict], list[int]]:
    """(node rows in execution order, median cycles over the runs; the total cycles of each run)."""
    per_node: dict[str, list[int]] = {}
    totals = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            event = row["Event Identifier"]
            if row["Unit of Measurement"] != "CYCLES":
                continue
            if event == TOTAL:
                totals.append(int(row["Time"]))
            elif row["Message"] == "NODE":
                per_node.setdefault(event.removesuffix(" (cycles)"), []).append(int(row["Time"]))
    rows = []
    for event, cycles in per_node.items():
        name, _, op_id = event.rpartition(":OpId_")
        rows.append({"node": name or event, "op_id": int(op_id) if op_id.isdigit() else None,
                     "cycles": int(statistics.median(cycles))})
    return rows, totals


def profile_nodes(context_model: Path, inputs: list[np.ndarray], runs: int = 3) -> dict:
    """Run the context model `runs` times on the HTP backend with detailed profiling; per-node cycles
    (median over the runs) and each node's share of the summed node cycles."""
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "qnn_profile.csv"
        runner = QnnRunner(context_model, HtpOptions(profiling={"profiling_level": "detailed",
                                                                "profiling_file_path": str(csv_path)}))
        for _ in range(runs):
            runner.run_batch(*inputs)
        del runner  # the EP writes the file when the session ends
        rows, totals = parse_profile(csv_path)
    summed = sum(r["cycles"] for r in rows) or 1
    for r in rows:
        r["share"] = r["cycles"] / summed
    return {"source": "QNN HTP simulator on x86 (cycles as the simulator counts them, not device time)",
            "runs": runs, "execute_cycles": int(statistics.median(totals)) if totals else None, "nodes": rows}
