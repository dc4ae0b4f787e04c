// CUDA implementations of the compressor ops: argument checks, dtype handling and allocation on
// the torch side, then the torch-free launchers of kernels.h. Built only where torch has CUDA
// (compressor/native.py adds this file and the .cu files to the JIT build in that case).
//
// Unlike the CPU ops, these do not check that the scale is positive (that would synchronise the
// stream); compressor.native checks it before calling.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/round.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common.h"
#include "kernels.h"

namespace compressor_native {
namespace {

using compressor_cuda::DType;

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kF32;
    case at::kDouble: return DType::kF64;
    case at::kHalf: return DType::kF16;
    case at::kBFloat16: return DType::kBF16;
    default: TORCH_CHECK_VALUE(false, "compressor native CUDA ops support float32/float64/float16/bfloat16, got ", t);
  }
  return DType::kF32;
}

at::ScalarType acc_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA error: ", cudaGetErrorString(err));
}

// Per-channel constants in the accumulation type, `channels` values each.
std::pair<at::Tensor, at::Tensor> lsq_constants(const at::Tensor& x, const at::Tensor& scale,
                                                const std::optional<at::Tensor>& zero_point, int64_t channels) {
  const auto acc = acc_of(x.scalar_type());
  at::Tensor s = scale.to(acc).reshape({-1}).expand({channels}).contiguous();
  at::Tensor zp;
  if (zero_point.has_value() && zero_point->defined())
    zp = at::round(zero_point->to(acc)).reshape({-1}).expand({channels}).contiguous();
  return {s, zp};
}

at::Tensor lsq_fake_quant_fwd_cuda(const at::Tensor& x_in, const at::Tensor& scale,
                                   const std::optional<at::Tensor>& zero_point, int64_t qmin, int64_t qmax,
                                   std::optional<int64_t> axis) {
  const auto ax = check_lsq_args(x_in, scale, zero_point, qmin, qmax, axis);
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const ChannelLayout L = channel_layout(x, ax);
  auto [s, zp] = lsq_constants(x, scale, zero_point, L.channels);
  at::Tensor y = at::empty(x.sizes(), x.options());
  check_cuda(compressor_cuda::lsq_forward(dtype_of(x.scalar_type()), x.const_data_ptr(), y.mutable_data_ptr(),
                                          s.const_data_ptr(), zp.defined() ? zp.const_data_ptr() : nullptr,
                                          {L.outer, L.channels, L.inner}, qmin, qmax,
                                          c10::cuda::getCurrentCUDAStream()),
             "lsq_fake_quant_fwd");
  return y;
}

std::tuple<at::Tensor, at::Tensor> lsq_fake_quant_bwd_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                           const at::Tensor& scale,
                                                           const std::optional<at::Tensor>& zero_point,
                                                           int64_t qmin, int64_t qmax,
                                                           std::optional<int64_t> axis, double grad_scale) {
  const auto ax = check_lsq_args(x_in, scale, zero_point, qmin, qmax, axis);
  TORCH_CHECK_VALUE(grad_in.sizes() == x_in.sizes(), "lsq_fake_quant_bwd: grad has shape ", grad_in.sizes(),
                    " but x has shape ", x_in.sizes());
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor gy = grad_in.to(x.scalar_type()).contiguous();
  const ChannelLayout L = channel_layout(x, ax);
  auto [s, zp] = lsq_constants(x, scale, zero_point, L.channels);
  const compressor_cuda::LsqShape shape{L.outer, L.channels, L.inner};
  const DType dt = dtype_of(x.scalar_type());
  at::Tensor gx = at::empty(x.sizes(), x.options());
  at::Tensor gs = at::empty({L.channels}, x.options().dtype(acc_of(x.scalar_type())));
  const size_t ws_bytes = compressor_cuda::lsq_backward_workspace_bytes(dt, shape);
  at::Tensor ws = at::empty({int64_t(std::max<size_t>(ws_bytes, 1))}, x.options().dtype(at::kByte));
  check_cuda(compressor_cuda::lsq_backward(dt, gy.const_data_ptr(), x.const_data_ptr(), gx.mutable_data_ptr(),
                                           gs.mutable_data_ptr(), s.const_data_ptr(),
                                           zp.defined() ? zp.const_data_ptr() : nullptr, shape, qmin, qmax,
                                           grad_scale, ws.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()),
             "lsq_fake_quant_bwd");
  return {gx, gs.reshape(scale.sizes()).to(scale.scalar_type())};
}

enum Reduction : int64_t { kNone = 0, kSum = 1, kBatchMean = 2, kMean = 3 };

void check_kd(const at::Tensor& s, const at::Tensor& t, double temperature, int64_t reduction) {
  TORCH_CHECK_VALUE(s.scalar_type() == t.scalar_type(), "kd_loss: teacher dtype ", t.scalar_type(),
                    " differs from student dtype ", s.scalar_type());
  TORCH_CHECK_VALUE(s.sizes() == t.sizes(), "kd_loss: student shape ", s.sizes(), " != teacher shape ", t.sizes());
  TORCH_CHECK_VALUE(s.device() == t.device(), "kd_loss: student and teacher are on different devices");
  TORCH_CHECK_VALUE(s.dim() >= 1 && s.size(-1) >= 1, "kd_loss: logits need a last dimension of size >= 1");
  TORCH_CHECK_VALUE(temperature > 0 && std::isfinite(temperature), "kd_loss: temperature must be positive");
  TORCH_CHECK_VALUE(reduction >= kNone && reduction <= kMean, "kd_loss: bad reduction code ", reduction);
  (void)dtype_of(s.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kd_loss_fwd_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                                double temperature, int64_t reduction) {
  check_kd(student, teacher, temperature, reduction);
  c10::cuda::CUDAGuard guard(student.device());
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const int64_t C = s.size(-1), N = s.numel() / C;
  const auto acc_opts = s.options().dtype(acc_of(s.scalar_type()));
  at::Tensor rows = at::empty({N}, acc_opts), lse_s = at::empty({N}, acc_opts), lse_t = at::empty({N}, acc_opts);
  check_cuda(compressor_cuda::kd_forward(dtype_of(s.scalar_type()), s.const_data_ptr(), t.const_data_ptr(), N, C,
                                         temperature, rows.mutable_data_ptr(), lse_s.mutable_data_ptr(),
                                         lse_t.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream()),
             "kd_loss_fwd");
  at::Tensor loss;
  if (reduction == kNone) {
    auto shape = s.sizes().vec();
    shape.pop_back();
    loss = rows.reshape(shape);
  } else {
    loss = at::sum(rows);
    if (reduction == kBatchMean) loss = loss.div(double(N));
    if (reduction == kMean) loss = loss.div(double(N) * double(C));
  }
  return {loss.to(s.scalar_type()), lse_s, lse_t};
}

at::Tensor kd_loss_bwd_cuda(const at::Tensor& grad, const at::Tensor& student, const at::Tensor& teacher,
                            const at::Tensor& lse_student, const at::Tensor& lse_teacher, double temperature,
                            int64_t reduction) {
  check_kd(student, teacher, temperature, reduction);
  c10::cuda::CUDAGuard guard(student.device());
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const int64_t C = s.size(-1), N = s.numel() / C;
  const auto acc = acc_of(s.scalar_type());
  const at::Tensor g = grad.to(acc).reshape({-1}).contiguous();
  TORCH_CHECK_VALUE(g.numel() == (reduction == kNone ? N : 1), "kd_loss_bwd: grad has ", g.numel(), " values");
  const at::Tensor ls = lse_student.to(acc).contiguous(), lt = lse_teacher.to(acc).contiguous();
  double norm = 1.0;
  if (reduction == kBatchMean) norm = 1.0 / double(N);
  if (reduction == kMean) norm = 1.0 / (double(N) * double(C));
  at::Tensor gs = at::empty(s.sizes(), s.options());
  check_cuda(compressor_cuda::kd_backward(dtype_of(s.scalar_type()), g.const_data_ptr(),
                                          reduction == kNone ? 1 : 0, s.const_data_ptr(), t.const_data_ptr(),
                                          ls.const_data_ptr(), lt.const_data_ptr(), N, C, temperature,
                                          temperature * norm, gs.mutable_data_ptr(),
                                          c10::cuda::getCurrentCUDAStream()),
             "kd_loss_bwd");
  return gs;
}

}  // namespace

TORCH_LIBRARY_IMPL(compressor, CUDA, m) {
  m.impl("lsq_fake_quant_fwd", &lsq_fake_quant_fwd_cuda);
  m.impl("lsq_fake_quant_bwd", &lsq_fake_quant_bwd_cuda);
  m.impl("kd_loss_fwd", &kd_loss_fwd_cuda);
  m.impl("kd_loss_bwd", &kd_loss_bwd_cuda);
}

}  // namespace compressor_native
