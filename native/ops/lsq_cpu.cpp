// LSQ (learned step size) fake quantization on the CPU: forward and backward, each one pass.
//
//   v  = x * (1/s)                       lo = qmin - zp, hi = qmax - zp   (zp rounded, 0 if absent)
//   y  = (clamp(round(v) + zp, qmin, qmax) - zp) * s
//   dx = dy                 if lo <= v <= hi, else 0     (straight-through estimator, clip mask)
//   ds = g * sum dy * { round(v) - v   if lo <= v <= hi
//                       lo             if v < lo
//                       hi             if v > hi }       (LSQ, Esser et al. 2020, eq. 3)
// NaN in x: y is NaN, dx is 0 there, and ds becomes NaN (the sum is poisoned on purpose).
// round() is round-half-to-even (std::nearbyint), the same as torch.round.
//
// The loops are written for the auto-vectoriser (`#pragma omp simd`, -O3) and split across
// threads with at::parallel_for. Reductions go through fixed-size blocks whose partial sums are
// added in a fixed order, so the scale gradient does not depend on the thread count.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <vector>

#include "common.h"
#include "cpu_ops.h"

namespace compressor_native {
namespace {

constexpr int64_t kGrain = 32768;      // elements per thread task, below which we stay serial
constexpr int64_t kRunChunk = 8192;    // elements per partial sum in the long-run reduction
constexpr int64_t kLongRun = 256;      // inner size from which a channel run is reduced on its own

// Per-channel constants, in the compute type T.
template <typename T>
struct ChannelParams {
  std::vector<T> s, inv, zp, lo, hi;
};

template <typename T>
ChannelParams<T> make_params(const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                             int64_t channels, int64_t qmin, int64_t qmax) {
  ChannelParams<T> p;
  at::Tensor sc = as_type(scale, c10::CppTypeToScalarType<T>::value).contiguous();
  const T* sp = sc.data_ptr<T>();
  const int64_t ns = sc.numel();
  at::Tensor zpt;
  const T* zpp = nullptr;
  int64_t nz = 0;
  if (zero_point.has_value() && zero_point->defined()) {
    zpt = as_type(*zero_point, c10::CppTypeToScalarType<T>::value).contiguous();
    zpp = zpt.data_ptr<T>();
    nz = zpt.numel();
  }
  p.s.resize(channels);
  p.inv.resize(channels);
  p.zp.resize(channels);
  p.lo.resize(channels);
  p.hi.resize(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const T s = sp[ns == 1 ? 0 : c];
    TORCH_CHECK_VALUE(s > T(0) && std::isfinite(s),
                      "lsq_fake_quant: scale must be positive and finite, got ", s,
                      (ns == 1 ? std::string() : " at channel " + std::to_string(c)));
    const T z = zpp ? std::nearbyint(zpp[nz == 1 ? 0 : c]) : T(0);
    TORCH_CHECK_VALUE(std::isfinite(z), "lsq_fake_quant: zero_point must be finite");
    p.s[c] = s;
    p.inv[c] = T(1) / s;
    p.zp[c] = z;
    p.lo[c] = T(qmin) - z;
    p.hi[c] = T(qmax) - z;
  }
  return p;
}

// ---------------------------------------------------------------- forward

template <typename T, bool ZP>
inline void fq_run(const T* __restrict x, T* __restrict y, int64_t n, T s, T inv, T zp, T qmin, T qmax) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T q = std::nearbyint(x[i] * inv);
    if (ZP) q = q + zp;
    q = q < qmin ? qmin : q;  // written so that NaN passes through
    q = q > qmax ? qmax : q;
    if (ZP) q = q - zp;
    y[i] = q * s;
  }
}

// One run across channels (inner == 1): the constants change with every element.
template <typename T, bool ZP>
inline void fq_run_channels(const T* __restrict x, T* __restrict y, int64_t n, const T* __restrict s,
                            const T* __restrict inv, const T* __restrict zp, T qmin, T qmax) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T q = std::nearbyint(x[i] * inv[i]);
    if (ZP) q = q + zp[i];
    q = q < qmin ? qmin : q;
    q = q > qmax ? qmax : q;
    if (ZP) q = q - zp[i];
    y[i] = q * s[i];
  }
}

template <typename T, bool ZP>
void lsq_forward_impl(const T* x, T* y, const ChannelLayout& L, const ChannelParams<T>& p, int64_t qmin,
                      int64_t qmax) {
  const int64_t numel = L.outer * L.channels * L.inner;
  const T tqmin = T(qmin), tqmax = T(qmax);
  const int64_t C = L.channels, I = L.inner;
  at::parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) {
    int64_t i = b;
    if (I == 1 && C > 1) {
      while (i < e) {
        const int64_t c = i % C;
        const int64_t n = std::min(C - c, e - i);
        fq_run_channels<T, ZP>(x + i, y + i, n, p.s.data() + c, p.inv.data() + c, p.zp.data() + c, tqmin,
                               tqmax);
        i += n;
      }
    } else {
      while (i < e) {
        const int64_t c = (i / I) % C;
        const int64_t n = std::min(I - i % I, e - i);
        fq_run<T, ZP>(x + i, y + i, n, p.s[c], p.inv[c], p.zp[c], tqmin, tqmax);
        i += n;
      }
    }
  });
}

// ---------------------------------------------------------------- backward

// One run of a single channel: writes dx, returns sum(dy * ds_elem).
template <typename T>
inline T bq_run(const T* __restrict dy, const T* __restrict x, T* __restrict dx, int64_t n, T inv, T lo, T hi) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i] * inv;
    const T r = std::nearbyint(v);
    const bool inside = (v >= lo) & (v <= hi);  // false for NaN
    const T d = v > hi ? hi : (v < lo ? lo : r - v);  // NaN for NaN
    const T g = dy[i];
    dx[i] = inside ? g : T(0);
    acc += d * g;
  }
  return acc;
}

// One row across channels (inner == 1): accumulates into acc[c].
template <typename T>
inline void bq_run_channels(const T* __restrict dy, const T* __restrict x, T* __restrict dx, int64_t n,
                            const T* __restrict inv, const T* __restrict lo, const T* __restrict hi,
                            T* __restrict acc) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T v = x[i] * inv[i];
    const T r = std::nearbyint(v);
    const bool inside = (v >= lo[i]) & (v <= hi[i]);
    const T d = v > hi[i] ? hi[i] : (v < lo[i] ? lo[i] : r - v);
    const T g = dy[i];
    dx[i] = inside ? g : T(0);
    acc[i] += d * g;
  }
}

template <typename T>
void lsq_backward_impl(const T* dy, const T* x, T* dx, double* dscale, const ChannelLayout& L,
                       const ChannelParams<T>& p) {
  const int64_t O = L.outer, C = L.channels, I = L.inner;
  const int64_t numel = O * C * I;
  std::fill(dscale, dscale + C, 0.0);
  if (numel == 0) return;

  if (C == 1 || I >= kLongRun) {
    // Long runs: one task per (outer, channel, chunk of the run); a partial sum per task.
    const int64_t nch = (I + kRunChunk - 1) / kRunChunk;
    const int64_t ntasks = O * C * nch;
    std::vector<double> partial(ntasks);
    const int64_t task_len = std::min(I, kRunChunk);
    const int64_t grain = std::max<int64_t>(1, kGrain / task_len);
    at::parallel_for(0, ntasks, grain, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t k = t % nch;
        const int64_t oc = t / nch;
        const int64_t c = oc % C;
        const int64_t base = oc * I + k * kRunChunk;
        const int64_t n = std::min(kRunChunk, I - k * kRunChunk);
        partial[t] = double(bq_run<T>(dy + base, x + base, dx + base, n, p.inv[c], p.lo[c], p.hi[c]));
      }
    });
    for (int64_t t = 0; t < ntasks; ++t) dscale[(t / nch) % C] += partial[t];
    return;
  }

  // Short runs (C > 1, I < kLongRun): blocks of whole rows, a per-channel accumulator per block.
  const int64_t row = C * I;
  int64_t nb = std::min<int64_t>({O, 64, std::max<int64_t>(1, O / 16), std::max<int64_t>(1, numel / 16384)});
  nb = std::max<int64_t>(nb, 1);
  const int64_t rows_per_block = (O + nb - 1) / nb;
  nb = (O + rows_per_block - 1) / rows_per_block;
  std::vector<double> partial(nb * C, 0.0);
  const int64_t grain = std::max<int64_t>(1, kGrain / (rows_per_block * row));
  constexpr int64_t kFlushRows = 256;  // float partials are flushed into double this often
  at::parallel_for(0, nb, grain, [&](int64_t b, int64_t e) {
    std::vector<T> facc(C);
    for (int64_t blk = b; blk < e; ++blk) {
      double* dacc = partial.data() + blk * C;
      const int64_t o0 = blk * rows_per_block, o1 = std::min(O, o0 + rows_per_block);
      std::fill(facc.begin(), facc.end(), T(0));
      for (int64_t o = o0; o < o1; ++o) {
        const int64_t base = o * row;
        if (I == 1) {
          bq_run_channels<T>(dy + base, x + base, dx + base, C, p.inv.data(), p.lo.data(), p.hi.data(),
                             facc.data());
        } else {
          for (int64_t c = 0; c < C; ++c) {
            const int64_t off = base + c * I;
            facc[c] += bq_run<T>(dy + off, x + off, dx + off, I, p.inv[c], p.lo[c], p.hi[c]);
          }
        }
        if ((o - o0 + 1) % kFlushRows == 0 || o + 1 == o1) {
          for (int64_t c = 0; c < C; ++c) {
            dacc[c] += double(facc[c]);
            facc[c] = T(0);
          }
        }
      }
    }
  });
  for (int64_t blk = 0; blk < nb; ++blk)
    for (int64_t c = 0; c < C; ++c) dscale[c] += partial[blk * C + c];
}

}  // namespace

// ---------------------------------------------------------------- op entry points (registered in ops.cpp)

at::Tensor lsq_fake_quant_fwd_cpu(const at::Tensor& x_in, const at::Tensor& scale,
                                  const std::optional<at::Tensor>& zero_point, int64_t qmin, int64_t qmax,
                                  std::optional<int64_t> axis) {
  const auto ax = check_lsq_args(x_in, scale, zero_point, qmin, qmax, axis);
  const at::Tensor x = x_in.contiguous();
  const ChannelLayout L = channel_layout(x, ax);
  at::Tensor y = at::empty(x.sizes(), x.options());
  const bool zp = zero_point.has_value() && zero_point->defined();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lsq_fake_quant_fwd_cpu", [&] {
    const auto p = make_params<scalar_t>(scale, zero_point, L.channels, qmin, qmax);
    if (zp)
      lsq_forward_impl<scalar_t, true>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), L, p,
                                       qmin, qmax);
    else
      lsq_forward_impl<scalar_t, false>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), L, p,
                                        qmin, qmax);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> lsq_fake_quant_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                          const at::Tensor& scale,
                                                          const std::optional<at::Tensor>& zero_point,
                                                          int64_t qmin, int64_t qmax,
                                                          std::optional<int64_t> axis, double grad_scale) {
  const auto ax = check_lsq_args(x_in, scale, zero_point, qmin, qmax, axis);
  TORCH_CHECK_VALUE(grad_in.sizes() == x_in.sizes(), "lsq_fake_quant_bwd: grad has shape ", grad_in.sizes(),
                    " but x has shape ", x_in.sizes());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor dy = as_type(grad_in, x.scalar_type()).contiguous();
  const ChannelLayout L = channel_layout(x, ax);
  at::Tensor dx = at::empty(x.sizes(), x.options());
  std::vector<double> ds(L.channels);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lsq_fake_quant_bwd_cpu", [&] {
    const auto p = make_params<scalar_t>(scale, zero_point, L.channels, qmin, qmax);
    lsq_backward_impl<scalar_t>(dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                dx.mutable_data_ptr<scalar_t>(), ds.data(), L, p);
  });
  at::Tensor dscale = at::empty(scale.sizes(), scale.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scale.scalar_type(), "lsq_dscale", [&] {
    scalar_t* dp = dscale.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < L.channels; ++c) dp[c] = static_cast<scalar_t>(ds[c] * grad_scale);
  });
  return {dx, dscale};
}

}  // namespace compressor_native
