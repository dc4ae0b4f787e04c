// Fused distillation loss, CUDA kernels (torch-free; see kernels.h and kd_cpu.cpp for the maths).
//
// forward : one read of each row. Every thread keeps an online-softmax state for its strided
//           slice of the row (running max and rescaled sum for student and teacher, and the
//           teacher-weighted sum of t' - s'); states merge through warp shuffles, and for wide
//           rows through shared memory across the warps of a block.
//           rows of <= 1024 classes: one warp per row; wider rows (vocabularies): one block per row.
// backward: one elementwise pass, grad = row_grad * coef * (exp(s' - lse_s) - exp(t' - lse_t)).

#include <algorithm>

#include "cuda_common.cuh"

namespace compressor_cuda {
namespace {

using detail::Acc;
using detail::ceil_div;

template <typename A>
struct KdState {
  A ms, zs;       // student: running max of s', sum of exp(s' - ms)
  A mt, zt, acc;  // teacher: running max of t', sum of exp(t' - mt), sum of exp(t' - mt) * (t' - s')
};

template <typename A>
__device__ __forceinline__ KdState<A> kd_empty() {
  const A ninf = detail::neg_inf<A>();
  return {ninf, A(0), ninf, A(0), A(0)};
}

template <typename A>
__device__ __forceinline__ void kd_push(KdState<A>& st, A sv, A tv) {
  const A ninf = detail::neg_inf<A>();
  if (sv > st.ms) {
    st.zs = st.zs * detail::exp_acc(st.ms - sv) + A(1);
    st.ms = sv;
  } else if (sv != ninf) {  // NaN lands here and poisons the sum
    st.zs += detail::exp_acc(sv - st.ms);
  }
  const A d = tv - sv;
  if (tv > st.mt) {
    const A f = detail::exp_acc(st.mt - tv);
    st.zt = st.zt * f + A(1);
    st.acc = st.acc * f + d;
    st.mt = tv;
  } else if (tv != ninf) {  // teacher probability 0 contributes nothing, even if s' = -inf
    const A e = detail::exp_acc(tv - st.mt);
    st.zt += e;
    st.acc += e * d;
  }
}

template <typename A>
__device__ __forceinline__ KdState<A> kd_merge(const KdState<A>& a, const KdState<A>& b) {
  const A ninf = detail::neg_inf<A>();
  KdState<A> r;
  r.ms = a.ms > b.ms ? a.ms : b.ms;
  const A fa = a.ms == ninf ? A(0) : detail::exp_acc(a.ms - r.ms);
  const A fb = b.ms == ninf ? A(0) : detail::exp_acc(b.ms - r.ms);
  r.zs = a.zs * fa + b.zs * fb;
  r.mt = a.mt > b.mt ? a.mt : b.mt;
  const A ga = a.mt == ninf ? A(0) : detail::exp_acc(a.mt - r.mt);
  const A gb = b.mt == ninf ? A(0) : detail::exp_acc(b.mt - r.mt);
  r.zt = a.zt * ga + b.zt * gb;
  r.acc = a.acc * ga + b.acc * gb;
  return r;
}

template <typename A>
__device__ __forceinline__ KdState<A> kd_shfl_xor(const KdState<A>& s, int off) {
  KdState<A> o;
  o.ms = __shfl_xor_sync(0xffffffffu, s.ms, off);
  o.zs = __shfl_xor_sync(0xffffffffu, s.zs, off);
  o.mt = __shfl_xor_sync(0xffffffffu, s.mt, off);
  o.zt = __shfl_xor_sync(0xffffffffu, s.zt, off);
  o.acc = __shfl_xor_sync(0xffffffffu, s.acc, off);
  return o;
}

template <typename A>
__device__ __forceinline__ KdState<A> kd_warp_reduce(KdState<A> st) {
#pragma unroll
  for (int off = detail::kWarp / 2; off > 0; off >>= 1) st = kd_merge(st, kd_shfl_xor(st, off));
  return st;
}

template <typename A>
__device__ __forceinline__ void kd_write(const KdState<A>& st, double T2, int64_t row, A* loss, A* lse_s,
                                         A* lse_t) {
  const A ls = st.ms + detail::log_acc(st.zs);
  const A lt = st.mt + detail::log_acc(st.zt);
  loss[row] = A(T2) * (st.acc / st.zt - lt + ls);
  lse_s[row] = ls;
  lse_t[row] = lt;
}

// One warp per row (narrow rows).
template <typename T>
__global__ void __launch_bounds__(128) kd_fwd_warp_kernel(const T* __restrict__ s, const T* __restrict__ t,
                                                          int64_t rows, int64_t cols, typename Acc<T>::type invT,
                                                          double T2, typename Acc<T>::type* __restrict__ loss,
                                                          typename Acc<T>::type* __restrict__ lse_s,
                                                          typename Acc<T>::type* __restrict__ lse_t) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x % detail::kWarp;
  const int64_t warps_per_block = blockDim.x / detail::kWarp;
  const int64_t row = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / detail::kWarp;
  if (row >= rows) return;  // whole warp leaves together
  const T* sr = s + row * cols;
  const T* tr = t + row * cols;
  KdState<A> st = kd_empty<A>();
  for (int64_t c = lane; c < cols; c += detail::kWarp)
    kd_push(st, detail::load(sr + c) * invT, detail::load(tr + c) * invT);
  st = kd_warp_reduce(st);
  if (lane == 0) kd_write(st, T2, row, loss, lse_s, lse_t);
}

// One block per row (wide rows: vocabularies).
template <typename T, int kBlock>
__global__ void __launch_bounds__(kBlock) kd_fwd_block_kernel(const T* __restrict__ s, const T* __restrict__ t,
                                                              int64_t cols, typename Acc<T>::type invT, double T2,
                                                              typename Acc<T>::type* __restrict__ loss,
                                                              typename Acc<T>::type* __restrict__ lse_s,
                                                              typename Acc<T>::type* __restrict__ lse_t) {
  using A = typename Acc<T>::type;
  constexpr int kWarps = kBlock / detail::kWarp;
  __shared__ KdState<A> warp_states[kWarps];
  const int64_t row = blockIdx.x;
  const T* sr = s + row * cols;
  const T* tr = t + row * cols;
  KdState<A> st = kd_empty<A>();
  for (int64_t c = threadIdx.x; c < cols; c += kBlock)
    kd_push(st, detail::load(sr + c) * invT, detail::load(tr + c) * invT);
  st = kd_warp_reduce(st);
  const int lane = threadIdx.x % detail::kWarp, warp = threadIdx.x / detail::kWarp;
  if (lane == 0) warp_states[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = lane < kWarps ? warp_states[lane] : kd_empty<A>();
    st = kd_warp_reduce(st);
    if (lane == 0) kd_write(st, T2, row, loss, lse_s, lse_t);
  }
}

template <typename T>
__global__ void __launch_bounds__(256) kd_bwd_kernel(const typename Acc<T>::type* __restrict__ row_grad,
                                                     int64_t row_grad_stride, const T* __restrict__ s,
                                                     const T* __restrict__ t,
                                                     const typename Acc<T>::type* __restrict__ lse_s,
                                                     const typename Acc<T>::type* __restrict__ lse_t, int64_t rows,
                                                     int64_t cols, typename Acc<T>::type invT,
                                                     typename Acc<T>::type coef, T* __restrict__ gs) {
  using A = typename Acc<T>::type;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const A k = row_grad[r * row_grad_stride] * coef;
    const A ls = lse_s[r], lt = lse_t[r];
    const int64_t base = r * cols;
    for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < cols; c += int64_t(gridDim.x) * blockDim.x) {
      const A ps = detail::exp_acc(detail::load(s + base + c) * invT - ls);
      const A pt = detail::exp_acc(detail::load(t + base + c) * invT - lt);
      detail::store(gs + base + c, k * (ps - pt));
    }
  }
}

template <typename T>
cudaError_t kd_forward_typed(const void* s, const void* t, int64_t rows, int64_t cols, double temperature,
                             void* loss, void* lse_s, void* lse_t, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  if (rows == 0) return cudaSuccess;
  const A invT = A(1.0 / temperature);
  const double T2 = temperature * temperature;
  const T* sp = static_cast<const T*>(s);
  const T* tp = static_cast<const T*>(t);
  A* lp = static_cast<A*>(loss);
  A* lsp = static_cast<A*>(lse_s);
  A* ltp = static_cast<A*>(lse_t);
  if (cols <= 1024) {
    constexpr int kBlock = 128;
    const int64_t blocks = ceil_div(rows, kBlock / detail::kWarp);
    kd_fwd_warp_kernel<T><<<unsigned(blocks), kBlock, 0, stream>>>(sp, tp, rows, cols, invT, T2, lp, lsp, ltp);
  } else {
    kd_fwd_block_kernel<T, 512><<<unsigned(rows), 512, 0, stream>>>(sp, tp, cols, invT, T2, lp, lsp, ltp);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t kd_backward_typed(const void* row_grad, int64_t stride, const void* s, const void* t,
                              const void* lse_s, const void* lse_t, int64_t rows, int64_t cols, double temperature,
                              double coef, void* gs, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  if (rows == 0 || cols == 0) return cudaSuccess;
  dim3 grid(unsigned(std::min<int64_t>(ceil_div(cols, 256), 128)), unsigned(std::min<int64_t>(rows, 65535)));
  kd_bwd_kernel<T><<<grid, 256, 0, stream>>>(static_cast<const A*>(row_grad), stride, static_cast<const T*>(s),
                                             static_cast<const T*>(t), static_cast<const A*>(lse_s),
                                             static_cast<const A*>(lse_t), rows, cols, A(1.0 / temperature), A(coef),
                                             static_cast<T*>(gs));
  return cudaGetLastError();
}

}  // namespace

cudaError_t kd_forward(DType dtype, const void* student, const void* teacher, int64_t rows, int64_t cols,
                       double temperature, void* row_loss, void* lse_s, void* lse_t, cudaStream_t stream) {
  switch (dtype) {
    case DType::kF32:
      return kd_forward_typed<float>(student, teacher, rows, cols, temperature, row_loss, lse_s, lse_t, stream);
    case DType::kF64:
      return kd_forward_typed<double>(student, teacher, rows, cols, temperature, row_loss, lse_s, lse_t, stream);
    case DType::kF16:
      return kd_forward_typed<__half>(student, teacher, rows, cols, temperature, row_loss, lse_s, lse_t, stream);
    case DType::kBF16:
      return kd_forward_typed<__nv_bfloat16>(student, teacher, rows, cols, temperature, row_loss, lse_s, lse_t,
                                             stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t kd_backward(DType dtype, const void* row_grad, int64_t row_grad_stride, const void* student,
                        const void* teacher, const void* lse_s, const void* lse_t, int64_t rows, int64_t cols,
                        double temperature, double coef, void* grad_student, cudaStream_t stream) {
  switch (dtype) {
    case DType::kF32:
      return kd_backward_typed<float>(row_grad, row_grad_stride, student, teacher, lse_s, lse_t, rows, cols,
                                      temperature, coef, grad_student, stream);
    case DType::kF64:
      return kd_backward_typed<double>(row_grad, row_grad_stride, student, teacher, lse_s, lse_t, rows, cols,
                                       temperature, coef, grad_student, stream);
    case DType::kF16:
      return kd_backward_typed<__half>(row_grad, row_grad_stride, student, teacher, lse_s, lse_t, rows, cols,
                                       temperature, coef, grad_student, stream);
    case DType::kBF16:
      return kd_backward_typed<__nv_bfloat16>(row_grad, row_grad_stride, student, teacher, lse_s, lse_t, rows,
                                              cols, temperature, coef, grad_student, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace compressor_cuda
