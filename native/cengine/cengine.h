/*
 * cengine.h - C99 int8 inference kernels for CPUs without an ML runtime (RISC-V first).
 *
 * Every kernel exists twice, chosen at build time:
 *   - a scalar reference in portable C99 (host x86/ARM builds and rv64gc),
 *   - an RVV 1.0 intrinsic version (rv64gcv), enabled with -DCE_USE_RVV when the compiler defines
 *     __riscv_vector. RVV code is VLEN-agnostic: every loop asks vsetvl for its vector length and
 *     uses a fixed SEW/LMUL ratio (e8m1 <-> e16m2 <-> e32m4 <-> e64m8), so it runs on any VLEN.
 * Both versions compute exactly the same integers (integer arithmetic is associative), so the
 * scalar and RVV builds of an engine are bit-exact. Float kernels (Softmax, LayerNorm, GELU,
 * quantize/dequantize, the generic element-wise ops) are scalar in every build (the float matmul
 * has an RVV path that keeps every element's operation order), use no libm transcendental (own
 * exp/erf polynomials; fmaf and sqrtf are correctly rounded everywhere) and must be compiled with
 * -ffp-contract=off, so they are bit-exact across compilers and ISAs too. NaN payloads are the
 * one exception (x86 and RISC-V make different default NaNs); they do not occur in valid models.
 *
 * Tensor layout: NCHW (batch 1, so CHW), row-major, int8 activations with a per-tensor
 * (scale, zero point), int8 weights symmetric (zero point 0) per output channel, int32 bias with
 * scale in_scale * w_scale[c].
 *
 * REQUANTIZATION (int32 accumulator -> int8), the same in every kernel:
 *
 *   real multiplier  M = in_scale * w_scale[c] / out_scale     (pools: in_scale / (out_scale * n))
 *   fixed point      M ~= mult * 2^-shift,  mult in [2^30, 2^31), shift in [1, 63]
 *                    (the code generator picks them; M < 2^-63 gives mult = 0)
 *   result           y = clamp(rne(acc * mult / 2^shift), lo - zp, hi - zp) + zp
 *
 * The product acc * mult is exact in 64 bits and rounded once, to nearest with ties to even
 * (rne), the rounding of ONNX QuantizeLinear: q = (P + 2^(shift-1)) >> shift (arithmetic shift),
 * and when P is exactly halfway (P mod 2^shift == 2^(shift-1)) the low bit of q is cleared.
 * lo/hi is the int8 range intersected with a fused ReLU/ReLU6/Clip.
 * onnxruntime's QDQ graph computes the accumulator in float (24-bit significand) and rounds the
 * product half-to-even in QuantizeLinear: exact ties (pools, adds of equal scales) round the same
 * way; an output differs only where ORT's float rounding error moves a value across a .5
 * boundary, by one quantization step (the engine's integer result is the exact one).
 * The add/requantize kernels use 32-bit fixed point (see ce_add_q8) with the same rne rounding.
 *
 * QuantizeLinear: y = clamp(rint(x / scale) + zp) with rint half-to-even (as ONNX specifies);
 * DequantizeLinear: y = (x - zp) * scale.
 *
 * Transformer pieces that stay float (attention scores and probabilities, masks, residual sums,
 * pooling) use the generic float kernels below: element-wise ops with numpy broadcasting, reductions,
 * a float matrix product. Each float result is computed in the same order in every build (the
 * RVV float matmul vectorizes across output columns, so every output element sees the same
 * sequence of correctly rounded operations, explicit fused multiply-adds, as the scalar loop).
 * Integer inputs (token ids, masks) are int64/int32/bool tensors: cast, expanded and gathered.
 */
#ifndef CENGINE_H
#define CENGINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CE_VERSION 1

/* ---- requantization of an int32 accumulator (scalar reference, also used by RVV tails) ---- */
static inline int8_t ce_requant(int32_t acc, int32_t mult, int32_t shift, int32_t zp, int32_t lo,
                                int32_t hi)
{
    const int64_t p = (int64_t)acc * mult, h = (int64_t)1 << (shift - 1);
    int64_t v = (p + h) >> shift;
    if ((int64_t)((uint64_t)p & (((uint64_t)1 << shift) - 1)) == h) v &= ~(int64_t)1; /* tie: even */
    if (v < lo - zp) v = lo - zp;
    if (v > hi - zp) v = hi - zp;
    return (int8_t)(v + zp);
}

/* ---- convolution ---- */
typedef struct {
    int32_t cin, hin, win;     /* input  C, H, W */
    int32_t cout, hout, wout;  /* output C, H, W */
    int32_t kh, kw, sh, sw, dh, dw;
    int32_t pt, pl, pb, pr;    /* pads: top, left, bottom, right */
    int32_t groups;
    int32_t in_zp, out_zp, lo, hi;
    int32_t ntile;             /* im2col tile width (output positions per tile), general path */
    const int8_t *w;           /* [cout][cin/groups][kh][kw] */
    const int32_t *bias;       /* bias[c] - in_zp * sum(w[c]) (zero-point folded) */
    const int32_t *mult;       /* per output channel */
    const int32_t *shift;      /* per output channel */
} ce_conv_t;

/* Bytes of scratch memory ce_conv2d needs (the code generator computes the same number). */
size_t ce_conv2d_scratch(const ce_conv_t *p);
/* Dispatches to pointwise (1x1, stride 1, no pad, groups 1), depthwise (groups == cin == cout)
 * or the general im2col + GEMM path (groups, stride, padding, dilation). */
void ce_conv2d(const ce_conv_t *p, const int8_t *x, int8_t *y, int8_t *scratch);

/* ---- matrix products ----
 * ce_gemm_wx: Y[m][n] (row stride ldy) = requant(bias[m] + sum_k W[m][k] * X[k][n]),
 *             W row-major M x K, X row-major K x N with row stride ldx. (convolution layout)
 * ce_gemm_xw: Y[t][m] (row stride ldy) = requant(bias[m] + sum_k A[t][k] * W[m][k]),
 *             A row-major T x K, W row-major M x K. (fully connected / Gemm / MatMul layout)
 *             yf != NULL: write float yf[t*ldy+m] = (float)acc * fscale[m] instead of int8. */
void ce_gemm_wx(int32_t M, int32_t N, int32_t K, const int8_t *W, const int8_t *X, int32_t ldx,
                int8_t *Y, int32_t ldy, const int32_t *bias, const int32_t *mult,
                const int32_t *shift, int32_t zp, int32_t lo, int32_t hi);
void ce_gemm_xw(int32_t T, int32_t M, int32_t K, const int8_t *A, const int8_t *W, int8_t *Y,
                int32_t ldy, const int32_t *bias, const int32_t *mult, const int32_t *shift,
                int32_t zp, int32_t lo, int32_t hi, float *yf, const float *fscale);

/* Activation x activation product (attention): Y[t][m] = requant(sum_k (A[t][k]-za)(B[k][m]-zb))
 * with one multiplier; A is T x K, B is K x M (row strides lda, ldb), Y row stride ldy. */
void ce_matmul_q8(int32_t T, int32_t M, int32_t K, const int8_t *A, int32_t lda, int32_t za,
                  const int8_t *B, int32_t ldb, int32_t zb, int8_t *Y, int32_t ldy, int32_t mult,
                  int32_t shift, int32_t zp, int32_t lo, int32_t hi);

/* ---- element-wise ---- */
/* y = clamp(rne(((a - za) * ma + (b - zb) * mb) / 2^shift), lo - zy, hi - zy) + zy
 * ma, mb = round(a_scale / y_scale * 2^shift), round(b_scale / y_scale * 2^shift) with
 * |ma|, |mb| < 2^21 and 1 <= shift <= 29, so every partial sum fits in int32. b may be broadcast: b index = (i / binner) % bn
 * (binner = n, bn = 1 for a scalar; bn = n, binner = 1 for the same shape). */
void ce_add_q8(int32_t n, const int8_t *a, int32_t za, int32_t ma, const int8_t *b, int32_t zb,
               int32_t mb, int32_t bn, int32_t binner, int32_t shift, int8_t *y, int32_t zy,
               int32_t lo, int32_t hi);
/* y = requant((a - za) * (b - zb)) with one (mult, shift) (M = a_scale * b_scale / y_scale);
 * b broadcast as in ce_add_q8. */
void ce_mul_q8(int32_t n, const int8_t *a, int32_t za, const int8_t *b, int32_t zb, int32_t bn,
               int32_t binner, int32_t mult, int32_t shift, int8_t *y, int32_t zy, int32_t lo,
               int32_t hi);
/* y = clamp(rne((x - zx) * m / 2^shift), lo - zy, hi - zy) + zy (|m| < 2^21, shift <= 29) */
void ce_requant_q8(int32_t n, const int8_t *x, int32_t zx, int32_t m, int32_t shift, int8_t *y,
                   int32_t zy, int32_t lo, int32_t hi);
/* y = min(max(x, lo), hi): ReLU / ReLU6 / Clip when input and output share quantization. */
void ce_clamp_q8(int32_t n, const int8_t *x, int8_t *y, int32_t lo, int32_t hi);
void ce_quantize_f32(int32_t n, const float *x, float scale, int32_t zp, int8_t *y);
void ce_dequantize_i8(int32_t n, const int8_t *x, float scale, int32_t zp, float *y);

/* ---- pooling (C planes of H x W) ----
 * Window (oy, ox) starts at input row oy*sh - pt, column ox*sw - pl; hout/wout are the caller's
 * (ceil_mode: the last windows may reach past the bottom/right padding). MaxPool: pads must
 * cover every window (the code generator widens pb/pr for ceil_mode), scratch holds the padded
 * plane (ce_pool_scratch bytes). AveragePool: pads are the model's (they count with
 * count_include_pad), no scratch (may be NULL); divisor as onnxruntime: taps inside the padded
 * input (count_include_pad = 1) or inside the image (0). */
typedef struct {
    int32_t c, hin, win, hout, wout, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr;
    int32_t in_zp, out_zp;
    int32_t count_include_pad;             /* AveragePool only */
    const int32_t *mult, *shift;           /* AveragePool: by window count - 1 (kh*kw entries) */
} ce_pool_t;
size_t ce_pool_scratch(const ce_pool_t *p); /* MaxPool's padded plane (AveragePool: none) */
void ce_maxpool_q8(const ce_pool_t *p, const int8_t *x, int8_t *y, int8_t *scratch);
void ce_avgpool_q8(const ce_pool_t *p, const int8_t *x, int8_t *y, int8_t *scratch);
/* y[c] = requant(sum(x[c]) - zx * hw) with M = x_scale / (y_scale * hw) */
void ce_global_avgpool_q8(int32_t c, int32_t hw, const int8_t *x, int32_t zx, int8_t *y,
                          int32_t mult, int32_t shift, int32_t zy);

/* ---- layout (element size 1 or 4 bytes) ---- */
/* Generic transpose of a rank <= 6 tensor: y[...] = x[perm applied]; dims are the input dims. */
void ce_transpose(int32_t rank, const int32_t *dims, const int32_t *perm, int32_t esize,
                  const void *x, void *y);
/* One input of a Concat: copy outer blocks of `chunk` bytes from x (contiguous) to y with stride
 * ystride bytes. */
void ce_copy_blocks(int32_t outer, int32_t chunk, const void *x, void *y, int32_t ystride);

/* ---- element types (ce_cast, index tensors of ce_gather) ---- */
enum { CE_F32 = 0, CE_I8 = 1, CE_I64 = 2, CE_I32 = 3, CE_U8 = 4 };

/* ---- table lookup: y[i] = table[x[i] + 128] (an int8 -> int8 element-wise function, e.g. a
 * GELU between a DequantizeLinear and a QuantizeLinear, tabulated by the code generator) ---- */
void ce_lut_q8(int32_t n, const int8_t *x, const int8_t *table, int8_t *y);

/* ---- integer / mixed layout helpers ---- */
/* Element type conversion, ONNX Cast semantics: float -> integer truncates toward zero (and
 * saturates), anything -> bool is (x != 0), bool -> anything is 0 or 1. */
void ce_cast(int32_t n, int32_t from, const void *x, int32_t to, void *y);
/* y (contiguous, dims[0..rank)) = x read with element strides xs (0 along broadcast axes):
 * Expand, Slice and Split (x offset to the first element, strides times the steps).
 * esize: 1, 4 or 8 bytes. */
void ce_broadcast_copy(int32_t rank, const int32_t *dims, const int32_t *xs, int32_t esize,
                       const void *x, void *y);
/* Gather along one axis: x is outer x axis_len x (inner_bytes), y is outer x nidx x (inner_bytes);
 * idx (CE_I64 or CE_I32) are clamped into [0, axis_len) after adding axis_len to negatives. */
void ce_gather(int32_t outer, int32_t axis_len, int32_t inner_bytes, int32_t nidx, const void *idx,
               int32_t idx_type, const void *x, void *y);
/* Embedding lookup of an int8 table (rows x cols): y[j][c] = (table[i][c] - zp) * scale[i or 0],
 * i = idx[j] (clamped as in ce_gather); per_row: one scale per table row. Only the gathered rows
 * are dequantized. */
void ce_gather_dq_rows(int32_t nidx, const void *idx, int32_t idx_type, int32_t rows, int32_t cols,
                       const int8_t *table, int32_t zp, const float *scale, int32_t per_row,
                       float *y);

/* ---- float kernels (bit-exact across ISAs) ---- */
enum { CE_ADD = 0, CE_SUB = 1, CE_MUL = 2, CE_DIV = 3, CE_MAX = 4, CE_MIN = 5 };
enum { CE_SQRT = 0, CE_ERF = 1, CE_NEG = 2, CE_ABS = 3, CE_EXP = 4, CE_RECIP = 5, CE_TANH = 6,
       CE_SIGMOID = 7, CE_SQUARE = 8 };
enum { CE_RSUM = 0, CE_RMEAN = 1, CE_RMAX = 2, CE_RMIN = 3, CE_RSUMSQ = 4, CE_RL2 = 5 };
/* y = op(x) element-wise (exp, erf, tanh, sigmoid from ce_expf/ce_erff; sqrt is IEEE) */
void ce_unary_f32(int32_t op, int32_t n, const float *x, float *y);
/* y[i] = a[.] op b[.] over an output of rank 1..6 (dims): a and b are read with element strides
 * as / bs (0 along axes they are broadcast on). */
void ce_binary_f32(int32_t op, int32_t rank, const int32_t *dims, const int32_t *as,
                   const int32_t *bs, const float *a, const float *b, float *y);
/* y = c ? a : b, broadcast like ce_binary_f32 (c: bool bytes). */
void ce_where_f32(int32_t rank, const int32_t *dims, const int32_t *cs, const int32_t *as,
                  const int32_t *bs, const uint8_t *c, const float *a, const float *b, float *y);
/* Reduce the middle axis of an outer x n x inner tensor: y is outer x inner; the n values of each
 * output are combined in index order. */
void ce_reduce_f32(int32_t op, int32_t outer, int32_t n, int32_t inner, const float *x, float *y);
/* Y[t][m] = sum_k A[t][k] * B[k][m] (k in order from 0.0f, each step one fused multiply-add),
 * row strides lda/ldb/ldy. */
void ce_matmul_f32(int32_t T, int32_t M, int32_t K, const float *A, int32_t lda, const float *B,
                   int32_t ldb, float *Y, int32_t ldy);

float ce_expf(float x);
float ce_erff(float x);
void ce_softmax_f32(int32_t rows, int32_t cols, const float *x, float *y);
void ce_layernorm_f32(int32_t rows, int32_t cols, const float *x, const float *gamma,
                      const float *beta, float eps, float *y);
void ce_gelu_f32(int32_t n, const float *x, float *y);
void ce_relu_f32(int32_t n, const float *x, float *y, float lo, float hi);

#ifdef __cplusplus
}
#endif
#endif /* CENGINE_H */
