"""Lowering: a QDQ ONNX graph -> the engine IR (`ir.Graph`).

Every ONNX tensor name is bound to a *value* (`values.py`): `QV` (an int8 buffer that is exactly
a float tensor), `FV` (float32), `TV` (integer or boolean), `WV` (a quantized initializer) or `CV`
(a constant).

Nodes are visited in topological order and dispatched through the handler registry of the `ops`
package (one module per op family). A compute node whose result is not exactly representable (Conv, Gemm, Add, pools)
looks ahead for the QuantizeLinear that consumes its output (optionally through a Relu/Clip,
which becomes the clamp range of the requantization): that is the DQ -> op -> Q pattern, and the
Q (and the activation) are fused into the kernel. A QuantizeLinear of a float value becomes a
quantize kernel; of a QV with the same parameters, nothing; with other parameters, a requantize.
Where no QuantizeLinear follows (a residual Add into LayerNorm, attention scores, pooling), the
op runs in float on dequantized inputs: the float32 arithmetic of onnxruntime's QDQ graph.
Fusions (`ops.FUSIONS`) are tried on every node before its handler: they may claim a group of
nodes (e.g. an element-wise chain between a DequantizeLinear and a QuantizeLinear -> a table).

Shapes are static (`prepare.py`): the batch is 1 and every other symbolic input dimension takes
its value from `dims` (by name, e.g. {"sequence": 128}) or DEFAULT_DIM.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from compressor.errors import CompressError

from .fixedpoint import quantize_value
from .ir import TYPE_CODE, Buf, Graph, Op
from .ops import FUSIONS, HANDLERS, fold_constant
from .prepare import DEFAULT_DIM, prepare_model, resolve_dims, run_at_static_shapes
from .values import (COMMUTING_OPS, CV, FV, QV, TV, VIEW_OPS, WV, Sink, Unsupported, c_ident, flt,  # noqa: F401
                     node_attr)

INPUT_TYPES = {onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.INT8: "i8", onnx.TensorProto.INT64: "i64",
               onnx.TensorProto.INT32: "i32", onnx.TensorProto.BOOL: "u8"}


# ---- the lowering pass --------------------------------------------------------------------
class Lowering:
    def __init__(self, model: onnx.ModelProto, name: str = "model", dims: dict[str, int] | None = None):
        self.dims = resolve_dims(model, dims)
        self.shape_notes: list[str] = []
        self.model = prepare_model(model, dims, self.shape_notes)
        self.name = name
        self.g = Graph()
        self.val: dict[str, object] = {}
        self.errors: list[tuple[str, str, str]] = []  # (op_type, node name, reason)
        self.structure_errors: list[str] = []  # model-level limits (inputs/outputs)
        self.skip: set[int] = set()
        self._deq: dict[int, Buf] = {}
        self._fconst: dict[str, Buf] = {}
        self._names: set[str] = set()
        g = self.model.graph
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, int] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            t = vi.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
                self.shapes[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
            self.dtypes[vi.name] = t.elem_type
        self.inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        for n in g.node:
            for o in n.output:
                self.producer[o] = n
        self.live = self._live_nodes()
        self.order = {id(n): i for i, n in enumerate(self.live)}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.live:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = [o.name for o in g.output]

    def _live_nodes(self) -> list[onnx.NodeProto]:
        g = self.model.graph
        need = {o.name for o in g.output}
        live = set()
        for n in reversed(list(g.node)):
            if any(o in need for o in n.output):
                live.add(id(n))
                need.update(i for i in n.input if i)
        return [n for n in g.node if id(n) in live]

    # -- helpers used by handlers --
    def shape(self, name: str) -> tuple[int, ...]:
        v = self.val.get(name)
        if isinstance(v, (QV, FV, TV)):
            return v.buf.shape
        if isinstance(v, CV):
            return tuple(v.arr.shape)
        if name in self.shapes:
            return self.shapes[name]
        raise Unsupported(f"unknown shape of tensor '{name}'")

    def unique(self, base: str) -> str:
        base = c_ident(base)[:48]
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def new_buf(self, onnx_name: str, shape, dtype="i8", scale=1.0, zp=0) -> Buf:
        return Buf(self.unique(onnx_name), tuple(int(s) for s in shape), dtype, float(scale), int(zp),
                   onnx=onnx_name)

    def value(self, name: str):
        if name not in self.val:
            raise Unsupported(f"input '{name}' is not available")
        return self.val[name]

    def q_input(self, name: str) -> Buf:
        """An int8 input: a QV, or a per-tensor quantized constant (becomes a const array)."""
        v = self.value(name)
        if isinstance(v, QV):
            return v.buf
        if isinstance(v, WV) and v.q.dtype == np.int8 and v.scale.size == 1:
            cname = self.g.const("qc", "int8_t", v.q.astype(np.int8))
            return Buf(cname, tuple(v.q.shape), "i8", float(v.scale.reshape(-1)[0]),
                       int(v.zp.reshape(-1)[0]), external="const:" + cname)
        raise Unsupported(f"input '{name}' is not quantized (no DequantizeLinear of an int8 tensor)")

    def f_input(self, name: str) -> Buf:
        """A float input: FV as is, QV through a (cached) dequantize kernel."""
        v = self.value(name)
        if isinstance(v, FV):
            return v.buf
        if isinstance(v, QV):
            b = v.buf
            key = id(b)
            if key not in self._deq or not (self._deq[key].scale == b.scale):
                fb = self.new_buf(b.name + "_f", b.shape, "f32")
                n = b.numel
                self.add_op(Op("dequantize", [b], [fb], lambda c, b=b, fb=fb, n=n: [
                    f"ce_dequantize_i8({n}, {c.ptr(b)}, {flt(b.scale)}, {b.zp}, {c.ptr(fb)});"]))
                self._deq[key] = fb
            return self._deq[key]
        if isinstance(v, TV):
            raise Unsupported(f"input '{name}' is an integer tensor where a float one is expected (Cast it)")
        raise Unsupported(f"input '{name}' is a constant where an activation is expected")

    def f_operand(self, name: str) -> Buf:
        """A float operand of an element-wise op: an activation (`f_input`) or a float constant
        (a const array, shared by every use of the same tensor)."""
        v = self.value(name)
        if isinstance(v, (CV, WV)):
            if name not in self._fconst:
                arr = np.asarray(v.arr if isinstance(v, CV) else v.dequant())
                if arr.dtype == np.bool_ or arr.dtype.kind not in "fiub":
                    raise Unsupported(f"constant '{name}' of type {arr.dtype}")
                arr = arr.astype(np.float32)
                for axis in range(arr.ndim):  # store a constant once along axes it does not vary on
                    if arr.shape[axis] > 1 and np.array_equal(arr, np.broadcast_to(arr.take([0], axis), arr.shape)):
                        arr = arr.take([0], axis)
                cname = self.g.const("fc", "float", arr)
                self._fconst[name] = Buf(cname, tuple(arr.shape), "f32", external="const:" + cname)
            return self._fconst[name]
        return self.f_input(name)

    def const(self, name: str) -> np.ndarray:
        v = self.value(name)
        if isinstance(v, CV):
            return v.arr
        if isinstance(v, WV):
            return v.dequant()
        raise Unsupported(f"input '{name}' must be a constant")

    def weight(self, name: str) -> WV:
        v = self.value(name)
        if isinstance(v, WV):
            return v
        if isinstance(v, CV):
            raise Unsupported(f"weight '{name}' is float (not quantized to int8 with DequantizeLinear)")
        raise Unsupported(f"weight '{name}' is not a constant")

    def add_op(self, op: Op) -> Op:
        self.g.ops.append(op)
        return op

    def bind(self, names, value) -> None:
        for n in names if isinstance(names, (list, tuple)) else [names]:
            self.val[n] = value

    def sink(self, name: str, required: bool = True) -> Sink | None:
        """The QuantizeLinear consuming `name` (through at most one Relu/Clip), if any."""
        if name in self.graph_outputs:
            if required:
                raise Unsupported("its float output is a graph output (no QuantizeLinear after it)")
            return None
        cons = self.data_consumers(name)
        lo_real, hi_real, act = None, None, None
        views: list[onnx.NodeProto] = []
        # shape-only ops between the op and its QuantizeLinear (e.g. ReduceMean -> Reshape -> Q)
        while (len(cons) == 1 and cons[0].op_type in VIEW_OPS and cons[0].output[0] not in self.graph_outputs
               and len(views) < 4):
            views.append(cons[0])
            cons = self.data_consumers(cons[0].output[0])
        if views and not (cons and all(c.op_type == "QuantizeLinear" for c in cons)):
            views, cons = [], self.data_consumers(name)
        if len(cons) == 1 and cons[0].op_type in ("Relu", "Clip") and cons[0].output[0] not in self.graph_outputs:
            act = cons[0]
            if act.op_type == "Relu":
                lo_real, hi_real = 0.0, None
            else:
                lo_real, hi_real = self._clip_range(act)
            cons = self.data_consumers(act.output[0])
        if cons and all(c.op_type == "QuantizeLinear" for c in cons):
            params = [self._q_params(c) for c in cons]
            s, z = params[0]
            if all(np.float32(p[0]) == np.float32(s) and p[1] == z for p in params):
                lo, hi = -128, 127
                if lo_real is not None:
                    lo = max(lo, quantize_value(lo_real, s, z))
                if hi_real is not None:
                    hi = min(hi, quantize_value(hi_real, s, z))
                consumed = views + ([act] if act is not None else []) + list(cons)
                shape = self.shapes.get(views[-1].output[0]) if views else None
                if views and shape is None:
                    raise Unsupported("unknown shape after a Reshape")
                return Sink(float(s), int(z), lo, hi, [c.output[0] for c in cons], consumed, shape)
        far = self._far_quantizer(name)
        if far is not None:  # Q after data-movement ops: quantize here, the moves stay int8
            s, z = far
            return Sink(float(s), int(z), -128, 127, [name], [])
        if required:
            raise Unsupported("its output is not quantized (expected DQ -> op -> QuantizeLinear)")
        return None

    def data_consumers(self, name: str) -> list[onnx.NodeProto]:
        """Consumers that read the values (Shape only reads the static shape)."""
        return [c for c in self.consumers.get(name, []) if c.op_type != "Shape"]

    def _far_quantizer(self, name: str) -> tuple[float, int] | None:
        """(scale, zp) of a QuantizeLinear reached from `name` through ops that commute with it."""
        for _ in range(8):
            if name in self.graph_outputs:
                return None
            cons = self.data_consumers(name)
            if len(cons) != 1:
                return None
            c = cons[0]
            if c.op_type == "QuantizeLinear":
                return self._q_params(c)
            if c.op_type not in COMMUTING_OPS:
                return None
            name = c.output[0]
        return None

    def use_sink(self, sink: Sink, buf: Buf) -> None:
        for n in sink.consumed:
            self.skip.add(id(n))
        if sink.shape is not None and tuple(sink.shape) != buf.shape:
            buf = Buf(self.unique(sink.names[0] + "_view"), tuple(sink.shape), "i8", buf.scale, buf.zp, alias=buf)
        self.bind(sink.names, QV(buf))

    def _q_params(self, qnode: onnx.NodeProto) -> tuple[float, int]:
        if len(qnode.input) < 2 or not qnode.input[1]:
            raise Unsupported("QuantizeLinear without a scale")
        s = self.const(qnode.input[1])
        z = self.const(qnode.input[2]) if len(qnode.input) > 2 and qnode.input[2] else np.zeros((), np.int8)
        if s.size != 1:
            raise Unsupported("per-channel activation quantization (per-tensor expected)")
        if z.dtype != np.int8:
            raise Unsupported(f"activation QuantizeLinear to {z.dtype} (int8 expected)")
        return float(s.reshape(-1)[0]), int(z.reshape(-1)[0])

    def _clip_range(self, node: onnx.NodeProto) -> tuple[float | None, float | None]:
        lo = node_attr(node, "min")
        hi = node_attr(node, "max")
        if len(node.input) > 1 and node.input[1]:
            lo = float(self.const(node.input[1]).reshape(-1)[0])
        if len(node.input) > 2 and node.input[2]:
            hi = float(self.const(node.input[2]).reshape(-1)[0])
        return lo, hi

    # -- driver --
    def run(self) -> Graph:
        g = self.model.graph
        ins = [i for i in g.input if i.name not in self.inits]
        for name, arr in self.inits.items():
            self.val[name] = CV(arr)
        if len(g.output) != 1:
            self.structure_errors.append(
                f"the C engine has one output; the model has {len(g.output)} ({', '.join(o.name for o in g.output)})")
        if not ins:
            self.structure_errors.append("the model has no input")
        for k, inp in enumerate(ins):
            elem = inp.type.tensor_type.elem_type
            dt = INPUT_TYPES.get(elem)
            if dt is None:
                self.structure_errors.append(
                    f"model input '{inp.name}' has type {onnx.TensorProto.DataType.Name(elem)}; float32, int8, "
                    "int64, int32 or bool expected")
                dt = "f32"
            b = Buf(self.unique("input" if len(ins) == 1 else f"in_{inp.name}"), self.shapes.get(inp.name, (1,)), dt,
                    external=f"in:{k}", onnx=inp.name)
            self.g.inputs.append(b)
            self.g.input_names.append(inp.name)
            self.g.input_quants.append(None)
            self.val[inp.name] = FV(b) if dt == "f32" else (QV(b) if dt == "i8" else TV(b))

        self._poisoned: set[str] = set()
        for node in self.live:
            if id(node) in self.skip:
                continue
            after_failure = any(i in self._poisoned for i in node.input)
            try:
                ins_v = [self.val.get(i) for i in node.input if i]
                if node.op_type not in ("DequantizeLinear", "QuantizeLinear", "Shape") and ins_v and all(
                        isinstance(v, CV) for v in ins_v):
                    fold_constant(self, node)
                    continue
                if any(fuse(self, node) for fuse in FUSIONS):
                    continue
                handler = HANDLERS.get(node.op_type)
                if handler is None:
                    raise Unsupported("no C engine kernel for this op")
                handler(self, node)
            except (Unsupported, ValueError, IndexError, KeyError, TypeError) as e:
                why = str(e) if isinstance(e, Unsupported) else f"cannot lower it ({type(e).__name__}: {e})"
                if after_failure and node.op_type in HANDLERS:
                    # behind a failed node: retry with int8 placeholders for its outputs, so only
                    # problems of this node itself are reported
                    why = self._retry_with_placeholders(node, HANDLERS[node.op_type])
                if why:
                    self.errors.append((node.op_type, node.name or node.output[0], why))
                self._poison(node)
        if self.errors and not self.shape_notes:  # does the model run at these shapes at all?
            _, why = run_at_static_shapes(self.model, [o.name for o in self.model.graph.output])
            self.shape_notes += [why] if why else []
        if self.errors and self.shape_notes:
            self.structure_errors.append(
                f"onnxruntime cannot run the model at the engine's input shapes ({self._shapes_text()}): "
                f"{self.shape_notes[0]}; if the model was exported for fixed shapes, give them (dims)")
        if self.errors or self.structure_errors:
            return self.g
        self._bind_output()
        return self.g

    def _shapes_text(self) -> str:
        return ", ".join(f"{n} {'x'.join(str(d) for d in b.shape)}" for n, b in zip(self.g.input_names, self.g.inputs))

    def _retry_with_placeholders(self, node: onnx.NodeProto, handler) -> str | None:
        saved = {i: self.val.get(i) for i in node.input if i in self._poisoned}
        n_ops, n_consts, skip = len(self.g.ops), len(self.g.consts), set(self.skip)
        for i in saved:
            shape = self.shapes.get(i) or (saved[i].buf.shape if isinstance(saved[i], (QV, FV)) else (1,))
            self.val[i] = QV(Buf(self.unique(i + "_placeholder"), tuple(shape), "i8", 1.0, 0))
        try:
            handler(self, node)
            why = None
        except (Unsupported, ValueError, IndexError, KeyError, TypeError) as e:
            why = str(e) if isinstance(e, Unsupported) else f"cannot lower it ({type(e).__name__}: {e})"
        del self.g.ops[n_ops:]
        del self.g.consts[n_consts:]
        self.skip = skip
        self.val.update(saved)
        return why

    def _poison(self, node: onnx.NodeProto) -> None:
        """Give a failed node's outputs placeholder float values so later nodes still get checked."""
        for o in node.output:
            if o:
                self._poisoned.add(o)
            if o and o not in self.val:
                shape = self.shapes.get(o, (1,))
                self.val[o] = FV(self.new_buf(o, shape, "f32"))

    def _bind_output(self) -> None:
        name = self.graph_outputs[0]
        self.g.output_name = name
        v = self.val.get(name)
        if isinstance(v, QV):
            b = v.buf
            ob = Buf(self.unique("output"), b.shape, "f32", b.scale, b.zp, external="out")
            n = b.numel
            self.add_op(Op("dequantize", [b], [ob], lambda c, b=b, ob=ob, n=n: [
                f"ce_dequantize_i8({n}, {c.ptr(b)}, {flt(b.scale)}, {b.zp}, {c.ptr(ob)});"]))
            self.g.output = ob
            self.g.output_quant = (b.scale, b.zp)
        elif isinstance(v, FV):
            b = v.buf
            r = b.root()
            if r.external is None and r.nbytes == b.nbytes:
                r.external = "out"
                self.g.output = b
            else:
                ob = Buf(self.unique("output"), b.shape, "f32", external="out")
                self.add_op(Op("copy", [b], [ob], lambda c, b=b, ob=ob: [
                    f"memcpy({c.ptr(ob)}, {c.ptr(b)}, {b.nbytes});"]))
                self.g.output = ob
            self.g.output_quant = None
        elif isinstance(v, TV):  # an integer output: written as float32 like every engine output
            b = v.buf
            ob = Buf(self.unique("output"), b.shape, "f32", external="out")
            self.add_op(Op("cast", [b], [ob], lambda c, b=b, ob=ob: [
                f"ce_cast({b.numel}, {TYPE_CODE[b.dtype]}, {c.ptr(b)}, 0, {c.ptr(ob)});"]))
            self.g.output = ob
            self.g.output_quant = None
        else:
            raise CompressError(f"graph output '{name}' is a constant")

