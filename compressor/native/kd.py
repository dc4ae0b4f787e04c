"""The distillation loss ``T^2 * KL(softmax(t/T) || softmax(s/T))`` with its gradient to the student
logits: the native op, its pure-PyTorch reference, and the argument checks they share."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .build import NATIVE_CPU_DTYPES, use_native

_REDUCTIONS = {"none": 0, "sum": 1, "batchmean": 2, "mean": 3}


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
    # Differentiable C++ op (see lsq._lsq_native); the teacher gets no gradient.
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
    if not use_native(student_logits):
        return _kd_reference(student_logits, teacher, temperature, reduction)
    student = student_logits
    if student.device.type == "cpu" and student.dtype not in NATIVE_CPU_DTYPES:
        student = student.float()
    if teacher.dtype != student.dtype:
        teacher = teacher.to(student.dtype)
    loss = _kd_native(student, teacher, temperature, _REDUCTIONS[reduction])
    return loss.to(student_logits.dtype) if loss.dtype != student_logits.dtype else loss
