"""The values the lowering binds ONNX tensor names to, and the small helpers every op handler uses.

* `QV(buf)`: a float tensor that equals ``(buf - buf.zp) * buf.scale`` exactly, for an int8
  buffer: the output of a DequantizeLinear of an activation, or a view of one;
* `FV(buf)`: a float32 buffer (graph input, Softmax/LayerNorm/GELU results, ...);
* `TV(buf)`: an integer or boolean tensor (int64 token ids and attention masks, bool masks);
* `WV`: an integer initializer behind a DequantizeLinear (weights, int32 bias);
* `CV`: a constant (initializers, Constant nodes, folded shape arithmetic).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx

from .ir import Buf

VIEW_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")
# ops that commute with QuantizeLinear (they move or select values): a Q after them can be
# applied before them instead
COMMUTING_OPS = VIEW_OPS + ("Transpose", "MaxPool")


class Unsupported(Exception):
    """The node cannot be lowered; the message says why."""


# ---- values -------------------------------------------------------------------------------
@dataclass(eq=False)
class QV:
    buf: Buf


@dataclass(eq=False)
class FV:
    buf: Buf


@dataclass(eq=False)
class TV:
    buf: Buf


@dataclass(eq=False)
class WV:
    q: np.ndarray  # integer values (int8 weights or int32 bias)
    scale: np.ndarray  # float64, shape () or (n,)
    zp: np.ndarray
    axis: int

    def dequant(self) -> np.ndarray:
        q = self.q.astype(np.float64)
        if self.scale.ndim == 0 or self.scale.size == 1:
            return ((q - self.zp.reshape(-1)[0]) * self.scale.reshape(-1)[0]).astype(np.float32)
        shp = [1] * q.ndim
        shp[self.axis] = -1
        return ((q - self.zp.reshape(shp)) * self.scale.reshape(shp)).astype(np.float32)


@dataclass(eq=False)
class CV:
    arr: np.ndarray


@dataclass
class Sink:
    """Where a fused op writes: the int8 quantization of its consumer Q (and activation clamp)."""

    scale: float
    zp: int
    lo: int
    hi: int
    names: list[str]  # ONNX names bound to the int8 result
    consumed: list[onnx.NodeProto] = field(default_factory=list)
    shape: tuple[int, ...] | None = None  # shape at the Q when shape-only ops sit before it


def c_ident(name: str) -> str:
    s = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_") or "t"
    return s if not s[0].isdigit() else "t" + s



def node_attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default



def flt(x: float) -> str:
    """An exact C float literal."""
    f = float(np.float32(x))
    if np.isinf(f):
        return "INFINITY" if f > 0 else "-INFINITY"
    return f"{f.hex()}f" if f != 0 else "0.0f"
