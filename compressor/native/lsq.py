"""LSQ fake quantization (learnable step size, Esser et al. 2020) with autograd: the native op,
its pure-PyTorch reference, and the argument checks they share."""
from __future__ import annotations

import math
import operator
from typing import Optional

import torch

from .build import NATIVE_CPU_DTYPES, use_native


def _default_grad_scale(numel_per_scale: int, qmin: int, qmax: int) -> float:
    qp = qmax if qmax > 0 else max(-qmin, 1)
    return 1.0 / math.sqrt(numel_per_scale * qp) if numel_per_scale > 0 else 1.0


def _check_lsq(x, scale, qmin, qmax, axis, zero_point, grad_scale):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"lsq_fake_quant: x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
        raise ValueError("lsq_fake_quant: scale must be a floating-point tensor")
    try:
        qmin, qmax = operator.index(qmin), operator.index(qmax)
    except TypeError:
        raise ValueError(f"lsq_fake_quant: qmin and qmax must be integers, got {qmin!r}, {qmax!r}") from None
    if qmin >= qmax:
        raise ValueError(f"lsq_fake_quant: qmin ({qmin}) must be < qmax ({qmax})")
    if not (-(1 << 22) < qmin and qmax < (1 << 22)):
        raise ValueError(f"lsq_fake_quant: qmin/qmax must lie within +-2^22, got {qmin}..{qmax}")
    if scale.device != x.device:
        raise ValueError(f"lsq_fake_quant: scale is on {scale.device} but x is on {x.device}")
    if axis is None:
        channels = 1
        if scale.numel() != 1:
            raise ValueError(
                f"lsq_fake_quant: per-tensor scale (axis=None) must have one element, got shape {tuple(scale.shape)}"
            )
    else:
        try:
            axis = operator.index(axis)
        except TypeError:
            raise ValueError(f"lsq_fake_quant: axis must be an integer or None, got {axis!r}") from None
        if not -x.dim() <= axis < x.dim():
            raise ValueError(f"lsq_fake_quant: axis {axis} is out of range for a {x.dim()}-d tensor")
        axis %= x.dim()
        channels = x.shape[axis]
        if scale.dim() != 1 or scale.numel() != channels:
            raise ValueError(
                f"lsq_fake_quant: per-channel scale must be 1-D with x.shape[{axis}] = {channels} elements, "
                f"got shape {tuple(scale.shape)}"
            )
    if zero_point is not None:
        if not isinstance(zero_point, torch.Tensor):
            raise ValueError("lsq_fake_quant: zero_point must be a tensor or None")
        if zero_point.device != x.device:
            raise ValueError(f"lsq_fake_quant: zero_point is on {zero_point.device} but x is on {x.device}")
        if zero_point.numel() not in (1, channels):
            raise ValueError(
                f"lsq_fake_quant: zero_point must have 1 or {channels} elements, got shape {tuple(zero_point.shape)}"
            )
    if grad_scale is None:
        grad_scale = _default_grad_scale(x.numel() // max(channels, 1), qmin, qmax)
    else:
        grad_scale = float(grad_scale)
        if not math.isfinite(grad_scale):
            raise ValueError(f"lsq_fake_quant: grad_scale must be finite, got {grad_scale}")
    return qmin, qmax, axis, grad_scale


def _check_scale_values(scale: torch.Tensor, zero_point: Optional[torch.Tensor]) -> None:
    with torch.no_grad():
        ok = bool(((scale > 0) & torch.isfinite(scale)).all())
    if not ok:
        bad = scale.detach().flatten()
        bad = bad[~((bad > 0) & torch.isfinite(bad))]
        raise ValueError(
            f"lsq_fake_quant: scale must be positive and finite, got {bad[:4].tolist()}"
            + (" ..." if bad.numel() > 4 else "")
        )
    if zero_point is not None and not bool(torch.isfinite(zero_point.detach()).all()):
        raise ValueError("lsq_fake_quant: zero_point must be finite")


class _RoundSTE(torch.autograd.Function):
    """round() forward, identity backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, v):
        return torch.round(v)

    @staticmethod
    def backward(ctx, g):
        return g


class _GradScale(torch.autograd.Function):
    """Identity forward, gradient multiplied by `factor` backward (LSQ's gradient scaling)."""

    @staticmethod
    def forward(ctx, t, factor):
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


def _lsq_reference(x, scale, qmin, qmax, axis, grad_scale, zero_point, round_fn=_RoundSTE.apply):
    """The LSQ maths in PyTorch ops; `axis` normalised, arguments checked. round_fn is swappable for tests."""
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    s = _GradScale.apply(scale.to(x.dtype).reshape(shape), grad_scale)
    v = x * torch.reciprocal(s)
    if zero_point is None:
        vc = torch.clamp(v, qmin, qmax)
    else:
        zp = torch.round(zero_point.detach().to(x.dtype)).reshape(shape if zero_point.numel() > 1 else [1] * x.dim())
        vc = torch.clamp(v, qmin - zp, qmax - zp)
    return round_fn(vc) * s


def lsq_fake_quant_reference(
    x: torch.Tensor,
    scale: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: Optional[int] = None,
    grad_scale: Optional[float] = None,
    zero_point: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Pure-PyTorch LSQ fake quantization; same contract as :func:`lsq_fake_quant`."""
    qmin, qmax, axis, grad_scale = _check_lsq(x, scale, qmin, qmax, axis, zero_point, grad_scale)
    _check_scale_values(scale, zero_point)
    return _lsq_reference(x, scale, qmin, qmax, axis, grad_scale, zero_point)


def _lsq_native(x, scale, zero_point, qmin, qmax, axis, grad_scale):
    # torch.ops.compressor.lsq_fake_quant carries its own autograd (a C++ torch::autograd::Function
    # in native/ops/ops.cpp): forward and backward are one kernel pass each, no Python in backward.
    return torch.ops.compressor.lsq_fake_quant(x, scale, zero_point, qmin, qmax, axis, grad_scale)


def lsq_fake_quant(
    x: torch.Tensor,
    scale: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: Optional[int] = None,
    grad_scale: Optional[float] = None,
    zero_point: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """LSQ fake quantization: ``y = (clamp(round(x / s) + zp, qmin, qmax) - zp) * s``.

    scale: one element (per tensor, ``axis=None``) or a 1-D tensor of ``x.shape[axis]`` elements.
    zero_point: optional, 1 or ``x.shape[axis]`` elements, rounded to integers, a constant (no
    gradient); use it with an unsigned range (0..255) for asymmetric activations.
    grad_scale: factor on the scale gradient, default ``1/sqrt(numel_per_scale * qmax)`` (LSQ).

    Gradients: to x, straight through where ``qmin <= x/s + zp <= qmax`` and 0 outside; to the
    scale, ``grad_scale * sum(dy * d)`` with ``d = round(x/s) - x/s`` inside the range,
    ``qmin - zp`` below it and ``qmax - zp`` above it. ``x/s`` is computed as ``x * (1/s)``.
    NaN in x gives NaN in y, a 0 gradient to x at that element, and a NaN scale gradient.
    Raises ValueError for a non-positive or non-finite scale, a scale of the wrong shape, or
    ``qmin >= qmax``.
    """
    qmin, qmax, axis, grad_scale = _check_lsq(x, scale, qmin, qmax, axis, zero_point, grad_scale)
    if zero_point is not None:
        zero_point = zero_point.detach()
    if not use_native(x):
        _check_scale_values(scale, zero_point)
        return _lsq_reference(x, scale, qmin, qmax, axis, grad_scale, zero_point)
    if x.device.type != "cpu":
        _check_scale_values(scale, zero_point)  # the CPU kernels check it themselves, without a sync
    if x.device.type == "cpu" and x.dtype not in NATIVE_CPU_DTYPES:
        return _lsq_native(x.float(), scale, zero_point, qmin, qmax, axis, grad_scale).to(x.dtype)
    return _lsq_native(x, scale, zero_point, qmin, qmax, axis, grad_scale)
