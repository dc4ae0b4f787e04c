"""Fused kernels for quantization-aware distillation, with a pure-PyTorch fallback.

Two operations, each with autograd:

* ``lsq_fake_quant``: fake quantization with a learnable step size (LSQ, Esser et al. 2020),
  per tensor or per channel, signed or unsigned (with an integer zero point);
* ``kd_loss``: the temperature-scaled distillation loss ``T^2 * KL(softmax(t/T) || softmax(s/T))``
  with its gradient to the student logits.

The native implementations are C++ (CPU, vectorised, at::parallel_for) and CUDA kernels in
``native/ops/``, registered as ``torch.ops.compressor.lsq_fake_quant`` / ``kd_loss`` with their
autograd in C++ (``torch::autograd::Function``, so the backward runs without Python); the
pure-PyTorch references here (``*_reference``) define the same maths and are the fallback.
They are compiled on first use with
``torch.utils.cpp_extension.load`` (never at import) and cached per user, per machine and per
source/torch version under ``$COMPRESSOR_CACHE/native/<key>`` (default
``~/.cache/compressor/native/<key>``). The backend is chosen by ``set_backend`` or the
``COMPRESSOR_NATIVE`` environment variable:

* ``auto`` (default): build the extension once; if that fails, warn once and use the reference;
* ``native``: always use the extension; raise :class:`NativeBuildError` if it cannot be built
  (or has no kernels for the tensor's device);
* ``reference``: always use the pure-PyTorch reference implementations in this module.

Sources are looked up in ``compressor/_data/native/ops`` (installed package; setup.py copies
them there) and then in ``<repo>/native/ops`` (source checkout, editable install).
"""
from __future__ import annotations

import hashlib
import logging
import math
import operator
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from compressor.errors import CompressError

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

log = logging.getLogger(__name__)

ENV_BACKEND = "COMPRESSOR_NATIVE"
ENV_CACHE = "COMPRESSOR_CACHE"
ENV_CFLAGS = "COMPRESSOR_NATIVE_CFLAGS"
_BACKENDS = ("auto", "native", "reference")
_REDUCTIONS = {"none": 0, "sum": 1, "batchmean": 2, "mean": 3}
_PACKAGE = Path(__file__).resolve().parent
_CPU_SOURCES = ("ops.cpp", "lsq_cpu.cpp", "kd_cpu.cpp")
_CUDA_SOURCES = ("cuda_binding.cpp", "lsq_cuda.cu", "kd_cuda.cu")
_NATIVE_CPU_DTYPES = (torch.float32, torch.float64)


class NativeBuildError(CompressError, RuntimeError):
    """The native extension was required (backend "native") but cannot be built or used."""


# ----------------------------------------------------------------------------- backend switch

_lock = threading.RLock()
_requested: Optional[str] = None  # set_backend(); None: follow the environment variable
_state = {
    "attempted": False,
    "built": False,
    "with_cuda": False,
    "error": None,
    "build_seconds": None,
    "build_dir": None,
    "library": None,
    "warned": False,
    "cuda_error": None,
}


def set_backend(name: Optional[str]) -> None:
    """Choose "auto", "native" or "reference"; None goes back to $COMPRESSOR_NATIVE (default auto)."""
    global _requested
    if name is not None and name not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(_BACKENDS)} (or None), got {name!r}")
    _requested = name


def _requested_backend() -> str:
    if _requested is not None:
        return _requested
    value = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
    if value not in _BACKENDS:
        raise ValueError(f"{ENV_BACKEND} must be one of {', '.join(_BACKENDS)}, got {value!r}")
    return value


def backend() -> str:
    """The implementation in use: "native" or "reference". May build the extension (auto, native)."""
    requested = _requested_backend()
    if requested == "reference":
        return "reference"
    return "native" if load(strict=requested == "native") else "reference"


def _use_native(t: torch.Tensor) -> bool:
    requested = _requested_backend()
    if requested == "reference":
        return False
    strict = requested == "native"
    if not load(strict=strict):
        return False
    kind = t.device.type
    if kind == "cpu" or (kind == "cuda" and _state["with_cuda"]):
        return True
    if strict:
        raise NativeBuildError(
            f"compressor native ops have no kernels for device {t.device} "
            f"(built with CUDA: {_state['with_cuda']}); use backend 'auto' or 'reference'"
        )
    return False


# ----------------------------------------------------------------------------- build

def sources_dir() -> Path:
    """Folder with the C++/CUDA sources: package data first, then the source checkout."""
    for candidate in (_PACKAGE / "_data" / "native" / "ops", _PACKAGE.parent / "native" / "ops"):
        if (candidate / "ops.cpp").is_file():
            return candidate
    raise NativeBuildError(
        "compressor native op sources are missing: looked in "
        f"{_PACKAGE / '_data' / 'native' / 'ops'} and {_PACKAGE.parent / 'native' / 'ops'}"
    )


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            fields = {}
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags", "Features", "CPU implementer", "CPU part") and key not in fields:
                    fields[key] = value.strip()
            if fields:
                return "|".join(f"{k}={v}" for k, v in sorted(fields.items()))
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}"


def _compile_flags() -> tuple[list[str], list[str]]:
    if os.name == "nt":
        return ["/O2", "/openmp"], []
    # -fno-trapping-math lets GCC if-convert (and so vectorise) the branch-free exp and clamps;
    # it changes no result (no fast-math: NaN, inf and rounding behave as IEEE says).
    cflags = ["-O3", "-fno-trapping-math"]
    ldflags: list[str] = []
    if sys.platform != "darwin":  # Apple clang has no -fopenmp: the kernels then run on one thread
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    custom = os.environ.get(ENV_CFLAGS)
    if custom is not None:
        cflags += custom.split()
    else:
        machine = platform.machine().lower()
        if machine in ("x86_64", "amd64"):
            cflags.append("-march=native")
        elif machine in ("aarch64", "arm64"):
            cflags.append("-mcpu=native")
    return cflags, ldflags


def _want_cuda() -> bool:
    if torch.version.cuda is None:
        return False
    from torch.utils import cpp_extension

    return cpp_extension.CUDA_HOME is not None


def _cache_root() -> Path:
    root = os.environ.get(ENV_CACHE)
    if root:
        return Path(root).expanduser() / "native"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "compressor" / "native"


def _build_plan(with_cuda: bool) -> dict:
    src = sources_dir()
    names = list(_CPU_SOURCES) + (list(_CUDA_SOURCES) if with_cuda else [])
    cflags, ldflags = _compile_flags()
    h = hashlib.sha256()
    for path in sorted(src.iterdir()):
        if path.suffix in (".cpp", ".h", ".cu", ".cuh"):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    for part in (
        torch.__version__,
        str(torch.version.cuda),
        str(with_cuda),
        sys.implementation.cache_tag,
        platform.machine(),
        " ".join(cflags + ldflags),
        os.environ.get("CXX", ""),
        os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else "",
        _cpu_identity() if any("native" in f for f in cflags) else "",
    ):
        h.update(b"\0" + part.encode())
    key = h.hexdigest()[:16]
    return {
        "key": key,
        "name": f"compressor_native_{key}",
        "sources": [str(src / n) for n in names],
        "build_dir": _cache_root() / key,
        "cflags": cflags,
        "ldflags": ldflags,
        "with_cuda": with_cuda,
    }


def load(strict: bool = False) -> bool:
    """Build (or load from the cache) the native ops once per process; True when they are usable.

    With strict=True a failure raises NativeBuildError; otherwise it warns once and returns False.
    """
    if _state["built"]:
        return True
    with _lock:
        if not _state["attempted"]:
            _state["attempted"] = True
            _build()
        if _state["built"]:
            return True
        message = (
            f"compressor native ops are unavailable: {_error_summary(_state['error'])}"
            " (full compiler output: compressor.native.build_info()['error'])"
        )
        if strict:
            raise NativeBuildError(message + "; set COMPRESSOR_NATIVE=reference to use pure PyTorch")
        if not _state["warned"]:
            _state["warned"] = True
            log.warning(message)
            warnings.warn(message + "; using the pure-PyTorch reference", RuntimeWarning, stacklevel=4)
        return False


def _error_summary(error: Optional[str]) -> str:
    """The most telling line of a build failure: the first compiler error, else the last line."""
    lines = [line.strip() for line in (error or "unknown error").strip().splitlines() if line.strip()]
    for marker in ("error:", "fatal", "not found", "No such file"):
        for line in lines:
            if marker in line and not line.startswith("RuntimeError: Error building"):
                return line[:500]
    return lines[0][:500] if lines else "unknown error"


def _ops_registered() -> bool:
    try:
        torch.ops.compressor.lsq_fake_quant_fwd  # noqa: B018
        return True
    except (AttributeError, RuntimeError):
        return False


def _build() -> None:
    start = time.perf_counter()
    try:
        if _ops_registered():  # already loaded into this process (another copy of the library)
            try:
                has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("compressor::kd_loss_fwd", "CUDA")
            except (AttributeError, RuntimeError):
                has_cuda = False
            _state.update(built=True, with_cuda=bool(has_cuda))
            return
        with_cuda = _want_cuda()
        try:
            _compile_and_load(with_cuda)
        except Exception as exc:  # noqa: BLE001
            if not with_cuda:
                raise
            # A broken CUDA toolchain should not cost the CPU kernels: build those alone.
            _state["cuda_error"] = f"{type(exc).__name__}: {exc}"
            log.warning("compressor native ops: CUDA build failed (%s); building the CPU ops only",
                        _error_summary(_state["cuda_error"]))
            _compile_and_load(False)
    except Exception as exc:  # noqa: BLE001 - any build failure means "fall back"
        _state["error"] = f"{type(exc).__name__}: {exc}"
        if _state["build_dir"]:
            try:
                Path(_state["build_dir"], "build-error.log").write_text(_state["error"], encoding="utf-8")
            except OSError:
                pass
    finally:
        _state["build_seconds"] = round(time.perf_counter() - start, 2)


def _compile_and_load(with_cuda: bool) -> None:
    plan = _build_plan(with_cuda)
    build_dir: Path = plan["build_dir"]
    build_dir.mkdir(parents=True, exist_ok=True)
    _state["build_dir"] = str(build_dir)
    from torch.utils import cpp_extension

    cpp_extension.load(
        name=plan["name"],
        sources=plan["sources"],
        extra_cflags=plan["cflags"],
        extra_ldflags=plan["ldflags"],
        extra_cuda_cflags=["-O3"] if with_cuda else None,
        build_directory=str(build_dir),
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=False,
    )
    library = build_dir / f"{plan['name']}{'.pyd' if os.name == 'nt' else '.so'}"
    _state.update(built=_ops_registered(), with_cuda=with_cuda, library=str(library))
    if not _state["built"]:
        raise RuntimeError(f"{library} loaded but registered no torch.ops.compressor ops")


def build_info() -> dict:
    """Whether the extension is built, where it is cached, and the compiler error if any. Builds nothing."""
    try:
        requested = _requested_backend()
    except ValueError as exc:
        requested = f"invalid: {exc}"
    info = {
        "requested_backend": requested,
        "attempted": _state["attempted"],
        "built": _state["built"],
        "with_cuda": _state["with_cuda"],
        "build_dir": _state["build_dir"],
        "library": _state["library"],
        "build_seconds": _state["build_seconds"],
        "error": _state["error"],
        "cuda_error": _state["cuda_error"],
        "torch": torch.__version__,
    }
    try:
        plan = _build_plan(_state["with_cuda"] if _state["attempted"] else _want_cuda())
        info.update(
            cache_dir=str(plan["build_dir"]), sources=str(sources_dir()), cflags=plan["cflags"], key=plan["key"]
        )
    except Exception as exc:  # noqa: BLE001
        info.update(cache_dir=None, sources=None, cflags=None, key=None, sources_error=str(exc))
    return info


# ----------------------------------------------------------------------------- LSQ fake quantization

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
    if not _use_native(x):
        _check_scale_values(scale, zero_point)
        return _lsq_reference(x, scale, qmin, qmax, axis, grad_scale, zero_point)
    if x.device.type != "cpu":
        _check_scale_values(scale, zero_point)  # the CPU kernels check it themselves, without a sync
    if x.device.type == "cpu" and x.dtype not in _NATIVE_CPU_DTYPES:
        return _lsq_native(x.float(), scale, zero_point, qmin, qmax, axis, grad_scale).to(x.dtype)
    return _lsq_native(x, scale, zero_point, qmin, qmax, axis, grad_scale)


# ----------------------------------------------------------------------------- distillation loss

def _check_kd(student, teacher, temperature, reduction):
    if not isinstance(student, torch.Tensor) or not student.is_floating_point():
        raise ValueError("kd_loss: student logits must be a floating-point tensor")
    if not isinstance(teacher, torch.Tensor) or not teacher.is_floating_point():
        raise ValueError("kd_loss: teacher logits must be a floating-point tensor")
    if student.shape != teacher.shape:
        raise ValueError(
            f"kd_loss: student shape {tuple(student.shape)} != teacher shape {tuple(teacher.shape)}"
        )
    if student.dim() < 1 or student.shape[-1] < 1:
        raise ValueError(f"kd_loss: logits need a last (class) dimension of size >= 1, got {tuple(student.shape)}")
    if student.device != teacher.device:
        raise ValueError(f"kd_loss: student is on {student.device} but teacher is on {teacher.device}")
    temperature = float(temperature)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"kd_loss: temperature must be positive and finite, got {temperature}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"kd_loss: reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}")
    return temperature


def _reduce_rows(rows: torch.Tensor, lead_shape, classes: int, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return rows.reshape(lead_shape)
    total = rows.sum()
    if reduction == "batchmean":
        return total / rows.numel()
    if reduction == "mean":
        return total / (rows.numel() * classes)
    return total


def _kd_reference(student, teacher, temperature, reduction):
    classes = student.shape[-1]
    s = student.reshape(-1, classes)
    t = teacher.detach().to(student.dtype).reshape(-1, classes)
    log_q = F.log_softmax(s / temperature, dim=-1)
    log_p = F.log_softmax(t / temperature, dim=-1)
    p = log_p.exp()
    # p == 0 contributes 0 (also where log_q = -inf), as in the native kernels.
    elem = torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=s.dtype, device=s.device))
    rows = elem.sum(dim=-1) * (temperature * temperature)
    return _reduce_rows(rows, student.shape[:-1], classes, reduction)


def kd_loss_reference(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """Pure-PyTorch distillation loss; same contract as :func:`kd_loss`."""
    temperature = _check_kd(student_logits, teacher_logits, temperature, reduction)
    return _kd_reference(student_logits, teacher_logits, temperature, reduction)


def _kd_native(student, teacher, temperature, reduction_code):
    # Differentiable C++ op (see _lsq_native); the teacher gets no gradient.
    return torch.ops.compressor.kd_loss(student, teacher, temperature, reduction_code)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """Distillation loss ``T^2 * KL(softmax(t/T) || softmax(s/T))`` over the last dimension.

    Rows are all leading dimensions flattened. reduction: "batchmean" (sum / rows; for 2-D logits
    the same as F.kl_div's batchmean, for more dimensions it averages over every row, not only
    dim 0), "sum", "mean" (sum / elements) or "none" (one loss per row, shape ``logits.shape[:-1]``).
    The gradient flows to the student logits only; the teacher is treated as detached. Classes
    where the teacher probability is 0 contribute 0. NaN in a row gives NaN for that row.
    """
    temperature = _check_kd(student_logits, teacher_logits, temperature, reduction)
    teacher = teacher_logits.detach()
    if not _use_native(student_logits):
        return _kd_reference(student_logits, teacher, temperature, reduction)
    student = student_logits
    if student.device.type == "cpu" and student.dtype not in _NATIVE_CPU_DTYPES:
        student = student.float()
    if teacher.dtype != student.dtype:
        teacher = teacher.to(student.dtype)
    loss = _kd_native(student, teacher, temperature, _REDUCTIONS[reduction])
    return loss.to(student_logits.dtype) if loss.dtype != student_logits.dtype else loss
