"""The exported QDQ graph in the form engines expect.

The exporter writes every fake quantizer as QuantizeLinear -> DequantizeLinear, weights included,
so the file still holds float weights. Here a weight's Q node is evaluated once: the int8 tensor
becomes the initializer feeding its DequantizeLinear (4x smaller file, and what TensorRT, QNN and
onnxruntime's int8 kernels read). Where the scheme has int32 bias, a float bias of a Conv/Gemm
whose input and weight are dequantized becomes int32 at scale s_input * s_weight. An int8
embedding table is gathered first and only the gathered rows are dequantized: DequantizeLinear
-> Gather would dequantize the whole table on every inference (onnxruntime does not fold it;
measured 23 ms for MiniLM's 30522 x 384 table, against 0.04 ms for gathering first).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..onnx_graph import OnnxGraph


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _broadcast(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    if v.ndim == 0 or v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def fold_weight_quantizers(g: OnnxGraph, weight_range: tuple[int, int]) -> int:
    """`weight_range`: the scheme's integer range (7-bit weights on x86), which ONNX's
    QuantizeLinear cannot express; training clamped to it, so the stored weights must too."""
    folded = 0
    for q in [n for n in g.graph.node if n.op_type == "QuantizeLinear"]:
        w = g.const(q.input[0])
        users = g.consumers.get(q.output[0], [])
        if w is None or w.dtype.kind != "f" or not users or any(u.op_type != "DequantizeLinear" for u in users):
            continue
        scale = g.const(q.input[1])
        zero = g.const(q.input[2]) if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
        info = np.iinfo(zero.dtype)
        lo, hi = max(info.min, weight_range[0]), min(info.max, weight_range[1])
        axis = _axis(q) % max(w.ndim, 1)
        quantized = np.clip(np.round(w / _broadcast(scale, w.ndim, axis)) + _broadcast(zero, w.ndim, axis).astype(np.int64),
                            lo, hi).astype(zero.dtype)
        name = g.add_init(quantized, f"{q.input[0]}_quantized")
        for dq in users:
            dq.input[0] = name
        g.graph.node.remove(q)
        folded += 1
    return folded


def quantize_biases(g: OnnxGraph) -> int:
    done = 0
    for node in [n for n in g.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2]:
        bias = g.const(node.input[2])
        x_dq, w_dq = g.producer.get(node.input[0]), g.producer.get(node.input[1])
        if bias is None or bias.dtype.kind != "f" or not x_dq or not w_dq or \
                x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
            continue
        s_x, s_w = g.const(x_dq.input[1]), g.const(w_dq.input[1])
        if s_x is None or s_w is None or s_x.size != 1:
            continue
        scale = (s_x.reshape(()) * s_w.reshape(-1)).astype(np.float32)
        scale = np.broadcast_to(scale, bias.shape).copy() if scale.size == 1 else scale
        q = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        base = node.input[2]
        inputs = [g.add_init(q, f"{base}_int32"), g.add_init(scale, f"{base}_int32_scale"),
                  g.add_init(np.zeros(q.shape, np.int32), f"{base}_int32_zero")]
        dq = helper.make_node("DequantizeLinear", inputs, [f"{base}_dequantized"], name=f"{base}_dq", axis=0)
        g.graph.node.insert(list(g.graph.node).index(node), dq)
        node.input[2] = dq.output[0]
        done += 1
    return done


def transpose_stored_weights(g: OnnxGraph) -> int:
    """The TorchScript exporter writes a Linear on a 3-D input as DequantizeLinear(W) -> Transpose
    -> MatMul: the weight is transposed on every inference, and onnxruntime only fuses a
    DequantizeLinear that feeds the MatMul itself (MatMulIntegerToFloat). Store W transposed
    instead, its per-channel axis moved with it."""
    done = 0
    for tr in [n for n in g.graph.node if n.op_type == "Transpose"]:
        dq = g.producer.get(tr.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or len(g.consumers.get(dq.output[0], [])) != 1:
            continue
        weight = g.const(dq.input[0])
        perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), [1, 0])
        if weight is None or weight.ndim != 2 or perm != [1, 0] or weight.dtype.kind not in "iu":
            continue
        dq.input[0] = g.add_init(np.ascontiguousarray(weight.T), f"{dq.input[0]}_transposed")
        scale = g.const(dq.input[1])
        if scale is not None and scale.size > 1:
            for attr in dq.attribute:
                if attr.name == "axis":
                    attr.i = 1 - (attr.i % 2)
            if not any(a.name == "axis" for a in dq.attribute):
                dq.attribute.append(helper.make_attribute("axis", 0))  # the default axis 1 becomes 0
        dq.output[0] = tr.output[0]
        g.graph.node.remove(tr)
        done += 1
    return done


def gather_rows_then_dequantize(g: OnnxGraph) -> int:
    """DequantizeLinear(int8 table, per row or per tensor, zero point 0) -> Gather(axis 0) becomes
    Gather(int8 table) -> Cast -> Mul(gathered row scales): the same values, exactly."""
    done = 0
    for gather in [n for n in g.graph.node if n.op_type == "Gather"]:
        dq = g.producer.get(gather.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or next((a.i for a in gather.attribute if a.name == "axis"), 0):
            continue
        table, scale = g.const(dq.input[0]), g.const(dq.input[1])
        zero = g.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
        if table is None or scale is None or table.dtype != np.int8 or table.ndim != 2 or                 (zero is not None and zero.any()) or (scale.size > 1 and _axis(dq) % 2 != 0):
            continue
        base, ids, out = gather.name or gather.output[0], gather.input[1], gather.output[0]
        rows = helper.make_node("Gather", [dq.input[0], ids], [f"{base}_int8_rows"], name=f"{base}_int8_rows", axis=0)
        cast = helper.make_node("Cast", [rows.output[0]], [f"{base}_rows_float"], name=f"{base}_rows_float",
                                to=onnx.TensorProto.FLOAT)
        nodes = [rows, cast]
        if scale.size > 1:
            column = g.add_init(scale.reshape(-1, 1).astype(np.float32), f"{dq.input[1]}_rows")
            nodes.append(helper.make_node("Gather", [column, ids], [f"{base}_row_scales"], name=f"{base}_row_scales", axis=0))
            factor = nodes[-1].output[0]
        else:
            factor = g.add_init(scale.reshape(()).astype(np.float32), f"{dq.input[1]}_scalar")
        nodes.append(helper.make_node("Mul", [cast.output[0], factor], [out], name=f"{base}_dequantized"))
        at = list(g.graph.node).index(gather)
        g.graph.node.remove(gather)
        for offset, node in enumerate(nodes):
            g.graph.node.insert(at + offset, node)
        if all(c is gather for c in g.consumers.get(dq.output[0], [])):
            g.graph.node.remove(dq)
        done += 1
    return done


MS_DOMAIN = "com.microsoft"  # onnxruntime's Q/DQ, which take 16-bit types before opset 21


def widen_activations(g: OnnxGraph, wide: dict[str, tuple[float, int]]) -> int:
    """Give the Q/DQ pairs of 16-bit activation quantizers (`wide`: module name -> scale, zero point
    on the uint16 grid) their uint16 zero point and scale. ONNX's QuantizeLinear takes 16-bit types
    only from opset 21, so they become onnxruntime's com.microsoft Q/DQ, as onnxruntime's own QNN
    quantizer writes them below opset 21 (the QNN EP and onnxruntime's CPU kernels run both)."""
    widened = set()
    for node in g.graph.node:
        scope, _, op = node.name.rpartition("/")
        name = scope.lstrip("/")
        if op not in ("QuantizeLinear", "DequantizeLinear") or name not in wide:
            continue
        scale, zero = wide[name]
        if name not in widened:  # the pair's Q and DQ share them
            g.add_init(np.array(scale, np.float32), f"{name}_scale_u16")
            g.add_init(np.array(zero, np.uint16), f"{name}_zero_point_u16")
        node.input[1], zero_point = f"{name}_scale_u16", f"{name}_zero_point_u16"
        if len(node.input) > 2:
            node.input[2] = zero_point
        else:
            node.input.append(zero_point)
        node.domain = MS_DOMAIN
        widened.add(name)
    missing = sorted(set(wide) - widened)
    if missing:
        raise RuntimeError(f"no exported Q/DQ pair found for the 16-bit quantizers {missing}")
    if widened and not any(o.domain == MS_DOMAIN for o in g.model.opset_import):
        g.model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(widened)


def constants_to_initializers(g: OnnxGraph) -> int:
    """The TorchScript exporter writes Q/DQ scales and zero points as Constant nodes; engines and
    graph tools expect initializers (the form onnxruntime's own quantizer writes)."""
    moved = 0
    for node in [n for n in g.graph.node if n.op_type == "Constant"]:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if value is None:
            continue
        g.add_init(numpy_helper.to_array(value.t), node.output[0])
        g.graph.node.remove(node)
        moved += 1
    return moved


def _drop_unused(g: OnnxGraph) -> None:
    used = {i for n in g.graph.node for i in n.input} | {o.name for o in g.graph.output}
    for init in list(g.graph.initializer):
        if init.name not in used:
            g.graph.initializer.remove(init)


def finalize(path: Path, bias_int32: bool, weight_range: tuple[int, int] = (-128, 127),
             wide: dict[str, tuple[float, int]] | None = None) -> dict[str, int]:
    """Rewrite `path` in place (atomically) with int8 weight initializers and, if asked, int32 biases
    (`wide`: the 16-bit activation quantizers, see widen_activations)."""
    model = onnx.load(str(path))
    constants_to_initializers(OnnxGraph(model))
    uint16 = widen_activations(OnnxGraph(model), wide or {})
    g = OnnxGraph(model)
    stats = {"int8_weights": fold_weight_quantizers(g, weight_range), "uint16_activations": uint16}
    g = OnnxGraph(model)  # producers changed
    stats["int32_biases"] = quantize_biases(g) if bias_int32 else 0
    stats["int8_embeddings"] = gather_rows_then_dequantize(OnnxGraph(model))
    stats["weights_stored_transposed"] = transpose_stored_weights(OnnxGraph(model))
    _drop_unused(g)
    onnx.checker.check_model(model)
    tmp = path.with_name(f".{path.name}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)
    stats["qdq_pairs"] = sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear")
    return stats
