"""A per-layer latency table on the target's own runner: every conv and linear shape a candidate
has (kind, channels, kernel, stride, groups, input size) is timed once as a one-layer ONNX graph,
1 thread, batch 1, and kept in a table on disk keyed by the target's name and the runtime's
version (a table of another target or runtime version is rebuilt, never reused). A candidate's
predicted latency is the sum of its layers' entries plus the teacher's measured remainder (what its
non-weighted ops and the session cost: measured end to end minus its layers' sum).

The search pass reports the table's prediction error against end-to-end measurements of a few
held-out candidates (search.latency_holdout)."""
from __future__ import annotations

import json
import os
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn

from ..artifacts import write_atomic
from ..prune.cnn_groups import CONVS, concrete_shapes
from ..prune.latency_model import host_runner, onnx_latency
from ..profile.latency import measure
from .cost import as_graph

aten = torch.ops.aten
RUNS = 30


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESSOR_CACHE", Path.home() / ".cache" / "compressor")) / "latency"


def layer_signatures(gm: fx.GraphModule, shapes: dict) -> list[tuple]:
    """("conv", cin, cout, kh, kw, stride, pad, groups, h, w) / ("linear", in, out) per weighted layer."""
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in CONVS:
            x, w = shapes.get(node.args[0]), shapes.get(node.args[1])
            if x is None or w is None or len(w) != 4:
                continue
            args = list(node.args) + [None] * 9
            stride, padding = args[3] or [1, 1], args[4] or [0, 0]
            groups = args[8] if node.target == aten.convolution.default else args[6]
            out.append(("conv", x[1], w[0], w[2], w[3], int(stride[0]), int(padding[0]), int(groups or 1), x[2], x[3]))
        elif node.op == "call_function" and node.target == aten.linear.default:
            x, w = shapes.get(node.args[0]), shapes.get(node.args[1])
            if x is not None and w is not None and len(x) == 2:
                out.append(("linear", w[1], w[0]))
        elif node.op == "call_module":
            m = gm.get_submodule(node.target)
            x = shapes.get(node.args[0])
            if isinstance(m, nn.Conv2d) and x is not None:
                out.append(("conv", m.in_channels, m.out_channels, *m.kernel_size, m.stride[0], int(m.padding[0]),
                            m.groups, x[2], x[3]))
            elif isinstance(m, nn.Linear):
                out.append(("linear", m.in_features, m.out_features))
    return out


def layer_onnx(signature: tuple, path: Path) -> None:
    """A one-layer ONNX graph of the signature, random weights (time does not depend on values)."""
    rng = np.random.default_rng(0)
    if signature[0] == "conv":
        _, cin, cout, kh, kw, stride, pad, groups, h, w = signature
        weight = rng.standard_normal((cout, cin // groups, kh, kw)).astype(np.float32)
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[stride, stride], pads=[pad] * 4, group=groups,
                                kernel_shape=[kh, kw])
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w])
    else:
        _, fin, cout = signature
        weight = rng.standard_normal((cout, fin)).astype(np.float32)
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, fin])
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.zeros(cout, np.float32), "b")]
    graph = helper.make_graph([node], "layer", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # what every runtime here reads
    onnx.save(model, str(path))


class LatencyTable:
    def __init__(self, target: str, runtime: str, version: str, make_runner, path: Path):
        self.target, self.runtime, self.version = target, runtime, version
        self.make_runner, self.path = make_runner, path
        self.entries: dict[str, float] = {}
        self.cached = False
        self.measured = 0  # entries timed in this run
        self.rebuilt_because: str | None = None
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if data.get("target") != self.target or data.get("runtime_version") != self.version:
            self.rebuilt_because = (f"the table on disk is for target {data.get('target')} / runtime "
                                    f"{data.get('runtime_version')}")
            return
        self.entries = {k: float(v) for k, v in data.get("entries", {}).items()}
        self.cached = bool(self.entries)

    def save(self) -> None:
        write_atomic(self.path, json.dumps({"target": self.target, "runtime": self.runtime, "runtime_version": self.version,
                                            "entries": self.entries}, indent=1) + "\n")

    def lookup(self, signatures: list[tuple]) -> list[float]:
        """Each signature's ms, timing the ones not in the table yet (side by side, then saved)."""
        missing = sorted({json.dumps(s) for s in signatures} - set(self.entries))
        if missing:
            with tempfile.TemporaryDirectory() as tmp:
                calls = {}
                for i, key in enumerate(missing):
                    path = Path(tmp) / f"{i}.onnx"
                    layer_onnx(tuple(json.loads(key)), path)
                    runner = self.make_runner(path, 1)
                    shape = [1, *json.loads(key)[1:2]] + (list(json.loads(key)[8:10]) if json.loads(key)[0] == "conv" else [])
                    x = np.random.default_rng(0).random(shape, dtype=np.float32)
                    calls[key] = (lambda r, x: lambda: r(x))(runner, x)
                timings = measure(calls, runs=RUNS, warmup=3)
            self.entries.update({k: t["median_ms"] for k, t in timings.items()})
            self.measured += len(missing)
            self.save()
        return [self.entries[json.dumps(s)] for s in signatures]


class TableLatencyModel:
    """Predicts a module's latency (ms) from the table plus the teacher's measured remainder."""

    def __init__(self, table: LatencyTable, teacher_ms: float, teacher_layers_ms: float):
        self.table, self.teacher_ms = table, teacher_ms
        self.remainder_ms = max(0.0, teacher_ms - teacher_layers_ms)
        self.runtime = table.runtime

    def predict(self, module: nn.Module, example, shapes: dict | None = None) -> float:
        gm = as_graph(module)
        shapes = shapes if shapes is not None else concrete_shapes(gm, example)
        return self.remainder_ms + sum(self.table.lookup(layer_signatures(gm, shapes)))

    def predict_teacher(self) -> float:
        return self.teacher_ms

    def holdout_error(self, modules: dict[str, nn.Module], spec, example) -> dict:
        """Predicted against measured end-to-end latency (FP32 ONNX on the same runner, 1 thread,
        side by side) of held-out candidates."""
        from ..export.onnx_export import export_onnx

        arrays = tuple(x.numpy() for x in example)
        with tempfile.TemporaryDirectory() as tmp:
            calls = {}
            for i, (name, module) in enumerate(modules.items()):
                path = Path(tmp) / f"{i}.onnx"
                export_onnx(module, spec, path)
                calls[name] = (lambda r: lambda: r(*arrays))(self.table.make_runner(path, 1))
            measured = measure(calls, runs=RUNS * 2, warmup=5)
        rows = []
        for name, module in modules.items():
            predicted, real = self.predict(module, example), measured[name]["median_ms"]
            rows.append({"candidate": name, "predicted_ms": predicted, "measured_ms": real,
                         "relative_error": abs(predicted - real) / real})
        errors = [r["relative_error"] for r in rows]
        return {"holdout": rows, "holdout_error": {"mean": float(np.mean(errors)), "max": float(np.max(errors))}
                if rows else None}


def runtime_version(label: str) -> str:
    try:
        return f"onnxruntime {metadata.version('onnxruntime')}"
    except metadata.PackageNotFoundError:
        return label


def target_latency_model(teacher: nn.Module, data, ctx, example, version: str | None = None) -> tuple[TableLatencyModel, dict]:
    """The target's latency table (loaded, or rebuilt for this target and runtime version) and the
    teacher measured end to end on the same runner."""
    from ..capture import to_graph_module

    make_runner, label = host_runner(ctx)
    version = version or runtime_version(label)
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{ctx.target.name}-{version}")
    table = LatencyTable(ctx.target.name, label, version, make_runner, cache_dir() / f"{name}.json")
    measured, _ = onnx_latency({"teacher": teacher}, data.spec, example, ctx)
    gm = to_graph_module(teacher, data.spec)[0]
    layers = sum(table.lookup(layer_signatures(gm, concrete_shapes(gm, example))))
    model = TableLatencyModel(table, measured["teacher"], layers)
    info = {"runtime": label, "runtime_version": version, "path": str(table.path), "cached": table.cached,
            "rebuilt_because": table.rebuilt_because, "teacher_ms": measured["teacher"],
            "teacher_layers_ms": layers, "remainder_ms": model.remainder_ms}
    return model, info


