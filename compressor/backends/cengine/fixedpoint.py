"""Fixed-point requantization parameters (see the header comment of native/cengine/cengine.h).

    M ~= mult * 2^-shift, mult in [2^30, 2^31), 1 <= shift <= 63
    y = clamp(rne(acc * mult / 2^shift), lo - zp, hi - zp) + zp      (rne: ties to even)

and `int_requant` / `rne_shift` are the same arithmetic in numpy (tests, reference checks).
"""

from __future__ import annotations

import math

import numpy as np

from compressor.errors import CompressError


def quantize_multiplier(m: float) -> tuple[int, int]:
    """Return (mult, shift) with m ~= mult * 2^-shift (31 significant bits, rounded to nearest)."""
    if not math.isfinite(m) or m < 0:
        raise CompressError(f"invalid requantization multiplier {m!r} (scales must be positive)")
    if m == 0.0:
        return 0, 1
    mant, exp = math.frexp(m)  # m = mant * 2^exp, mant in [0.5, 1)
    mult = int(round(mant * (1 << 31)))
    if mult == 1 << 31:
        mult //= 2
        exp += 1
    shift = 31 - exp
    if shift < 1:
        raise CompressError(f"requantization multiplier {m:g} is too large (>= 2^30)")
    if shift > 63:  # tiny multiplier: drop precision instead of overflowing the shift
        mult >>= shift - 63
        shift = 63
        if mult == 0:
            return 0, 1
    return mult, shift


def quantize_multipliers(ms) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(m)) for m in np.asarray(ms, np.float64).reshape(-1)]
    return (np.array([p[0] for p in pairs], np.int64).astype(np.int32),
            np.array([p[1] for p in pairs], np.int32))


def small_multipliers(reals, bits: int = 21, max_shift: int = 29) -> tuple[list[int], int]:
    """Common-shift multipliers for the add/requant kernels: round(r * 2^shift) with |.| < 2^bits."""
    reals = [float(r) for r in reals]
    top = max(abs(r) for r in reals)
    if top == 0:
        return [0 for _ in reals], 1
    shift = max_shift
    while shift > 1 and round(top * 2.0**shift) >= 2**bits:
        shift -= 1
    if round(top * 2.0**shift) >= 2**bits:
        raise CompressError(f"element-wise scale ratio {top:g} is too large for int8 requantization")
    return [int(round(r * 2.0**shift)) for r in reals], shift


def rne_shift(v, shift) -> np.ndarray:
    """v / 2^shift rounded to nearest, ties to even (int64, broadcasting)."""
    v = np.asarray(v, np.int64)
    shift = np.asarray(shift, np.int64)
    h = np.int64(1) << (shift - 1)
    q = (v + h) >> shift
    tie = (v & ((h << 1) - 1)) == h
    return np.where(tie, q & ~np.int64(1), q)


def int_requant(acc, mult, shift, zp, lo=-128, hi=127) -> np.ndarray:
    """numpy reference of ce_requant (broadcasting)."""
    v = rne_shift(np.asarray(acc, np.int64) * np.asarray(mult, np.int64), shift)
    return (np.clip(v, lo - zp, hi - zp) + zp).astype(np.int8)


def quantize_value(x, scale: float, zp: int) -> int:
    """ONNX QuantizeLinear of one float (float32 division, round half to even), saturated int8."""
    v = np.rint(np.float32(x) / np.float32(scale)) + zp
    return int(np.clip(v, -128, 127))
