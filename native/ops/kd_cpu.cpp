// Fused knowledge-distillation loss on the CPU.
//
// Rows r (all leading dims flattened), classes c (last dim), temperature T:
//   s' = s/T, t' = t/T, p = softmax(t'), q = softmax(s')
//   loss_r = T^2 * KL(p || q) = T^2 * sum_c p_c (log p_c - log q_c)
//   d loss_r / d s_c = T * (q_c - p_c)
// Forward: one pass over each row (the row's max first, then the sums, while the row is hot in
// cache); only the two log-sum-exps per row are kept for the backward, no probability tensor.
// Backward: one pass writing the student gradient.
// Classes where the teacher probability is exactly 0 (teacher logit -inf) contribute 0, also
// when the student logit is -inf (F.kl_div would give NaN there). NaN in a row gives a NaN loss.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cmath>
#include <algorithm>
#include <cstring>
#include <vector>

#include "common.h"
#include "cpu_ops.h"

namespace compressor_native {
namespace {

enum Reduction : int64_t { kNone = 0, kSum = 1, kBatchMean = 2, kMean = 3 };

// exp(x) for float, written so that the compiler vectorises it inside `omp simd` loops
// (range reduction to [-ln2/2, ln2/2], degree-6 polynomial, exponent by bit construction).
// Accurate to about 2 ulp for x <= 88; exp(-inf) = 0, NaN stays NaN. Only used with x <= 0 here.
#if defined(__GNUC__) || defined(__clang__)
#define COMPRESSOR_INLINE inline __attribute__((always_inline))
#else
#define COMPRESSOR_INLINE inline
#endif

COMPRESSOR_INLINE float exp_fast(float x) {
  constexpr float kHi = 88.0f, kLo = -87.33654475f;
  float xc = x > kHi ? kHi : x;
  xc = xc < kLo ? kLo : xc;
  const float xs = (xc == xc) ? xc : 0.0f;  // keep the integer conversion below defined for NaN
  const float n = std::nearbyint(xs * 1.44269504088896341f);
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float res = p * scale;
  return x < kLo ? 0.0f : res;
}
COMPRESSOR_INLINE double exp_fast(double x) { return std::exp(x); }

template <typename T>
struct RowStats {
  double loss;  // T^2 * KL for the row
  T lse_s, lse_t;
};

template <typename T>
inline RowStats<T> kd_row_forward(const T* __restrict s, const T* __restrict t, int64_t C, T invT, double T2) {
  T ms = -std::numeric_limits<T>::infinity(), mt = ms;
#pragma omp simd reduction(max : ms, mt)
  for (int64_t c = 0; c < C; ++c) {
    ms = s[c] > ms ? s[c] : ms;
    mt = t[c] > mt ? t[c] : mt;
  }
  const T mss = ms * invT, mts = mt * invT;  // max of s/T and t/T (T > 0)
  // Sums in vector lanes over blocks of kSumBlock classes, the block totals added in double:
  // a float sum over a whole 30k-class row would lose ~1e-5 relative accuracy.
  constexpr int64_t kSumBlock = 512;
  double zs_d = 0, zt_d = 0, acc_d = 0;
  for (int64_t b = 0; b < C; b += kSumBlock) {
    const int64_t e = std::min(C, b + kSumBlock);
    T zs = 0, zt = 0, acc = 0;
#pragma omp simd reduction(+ : zs, zt, acc)
    for (int64_t c = b; c < e; ++c) {
      const T as = s[c] * invT - mss;  // <= 0
      const T at = t[c] * invT - mts;  // <= 0
      const T es = exp_fast(as);
      const T et = exp_fast(at);
      zs += es;
      zt += et;
      acc += et > T(0) ? et * (at - as) : T(0);
    }
    zs_d += double(zs);
    zt_d += double(zt);
    acc_d += double(acc);
  }
  // KL = sum p (t' - s') - lse_t + lse_s, with t' - s' = (at - as) + (mts - mss)
  //    = acc / zt - log zt + log zs
  const double lzs = std::log(zs_d), lzt = std::log(zt_d);
  RowStats<T> st;
  st.loss = T2 * (acc_d / zt_d - lzt + lzs);
  st.lse_s = T(double(mss) + lzs);
  st.lse_t = T(double(mts) + lzt);
  return st;
}

template <typename T>
inline void kd_row_backward(const T* __restrict s, const T* __restrict t, T* __restrict g, int64_t C, T invT,
                            T lse_s, T lse_t, T coef) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    g[c] = coef * (exp_fast(s[c] * invT - lse_s) - exp_fast(t[c] * invT - lse_t));
  }
}

void check_kd_args(const at::Tensor& s, const at::Tensor& t, double temperature, int64_t reduction) {
  TORCH_CHECK_VALUE(at::isFloatingType(s.scalar_type()), "kd_loss: student logits must be floating point");
  TORCH_CHECK_VALUE(s.scalar_type() == t.scalar_type(), "kd_loss: teacher dtype ", t.scalar_type(),
                    " differs from student dtype ", s.scalar_type());
  TORCH_CHECK_VALUE(s.sizes() == t.sizes(), "kd_loss: student shape ", s.sizes(), " != teacher shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(s.dim() >= 1 && s.size(-1) >= 1,
                    "kd_loss: logits need a last dimension (the classes) of size >= 1, got shape ", s.sizes());
  TORCH_CHECK_VALUE(temperature > 0 && std::isfinite(temperature),
                    "kd_loss: temperature must be positive and finite, got ", temperature);
  TORCH_CHECK_VALUE(reduction >= kNone && reduction <= kMean, "kd_loss: bad reduction code ", reduction);
}

}  // namespace

// ---------------------------------------------------------------- op entry points (registered in ops.cpp)

std::tuple<at::Tensor, at::Tensor, at::Tensor> kd_loss_fwd_cpu(const at::Tensor& student,
                                                               const at::Tensor& teacher, double temperature,
                                                               int64_t reduction) {
  check_kd_args(student, teacher, temperature, reduction);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const int64_t C = s.size(-1);
  const int64_t N = s.numel() / C;
  auto rows_shape = s.sizes().vec();
  rows_shape.pop_back();
  at::Tensor lse_s = at::empty({N}, s.options()), lse_t = at::empty({N}, s.options());
  std::vector<double> row_loss(N);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "kd_loss_fwd_cpu", [&] {
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    scalar_t* ls = lse_s.mutable_data_ptr<scalar_t>();
    scalar_t* lt = lse_t.mutable_data_ptr<scalar_t>();
    const scalar_t invT = scalar_t(1.0 / temperature);
    const double T2 = temperature * temperature;
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
    at::parallel_for(0, N, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const auto st = kd_row_forward<scalar_t>(sp + r * C, tp + r * C, C, invT, T2);
        row_loss[r] = st.loss;
        ls[r] = st.lse_s;
        lt[r] = st.lse_t;
      }
    });
  });
  at::Tensor loss = reduction == kNone ? at::empty(rows_shape, s.options()) : at::empty({}, s.options());
  double total = 0.0;
  if (reduction != kNone) {
    for (int64_t r = 0; r < N; ++r) total += row_loss[r];
    if (reduction == kBatchMean) total /= double(N);  // N == 0 gives NaN, like torch's mean
    if (reduction == kMean) total /= double(N) * double(C);
  }
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "kd_loss_fwd_out", [&] {
    scalar_t* lp = loss.mutable_data_ptr<scalar_t>();
    if (reduction == kNone) {
      for (int64_t r = 0; r < N; ++r) lp[r] = static_cast<scalar_t>(row_loss[r]);
    } else {
      lp[0] = static_cast<scalar_t>(total);
    }
  });
  return {loss, lse_s, lse_t};
}

at::Tensor kd_loss_bwd_cpu(const at::Tensor& grad, const at::Tensor& student, const at::Tensor& teacher,
                           const at::Tensor& lse_student, const at::Tensor& lse_teacher, double temperature,
                           int64_t reduction) {
  check_kd_args(student, teacher, temperature, reduction);
  const at::Tensor s = student.contiguous(), t = teacher.contiguous();
  const int64_t C = s.size(-1);
  const int64_t N = s.numel() / C;
  TORCH_CHECK_VALUE(lse_student.numel() == N && lse_teacher.numel() == N, "kd_loss_bwd: lse must have ", N,
                    " elements");
  const at::Tensor ls = as_type(lse_student, s.scalar_type()).contiguous();
  const at::Tensor lt = as_type(lse_teacher, s.scalar_type()).contiguous();
  const at::Tensor g = as_type(grad, s.scalar_type()).contiguous();
  if (reduction == kNone) {
    TORCH_CHECK_VALUE(g.numel() == N, "kd_loss_bwd: grad must have one value per row");
  } else {
    TORCH_CHECK_VALUE(g.numel() == 1, "kd_loss_bwd: grad of a reduced loss must be a scalar");
  }
  at::Tensor ds = at::empty(s.sizes(), s.options());
  double norm = 1.0;
  if (reduction == kBatchMean) norm = 1.0 / double(N);
  if (reduction == kMean) norm = 1.0 / (double(N) * double(C));
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "kd_loss_bwd_cpu", [&] {
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    const scalar_t* tp = t.const_data_ptr<scalar_t>();
    const scalar_t* lsp = ls.const_data_ptr<scalar_t>();
    const scalar_t* ltp = lt.const_data_ptr<scalar_t>();
    scalar_t* dp = ds.mutable_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t invT = scalar_t(1.0 / temperature);
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
    at::parallel_for(0, N, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const double go = double(reduction == kNone ? gp[r] : gp[0]);
        const scalar_t coef = scalar_t(go * norm * temperature);
        kd_row_backward<scalar_t>(sp + r * C, tp + r * C, dp + r * C, C, invT, lsp[r], ltp[r], coef);
      }
    });
  });
  return ds;
}

}  // namespace compressor_native
