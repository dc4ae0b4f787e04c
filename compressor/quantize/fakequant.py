"""Fake quantization with a learnable step size (LSQ), in a target's number format.

A FakeQuant module is in one of four states: "observe" (collect calibration statistics, pass
values through), "quantize" (LSQ fake quantization through `compressor.native`, fused kernels
when built), "off" (kept in float), or "wide" (kept in the target's 16-bit fallback, QNN's a16w8:
an activation quantizer covers its calibrated range on the 16-bit grid, 257x finer; a weight
quantizer stays 8-bit). Under `export_mode` it emits
`fake_quantize_per_{tensor,channel}_affine`, which the ONNX exporter writes as a standard
QuantizeLinear/DequantizeLinear pair, with the scale and zero point as plain initializers.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .. import native
from ..targets import TensorQuant
from .observers import Observer, range_to_qparams

OBSERVE, QUANTIZE, OFF, WIDE = "observe", "quantize", "off", "wide"


class FakeQuant(nn.Module):
    def __init__(self, quant: TensorQuant, channels: int = 1, axis: int | None = None,
                 wide: TensorQuant | None = None):
        super().__init__()
        self.quant = quant
        self.wide = wide  # the 16-bit format of the "wide" state (activations only)
        self.qmin, self.qmax = quant.qrange
        self.axis = axis
        self.scale = nn.Parameter(torch.ones(channels))
        self.register_buffer("zero_point", torch.zeros(channels))
        self.state = OBSERVE
        self.observer: Observer | None = Observer()
        self.exporting = False

    @property
    def signed(self) -> bool:
        return self.qmin < 0

    def set_range(self, lo: float, hi: float) -> None:
        scale, zero = range_to_qparams(lo, hi, self.quant)
        with torch.no_grad():
            self.scale.fill_(scale)
            self.zero_point.fill_(zero)

    def init_per_channel(self, weight: torch.Tensor) -> None:
        """Weights: symmetric per-channel scales from each output channel's largest magnitude."""
        reduce = [d for d in range(weight.dim()) if d != self.axis]
        bound = weight.detach().abs().amax(dim=reduce).clamp_min(1e-8)
        with torch.no_grad():
            self.scale.copy_(bound / self.qmax)
            self.zero_point.zero_()
        self.state, self.observer = QUANTIZE, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.state == OFF:
            return x
        if self.state == OBSERVE:
            if self.observer is not None:
                self.observer.update(x)
            return x
        if self.state == WIDE and self.axis is None:
            scale, zero = self.wide_qparams()
            lo, hi = self.wide.qrange
            if self.exporting:  # an 8-bit placeholder: qdq.widen_activations gives the pair its 16-bit values
                return torch.fake_quantize_per_tensor_affine(x, self.export_scale, self.export_zero, 0, 255)
            return native.lsq_fake_quant(x, scale, lo, hi, None, zero_point=zero)
        if self.exporting:
            return self._export_forward(x)
        zero_point = self.zero_point if (not self.signed or self.zero_point.any()) else None
        return native.lsq_fake_quant(x, self.scale, self.qmin, self.qmax, self.axis, zero_point=zero_point)

    def wide_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point of the 16-bit grid over the range the 8-bit one covers."""
        if self.wide is None:
            raise RuntimeError("this quantizer has no 16-bit format (the target's precision.fallback is not int16)")
        lo, hi = self.wide.qrange
        steps = (hi - lo) / (self.qmax - self.qmin)
        zero = ((self.zero_point - self.qmin) * steps).round() + lo
        return self.scale.abs() / steps, zero

    @property
    def is_wide(self) -> bool:
        return self.state == WIDE and self.axis is None

    def freeze_for_export(self) -> None:
        """Scale and zero point as buffers, so the exported graph holds constants, not their maths."""
        scale = self.scale.detach().abs().clamp_min(1e-12).clone()
        zero = self.zero_point.detach().round().to(torch.int32)
        self.export_scale = scale.reshape(()) if self.axis is None else scale
        self.export_zero = zero.reshape(()) if self.axis is None else zero

    def _export_forward(self, x: torch.Tensor) -> torch.Tensor:
        # ONNX Q/DQ know the full 8-bit ranges only; a symmetric [-127, 127] grid with zero point
        # 0 is the same grid, and values never reach -128 after training's clamp.
        lo, hi = (-128, 127) if self.signed else (0, 255)
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, self.export_scale, self.export_zero, lo, hi)
        return torch.fake_quantize_per_channel_affine(x, self.export_scale, self.export_zero, self.axis, lo, hi)

    def extra_repr(self) -> str:
        where = "per-tensor" if self.axis is None else f"per-channel axis {self.axis}"
        return f"{self.quant.dtype} {where}, {self.state}"


def fake_quants(module: nn.Module) -> Iterator[tuple[str, FakeQuant]]:
    for name, m in module.named_modules():
        if isinstance(m, FakeQuant):
            yield name, m


@contextlib.contextmanager
def export_mode(module: nn.Module):
    fqs = [m for _, m in fake_quants(module)]
    for m in fqs:
        m.exporting = True
        m.freeze_for_export()
    try:
        yield module
    finally:
        for m in fqs:
            m.exporting = False
