"""int8 weights and int32 bias: per-output-channel scales, the bias in accumulator units, the range check."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..values import Unsupported, WV

if TYPE_CHECKING:
    from ..lower import Lowering


def bias_int(L: Lowering, name: str | None, m: int, real_scale: np.ndarray) -> np.ndarray:
    """int32 bias in units of in_scale * w_scale[c]."""
    if not name:
        return np.zeros(m, np.int64)
    v = L.value(name)
    if isinstance(v, WV) and v.q.dtype == np.int32:
        bs = np.broadcast_to(v.scale.reshape(-1), (m,)).astype(np.float64)
        q = v.q.reshape(-1).astype(np.int64) - np.broadcast_to(v.zp.reshape(-1), (m,))
        if np.allclose(bs, real_scale, rtol=1e-6, atol=0):
            return q
        return np.rint(q * bs / real_scale).astype(np.int64)
    real = L.const(name).reshape(-1).astype(np.float64)
    return np.rint(np.broadcast_to(real, (m,)) / real_scale).astype(np.int64)


def channel_scales(w: WV, m: int, axis: int) -> np.ndarray:
    if np.any(w.zp != 0):
        raise Unsupported("asymmetric weights (weight zero point must be 0)")
    if w.q.dtype != np.int8:
        raise Unsupported(f"{w.q.dtype} weights (int8 expected)")
    sc = w.scale.reshape(-1).astype(np.float64)
    if sc.size == 1:
        return np.full(m, sc[0])
    if w.axis != axis or sc.size != m:
        raise Unsupported("weights quantized per channel along an axis other than the output channels")
    return sc


def check_range(acc_bound: np.ndarray, real_m: np.ndarray) -> None:
    if np.any(acc_bound * real_m >= 2.0**30) or np.any(acc_bound >= 2.0**31):
        raise Unsupported("accumulator range too large for 32-bit requantization")
