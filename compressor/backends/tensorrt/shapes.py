"""Optimization-profile shapes (min / opt / max per input) from the ONNX graph and the target profile.

A dynamic dimension takes its range from the profile's [tensorrt] table:
1. `dims.<name>` when the profile names the dimension (e.g. `dims = { height = [224, 320, 640] }`);
2. `batch` / `sequence` when the dimension is called so (the exporter names them that way);
3. otherwise by position: axis 0 is the batch, axis 1 of a rank-2 input (token ids) the sequence.
A dynamic dimension with no range is a lint violation and a CompressError when writing the scripts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import onnx

from ...errors import CompressError
from ...targets import TargetProfile

Dim = int | str | None


@dataclass(frozen=True)
class MissingRange:
    input: str
    axis: int
    dim: str  # the dimension's name in the graph, or "?" when it has none


@dataclass(frozen=True)
class ShapeProfile:
    """min / opt / max shapes per input; `dynamic` is False when every input is static."""

    shapes: dict[str, dict[str, tuple[int, ...]]]
    dynamic: bool


def graph_input_dims(model: onnx.ModelProto) -> dict[str, list[Dim] | None]:
    """Input name -> dims (int static, str named dynamic, None unnamed dynamic); None when rank is unknown."""
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, list[Dim] | None] = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        tt = value.type.tensor_type
        if not tt.HasField("shape"):
            out[value.name] = None
            continue
        dims: list[Dim] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        out[value.name] = dims
    return out


def _merge(name: str, graph_dims: list[Dim] | None, given: tuple | None) -> list[Dim]:
    """The graph decides which dims are dynamic; `given` (the caller's input spec) fills unknown ranks."""
    if graph_dims is None:
        if given is None:
            raise CompressError(f"input '{name}' has no shape in the ONNX graph and none was given")
        return [d if isinstance(d, int) or d is None else str(d) for d in given]
    if given is not None:
        if len(given) != len(graph_dims):
            raise CompressError(f"input '{name}': the given shape {tuple(given)} has rank {len(given)}, "
                                f"the ONNX graph's has rank {len(graph_dims)}")
        for axis, (g, d) in enumerate(zip(given, graph_dims)):
            if isinstance(g, int) and isinstance(d, int) and g != d:
                raise CompressError(f"input '{name}' axis {axis}: the given size {g} differs from the "
                                    f"ONNX graph's {d}")
    return list(graph_dims)


def dim_range(profile: TargetProfile, dim: Dim, axis: int, rank: int) -> tuple[tuple[int, int, int], str] | None:
    """The (min, opt, max) for one dynamic dimension and where it came from, or None. The ranges were
    checked when the profile was parsed (TensorRTSettings)."""
    trt = profile.section("tensorrt")
    if isinstance(dim, str) and dim in trt.dims:
        return tuple(trt.dims[dim]), f"dims.{dim}"
    key = None
    if isinstance(dim, str) and dim in ("batch", "sequence"):
        key = dim
    elif isinstance(dim, str) and re.search(r"batch", dim, re.I):
        key = "batch"
    elif isinstance(dim, str) and re.search(r"seq|token|length", dim, re.I):
        key = "sequence"
    elif axis == 0:
        key = "batch"
    elif axis == 1 and rank == 2:
        key = "sequence"
    if key and getattr(trt, key):
        return tuple(getattr(trt, key)), key
    return None


def missing_ranges(model: onnx.ModelProto, profile: TargetProfile) -> list[MissingRange]:
    missing = []
    for name, dims in graph_input_dims(model).items():
        if dims is None:
            missing.append(MissingRange(name, -1, "?"))
            continue
        for axis, d in enumerate(dims):
            if not isinstance(d, int) and dim_range(profile, d, axis, len(dims)) is None:
                missing.append(MissingRange(name, axis, d or "?"))
    return missing


def shape_profile(model: onnx.ModelProto, profile: TargetProfile, input_shapes: dict[str, tuple] | None = None) -> ShapeProfile:
    graph = graph_input_dims(model)
    given = dict(input_shapes or {})
    unknown = sorted(set(given) - set(graph))
    if unknown:
        raise CompressError(f"input_shapes names {unknown}, which the ONNX graph does not have "
                            f"(its inputs: {sorted(graph)})")
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    dynamic = False
    for name, graph_dims in graph.items():
        dims = _merge(name, graph_dims, given.get(name))
        lo, opt, hi = [], [], []
        for axis, d in enumerate(dims):
            if isinstance(d, int):
                lo.append(d), opt.append(d), hi.append(d)
                continue
            found = dim_range(profile, d, axis, len(dims))
            if found is None:
                raise CompressError(
                    f"input '{name}' axis {axis} ('{d or '?'}') is dynamic but the target profile has no range "
                    f"for it: add it under [tensorrt] (e.g. dims = {{ {d or 'name'} = [min, opt, max] }}) or export "
                    "the model with that dimension fixed")
            (a, b, c), _ = found
            lo.append(a), opt.append(b), hi.append(c)
            dynamic = True
        shapes[name] = {"min": tuple(lo), "opt": tuple(opt), "max": tuple(hi)}
    return ShapeProfile(shapes, dynamic)
