// CPU implementations of the device-level ops (lsq_cpu.cpp, kd_cpu.cpp), registered in ops.cpp.
// Kept apart from torch/library.h so that the kernel files compile quickly.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace compressor_native {

at::Tensor lsq_fake_quant_fwd_cpu(const at::Tensor& x, const at::Tensor& scale,
                                  const std::optional<at::Tensor>& zero_point, int64_t qmin, int64_t qmax,
                                  std::optional<int64_t> axis);

std::tuple<at::Tensor, at::Tensor> lsq_fake_quant_bwd_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                          const at::Tensor& scale,
                                                          const std::optional<at::Tensor>& zero_point,
                                                          int64_t qmin, int64_t qmax, std::optional<int64_t> axis,
                                                          double grad_scale);

std::tuple<at::Tensor, at::Tensor, at::Tensor> kd_loss_fwd_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                                               double temperature, int64_t reduction);

at::Tensor kd_loss_bwd_cpu(const at::Tensor& grad, const at::Tensor& student, const at::Tensor& teacher,
                           const at::Tensor& lse_student, const at::Tensor& lse_teacher, double temperature,
                           int64_t reduction);

}  // namespace compressor_native
