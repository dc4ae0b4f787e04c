"""Native fused kernels (compressor.native): references, native vs reference, edge cases, switch.

The tests marked `requires_native` build the C++ extension on first use (cached afterwards under
$COMPRESSOR_CACHE or ~/.cache/compressor/native); they skip only when no C++ compiler exists.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

try:
    import compressor.native as native
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import compressor.native as native

_HAS_CXX = shutil.which(os.environ.get("CXX", "c++")) is not None or shutil.which("g++") is not None
requires_native = pytest.mark.skipif(not _HAS_CXX, reason="no C++ compiler to build the native ops")


@pytest.fixture(autouse=True)
def _default_backend(monkeypatch):
    monkeypatch.delenv(native.ENV_BACKEND, raising=False)
    native.set_backend(None)
    yield
    native.set_backend(None)


@pytest.fixture
def use_native():
    native.set_backend("native")
    assert native.backend() == "native"
    yield
    native.set_backend(None)


def _gen(seed=0):
    g = torch.Generator().manual_seed(seed)
    return g


# ----------------------------------------------------------------------------- LSQ helpers

SIGNED = (-128, 127)
UNSIGNED = (0, 255)


def _make_lsq_case(shape, axis, qrange, zp=False, dtype=torch.float32, seed=0):
    """Random x and a scale that clips a few percent of the values."""
    g = _gen(seed)
    qmin, qmax = qrange
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if qmin == 0:
        x = x.abs() * 0.8 - 0.3  # mostly positive, some below the zero point's range
    if axis is None:
        scale = (x.abs().max() * 0.8 / qmax).reshape(1)
        zero_point = torch.tensor([7.0]) if zp else None
    else:
        dims = [d for d in range(x.dim()) if d != axis % x.dim()]
        amax = x.abs().amax(dim=dims) if dims else x.abs()
        scale = amax * (0.6 + 0.4 * torch.rand(amax.shape, generator=g, dtype=torch.float64)) / qmax
        zero_point = torch.randint(0, 20, amax.shape, generator=g).to(torch.float32) if zp else None
    return x.to(dtype), scale.to(dtype), zero_point


def _lsq_grads(fn, x, scale, qmin, qmax, axis, zero_point, grad_scale=None, seed=1):
    x = x.detach().clone().requires_grad_(True)
    scale = scale.detach().clone().requires_grad_(True)
    y = fn(x, scale, qmin, qmax, axis=axis, grad_scale=grad_scale, zero_point=zero_point)
    gy = torch.randn(y.shape, generator=_gen(seed), dtype=y.dtype)
    y.backward(gy)
    return y.detach(), x.grad, scale.grad


def _formula_grads(x, scale, qmin, qmax, axis, zero_point, gy, grad_scale):
    """The field-notes LSQ gradient written out directly (float64)."""
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    s = scale.double().reshape(shape)
    zp = torch.zeros(()) if zero_point is None else torch.round(zero_point.double()).reshape(
        shape if zero_point.numel() > 1 else [1] * x.dim())
    v = x.double() * (1.0 / s)
    lo, hi = qmin - zp, qmax - zp
    inside = (v >= lo) & (v <= hi)
    d = torch.where(v > hi, hi + 0 * v, torch.where(v < lo, lo + 0 * v, torch.round(v) - v))
    gx = torch.where(inside, gy.double(), torch.zeros(()).double())
    per = (d * gy.double())
    if axis is None:
        gs = per.sum().reshape(scale.shape)
    else:
        gs = per.sum(dim=[k for k in range(x.dim()) if k != axis])
    return gx, gs * grad_scale


# ----------------------------------------------------------------------------- reference: LSQ

@pytest.mark.parametrize("axis,zp", [(None, False), (0, False), (1, False), (None, True), (1, True)])
def test_reference_lsq_gradcheck(axis, zp):
    """gradcheck of the reference composite with round() frozen at the base point.

    LSQ's gradient is the exact gradient of y = clamp(x/s, lo, hi) + c) * s with the rounding
    offset c = round(v) - v held constant, so the composite (clamp mask, scale path, zero point)
    can be checked against finite differences in float64.
    """
    qmin, qmax = UNSIGNED if zp else SIGNED
    g = _gen(3)
    shape = (3, 4)
    channels = 1 if axis is None else shape[axis]
    scale = (0.05 + 0.05 * torch.rand(channels, generator=g, dtype=torch.float64))
    zero_point = torch.randint(0, 10, (channels,), generator=g).double() if zp else None
    bshape = [1, 1]
    if axis is not None:
        bshape[axis] = -1
    zpb = torch.zeros(()) if zero_point is None else zero_point.reshape(bshape)
    # v = x/s on integers + fractions in +-[0.1, 0.4], some beyond the range: no kink nearby.
    k = torch.randint(qmin - 4, qmax + 5, shape, generator=g).double() - zpb
    frac = (0.1 + 0.3 * torch.rand(shape, generator=g, dtype=torch.float64)) * (
        torch.randint(0, 2, shape, generator=g) * 2 - 1)
    k[0, 0], k[1, 1] = qmax + 30, qmin - 30  # clipped on both sides (zero points are < 10)
    x = ((k + frac) * scale.reshape(bshape)).requires_grad_(True)
    sc = scale.clone().requires_grad_(True)
    with torch.no_grad():
        lo, hi = qmin - zpb, qmax - zpb
        vc0 = torch.clamp(x * (1 / sc.reshape(bshape)), lo, hi)
        offset = torch.round(vc0) - vc0

    def f(xx, ss):
        return native._lsq_reference(xx, ss, qmin, qmax, axis, 1.0, zero_point, round_fn=lambda vc: vc + offset)

    assert torch.allclose(f(x, sc), native.lsq_fake_quant_reference(x, sc, qmin, qmax, axis, 1.0, zero_point))
    assert torch.autograd.gradcheck(f, (x, sc), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("axis,zp", [(None, False), (0, False), (1, True)])
def test_reference_lsq_matches_formula(axis, zp):
    qmin, qmax = UNSIGNED if zp else SIGNED
    x, scale, zero_point = _make_lsq_case((32, 16), axis, (qmin, qmax), zp, dtype=torch.float64)
    y, gx, gs = _lsq_grads(native.lsq_fake_quant_reference, x, scale, qmin, qmax, axis, zero_point)
    gy = torch.randn(y.shape, generator=_gen(1), dtype=y.dtype)
    numel_per_scale = x.numel() // (1 if axis is None else x.shape[axis])
    g = 1 / math.sqrt(numel_per_scale * qmax)
    fgx, fgs = _formula_grads(x, scale, qmin, qmax, axis, zero_point, gy, g)
    torch.testing.assert_close(gx, fgx)
    torch.testing.assert_close(gs, fgs)
    shape = [1, 1] if axis is None else [(-1 if d == axis else 1) for d in range(2)]
    zpb = 0 if zero_point is None else torch.round(zero_point.double()).reshape(shape)
    expect = (torch.clamp(torch.round(x / scale.reshape(shape)) + zpb, qmin, qmax) - zpb) * scale.reshape(shape)
    torch.testing.assert_close(y, expect)


# ----------------------------------------------------------------------------- reference: KD

@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
def test_reference_kd_gradcheck(reduction):
    g = _gen(5)
    s = torch.randn(4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 7, generator=g, dtype=torch.float64) * 2
    assert torch.autograd.gradcheck(lambda a: native.kd_loss_reference(a, t, 2.5, reduction), (s,))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_reference_kd_matches_kl_div(temperature):
    g = _gen(6)
    s = torch.randn(16, 10, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(16, 10, generator=g, dtype=torch.float64)
    ours = native.kd_loss_reference(s, t, temperature)
    theirs = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1),
                      reduction="batchmean") * temperature ** 2
    torch.testing.assert_close(ours, theirs)
    (ga,) = torch.autograd.grad(ours, s)
    (gb,) = torch.autograd.grad(theirs, s)
    torch.testing.assert_close(ga, gb)


# ----------------------------------------------------------------------------- native vs reference: LSQ

LSQ_CASES = [
    # shape, axis, range, zero point
    ((256, 64), None, SIGNED, False),
    ((64, 48), 0, SIGNED, False),
    ((64, 48), 1, SIGNED, False),
    ((40, 24), -1, SIGNED, False),
    ((128, 32), None, UNSIGNED, True),
    ((96, 40), 1, UNSIGNED, True),
    ((16, 12), 0, UNSIGNED, True),
    ((6, 8, 5, 5), 1, SIGNED, False),   # short channel runs (inner 25)
    ((3, 5, 300), 1, SIGNED, False),    # long channel runs (inner 300)
    ((2, 3, 20000), None, UNSIGNED, True),  # per tensor, several reduction chunks
    ((5000, 3), 1, SIGNED, False),      # many rows, few channels
]


@requires_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,axis,qrange,zp", LSQ_CASES)
def test_native_lsq_matches_reference(use_native, shape, axis, qrange, zp, dtype):
    x, scale, zero_point = _make_lsq_case(shape, axis, qrange, zp, dtype=dtype, seed=hash(shape) % 1000)
    qmin, qmax = qrange
    yn, gxn, gsn = _lsq_grads(native.lsq_fake_quant, x, scale, qmin, qmax, axis, zero_point)
    yr, gxr, gsr = _lsq_grads(native.lsq_fake_quant_reference, x, scale, qmin, qmax, axis, zero_point)
    torch.testing.assert_close(yn, yr, rtol=0, atol=0)
    torch.testing.assert_close(gxn, gxr)
    # the scale gradient is a long sum, accumulated in a different order: tolerance on its magnitude
    assert gsn.shape == scale.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(gsn, gsr, rtol=10 * tol, atol=tol * gsr.abs().max().item() + 1e-9)


@requires_native
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_native_lsq_matches_torch_learnable_fake_quant(use_native, axis):
    """Independent oracle: torch's own learnable fake quant (zero point 0), on data with no x/s in
    the half-step bands just outside [qmin, qmax], where torch's mask (on round(x/s)) and LSQ's
    (on x/s) differ."""
    x, scale, _ = _make_lsq_case((64, 48), axis, SIGNED, dtype=torch.float32, seed=11)
    shape = [1, 1] if axis is None else [(-1 if d == axis else 1) for d in range(2)]
    v = x / scale.reshape(shape)
    band = ((v > 127) & (v <= 127.5)) | ((v < -128) & (v >= -128.5))
    x = torch.where(band, x * 1.05, x)  # push them out of the band
    g = 0.01
    yn, gxn, gsn = _lsq_grads(native.lsq_fake_quant, x, scale, -128, 127, axis, None, grad_scale=g)
    xt = x.clone().requires_grad_(True)
    st = scale.clone().requires_grad_(True)
    if axis is None:
        yt = torch._fake_quantize_learnable_per_tensor_affine(xt, st, torch.zeros(1), -128, 127, g)
    else:
        yt = torch._fake_quantize_learnable_per_channel_affine(xt, st, torch.zeros(scale.numel()), axis, -128,
                                                               127, g)
    yt.backward(torch.randn(yt.shape, generator=_gen(1)))
    torch.testing.assert_close(yn, yt.detach())
    torch.testing.assert_close(gxn, xt.grad)
    torch.testing.assert_close(gsn, st.grad.reshape(scale.shape), rtol=1e-4, atol=1e-5 * st.grad.abs().max().item())


@requires_native
def test_native_inference_mode_and_no_grad(use_native):
    x, scale, _ = _make_lsq_case((16, 8), 1, SIGNED)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    expect_y = native.lsq_fake_quant_reference(x, scale, -128, 127, axis=1)
    expect_l = native.kd_loss_reference(s, t, 2.0)
    for ctx in (torch.inference_mode, torch.no_grad):
        with ctx():
            torch.testing.assert_close(native.lsq_fake_quant(x, scale, -128, 127, axis=1), expect_y)
            torch.testing.assert_close(native.kd_loss(s, t, 2.0), expect_l)


@requires_native
def test_torch_op_direct_call_with_negative_axis(use_native):
    """The registered op works on its own (negative axis, autograd in C++)."""
    x, scale, _ = _make_lsq_case((8, 6), 1, SIGNED, dtype=torch.float64)
    x.requires_grad_(True)
    scale.requires_grad_(True)
    y = torch.ops.compressor.lsq_fake_quant(x, scale, None, -128, 127, -1, 0.5)
    y.sum().backward()
    xr, sr = x.detach().clone().requires_grad_(True), scale.detach().clone().requires_grad_(True)
    native.lsq_fake_quant_reference(xr, sr, -128, 127, axis=1, grad_scale=0.5).sum().backward()
    torch.testing.assert_close(y, native.lsq_fake_quant_reference(x, scale, -128, 127, axis=1, grad_scale=0.5))
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(scale.grad, sr.grad)


@requires_native
def test_native_lsq_grad_scale(use_native):
    x, scale, _ = _make_lsq_case((64, 32), 1, SIGNED)
    _, _, g1 = _lsq_grads(native.lsq_fake_quant, x, scale, -128, 127, 1, None, grad_scale=1.0)
    _, _, g3 = _lsq_grads(native.lsq_fake_quant, x, scale, -128, 127, 1, None, grad_scale=0.25)
    _, _, gd = _lsq_grads(native.lsq_fake_quant, x, scale, -128, 127, 1, None)
    torch.testing.assert_close(g3, g1 * 0.25)
    torch.testing.assert_close(gd, g1 / math.sqrt(64 * 127))


@requires_native
def test_native_lsq_half_and_bfloat16_on_cpu(use_native):
    x, scale, _ = _make_lsq_case((32, 16), 1, SIGNED)
    for dtype in (torch.bfloat16, torch.float16):
        xx = x.to(dtype).requires_grad_(True)
        y = native.lsq_fake_quant(xx, scale, -128, 127, axis=1)
        assert y.dtype == dtype
        y.sum().backward()
        assert xx.grad.dtype == dtype


# ----------------------------------------------------------------------------- native vs reference: KD

@requires_native
@pytest.mark.parametrize("rows,classes", [(64, 10), (64, 30522)])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_native_kd_matches_kl_div(use_native, rows, classes, temperature):
    g = _gen(rows + classes)
    s = (torch.randn(rows, classes, generator=g) * 3).requires_grad_(True)
    t = torch.randn(rows, classes, generator=g) * 3
    loss = native.kd_loss(s, t, temperature)
    (gn,) = torch.autograd.grad(loss, s)
    s64 = s.detach().double().requires_grad_(True)
    ref = F.kl_div(F.log_softmax(s64 / temperature, -1), F.softmax(t.double() / temperature, -1),
                   reduction="batchmean") * temperature ** 2
    (gr,) = torch.autograd.grad(ref, s64)
    torch.testing.assert_close(loss.double(), ref, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(gn.double(), gr, rtol=1e-4, atol=1e-4 * gr.abs().max().item())


@requires_native
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
def test_native_kd_reductions_and_leading_dims(use_native, reduction):
    g = _gen(9)
    s = torch.randn(3, 5, 11, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 5, 11, generator=g, dtype=torch.float64)
    a = native.kd_loss(s, t, 2.0, reduction)
    b = native.kd_loss_reference(s, t, 2.0, reduction)
    assert a.shape == b.shape == ((3, 5) if reduction == "none" else ())
    torch.testing.assert_close(a, b)
    w = torch.randn(a.shape, generator=g, dtype=torch.float64)
    (ga,) = torch.autograd.grad((a * w).sum(), s)
    (gb,) = torch.autograd.grad((b * w).sum(), s)
    torch.testing.assert_close(ga, gb)


@requires_native
def test_native_kd_teacher_gets_no_gradient(use_native):
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 6, requires_grad=True)
    native.kd_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


@requires_native
def test_native_kd_masked_teacher_classes(use_native):
    """Teacher logits of -inf (masked vocabulary): probability 0, contributes 0, no NaN."""
    s = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 9, dtype=torch.float64)
    t[:, 2] = float("-inf")
    with torch.no_grad():
        s[:, 2] = float("-inf")  # masked for both
    a = native.kd_loss(s, t, 1.5)
    b = native.kd_loss_reference(s, t, 1.5)
    assert torch.isfinite(a)
    torch.testing.assert_close(a, b)
    (ga,) = torch.autograd.grad(a, s)
    (gb,) = torch.autograd.grad(b, s)
    torch.testing.assert_close(ga, gb)


# ----------------------------------------------------------------------------- edge cases (both backends)

BACKENDS = ["reference", pytest.param("native", marks=requires_native)]


@pytest.mark.parametrize("which", BACKENDS)
@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan"), float("inf")])
def test_lsq_rejects_bad_scale(which, bad):
    native.set_backend(which)
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="scale must be positive"):
        native.lsq_fake_quant(x, torch.tensor([bad]), -128, 127)
    with pytest.raises(ValueError, match="scale must be positive"):
        native.lsq_fake_quant(x, torch.tensor([0.1, bad, 0.2]), -128, 127, axis=1)


@pytest.mark.parametrize("which", BACKENDS)
def test_lsq_rejects_bad_arguments(which):
    native.set_backend(which)
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="per-channel scale"):
        native.lsq_fake_quant(x, torch.full((4,), 0.1), -128, 127, axis=1)
    with pytest.raises(ValueError, match="per-channel scale"):
        native.lsq_fake_quant(x, torch.full((1, 3), 0.1), -128, 127, axis=1)
    with pytest.raises(ValueError, match="per-tensor scale"):
        native.lsq_fake_quant(x, torch.full((3,), 0.1), -128, 127)
    with pytest.raises(ValueError, match="qmin"):
        native.lsq_fake_quant(x, torch.tensor([0.1]), 5, 5)
    with pytest.raises(ValueError, match="qmin"):
        native.lsq_fake_quant(x, torch.tensor([0.1]), 10, -10)
    with pytest.raises(ValueError, match="axis"):
        native.lsq_fake_quant(x, torch.tensor([0.1]), -128, 127, axis=2)
    with pytest.raises(ValueError, match="zero_point"):
        native.lsq_fake_quant(x, torch.full((3,), 0.1), 0, 255, axis=1, zero_point=torch.zeros(2))


@pytest.mark.parametrize("which", BACKENDS)
@pytest.mark.parametrize("axis", [None, 1])
def test_lsq_nan_propagates(which, axis):
    native.set_backend(which)
    x = torch.randn(6, 4)
    x[2, 1] = float("nan")
    scale = torch.full((1,) if axis is None else (4,), 0.05, requires_grad=True)
    xx = x.clone().requires_grad_(True)
    y = native.lsq_fake_quant(xx, scale, -128, 127, axis=axis)
    assert torch.isnan(y[2, 1]) and torch.isnan(y).sum() == 1
    y.sum().backward()
    assert xx.grad[2, 1] == 0 and torch.isfinite(xx.grad).all()  # documented: 0 at NaN inputs
    if axis is None:
        assert torch.isnan(scale.grad).all()
    else:  # only the NaN's channel is poisoned
        assert torch.isnan(scale.grad[1]) and torch.isfinite(scale.grad[[0, 2, 3]]).all()


@pytest.mark.parametrize("which", BACKENDS)
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_lsq_empty(which, axis):
    native.set_backend(which)
    x = torch.empty(0, 5, requires_grad=True)
    channels = 1 if axis is None else x.shape[axis]
    scale = torch.full((channels,), 0.1, requires_grad=True)
    y = native.lsq_fake_quant(x, scale, -128, 127, axis=axis)
    assert y.shape == (0, 5)
    y.sum().backward()
    assert x.grad.shape == (0, 5)
    assert torch.equal(scale.grad, torch.zeros(channels))


@pytest.mark.parametrize("which", BACKENDS)
def test_lsq_non_contiguous(which):
    native.set_backend(which)
    base, scale, zp = _make_lsq_case((24, 40), 0, UNSIGNED, zp=True)
    x = base.t()  # (40, 24), non-contiguous, channels on axis 1
    assert not x.is_contiguous()
    y, gx, gs = _lsq_grads(native.lsq_fake_quant, x, scale, 0, 255, 1, zp)
    yc, gxc, gsc = _lsq_grads(native.lsq_fake_quant_reference, x.contiguous(), scale, 0, 255, 1, zp)
    torch.testing.assert_close(y, yc)
    torch.testing.assert_close(gx, gxc)
    torch.testing.assert_close(gs, gsc, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", BACKENDS)
def test_kd_rejects_bad_arguments(which):
    native.set_backend(which)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(ValueError, match="temperature"):
        native.kd_loss(s, t, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        native.kd_loss(s, t, -1.0)
    with pytest.raises(ValueError, match="shape"):
        native.kd_loss(s, torch.randn(4, 6))
    with pytest.raises(ValueError, match="reduction"):
        native.kd_loss(s, t, reduction="avg")


@pytest.mark.parametrize("which", BACKENDS)
def test_kd_nan_and_empty_and_non_contiguous(which):
    native.set_backend(which)
    s = torch.randn(3, 8)
    t = torch.randn(3, 8)
    s[1, 4] = float("nan")
    rows = native.kd_loss(s, t, 2.0, reduction="none")
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2]]).all()
    assert torch.isnan(native.kd_loss(s, t, 2.0))
    # empty batch: sum is 0, batchmean is NaN (0 / 0, as torch's means)
    e = torch.empty(0, 8, requires_grad=True)
    assert native.kd_loss(e, torch.empty(0, 8), reduction="sum").item() == 0
    assert torch.isnan(native.kd_loss(e, torch.empty(0, 8)))
    native.kd_loss(e, torch.empty(0, 8), reduction="sum").backward()
    assert e.grad.shape == (0, 8)
    # non-contiguous student and teacher
    big_s = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    big_t = torch.randn(6, 10, dtype=torch.float64)
    a = native.kd_loss(big_s[::2], big_t.t()[1::2], 3.0)
    b = native.kd_loss_reference(big_s[::2].detach().contiguous(), big_t.t()[1::2].contiguous(), 3.0)
    torch.testing.assert_close(a, b)
    a.backward()
    assert big_s.grad[1::2].abs().sum() == 0 and big_s.grad[::2].abs().sum() > 0


# ----------------------------------------------------------------------------- the switch

def test_switch_reference_forced(monkeypatch):
    native.set_backend("reference")
    assert native.backend() == "reference"

    def boom(*a, **k):
        raise AssertionError("native path used")

    monkeypatch.setattr(native.lsq, "_lsq_native", boom)
    monkeypatch.setattr(native.kd, "_kd_native", boom)
    native.lsq_fake_quant(torch.randn(3, 4), torch.tensor([0.1]), -128, 127)
    native.kd_loss(torch.randn(3, 4), torch.randn(3, 4))


def test_switch_env_var(monkeypatch):
    monkeypatch.setenv(native.ENV_BACKEND, "reference")
    assert native.backend() == "reference"
    monkeypatch.setenv(native.ENV_BACKEND, "bogus")
    with pytest.raises(ValueError, match="COMPRESSOR_NATIVE"):
        native.backend()
    native.set_backend("reference")  # an explicit choice wins over the environment
    assert native.backend() == "reference"
    with pytest.raises(ValueError, match="backend"):
        native.set_backend("fast")


@requires_native
def test_switch_env_var_native(monkeypatch):
    monkeypatch.setenv(native.ENV_BACKEND, "native")
    assert native.backend() == "native"
    info = native.build_info()
    assert info["built"] and info["error"] is None and Path(info["library"]).is_file()
    assert Path(info["cache_dir"]) == Path(info["build_dir"])


def test_auto_falls_back_on_build_failure(monkeypatch):
    """A failed build: auto warns once and uses the reference; native raises a clear error."""
    monkeypatch.setattr(native.build, "_state", dict(native.build._state, attempted=True, built=False,
                                                error="RuntimeError: Error building extension\nc++: not found",
                                                warned=False))
    native.set_backend("auto")
    with pytest.warns(RuntimeWarning, match="unavailable"):
        assert native.backend() == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.backend() == "reference"  # only once
        y = native.lsq_fake_quant(torch.randn(2, 3), torch.tensor([0.1]), -128, 127)
    assert y.shape == (2, 3)
    native.set_backend("native")
    with pytest.raises(native.NativeBuildError, match="c\\+\\+: not found"):
        native.backend()
    with pytest.raises(native.NativeBuildError):
        native.kd_loss(torch.randn(2, 3), torch.randn(2, 3))


def test_real_build_failure_falls_back(tmp_path):
    """With no working compiler, the first use warns and computes with the reference."""
    code = (
        "import warnings, torch, compressor.native as n\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    y = n.kd_loss(torch.randn(2, 3), torch.randn(2, 3))\n"
        "print(n.backend(), bool(w), n.build_info()['built'], n.build_info()['error'] is not None)\n"
    )
    env = dict(os.environ, COMPRESSOR_CACHE=str(tmp_path), CXX="/nonexistent/c++", COMPRESSOR_NATIVE="auto",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["reference", "True", "False", "True"], out.stdout + out.stderr


def test_a_build_killed_earlier_does_not_block_the_next_one(tmp_path):
    """torch leaves its build lock file behind when a build is killed; the next load must not wait on it forever."""
    if not native.build.load():
        pytest.skip(f"the native ops do not build here: {native.build_info()['error']}")
    built = Path(native.build_info()["build_dir"])
    cache = tmp_path / "native" / built.name
    shutil.copytree(built, cache)
    (cache / "lock").write_text("")  # what a killed build leaves
    code = "import compressor.native as n; print(n.build.load(strict=True))"
    env = dict(os.environ, COMPRESSOR_CACHE=str(tmp_path), COMPRESSOR_NATIVE="auto",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    assert "left by a build that was killed" in out.stderr


def test_import_does_not_build():
    code = "import compressor, compressor.native as n; print(n.build_info()['attempted'])"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- CUDA compile check

def test_cuda_kernels_compile_for_orin_and_hopper():
    """nvcc compiles the CUDA kernels for sm_87 (Jetson Orin) and sm_90 (nothing CUDA runs here)."""
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").exists():
        pytest.skip("nvcc is not installed")
    script = Path(__file__).resolve().parents[1] / "native" / "ops" / "check_cuda.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout and "sm_87" in result.stdout
