// Shared helpers for the CPU (and CUDA binding) side of the compressor native ops.
// Torch-dependent: never included by the .cu kernel files, which stay torch-free.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/core/ScalarType.h>
#include <optional>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace compressor_native {

// t in dtype `type`, without a dispatcher round trip when it already is.
inline at::Tensor as_type(const at::Tensor& t, at::ScalarType type) {
  return t.scalar_type() == type ? t : t.to(type);
}

// A tensor seen as [outer, channels, inner] around the quantization axis.
// Per tensor: outer = 1, channels = 1, inner = numel.
struct ChannelLayout {
  int64_t outer;
  int64_t channels;
  int64_t inner;
};

inline ChannelLayout channel_layout(const at::Tensor& x, std::optional<int64_t> axis) {
  if (!axis.has_value()) {
    return {1, 1, x.numel()};
  }
  const int64_t a = *axis;
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < a; ++d) outer *= x.size(d);
  for (int64_t d = a + 1; d < x.dim(); ++d) inner *= x.size(d);
  return {outer, x.size(a), inner};
}

// Normalises `axis` (negative counts from the end) and checks every argument of the LSQ ops.
// Raises c10::ValueError (Python ValueError) for bad values, like the Python wrapper does.
inline std::optional<int64_t> check_lsq_args(const at::Tensor& x, const at::Tensor& scale,
                                             const std::optional<at::Tensor>& zero_point,
                                             int64_t qmin, int64_t qmax,
                                             std::optional<int64_t> axis) {
  TORCH_CHECK_VALUE(at::isFloatingType(x.scalar_type()),
                    "lsq_fake_quant: x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK_VALUE(at::isFloatingType(scale.scalar_type()),
                    "lsq_fake_quant: scale must be a floating-point tensor, got ", scale.scalar_type());
  TORCH_CHECK_VALUE(qmin < qmax, "lsq_fake_quant: qmin (", qmin, ") must be < qmax (", qmax, ")");
  const int64_t limit = int64_t(1) << 22;  // exact integer rounding in float32 holds well beyond
  TORCH_CHECK_VALUE(qmin > -limit && qmax < limit,
                    "lsq_fake_quant: qmin/qmax must lie within +-2^22, got ", qmin, "..", qmax);
  TORCH_CHECK_VALUE(scale.device() == x.device(), "lsq_fake_quant: scale is on ", scale.device(),
                    " but x is on ", x.device());
  std::optional<int64_t> ax;
  int64_t channels = 1;
  if (axis.has_value()) {
    int64_t a = *axis;
    const int64_t nd = x.dim();
    TORCH_CHECK_VALUE(nd > 0 && a >= -nd && a < nd, "lsq_fake_quant: axis ", a,
                      " is out of range for a tensor with ", nd, " dimensions");
    if (a < 0) a += nd;
    ax = a;
    channels = x.size(a);
    TORCH_CHECK_VALUE(scale.dim() == 1 && scale.numel() == channels,
                      "lsq_fake_quant: per-channel scale must be 1-D with x.shape[", a, "] = ", channels,
                      " elements, got shape ", scale.sizes());
  } else {
    TORCH_CHECK_VALUE(scale.numel() == 1, "lsq_fake_quant: per-tensor scale must have one element, got shape ",
                      scale.sizes());
  }
  if (zero_point.has_value() && zero_point->defined()) {
    const auto& zp = *zero_point;
    TORCH_CHECK_VALUE(zp.device() == x.device(), "lsq_fake_quant: zero_point is on ", zp.device(),
                      " but x is on ", x.device());
    TORCH_CHECK_VALUE(zp.numel() == 1 || zp.numel() == channels,
                      "lsq_fake_quant: zero_point must have 1 or ", channels, " elements, got shape ",
                      zp.sizes());
  }
  return ax;
}

}  // namespace compressor_native
