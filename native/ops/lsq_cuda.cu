// LSQ fake quantization, CUDA kernels (torch-free; see kernels.h and lsq_cpu.cpp for the maths).
//
// forward : one grid-stride elementwise pass.
// backward: one pass that writes grad_x and reduces the scale gradient per channel into
//           per-block partials (warp shuffles, then shared memory), then a tiny finalize kernel
//           that adds the partials of each channel in a fixed order: deterministic, no atomics.
//   * channels last (inner == 1, channels > 1): threads own channels (coalesced along the row),
//     blocks split the rows;
//   * otherwise (per tensor, or channel runs of `inner` elements): blocks own (channel, split)
//     and stride over the channel's outer * inner elements.

#include <algorithm>

#include "cuda_common.cuh"

namespace compressor_cuda {
namespace {

using detail::Acc;
using detail::ceil_div;

constexpr int kThreads = 256;

template <typename T, typename Idx, bool ZP>
__global__ void __launch_bounds__(kThreads) lsq_fwd_kernel(const T* __restrict__ x, T* __restrict__ y,
                                                           const typename Acc<T>::type* __restrict__ scale,
                                                           const typename Acc<T>::type* __restrict__ zp,
                                                           Idx numel, Idx C, Idx I, typename Acc<T>::type qmin,
                                                           typename Acc<T>::type qmax) {
  using A = typename Acc<T>::type;
  for (Idx i = Idx(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += Idx(gridDim.x) * blockDim.x) {
    const Idx c = (C == 1) ? Idx(0) : (i / I) % C;
    const A s = scale[c];
    A q = detail::round_even(detail::load(x + i) * detail::recip(s));
    if (ZP) q += zp[c];
    q = q < qmin ? qmin : q;  // NaN passes through
    q = q > qmax ? qmax : q;
    if (ZP) q -= zp[c];
    detail::store(y + i, q * s);
  }
}

// d(scale) contribution of one element, and its grad_x.
template <typename A>
__device__ __forceinline__ A lsq_elem_grad(A xv, A g, A inv, A lo, A hi, A* gx) {
  const A v = xv * inv;
  const A r = detail::round_even(v);
  const bool inside = (v >= lo) && (v <= hi);  // false for NaN
  *gx = inside ? g : A(0);
  const A d = v > hi ? hi : (v < lo ? lo : r - v);  // NaN for NaN
  return d * g;
}

// Channels last: thread <-> channel, blockIdx.y splits the rows. partial[c * nsplit + split].
template <typename T, bool ZP>
__global__ void __launch_bounds__(kThreads) lsq_bwd_columns_kernel(
    const T* __restrict__ gy, const T* __restrict__ x, T* __restrict__ gx,
    const typename Acc<T>::type* __restrict__ scale, const typename Acc<T>::type* __restrict__ zp, int64_t O,
    int64_t C, typename Acc<T>::type qmin, typename Acc<T>::type qmax, typename Acc<T>::type* __restrict__ partial) {
  using A = typename Acc<T>::type;
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t nsplit = gridDim.y;
  const A inv = detail::recip(scale[c]);
  const A z = ZP ? zp[c] : A(0);
  const A lo = qmin - z, hi = qmax - z;
  A acc = 0;
  for (int64_t o = blockIdx.y; o < O; o += nsplit) {
    const int64_t idx = o * C + c;
    A g;
    acc += lsq_elem_grad<A>(detail::load(x + idx), detail::load(gy + idx), inv, lo, hi, &g);
    detail::store(gx + idx, g);
  }
  partial[c * nsplit + blockIdx.y] = acc;
}

// General: block <-> (channel, split). partial[c * nsplit + split].
template <typename T, bool ZP>
__global__ void __launch_bounds__(kThreads) lsq_bwd_runs_kernel(
    const T* __restrict__ gy, const T* __restrict__ x, T* __restrict__ gx,
    const typename Acc<T>::type* __restrict__ scale, const typename Acc<T>::type* __restrict__ zp, int64_t O,
    int64_t C, int64_t I, int64_t nsplit, typename Acc<T>::type qmin, typename Acc<T>::type qmax,
    typename Acc<T>::type* __restrict__ partial) {
  using A = typename Acc<T>::type;
  const int64_t c = blockIdx.x / nsplit;
  const int64_t split = blockIdx.x % nsplit;
  const A inv = detail::recip(scale[c]);
  const A z = ZP ? zp[c] : A(0);
  const A lo = qmin - z, hi = qmax - z;
  const int64_t per_channel = O * I;
  A acc = 0;
  for (int64_t j = split * blockDim.x + threadIdx.x; j < per_channel; j += nsplit * blockDim.x) {
    int64_t idx;
    if (O == 1) {
      idx = c * I + j;
    } else {
      const int64_t o = j / I;
      idx = (o * C + c) * I + (j - o * I);
    }
    A g;
    acc += lsq_elem_grad<A>(detail::load(x + idx), detail::load(gy + idx), inv, lo, hi, &g);
    detail::store(gx + idx, g);
  }
  acc = detail::block_sum(acc);
  if (threadIdx.x == 0) partial[c * nsplit + split] = acc;
}

template <typename A>
__global__ void lsq_finalize_kernel(const A* __restrict__ partial, int64_t C, int64_t nsplit, double factor,
                                    A* __restrict__ out) {
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += int64_t(gridDim.x) * blockDim.x) {
    A s = 0;
    for (int64_t k = 0; k < nsplit; ++k) s += partial[c * nsplit + k];
    out[c] = s * A(factor);
  }
}

// How many partial sums per channel the backward produces.
int64_t backward_splits(LsqShape sh) {
  const int64_t O = sh.outer, C = sh.channels, I = sh.inner;
  if (I == 1 && C > 1) {
    const int64_t by_rows = ceil_div(O, 8);
    const int64_t by_threads = ceil_div(int64_t(1) << 18, C);
    return std::max<int64_t>(1, std::min<int64_t>({by_rows, by_threads, 1024}));
  }
  const int64_t per_channel = O * I;
  const int64_t by_work = ceil_div(per_channel, int64_t(kThreads) * 4);
  const int64_t by_blocks = std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1));
  return std::max<int64_t>(1, std::min<int64_t>({by_work, by_blocks, 1024}));
}

template <typename T>
cudaError_t forward_typed(const void* x, void* y, const void* scale, const void* zp, LsqShape sh, int64_t qmin,
                          int64_t qmax, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const int64_t numel = sh.outer * sh.channels * sh.inner;
  if (numel == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>(ceil_div(numel, kThreads), 65536);
  const T* xp = static_cast<const T*>(x);
  T* yp = static_cast<T*>(y);
  const A* sp = static_cast<const A*>(scale);
  const A* zpp = static_cast<const A*>(zp);
  if (numel < (int64_t(1) << 31)) {
    using Idx = uint32_t;
    if (zpp)
      lsq_fwd_kernel<T, Idx, true><<<blocks, kThreads, 0, stream>>>(xp, yp, sp, zpp, Idx(numel), Idx(sh.channels),
                                                                   Idx(sh.inner), A(qmin), A(qmax));
    else
      lsq_fwd_kernel<T, Idx, false><<<blocks, kThreads, 0, stream>>>(xp, yp, sp, zpp, Idx(numel), Idx(sh.channels),
                                                                    Idx(sh.inner), A(qmin), A(qmax));
  } else {
    using Idx = uint64_t;
    if (zpp)
      lsq_fwd_kernel<T, Idx, true><<<blocks, kThreads, 0, stream>>>(xp, yp, sp, zpp, Idx(numel), Idx(sh.channels),
                                                                   Idx(sh.inner), A(qmin), A(qmax));
    else
      lsq_fwd_kernel<T, Idx, false><<<blocks, kThreads, 0, stream>>>(xp, yp, sp, zpp, Idx(numel), Idx(sh.channels),
                                                                    Idx(sh.inner), A(qmin), A(qmax));
  }
  return cudaGetLastError();
}

template <typename T, bool ZP>
void launch_backward(const T* gy, const T* x, T* gx, const typename Acc<T>::type* sp,
                     const typename Acc<T>::type* zpp, LsqShape sh, int64_t nsplit, typename Acc<T>::type qmin,
                     typename Acc<T>::type qmax, typename Acc<T>::type* partial, cudaStream_t stream) {
  if (sh.inner == 1 && sh.channels > 1) {
    dim3 grid(unsigned(ceil_div(sh.channels, kThreads)), unsigned(nsplit));
    lsq_bwd_columns_kernel<T, ZP><<<grid, kThreads, 0, stream>>>(gy, x, gx, sp, zpp, sh.outer, sh.channels, qmin,
                                                                 qmax, partial);
  } else {
    const int64_t blocks = sh.channels * nsplit;
    lsq_bwd_runs_kernel<T, ZP><<<unsigned(blocks), kThreads, 0, stream>>>(gy, x, gx, sp, zpp, sh.outer, sh.channels,
                                                                         sh.inner, nsplit, qmin, qmax, partial);
  }
}

template <typename T>
cudaError_t backward_typed(const void* gy, const void* x, void* gx, void* gscale, const void* scale, const void* zp,
                           LsqShape sh, int64_t qmin, int64_t qmax, double factor, void* workspace,
                           cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const int64_t numel = sh.outer * sh.channels * sh.inner;
  A* out = static_cast<A*>(gscale);
  if (numel == 0) return cudaMemsetAsync(out, 0, sizeof(A) * sh.channels, stream);
  const int64_t nsplit = backward_splits(sh);
  A* partial = static_cast<A*>(workspace);
  const A* sp = static_cast<const A*>(scale);
  const A* zpp = static_cast<const A*>(zp);
  if (zpp)
    launch_backward<T, true>(static_cast<const T*>(gy), static_cast<const T*>(x), static_cast<T*>(gx), sp, zpp, sh,
                             nsplit, A(qmin), A(qmax), partial, stream);
  else
    launch_backward<T, false>(static_cast<const T*>(gy), static_cast<const T*>(x), static_cast<T*>(gx), sp, zpp, sh,
                              nsplit, A(qmin), A(qmax), partial, stream);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t fblocks = std::min<int64_t>(ceil_div(sh.channels, kThreads), 4096);
  lsq_finalize_kernel<A><<<unsigned(fblocks), kThreads, 0, stream>>>(partial, sh.channels, nsplit, factor, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t lsq_forward(DType dtype, const void* x, void* y, const void* scale, const void* zero_point,
                        LsqShape shape, int64_t qmin, int64_t qmax, cudaStream_t stream) {
  switch (dtype) {
    case DType::kF32: return forward_typed<float>(x, y, scale, zero_point, shape, qmin, qmax, stream);
    case DType::kF64: return forward_typed<double>(x, y, scale, zero_point, shape, qmin, qmax, stream);
    case DType::kF16: return forward_typed<__half>(x, y, scale, zero_point, shape, qmin, qmax, stream);
    case DType::kBF16: return forward_typed<__nv_bfloat16>(x, y, scale, zero_point, shape, qmin, qmax, stream);
  }
  return cudaErrorInvalidValue;
}

size_t lsq_backward_workspace_bytes(DType dtype, LsqShape shape) {
  const size_t acc = dtype == DType::kF64 ? sizeof(double) : sizeof(float);
  return acc * size_t(shape.channels) * size_t(backward_splits(shape));
}

cudaError_t lsq_backward(DType dtype, const void* grad_y, const void* x, void* grad_x, void* grad_scale,
                         const void* scale, const void* zero_point, LsqShape shape, int64_t qmin, int64_t qmax,
                         double grad_scale_factor, void* workspace, cudaStream_t stream) {
  switch (dtype) {
    case DType::kF32:
      return backward_typed<float>(grad_y, x, grad_x, grad_scale, scale, zero_point, shape, qmin, qmax,
                                   grad_scale_factor, workspace, stream);
    case DType::kF64:
      return backward_typed<double>(grad_y, x, grad_x, grad_scale, scale, zero_point, shape, qmin, qmax,
                                    grad_scale_factor, workspace, stream);
    case DType::kF16:
      return backward_typed<__half>(grad_y, x, grad_x, grad_scale, scale, zero_point, shape, qmin, qmax,
                                    grad_scale_factor, workspace, stream);
    case DType::kBF16:
      return backward_typed<__nv_bfloat16>(grad_y, x, grad_x, grad_scale, scale, zero_point, shape, qmin, qmax,
                                           grad_scale_factor, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace compressor_cuda
