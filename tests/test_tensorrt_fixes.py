"""TensorRT autofix: each fix on a crafted graph, and onnxruntime outputs bit-identical before and after."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_tensorrt_lint import RNG, G, nano, ort_qdq, ort_qdq_u8, rules, trt_cnn  # noqa: F401 - fixtures

from compressor.backends.tensorrt import autofix, lint


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """onnxruntime at the QDQ semantics: ORT_ENABLE_BASIC folds constants but does not fuse Q/DQ into
    onnxruntime's own int8 kernels (QLinearConv, QGemm), whose x86 results differ from the QDQ semantics
    when weights use the full 8 bits (measured here: top-1 agreement ~60% on an untrained CNN)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, shape=(3, 1, 8, 8)) -> None:
    x = RNG.normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(run(before, x), run(after, x))


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_clean_graph_is_left_alone(nano):
    m = trt_cnn()
    fixed, changes = autofix(m, nano)
    assert changes == [] and sorted(ops(fixed)) == sorted(ops(m))  # toposort may reorder
    assert_same_outputs(m, fixed)


def _requantized_model() -> onnx.ModelProto:
    """Input -> Q -> DQ -> Q -> DQ (same scale and zero point) -> Conv, and a duplicate Q/DQ on one tensor."""
    g = G()
    x = g.input("input", ("batch", 1, 8, 8))
    once = g.qdq(x, 0.03, name="first")
    twice = g.qdq(once, 0.03, name="second")  # redundant: same parameters
    c = g.node("Conv", [twice, g.weight("w", (2, 1, 3, 3)), g.init("b", np.zeros(2, np.float32))], name="conv",
               pads=[1, 1, 1, 1])
    r = g.node("Relu", [c], name="relu")
    a = g.qdq(r, 0.02, name="dup_a")  # two identical Q/DQ pairs on the ReLU output, one per consumer
    b = g.qdq(r, 0.02, name="dup_b")
    out = g.node("Add", [a, b], name="add")
    return g.model(out)


def test_redundant_requantization_and_duplicates_are_collapsed(nano):
    m = _requantized_model()
    fixed, changes = autofix(m, nano)
    text = "\n".join(changes)
    assert "redundant requantizations" in text and "second_Q" in text
    assert "duplicate Q/DQ" in text
    assert ops(fixed).count("QuantizeLinear") == 2  # first, dup_a
    assert ops(fixed).count("DequantizeLinear") == 3  # first, the weight's, dup_a
    assert_same_outputs(m, fixed)
    assert lint(fixed, nano) == []


def test_constant_subgraph_folded_then_float_weight_stored_as_int8(nano):
    """A weight computed from constants (Reshape of a flat initializer) behind a QuantizeLinear."""
    g = G()
    x = g.qdq(g.input("input", ("batch", 1, 8, 8)), 0.03, name="input")
    flat = g.init("w_flat", RNG.normal(size=18).astype(np.float32))
    w = g.node("Reshape", [flat, g.init("w_shape", np.array([2, 1, 3, 3], np.int64))], name="w_reshape")
    scale = np.full(2, 0.02, np.float32)
    wq = g.dq(g.q(w, scale, np.zeros(2, np.int8), axis=0, name="w_Q"), scale, np.zeros(2, np.int8), axis=0, name="w_DQ")
    bias = g.node("Add", [g.init("b0", np.ones(2, np.float32)), g.init("b1", np.ones(2, np.float32))], name="b_add")
    out = g.node("Conv", [x, wq, bias], name="conv", pads=[1, 1, 1, 1])
    m = g.model(out)
    assert "weight-float" not in rules(lint(m, nano))  # hidden behind the Reshape until folded
    fixed, changes = autofix(m, nano)
    text = "\n".join(changes)
    assert "constant-folded" in text and "Reshape" in text and "Add" in text
    assert "stored 1 float weights" in text
    assert ops(fixed) == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "Conv"]
    w_int8 = next(t for t in fixed.graph.initializer if t.name == "w_Q_out")
    assert w_int8.data_type == onnx.TensorProto.INT8
    assert_same_outputs(m, fixed)
    assert lint(fixed, nano) == []


def test_float_weights_folded(nano):
    m = trt_cnn(float_weights=True)
    fixed, changes = autofix(m, nano)
    assert any("float weights" in c for c in changes)
    assert lint(fixed, nano) == []
    assert_same_outputs(m, fixed)


def test_uint8_with_zero_point_128_becomes_int8(nano):
    g = G()
    x = g.qdq(g.input("input", ("batch", 1, 8, 8)), 0.03, zp=128, dtype=np.uint8, name="input")
    out = g.node("Conv", [x, g.weight("w", (2, 1, 3, 3)), g.init("b", np.zeros(2, np.float32))], name="conv")
    m = g.model(out)
    assert rules(lint(m, nano)) == {"qdq-dtype": ["input_Q", "input_DQ"]}
    fixed, changes = autofix(m, nano)
    assert "uint8" in changes[0]
    assert lint(fixed, nano) == []
    x = np.concatenate([RNG.normal(size=(3, 1, 8, 8)), np.full((1, 1, 8, 8), 100.0), np.full((1, 1, 8, 8), -100.0)])
    np.testing.assert_array_equal(run(m, x.astype(np.float32)), run(fixed, x.astype(np.float32)))  # saturation too


def test_onnxruntime_layout_bias_dequantize_folded(nano, ort_qdq):
    fixed, changes = autofix(ort_qdq, nano)
    assert any("3 DequantizeLinear of int32" in c for c in changes)
    left = rules(lint(fixed, nano))
    assert set(left) == {"qdq-on-weighted-output"}  # a placement choice: not fixable without changing numerics
    assert_same_outputs(ort_qdq, fixed, shape=(4, 1, 28, 28))


def test_onnxruntime_uint8_layout_becomes_int8(nano, ort_qdq_u8):
    fixed, changes = autofix(ort_qdq_u8, nano)
    assert any("18 uint8 Q/DQ with zero point 128" in c for c in changes)
    assert set(rules(lint(fixed, nano))) == {"qdq-on-weighted-output"}
    x = np.concatenate([RNG.normal(size=(6, 1, 28, 28)), 50 * RNG.normal(size=(2, 1, 28, 28))])  # saturating too
    np.testing.assert_array_equal(run(ort_qdq_u8, x.astype(np.float32)), run(fixed, x.astype(np.float32)))


def test_autofix_does_not_touch_its_input(nano):
    m = trt_cnn(float_weights=True)
    before = m.SerializeToString()
    autofix(m, nano)
    assert m.SerializeToString() == before


@pytest.mark.parametrize("defect", [{"act_zp": 5}, {"w1_per_tensor": True}, {"add": "one"}, {"conv2_act_dq": False}])
def test_manual_violations_survive_autofix_unchanged(nano, defect):
    m = trt_cnn(**defect)
    fixed, _ = autofix(m, nano)
    assert rules(lint(fixed, nano)) == rules(lint(m, nano))
    assert_same_outputs(m, fixed)
