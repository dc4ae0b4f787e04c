// Schemas of the compressor native ops, and their autograd.
//
// Public ops (what compressor/native.py calls), differentiable:
//   compressor::lsq_fake_quant(x, scale, zero_point?, qmin, qmax, axis?, grad_scale) -> y
//   compressor::kd_loss(student, teacher, temperature, reduction) -> loss
// Their autograd kernels (torch::autograd::Function, below) call the device kernels through the
// dispatcher: compressor::lsq_fake_quant_fwd/_bwd and compressor::kd_loss_fwd/_bwd, implemented
// for CPU in lsq_cpu.cpp / kd_cpu.cpp (registered here) and for CUDA in cuda_binding.cpp (built
// and registered only where torch has CUDA). The backward runs in C++: no Python on that path.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "cpu_ops.h"

TORCH_LIBRARY(compressor, m) {
  // y = (clamp(round(x / s) + zp, qmin, qmax) - zp) * s; axis None = per tensor.
  m.def(
      "lsq_fake_quant(Tensor x, Tensor scale, Tensor? zero_point, int qmin, int qmax, int? axis, "
      "float grad_scale) -> Tensor");
  m.def("lsq_fake_quant_fwd(Tensor x, Tensor scale, Tensor? zero_point, int qmin, int qmax, int? axis) -> Tensor");
  // Returns (grad_x, grad_scale); grad_scale already multiplied by the LSQ gradient scale.
  m.def(
      "lsq_fake_quant_bwd(Tensor grad, Tensor x, Tensor scale, Tensor? zero_point, int qmin, int qmax, "
      "int? axis, float grad_scale) -> (Tensor, Tensor)");
  // reduction: 0 none (per row), 1 sum, 2 batchmean (sum / rows), 3 mean (sum / elements).
  m.def("kd_loss(Tensor student, Tensor teacher, float temperature, int reduction) -> Tensor");
  // Returns (loss, logsumexp(student / T) per row, logsumexp(teacher / T) per row).
  m.def("kd_loss_fwd(Tensor student, Tensor teacher, float temperature, int reduction) -> (Tensor, Tensor, Tensor)");
  // Gradient with respect to the student logits only.
  m.def(
      "kd_loss_bwd(Tensor grad, Tensor student, Tensor teacher, Tensor lse_student, Tensor lse_teacher, "
      "float temperature, int reduction) -> Tensor");
}

namespace compressor_native {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

at::Tensor lsq_fwd_op(const at::Tensor& x, const at::Tensor& scale, const OptTensor& zp, int64_t qmin, int64_t qmax,
                      std::optional<int64_t> axis) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("compressor::lsq_fake_quant_fwd", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t, int64_t,
                                         std::optional<int64_t>)>();
  return op.call(x, scale, zp, qmin, qmax, axis);
}

std::tuple<at::Tensor, at::Tensor> lsq_bwd_op(const at::Tensor& g, const at::Tensor& x, const at::Tensor& scale,
                                              const OptTensor& zp, int64_t qmin, int64_t qmax,
                                              std::optional<int64_t> axis, double grad_scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("compressor::lsq_fake_quant_bwd", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, const OptTensor&, int64_t,
                                                                 int64_t, std::optional<int64_t>, double)>();
  return op.call(g, x, scale, zp, qmin, qmax, axis, grad_scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kd_fwd_op(const at::Tensor& s, const at::Tensor& t, double temperature,
                                                         int64_t reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("compressor::kd_loss_fwd", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                             double, int64_t)>();
  return op.call(s, t, temperature, reduction);
}

at::Tensor kd_bwd_op(const at::Tensor& g, const at::Tensor& s, const at::Tensor& t, const at::Tensor& lse_s,
                     const at::Tensor& lse_t, double temperature, int64_t reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("compressor::kd_loss_bwd", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, double, int64_t)>();
  return op.call(g, s, t, lse_s, lse_t, temperature, reduction);
}

class LsqFunction : public torch::autograd::Function<LsqFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale, const OptTensor& zp,
                            int64_t qmin, int64_t qmax, std::optional<int64_t> axis, double grad_scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = lsq_fwd_op(x, scale, zp, qmin, qmax, axis);
    ctx->save_for_backward({x, scale, zp.has_value() ? *zp : at::Tensor()});
    ctx->saved_data["qmin"] = qmin;
    ctx->saved_data["qmax"] = qmax;
    ctx->saved_data["has_axis"] = axis.has_value();
    ctx->saved_data["axis"] = axis.has_value() ? *axis : int64_t(0);
    ctx->saved_data["grad_scale"] = grad_scale;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::optional<int64_t> axis = ctx->saved_data["has_axis"].toBool()
                                            ? std::optional<int64_t>(ctx->saved_data["axis"].toInt())
                                            : std::optional<int64_t>();
    const OptTensor zp = saved[2].defined() ? OptTensor(saved[2]) : OptTensor();
    auto [gx, gs] = lsq_bwd_op(grads[0], saved[0], saved[1], zp, ctx->saved_data["qmin"].toInt(),
                               ctx->saved_data["qmax"].toInt(), axis, ctx->saved_data["grad_scale"].toDouble());
    return {ctx->needs_input_grad(0) ? gx : at::Tensor(), ctx->needs_input_grad(1) ? gs : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class KdFunction : public torch::autograd::Function<KdFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& teacher,
                            double temperature, int64_t reduction) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, lse_s, lse_t] = kd_fwd_op(student, teacher, temperature, reduction);
    ctx->save_for_backward({student, teacher, lse_s, lse_t});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["reduction"] = reduction;
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    at::Tensor gs = kd_bwd_op(grads[0], saved[0], saved[1], saved[2], saved[3],
                              ctx->saved_data["temperature"].toDouble(), ctx->saved_data["reduction"].toInt());
    return {gs, at::Tensor(), at::Tensor(), at::Tensor()};  // the teacher gets no gradient
  }
};

at::Tensor lsq_fake_quant_autograd(const at::Tensor& x, const at::Tensor& scale, const OptTensor& zp, int64_t qmin,
                                   int64_t qmax, std::optional<int64_t> axis, double grad_scale) {
  return LsqFunction::apply(x, scale, zp, qmin, qmax, axis, grad_scale);
}

at::Tensor kd_loss_autograd(const at::Tensor& student, const at::Tensor& teacher, double temperature,
                            int64_t reduction) {
  return KdFunction::apply(student, teacher, temperature, reduction);
}

// Below autograd (inference mode, or no autograd key): forward only.
at::Tensor lsq_fake_quant_plain(const at::Tensor& x, const at::Tensor& scale, const OptTensor& zp, int64_t qmin,
                                int64_t qmax, std::optional<int64_t> axis, double /*grad_scale*/) {
  return lsq_fwd_op(x, scale, zp, qmin, qmax, axis);
}

at::Tensor kd_loss_plain(const at::Tensor& student, const at::Tensor& teacher, double temperature, int64_t reduction) {
  return std::get<0>(kd_fwd_op(student, teacher, temperature, reduction));
}

}  // namespace

TORCH_LIBRARY_IMPL(compressor, CPU, m) {
  m.impl("lsq_fake_quant_fwd", &lsq_fake_quant_fwd_cpu);
  m.impl("lsq_fake_quant_bwd", &lsq_fake_quant_bwd_cpu);
  m.impl("kd_loss_fwd", &kd_loss_fwd_cpu);
  m.impl("kd_loss_bwd", &kd_loss_bwd_cpu);
}

TORCH_LIBRARY_IMPL(compressor, Autograd, m) {
  m.impl("lsq_fake_quant", &lsq_fake_quant_autograd);
  m.impl("kd_loss", &kd_loss_autograd);
}

TORCH_LIBRARY_IMPL(compressor, CompositeExplicitAutograd, m) {
  m.impl("lsq_fake_quant", &lsq_fake_quant_plain);
  m.impl("kd_loss", &kd_loss_plain);
}

}  // namespace compressor_native
