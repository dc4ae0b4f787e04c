/* ce_internal.h - helpers shared by the kernel files (not part of the public API). */
#ifndef CE_INTERNAL_H
#define CE_INTERNAL_H

#include "cengine.h"
#include <string.h>

#if defined(CE_USE_RVV) && defined(__riscv_vector)
#define CE_RVV 1
#include <riscv_vector.h>

/* Requantize a vector of int32 accumulators (one multiplier for the whole vector) and store int8:
 * the same arithmetic as ce_requant() (round half to even: the tie lanes' low bit is cleared).
 * 12 vector instructions per vl outputs. */
static inline void ce_rvv_requant_store(vint32m4_t acc, int8_t *dst, int32_t mult, int32_t shift,
                                        int32_t zp, int32_t lo, int32_t hi, size_t vl)
{
    const int64_t h = (int64_t)1 << (shift - 1);
    vint64m8_t p = __riscv_vwmul_vx_i64m8(acc, mult, vl);
    const vbool8_t tie = __riscv_vmseq_vx_i64m8_b8(
        __riscv_vand_vx_i64m8(p, (int64_t)(((uint64_t)1 << shift) - 1), vl), h, vl);
    p = __riscv_vadd_vx_i64m8(p, h, vl);
    vint32m4_t r = __riscv_vnsra_wx_i32m4(p, (size_t)shift, vl);
    r = __riscv_vand_vx_i32m4_mu(tie, r, r, ~(int32_t)1, vl);
    r = __riscv_vmax_vx_i32m4(r, lo - zp, vl);
    r = __riscv_vmin_vx_i32m4(r, hi - zp, vl);
    r = __riscv_vadd_vx_i32m4(r, zp, vl);
    const vint16m2_t r16 = __riscv_vncvt_x_x_w_i16m2(r, vl);
    __riscv_vse8_v_i8m1(dst, __riscv_vncvt_x_x_w_i8m1(r16, vl), vl);
}

/* Store int32 values as int8 after rne(v / 2^shift) in 32 bits, clamp and zero point
 * (add/requantize kernels). */
static inline void ce_rvv_shift_store(vint32m4_t v, int8_t *dst, int32_t shift, int32_t zp,
                                      int32_t lo, int32_t hi, size_t vl)
{
    const int32_t h = (int32_t)1 << (shift - 1);
    const vbool8_t tie = __riscv_vmseq_vx_i32m4_b8(__riscv_vand_vx_i32m4(v, 2 * h - 1, vl), h, vl);
    v = __riscv_vadd_vx_i32m4(v, h, vl);
    v = __riscv_vsra_vx_i32m4(v, (size_t)shift, vl);
    v = __riscv_vand_vx_i32m4_mu(tie, v, v, ~(int32_t)1, vl);
    v = __riscv_vmax_vx_i32m4(v, lo - zp, vl);
    v = __riscv_vmin_vx_i32m4(v, hi - zp, vl);
    v = __riscv_vadd_vx_i32m4(v, zp, vl);
    const vint16m2_t v16 = __riscv_vncvt_x_x_w_i16m2(v, vl);
    __riscv_vse8_v_i8m1(dst, __riscv_vncvt_x_x_w_i8m1(v16, vl), vl);
}
#endif

#if !defined(CE_RVV) && !defined(CE_SCALAR_ONLY) && defined(__AVX2__) && defined(__x86_64__)
#define CE_HAVE_AVX2 1
void ce_gemm_wx_avx2(int32_t M, int32_t N, int32_t K, const int8_t *W, const int8_t *X,
                     int32_t ldx, int8_t *Y, int32_t ldy, const int32_t *bias, const int32_t *mult,
                     const int32_t *shift, int32_t zp, int32_t lo, int32_t hi);
void ce_gemm_xw_avx2(int32_t T, int32_t M, int32_t K, const int8_t *A, const int8_t *W, int8_t *Y,
                     int32_t ldy, const int32_t *bias, const int32_t *mult, const int32_t *shift,
                     int32_t zp, int32_t lo, int32_t hi, float *yf, const float *fscale);
void ce_dw_row_avx2(const int8_t *row, const int32_t *tap, const int8_t *w, int32_t kk, int32_t n,
                    int32_t bias, int32_t mult, int32_t shift, int32_t zp, int32_t lo, int32_t hi,
                    int8_t *y);
void ce_deinterleave2_avx2(const int8_t *s, int32_t ne, int32_t no, int8_t *even, int8_t *odd);
#include <immintrin.h>
/* One image row (n <= 32 values) into a padded plane row: d[0..n) = s[0..n), d[n..32) = fill.
 * Reads 32 bytes from s and writes 32 bytes to d (the arena and scratch have that much slack;
 * the bytes past the row are padding, rewritten later if they belong to another row). */
static inline void ce_copy_row32_avx2(const int8_t *s, int32_t n, int8_t fill, int8_t *d)
{
    const __m256i iota = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
                                          18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
    const __m256i keep = _mm256_cmpgt_epi8(_mm256_set1_epi8((char)n), iota);
    const __m256i v = _mm256_loadu_si256((const __m256i *)s);
    _mm256_storeu_si256((__m256i *)d, _mm256_blendv_epi8(_mm256_set1_epi8(fill), v, keep));
}
/* 32 bytes from s to d (callers rely on slack past both buffers). */
static inline void ce_copy32(int8_t *d, const int8_t *s)
{
    _mm256_storeu_si256((__m256i *)d, _mm256_loadu_si256((const __m256i *)s));
}
void ce_deinterleave32_avx2(const int8_t *s, int32_t ne, int32_t no, int8_t fill, int8_t *even,
                            int8_t *odd);
/* acc must be readable in whole groups of 8 (n rounded up) */
void ce_requant_row_avx2(const int32_t *acc, int32_t n, int32_t mult, int32_t shift, int32_t zp,
                         int32_t lo, int32_t hi, int8_t *dst);
#endif

static inline int32_t ce_min32(int32_t a, int32_t b) { return a < b ? a : b; }
static inline int32_t ce_max32(int32_t a, int32_t b) { return a > b ? a : b; }

/* Scalar rne(v / 2^shift), clamp, zero point: the add/requantize kernels' rounding. */
static inline int8_t ce_shift_round(int32_t v, int32_t shift, int32_t zp, int32_t lo, int32_t hi)
{
    const int32_t h = (int32_t)1 << (shift - 1);
    const int tie = (v & (2 * h - 1)) == h;
    v = (v + h) >> shift;
    if (tie) v &= ~(int32_t)1;
    if (v < lo - zp) v = lo - zp;
    if (v > hi - zp) v = hi - zp;
    return (int8_t)(v + zp);
}

/* Copy a C x H x W int8 plane set into a padded buffer (one plane at a time): dst is
 * (h + pt + pb) x (w + pl + pr), filled with `fill` outside the copied region. */
void ce_pad_plane(const int8_t *src, int32_t h, int32_t w, int32_t pt, int32_t pl, int32_t pb,
                  int32_t pr, int8_t fill, int8_t *dst, int fill_border);

#endif
