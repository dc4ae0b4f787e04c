"""TensorRT lint: one crafted graph per rule, a clean graph in TensorRT's scheme, and onnxruntime's QDQ layout."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compressor.backends.tensorrt import lint
from compressor.targets import TargetProfile, load_target

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def nano() -> TargetProfile:
    return load_target("jetson")


class G:
    """A tiny onnx.helper graph builder for QDQ graphs."""

    def __init__(self, opset: int = 20):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.n = 0

    def _name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def input(self, name: str, dims, elem=TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(dims)))
        return name

    def init(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs, name: str | None = None, domain: str = "", n_out: int = 1, **attrs):
        name = name or self._name(op.lower())
        outs = [name + (f"_out{i}" if i else "_out") for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, domain=domain or None, **attrs))
        return outs[0] if n_out == 1 else outs

    def q(self, x: str, scale, zp=0, dtype=np.int8, axis: int | None = None, name: str | None = None,
          with_zp: bool = True) -> str:
        name = name or self._name("q")
        ins = [x, self.init(f"{name}_scale", np.asarray(scale, np.float32))]
        if with_zp:
            ins.append(self.init(f"{name}_zp", np.asarray(zp, dtype)))
        return self.node("QuantizeLinear", ins, name=name, **({} if axis is None else {"axis": axis}))

    def dq(self, x: str, scale, zp=0, dtype=np.int8, axis: int | None = None, name: str | None = None) -> str:
        name = name or self._name("dq")
        ins = [x, self.init(f"{name}_scale", np.asarray(scale, np.float32)), self.init(f"{name}_zp", np.asarray(zp, dtype))]
        return self.node("DequantizeLinear", ins, name=name, **({} if axis is None else {"axis": axis}))

    def qdq(self, x: str, scale, zp=0, dtype=np.int8, name: str | None = None, **kw) -> str:
        name = name or self._name("act")
        return self.dq(self.q(x, scale, zp, dtype, name=f"{name}_Q", **kw), scale, zp, dtype, name=f"{name}_DQ", **kw)

    def weight(self, name: str, shape, axis: int = 0, per_tensor: bool = False, stored: str = "int8") -> str:
        """A weight through DequantizeLinear: int8 initializer (TensorRT's scheme) or float + Q ('float')."""
        w = RNG.normal(size=shape).astype(np.float32) * 0.3
        if per_tensor:
            scale = np.float32(np.abs(w).max() / 127)
            zp, kw = np.int8(0), {}
        else:
            red = tuple(i for i in range(w.ndim) if i != axis)
            scale = (np.abs(w).max(axis=red) / 127).astype(np.float32)
            zp, kw = np.zeros(scale.shape, np.int8), {"axis": axis}
        if stored == "float":
            q = self.q(self.init(name, w), scale, zp, name=f"{name}_Q", **kw)
        else:
            bshape = [1] * w.ndim
            bshape[axis] = -1
            s = scale if per_tensor else scale.reshape(bshape)
            q = self.init(f"{name}_int8", np.clip(np.round(w / s), -127, 127).astype(np.int8))
        return self.dq(q, scale, zp, name=f"{name}_DQ", **kw)

    def model(self, out: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", self.inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                                  initializer=self.inits)
        domains = sorted({n.domain for n in self.nodes if n.domain})
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)]
                              + [helper.make_opsetid(d, 1) for d in domains])
        m.ir_version = 10
        try:  # gives the output its type and shape
            m.graph.output[0].CopyFrom(onnx.shape_inference.infer_shapes(m).graph.output[0])
        except onnx.shape_inference.InferenceError:
            pass  # custom-domain ops: leave the output's shape unknown
        if not m.graph.output[0].type.tensor_type.HasField("shape"):
            m.graph.output[0].type.tensor_type.shape.SetInParent()
        return m


def trt_cnn(*, act_zp=0, w1_per_tensor=False, w2_axis=0, conv2_act_dq=True, conv2_w_dq=True, add="both",
            float_weights=False, dims=("batch", 1, 8, 8), opset=20) -> onnx.ModelProto:
    """Conv-ReLU-Conv + residual Add, ReLU, Flatten, Gemm in TensorRT's QDQ scheme; keywords inject defects."""
    g = G(opset)
    x = g.qdq(g.input("input", dims), 0.03, zp=act_zp, name="input")
    c1 = g.node("Conv", [x, g.weight("w1", (4, 1, 3, 3), per_tensor=w1_per_tensor,
                                     stored="float" if float_weights else "int8"), g.init("b1", np.full(4, 0.1, np.float32))],
                name="conv1", pads=[1, 1, 1, 1])
    r1 = g.node("Relu", [c1], name="relu1")
    r1q = g.qdq(r1, 0.02, name="relu1")
    w2 = g.weight("w2", (4, 4, 3, 3), axis=w2_axis) if conv2_w_dq else g.init("w2", RNG.normal(size=(4, 4, 3, 3)).astype(np.float32))
    c2 = g.node("Conv", [r1q if conv2_act_dq else r1, w2, g.init("b2", np.zeros(4, np.float32))], name="conv2", pads=[1, 1, 1, 1])
    if add == "both":  # the lead's scheme: both Add inputs quantized
        s = g.node("Add", [g.qdq(c2, 0.04, name="conv2"), r1q], name="residual")
    elif add == "conv":  # NVIDIA's recommendation: Conv output straight in, residual quantized
        s = g.node("Add", [c2, r1q], name="residual")
    else:  # one input quantized, the other a ReLU output: blocked fusion
        s = g.node("Add", [g.qdq(c2, 0.04, name="conv2"), r1], name="residual")
    f = g.node("Flatten", [g.node("Relu", [s], name="relu2")], name="flatten")
    out = g.node("Gemm", [g.qdq(f, 0.04, name="flat"), g.weight("w3", (10, 4 * 8 * 8)), g.init("b3", np.zeros(10, np.float32))],
                 name="fc", transB=1)
    m = g.model(out)
    onnx.checker.check_model(m, full_check=True)
    return m


def rules(violations) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for v in violations:
        out.setdefault(v.rule, []).append(v.node)
    return out


# -- the clean graphs --------------------------------------------------------------------------


@pytest.mark.parametrize("add", ["both", "conv"])
def test_clean_graph_in_tensorrt_scheme_has_no_violations(nano, add):
    assert lint(trt_cnn(add=add), nano) == []


def test_clean_graph_runs_in_onnxruntime():
    import onnxruntime as ort

    sess = ort.InferenceSession(trt_cnn().SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": RNG.normal(size=(3, 1, 8, 8)).astype(np.float32)})[0].shape == (3, 10)


# -- one rule per test ---------------------------------------------------------------------------


def test_asymmetric_zero_point(nano):
    found = rules(lint(trt_cnn(act_zp=5), nano))
    assert found == {"asymmetric-zero-point": ["input_Q", "input_DQ"]}


def test_per_tensor_weight_scale(nano):
    vs = lint(trt_cnn(w1_per_tensor=True), nano)
    assert rules(vs) == {"weight-per-tensor": ["w1_DQ"]}
    assert "conv1" in vs[0].message and not vs[0].auto_fixable
    assert vs[0].severity == "warning"  # TensorRT runs per-tensor weights in int8 as written


def test_per_channel_scales_on_the_wrong_axis(nano):
    assert rules(lint(trt_cnn(w2_axis=1), nano)) == {"weight-axis": ["w2_DQ"]}


def test_weighted_op_with_unquantized_activation(nano):
    vs = lint(trt_cnn(conv2_act_dq=False), nano)
    assert rules(vs) == {"missing-qdq": ["conv2"]}
    assert "input 0 (activation 'relu1_out')" in vs[0].message
    assert vs[0].severity == "error"  # TensorRT would run conv2 in fp16/fp32


def test_weighted_op_with_float_weight(nano):
    vs = lint(trt_cnn(conv2_w_dq=False), nano)
    assert rules(vs) == {"missing-qdq": ["conv2"]}
    assert "input 1 (weight 'w2')" in vs[0].message
    assert vs[0].severity == "warning"  # a layer kept in higher precision: fp16 as asked


def test_residual_add_quantized_on_one_side(nano):
    vs = lint(trt_cnn(add="one"), nano)
    assert rules(vs) == {"residual-add": ["residual"]}
    assert "relu1_out" in vs[0].fix
    assert vs[0].severity == "error"  # dequantized and added in fp16, not an int8 add


# README's TensorRT section promises which rules fail the run and which only warn: a phrase of
# each list, with a graph that breaks that rule alone
README_RULES = {
    "a float activation into a weighted op whose weight is int8": (dict(conv2_act_dq=False), "missing-qdq", "error"),
    "a float weight beside a quantized activation": (dict(conv2_w_dq=False), "missing-qdq", "warning"),
    "Q/DQ on one input of a residual Add": (dict(add="one"), "residual-add", "error"),
    "asymmetric zero points": (dict(act_zp=5), "asymmetric-zero-point", "error"),
    "per-tensor weight scales": (dict(w1_per_tensor=True), "weight-per-tensor", "warning"),
    "weights stored as float": (dict(float_weights=True), "weight-float", "warning"),
}


@pytest.mark.parametrize("phrase", README_RULES)
def test_readme_and_lint_agree_on_what_fails_the_run(nano, phrase, tmp_path):
    from pathlib import Path

    from compressor.backends.tensorrt import lower_onnx
    from compressor.errors import CompressError

    text = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    errors_part = text.split("Errors fail the run", 1)[1].split("Warnings are listed", 1)[0]
    warnings_part = text.split("Warnings are listed", 1)[1].split("TensorRT engines are specific", 1)[0]
    kwargs, rule, severity = README_RULES[phrase]
    assert phrase in (errors_part if severity == "error" else warnings_part)
    vs = lint(trt_cnn(**kwargs), nano)
    assert {v.rule: v.severity for v in vs} == {rule: severity}
    path = tmp_path / "m.onnx"
    onnx.save(trt_cnn(**kwargs), path)
    if severity == "error":
        with pytest.raises(CompressError, match=rule):
            lower_onnx(path, tmp_path / "out", nano, None)
    else:  # the run goes on (a float-stored weight is even fixed on the way)
        assert lower_onnx(path, tmp_path / "out", nano, None).onnx_path.is_file()


def test_weights_stored_as_float(nano):
    vs = lint(trt_cnn(float_weights=True), nano)
    assert rules(vs) == {"weight-float": ["w1_Q"]}
    assert vs[0].auto_fixable and vs[0].severity == "warning"


def test_dynamic_dims_without_profile_range(nano):
    vs = lint(trt_cnn(dims=("batch", 1, "height", "width")), nano)
    assert rules(vs) == {"dynamic-shape": ["input", "input"]}
    assert "'height'" in vs[0].message and "[tensorrt]" in vs[0].fix
    ranged = dataclasses.replace(nano, settings=dataclasses.replace(
        nano.settings, dims={"height": (8, 8, 8), "width": (8, 8, 8)}))
    assert lint(trt_cnn(dims=("batch", 1, "height", "width")), ranged) == []


def test_static_model_needs_no_range(nano):
    assert lint(trt_cnn(dims=(2, 1, 8, 8)), nano) == []


def _tiny(op_nodes, opset=20, inputs=(("x", TensorProto.FLOAT, [2, 2]),)):
    g = G(opset)
    for name, elem, dims in inputs:
        g.input(name, dims, elem)
    out = None
    for make in op_nodes:
        out = make(g)
    return g.model(out)


@pytest.mark.parametrize("dtype, zp, fixable", [(np.uint8, 0, False), (np.uint8, 128, True), (np.int16, 0, False)])
def test_non_int8_qdq(nano, dtype, zp, fixable):
    m = _tiny([lambda g: g.qdq("x", 0.1, zp=zp, dtype=dtype, name="a")])
    vs = [v for v in lint(m, nano) if v.rule == "qdq-dtype"]
    assert [v.node for v in vs] == ["a_Q", "a_DQ"]
    assert all(v.auto_fixable is fixable for v in vs)
    assert "asymmetric-zero-point" not in rules(lint(m, nano))  # uint8 zp 128 is symmetric int8 in disguise


def test_quantize_without_zero_point_is_uint8(nano):
    m = _tiny([lambda g: g.q("x", 0.1, name="a", with_zp=False)])
    vs = lint(m, nano)
    assert rules(vs) == {"qdq-dtype": ["a"]} and "uint8" in vs[0].message


def test_int32_bias_dequantize_is_fixable(nano):
    m = _tiny([lambda g: g.node("Add", ["x", g.dq(g.init("bias_q", np.array([3, -4], np.int32)), 0.01, zp=0,
                                                    dtype=np.int32, name="bias_DQ")])])
    vs = lint(m, nano)
    assert rules(vs) == {"qdq-dtype": ["bias_DQ"]} and vs[0].auto_fixable


def test_per_channel_activation_and_bad_scale(nano):
    m = _tiny([lambda g: g.qdq("x", [0.1, 0.2], axis=1, name="pc"), lambda g: g.qdq("pc_DQ_out", 0.0, name="zero")])
    found = rules(lint(m, nano))
    assert found["qdq-granularity"] == ["pc_Q", "pc_DQ"]
    assert found["qdq-scale"] == ["zero_Q", "zero_DQ"]


def test_unsupported_ops_attributes_and_opset(nano):
    m = _tiny([
        lambda g: g.node("Det", ["x"], name="det"),
        lambda g: g.node("Resize", ["x", "", g.init("sc", np.array([1, 2], np.float32))], name="resize", antialias=1,
                         mode="linear"),
        lambda g: g.node("Relu", [g.node("Gelu2", ["resize_out"], name="custom", domain="com.example")], name="r"),
    ])
    found = rules(lint(m, nano))
    assert sorted(found["unsupported-op"]) == ["custom", "det", "resize"]
    m21 = _tiny([lambda g: g.node("Relu", ["x"], name="r")], opset=21)
    vs = lint(m21, nano)
    assert rules(vs) == {"unsupported-op": ["<model>"]} and "opset_version=20" in vs[0].fix


def test_int64_weights_matter_only_before_tensorrt_9(nano):
    m = _tiny([lambda g: g.node("Add", ["x", g.init("big", np.array([2**40, 1], np.int64))], name="add")],
              inputs=(("x", TensorProto.INT64, [2]),), opset=17)
    assert lint(m, nano) == []
    old = dataclasses.replace(nano, device=dataclasses.replace(nano.device, tensorrt="8.6"))
    assert rules(lint(m, old)) == {"unsupported-op": ["big"]}


def test_axes_input_must_be_an_initializer(nano):
    m = _tiny([lambda g: g.node("ReduceMean", ["x", g.node("Shape", ["x"], name="shape")], name="mean")])
    vs = lint(m, nano)
    assert rules(vs) == {"unsupported-op": ["mean"]} and not vs[0].auto_fixable


def test_fp8_is_refused_on_orin(nano):
    g = G()
    g.inits += [helper.make_tensor("w8", TensorProto.FLOAT8E4M3FN, [2], [0.0, 1.0]),
                helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
                helper.make_tensor("z", TensorProto.FLOAT8E4M3FN, [], [0.0])]
    vs = lint(g.model(g.node("DequantizeLinear", ["w8", "s", "z"], name="f8")), nano)
    assert rules(vs) == {"qdq-dtype": ["f8"]} and "compute capability 8.9" in vs[0].message


# -- onnxruntime's own QDQ layout under TensorRT's rules --------------------------------------


def ort_quantize(folder, activation_type: str) -> onnx.ModelProto:
    """A small residual CNN quantized by onnxruntime.quantization, symmetric, per-channel weights."""
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8 * 14 * 14, 10)

        def forward(self, x):
            y = torch.relu(self.c1(x))
            y = y + torch.relu(self.c2(y))
            return self.fc(torch.nn.functional.max_pool2d(y, 2).flatten(1))

    torch.manual_seed(0)
    fp32, qdq = folder / "fp32.onnx", folder / f"qdq_{activation_type}.onnx"
    if not fp32.exists():
        torch.onnx.export(Net().eval(), (torch.randn(2, 1, 28, 28),), str(fp32), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"}})

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": RNG.normal(size=(1, 1, 28, 28)).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32), str(qdq), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=getattr(QuantType, activation_type), weight_type=QuantType.QInt8,
                    per_channel=True, extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return onnx.load(str(qdq))


@pytest.fixture(scope="module")
def ort_qdq(tmp_path_factory):
    """onnxruntime's QDQ in the settings closest to TensorRT's: int8 activations and weights."""
    return ort_quantize(tmp_path_factory.mktemp("ortq"), "QInt8")


@pytest.fixture(scope="module")
def ort_qdq_u8(tmp_path_factory):
    """onnxruntime's QDQ with uint8 activations (symmetric: zero point 128)."""
    return ort_quantize(tmp_path_factory.mktemp("ortq8"), "QUInt8")


def test_onnxruntime_qdq_layout_under_tensorrt_rules(nano, ort_qdq):
    found = rules(lint(ort_qdq, nano))
    # int32 bias DequantizeLinear (TensorRT dequantizes only int8/fp8/int4): fixable by folding
    assert len(found.pop("qdq-dtype")) == 3
    # Q/DQ on each Conv output before its ReLU (TensorRT: do not quantize weighted ops' outputs)
    assert len(found.pop("qdq-on-weighted-output")) == 2
    assert found == {}


def test_onnxruntime_uint8_layout_under_tensorrt_rules(nano, ort_qdq_u8):
    found = rules(lint(ort_qdq_u8, nano))
    assert len(found.pop("qdq-dtype")) == 3 + 18  # the int32 biases, and every uint8 activation Q/DQ
    assert len(found.pop("qdq-on-weighted-output")) == 2
    assert found == {}


@pytest.mark.parametrize("op, shape, axis, ok", [
    ("MatMul", (16, 4), 1, True),    # B [K, N]: output channels are the last axis
    ("MatMul", (16, 4), 0, False),   # per input channel: cannot be factored out of the int8 GEMM
    ("Gemm", (4, 16), 0, True),      # transB=1 (torch Linear): [N, K]
])
def test_weight_axis_follows_the_output_channels(nano, op, shape, axis, ok):
    g = G()
    x = g.qdq(g.input("x", ("batch", 16)), 0.05, name="x")
    w = g.weight("w", shape, axis=axis)
    out = g.node(op, [x, w], name="linear", **({"transB": 1} if op == "Gemm" else {}))
    assert rules(lint(g.model(out), nano)) == ({} if ok else {"weight-axis": ["w_DQ"]})
