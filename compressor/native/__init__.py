"""Fused kernels for quantization-aware distillation, with a pure-PyTorch fallback.

Two operations, each with autograd:

* ``lsq_fake_quant``: fake quantization with a learnable step size (LSQ, Esser et al. 2020),
  per tensor or per channel, signed or unsigned (with an integer zero point);
* ``kd_loss``: the temperature-scaled distillation loss ``T^2 * KL(softmax(t/T) || softmax(s/T))``
  with its gradient to the student logits.

The native implementations are C++ (CPU, vectorised, at::parallel_for) and CUDA kernels in
``native/ops/`` at the repository root, registered as ``torch.ops.compressor.lsq_fake_quant`` /
``kd_loss`` with their autograd in C++ (``torch::autograd::Function``, so the backward runs
without Python); the pure-PyTorch references (``*_reference``) define the same maths and are the
fallback. They are compiled on first use (never at import) and cached per machine. The backend
is chosen by ``set_backend`` or the ``COMPRESSOR_NATIVE`` environment variable:

* ``auto`` (default): build the extension once; if that fails, warn once and use the reference;
* ``native``: always use the extension; raise :class:`NativeBuildError` if it cannot be built
  (or has no kernels for the tensor's device);
* ``reference``: always use the pure-PyTorch reference implementations.

Modules: ``switch`` (that choice, the one global setting), ``build`` (JIT build, cache, sources,
which implementation serves a tensor), ``lsq`` and ``kd`` (the two operations).
"""
from __future__ import annotations

from .build import (ENV_CACHE, ENV_CFLAGS, NativeBuildError, backend, build_info, load,  # noqa: F401
                    sources_dir, use_native)
from .kd import kd_loss, kd_loss_reference
from .lsq import _lsq_reference, lsq_fake_quant, lsq_fake_quant_reference  # noqa: F401 - tests check it
from .switch import BACKENDS, ENV_BACKEND, requested_backend, set_backend  # noqa: F401

__all__ = [
    "NativeBuildError",
    "backend",
    "build_info",
    "kd_loss",
    "kd_loss_reference",
    "load",
    "lsq_fake_quant",
    "lsq_fake_quant_reference",
    "set_backend",
]
