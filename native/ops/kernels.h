// Host-side entry points of the CUDA kernels (lsq_cuda.cu, kd_cuda.cu).
// Torch-free on purpose: raw device pointers and a cudaStream_t, so that nvcc can compile the
// kernels alone (native/ops/check_cuda.sh) and cuda_binding.cpp can wrap them as torch ops.
// Same definitions as the CPU kernels; see lsq_cpu.cpp and kd_cpu.cpp for the maths.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace compressor_cuda {

// Element type of x / y / logits. Per-channel constants, the scale gradient, the row
// log-sum-exps and row losses are in the accumulation type: double for kF64, float otherwise.
enum class DType : int { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

// A tensor seen as [outer, channels, inner] around the quantization axis (per tensor: 1, 1, numel).
struct LsqShape {
  int64_t outer;
  int64_t channels;
  int64_t inner;
};

// scale, zero_point: `channels` values each (acc type), zero_point may be null (treated as 0).
// zero_point values must already be integers (the binding rounds them).
cudaError_t lsq_forward(DType dtype, const void* x, void* y, const void* scale, const void* zero_point,
                        LsqShape shape, int64_t qmin, int64_t qmax, cudaStream_t stream);

// Bytes of scratch the backward needs for its deterministic two-stage scale reduction.
size_t lsq_backward_workspace_bytes(DType dtype, LsqShape shape);

// Writes grad_x (element type) and grad_scale (`channels` values, acc type, already multiplied by
// grad_scale). workspace: lsq_backward_workspace_bytes(...) bytes of device memory.
cudaError_t lsq_backward(DType dtype, const void* grad_y, const void* x, void* grad_x, void* grad_scale,
                         const void* scale, const void* zero_point, LsqShape shape, int64_t qmin,
                         int64_t qmax, double grad_scale_factor, void* workspace, cudaStream_t stream);

// Per row r of the [rows, cols] logits: row_loss[r] = T^2 KL(softmax(t/T) || softmax(s/T)),
// lse_s[r] = logsumexp(s/T), lse_t[r] = logsumexp(t/T). All three outputs in the acc type.
cudaError_t kd_forward(DType dtype, const void* student, const void* teacher, int64_t rows, int64_t cols,
                       double temperature, void* row_loss, void* lse_s, void* lse_t, cudaStream_t stream);

// grad_student[r, c] = row_grad[r * row_grad_stride] * coef * (softmax(s/T) - softmax(t/T))[r, c]
// with row_grad in the acc type (stride 0 for a reduced loss) and coef = T / (normaliser).
cudaError_t kd_backward(DType dtype, const void* row_grad, int64_t row_grad_stride, const void* student,
                        const void* teacher, const void* lse_s, const void* lse_t, int64_t rows, int64_t cols,
                        double temperature, double coef, void* grad_student, cudaStream_t stream);

}  // namespace compressor_cuda
