"""C engine generator, between the kernels and the full pipeline: pooling with ceil_mode lowered
end to end against onnxruntime, and the static memory plan's invariant (buffers alive at the same
op never share a byte) on real and random graphs, with its arena / peak ratio."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import sample_module
from onnx import TensorProto, helper, numpy_helper

from compressor.backends import cengine as ce
from compressor.backends.cengine import memplan
from compressor.backends.cengine.ir import Buf, Graph, Op
from compressor.backends.cengine.lower import Lowering
from compressor.backends.cengine.verification import ort_session, parity

models = sample_module("samples/apps/c/models.py", "cengine_demo_models")


# ---- pooling with ceil_mode ------------------------------------------------------------------------
# op, kernel, strides, pads (t, l, b, r), count_include_pad; ceil_mode=1 on a 9 x 11 input
CEIL_POOLS = [
    ("AveragePool", (3, 3), (2, 2), (0, 0, 0, 0), 1),  # windows hang over the end
    ("AveragePool", (3, 3), (2, 2), (1, 1, 1, 1), 1),  # ... over the padding: divisor < 9
    ("AveragePool", (3, 3), (2, 2), (1, 1, 1, 1), 0),
    ("AveragePool", (2, 2), (2, 2), (1, 1, 1, 1), 0),  # the window starting in the end pad is dropped
    ("AveragePool", (2, 3), (3, 2), (1, 0, 1, 1), 1),
    ("MaxPool", (3, 3), (2, 2), (1, 1, 1, 1), None),
    ("MaxPool", (2, 2), (2, 2), (1, 1, 1, 1), None),  # dropped window
]
S, Z = 0.02, -3  # one quantization for every tensor: the pools' rounding is the only one


def _pool_graph(quantized: bool, opset: int = 22) -> onnx.ModelProto:
    """input -> Q/DQ -> every pool of CEIL_POOLS (-> Q/DQ when quantized) -> flatten -> Concat.
    From opset 22 ONNX shape inference drops the windows onnxruntime drops; older opsets keep them,
    so the lowering must take onnxruntime's shapes there."""
    inits = [numpy_helper.from_array(np.array(S, np.float32), "s"), numpy_helper.from_array(np.array(Z, np.int8), "z"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "flat")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
    outs = []
    for i, (op, k, st, p, cip) in enumerate(CEIL_POOLS):
        attrs = dict(kernel_shape=list(k), strides=list(st), pads=list(p), ceil_mode=1)
        if cip is not None:
            attrs["count_include_pad"] = cip
        nodes.append(helper.make_node(op, ["xd"], [f"p{i}"], **attrs))
        src = f"p{i}"
        if quantized:
            nodes += [helper.make_node("QuantizeLinear", [src, "s", "z"], [f"q{i}"]),
                      helper.make_node("DequantizeLinear", [f"q{i}", "s", "z"], [f"d{i}"])]
            src = f"d{i}"
        nodes.append(helper.make_node("Reshape", [src, "flat"], [f"r{i}"]))
        outs.append(f"r{i}")
    nodes.append(helper.make_node("Concat", outs, ["cat" if quantized else "logits"], axis=1))
    if quantized:
        nodes += [helper.make_node("QuantizeLinear", ["cat", "s", "z"], ["cq"]),
                  helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["logits"])]
    g = helper.make_graph(nodes, "pools", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 9, 11])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


@pytest.mark.parametrize("opset", [22, 18])
def test_ceil_mode_pools_match_onnxruntime(tmp_path, opset):
    q = tmp_path / "pools_qdq.onnx"
    onnx.save(_pool_graph(True, opset), q)
    info = ce.generate(q, tmp_path / "engine")
    assert info["ops"]["avgpool"] == 5 and info["ops"]["maxpool"] == 2
    assert "requant" not in info["ops"]  # one scale everywhere: the pools round once
    x = np.random.default_rng(0).uniform(-2.5, 2.5, (24, 3, 9, 11)).astype(np.float32)
    y = ce.run_engine(tmp_path / "engine", x, "host")
    ref = ort_session(q, optimized=False).run(None, {"input": x})[0]
    assert y.shape == ref.shape == (24, 582)  # onnxruntime's output sizes, windows dropped as it does
    p = parity(y, ref, S)
    assert p["max_diff_steps"] <= 1, p
    # where the engine differs, onnxruntime's float average lies on a .5 step boundary (a tie the
    # engine's exact integer arithmetic rounds to even, ORT's float error pushes either way)
    pre = tmp_path / "pools_float.onnx"
    onnx.save(_pool_graph(False, opset), pre)
    v = ort_session(pre, optimized=False).run(None, {"input": x})[0] / S
    off = y != ref
    assert off.mean() < 0.05
    assert np.all(np.abs(v[off] - np.floor(v[off]) - 0.5) < 1e-3), v[off][:10]


def test_torch_ceil_mode_pools(tmp_path):
    """nn.AvgPool2d / nn.MaxPool2d with ceil_mode through the torch exporter and ORT's quantizer."""
    import torch
    import torch.nn as nn

    class PoolNet(nn.Module):
        def __init__(s):
            super().__init__()
            s.c = nn.Conv2d(3, 4, 3, padding=1)
            s.pools = nn.ModuleList([
                nn.AvgPool2d(3, 2, ceil_mode=True), nn.AvgPool2d(3, 2, padding=1, ceil_mode=True),
                nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False),
                nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
                nn.AvgPool2d((3, 2), (3, 2), padding=(1, 1), ceil_mode=True, count_include_pad=False)])

        def forward(s, x):
            x = torch.relu(s.c(x))
            return torch.cat([p(x).flatten(1) for p in s.pools], 1)

    torch.manual_seed(0)
    x = models.random_images(40, 16, seed=1)
    f = tmp_path / "pools.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(PoolNet().eval(), (torch.from_numpy(x[:1]),), str(f), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    assert sum(n.op_type.endswith("Pool") and helper.get_attribute_value(n.attribute[0]) == 1
               for n in onnx.load(f).graph.node if n.attribute and n.attribute[0].name == "ceil_mode") == 5
    q = models.quantize_qdq(f, tmp_path / "pools_qdq.onnx", x[:16])
    info = ce.generate(q, tmp_path / "engine")
    y = ce.run_engine(tmp_path / "engine", x[16:], "host")
    ref = ort_session(q, optimized=False).run(None, {"input": x[16:]})[0]
    assert y.shape == ref.shape == (24, 4 * (64 + 81 * 3 + 54))
    p = parity(y, ref, info["output"]["scale"])
    assert p["max_diff_steps"] <= 1 and p["frac_outputs_off"] < 0.05, p


# ---- memory plan ---------------------------------------------------------------------------------
def _independent_check(graph: Graph, plan: memplan.Plan) -> None:
    """Recompute every storage root's lifetime from the ops and check, op by op, that the arena
    ranges alive there (activations and the op's scratch) are disjoint and inside the arena."""
    roots: dict[int, tuple[Buf, int, int]] = {}
    for t, op in enumerate(graph.ops):
        for b in op.inputs + op.outputs:
            r = b.root()
            if r.external is None:
                _, a, _ = roots.get(id(r), (r, t, t))
                roots[id(r)] = (r, a, t)
    end = plan.arena_bytes - memplan.SLACK
    for t, op in enumerate(graph.ops):
        live = [(plan.offsets[k], plan.offsets[k] + r.nbytes, r.name) for k, (r, a, b) in roots.items() if a <= t <= b]
        if op.scratch:
            o = plan.scratch_offsets[id(op)]
            live.append((o, o + op.scratch, f"scratch {t}"))
        live.sort()
        assert all(0 <= lo and hi <= end for lo, hi, _ in live), (t, live)
        for (lo1, hi1, n1), (lo2, hi2, n2) in zip(live, live[1:]):
            assert hi1 <= lo2, f"op {t}: {n1} [{lo1}, {hi1}) overlaps {n2} [{lo2}, {hi2})"


def _plan_file(path) -> tuple[Graph, memplan.Plan]:
    low = Lowering(onnx.load(str(path)))
    g = low.run()
    assert not low.errors, low.errors
    memplan.apply_inplace(g)
    ce._tune_scratch(g)
    return g, memplan.plan(g)


@pytest.fixture(scope="module")
def restiny_qdq(tmp_path_factory):
    """tests/tinynet.py ResTiny (stem, residual block, AveragePool, Linear) quantized to QDQ."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from tinynet import ResTiny

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("restiny")
    x = models.random_images(40, 28, seed=1, channels=1)
    fp32 = models.export_onnx(ResTiny().eval(), x, d / "res.onnx")
    return models.quantize_qdq(fp32, d / "res_qdq.onnx", x[:16]), x


def test_restiny_arena_within_target_and_engine_still_exact(restiny_qdq, tmp_path):
    q, x = restiny_qdq
    g, p = _plan_file(q)
    _independent_check(g, p)
    assert memplan.overlaps(g, p) == []
    # a 16-column im2col tile of the second body conv would be a quarter of the activations: the
    # plan narrows it (elastic scratch) to keep the arena within 1.2x
    assert p.peak_live <= p.arena_bytes <= memplan.MAX_OVER_PEAK * p.peak_live, (p.arena_bytes, p.peak_live)
    tiles = [(op.params["ntile"], op.params["ohw"]) for op in g.ops if op.params.get("general")]
    assert any(nt < 16 for nt, _ in tiles), tiles  # without narrowing it would be 1.26x
    assert all(nt >= memplan.MIN_TILE and (nt % memplan.TILE_STEP == 0 or nt == ohw) for nt, ohw in tiles), tiles
    info = ce.generate(q, tmp_path / "engine")
    assert info["arena_bytes"] == p.arena_bytes
    y = ce.run_engine(tmp_path / "engine", x[16:], "host")
    ref = ort_session(q, optimized=False).run(None, {"input": x[16:]})[0]
    par = parity(y, ref, info["output"]["scale"])
    assert par["max_diff_steps"] <= 1 and par["top1_agreement"] >= 0.95, par


def test_plans_of_real_graphs_never_overlap(tmp_path, restiny_qdq):
    qdq = [restiny_qdq[0]]
    qdq.append(models.build_mobilenet(tmp_path / "mbv2", size=32, width=0.5, n_calib=8)[0])
    onnx.save(_pool_graph(True), tmp_path / "pools.onnx")
    qdq.append(tmp_path / "pools.onnx")
    for path in qdq:
        g, p = _plan_file(path)
        _independent_check(g, p)
        assert memplan.overlaps(g, p) == []
        assert p.peak_live <= p.arena_bytes <= 1.2 * p.peak_live, (path.name, p.arena_bytes, p.peak_live)


def _random_graph(rng) -> Graph:
    """A chain with skip connections, views, in-place element-wise ops and scratch (some of it
    elastic im2col tiles), buffers of very different sizes."""
    g = Graph()  # memory planning reads only the ops
    live = [Buf("in", (1, 64), external="in")]
    n_ops = int(rng.integers(4, 40))
    for t in range(n_ops):
        k = int(rng.integers(1, min(3, len(live)) + 1))
        ins = [live[i] for i in rng.choice(len(live), size=k, replace=False)]
        kind = rng.choice(["conv", "add", "view", "pool"])
        if kind == "view" and ins[0].external is None:
            out = Buf(f"v{t}", ins[0].shape, alias=ins[0])
        else:
            n = int(rng.choice([16, 100, 784, 1568, 3000, 12544]))
            out = Buf(f"b{t}", (1, n))
            if kind == "add":
                out = Buf(f"b{t}", ins[0].shape)
        op = Op(str(kind), ins, [out], lambda c: [])
        if kind == "add":
            op.inplace = 0
        if kind == "conv" and rng.random() < 0.6:
            K, ohw = int(rng.integers(9, 300)), int(rng.integers(16, 400))
            nt = int(min(ohw, rng.choice([16, 64, 256])))
            op.params.update(K=K, ohw=ohw, general=True, ntile=nt)
            op.scratch = K * nt + 32
        elif rng.random() < 0.3:
            op.scratch = int(rng.integers(1, 5000))
        g.ops.append(op)
        live = [b for b in live if rng.random() < 0.7] + [out]
    g.ops.append(Op("fc", [live[-1]], [Buf("out", (1, 10), external="out")], lambda c: []))
    return g


def test_random_plans_never_overlap():
    rng = np.random.default_rng(1)
    for _ in range(300):
        g = _random_graph(rng)
        memplan.apply_inplace(g)
        p = memplan.plan(g)
        _independent_check(g, p)
        assert p.arena_bytes >= p.peak_live
        for op in g.ops:
            if op.params.get("general"):
                assert op.scratch == op.params["K"] * op.params["ntile"] + 32
                assert op.params["ntile"] >= min(memplan.MIN_TILE, op.params["ohw"])


def test_overlap_check_catches_a_broken_plan(restiny_qdq):
    g, p = _plan_file(restiny_qdq[0])
    conv = next(op for op in g.ops if op.kind == "conv")
    a, b = conv.inputs[0].root(), conv.outputs[0].root()
    p.offsets[id(b)] = p.offsets[id(a)]  # the conv's output over its input
    assert memplan.overlaps(g, p)
    with pytest.raises(AssertionError):
        _independent_check(g, p)
