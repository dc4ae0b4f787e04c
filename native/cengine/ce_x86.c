/* ce_x86.c - AVX2 micro-kernels for the host build's int8 GEMMs (x86-64 hosts only).
 *
 * The portable scalar kernels are the reference; on an x86 host compiled with AVX2 (for example
 * -march=native) ce_gemm_wx and ce_gemm_xw use these kernels instead, because compilers do not turn the scalar
 * loops into vpmaddwd. It computes exactly the same integers (int16 products summed in pairs into
 * int32 lanes, the same requantization), so host, rv64gc and rv64gcv builds stay bit-exact.
 * Define CE_SCALAR_ONLY to build the host engine from the scalar reference alone.
 */
#include "ce_internal.h"

#if defined(CE_HAVE_AVX2)
#include <immintrin.h>

/* Requantization constants of one (mult, shift, zp, lo, hi), built once per row/channel. */
typedef struct {
    __m256i vm, mask, half, rnd, bias, unbias, lo, hi, zp;
    __m256d md; /* mult * 2^-shift, exact in a double */
    __m128i sh;
    int32_t mult, shift, zps, los, his;
} rq_t;

static inline void rq_init(rq_t *q, int32_t mult, int32_t shift, int32_t zp, int32_t lo, int32_t hi)
{
    q->mult = mult, q->shift = shift, q->zps = zp, q->los = lo, q->his = hi;
    if (shift > 62) return;
    q->md = _mm256_set1_pd((double)mult / (double)((uint64_t)1 << shift));
    q->vm = _mm256_set1_epi32(mult);
    q->mask = _mm256_set1_epi64x((int64_t)(((uint64_t)1 << shift) - 1));
    q->half = _mm256_set1_epi64x((int64_t)((uint64_t)1 << (shift - 1)));
    if (shift >= 33) {
        q->rnd = _mm256_set1_epi32((int32_t)1 << (shift - 33));
        q->sh = _mm_cvtsi32_si128(shift - 32);
    } else {
        q->bias = _mm256_set1_epi64x((int64_t)(((uint64_t)1 << 62) + ((uint64_t)1 << (shift - 1))));
        q->unbias = _mm256_set1_epi64x((int64_t)((uint64_t)1 << (62 - shift)));
        q->sh = _mm_cvtsi32_si128(shift);
    }
    q->lo = _mm256_set1_epi32(lo - zp);
    q->hi = _mm256_set1_epi32(hi - zp);
    q->zp = _mm256_set1_epi32(zp);
}

/* Requantize 8 int32 accumulators, store nt <= 8 int8 values; the same arithmetic as ce_requant
 * (round half to even).
 * shift >= 33: floor((P + 2^(s-1)) / 2^s) == (hi32(P) + 2^(s-33)) >> (s-32) exactly (P = acc*mult,
 * a floor of a floor is one floor), in 32-bit lanes. Otherwise the 64-bit products are biased
 * by 2^62 so a logical shift gives the arithmetic one. The result fits in int32 (the code
 * generator checks |acc * M| < 2^30), so either way the low 32 bits are exact. Ties
 * (P mod 2^s == 2^(s-1)) are found on the 64-bit products and get their low bit cleared. */
static inline void requant8q(__m256i acc, int8_t *dst, int32_t nt, const rq_t *q)
{
    __m256i ev, od, r, tie;
    if (q->shift > 62) {
        int32_t v[8], i;
        _mm256_storeu_si256((__m256i *)v, acc);
        for (i = 0; i < nt; i++) dst[i] = ce_requant(v[i], q->mult, q->shift, q->zps, q->los, q->his);
        return;
    }
    /* |acc| < 2^22: acc * mult < 2^53 is exact in a double, and converting it back rounds to
     * nearest even (the default MXCSR mode): the same result in fewer instructions. */
    if (_mm256_testz_si256(_mm256_add_epi32(acc, _mm256_set1_epi32(1 << 22)), _mm256_set1_epi32(~((1 << 23) - 1)))) {
        const __m256d lo4 = _mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(acc)), q->md);
        const __m256d hi4 = _mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(acc, 1)), q->md);
        r = _mm256_set_m128i(_mm256_cvtpd_epi32(hi4), _mm256_cvtpd_epi32(lo4));
        goto clamp;
    }
    ev = _mm256_mul_epi32(acc, q->vm);
    od = _mm256_mul_epi32(_mm256_srli_epi64(acc, 32), q->vm);
    tie = _mm256_blend_epi32(_mm256_cmpeq_epi64(_mm256_and_si256(ev, q->mask), q->half),
                             _mm256_cmpeq_epi64(_mm256_and_si256(od, q->mask), q->half), 0xAA);
    if (q->shift >= 33) {
        r = _mm256_blend_epi32(_mm256_srli_epi64(ev, 32), od, 0xAA);
        r = _mm256_sra_epi32(_mm256_add_epi32(r, q->rnd), q->sh);
    } else {
        ev = _mm256_sub_epi64(_mm256_srl_epi64(_mm256_add_epi64(ev, q->bias), q->sh), q->unbias);
        od = _mm256_sub_epi64(_mm256_srl_epi64(_mm256_add_epi64(od, q->bias), q->sh), q->unbias);
        r = _mm256_blend_epi32(ev, _mm256_slli_epi64(od, 32), 0xAA);
    }
    r = _mm256_andnot_si256(_mm256_and_si256(tie, _mm256_set1_epi32(1)), r);
clamp:
    r = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(r, q->lo), q->hi), q->zp);
    {
        const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
        const __m128i b8 = _mm_packs_epi16(w16, w16);
        if (nt == 8) {
            _mm_storel_epi64((__m128i *)dst, b8);
        } else {
            int8_t tmp[16];
            _mm_storeu_si128((__m128i *)tmp, b8);
            memcpy(dst, tmp, (size_t)nt);
        }
    }
}

static inline void requant8(__m256i acc, int8_t *dst, int32_t nt, int32_t mult, int32_t shift,
                            int32_t zp, int32_t lo, int32_t hi)
{
    rq_t q;
    rq_init(&q, mult, shift, zp, lo, hi);
    requant8q(acc, dst, nt, &q);
}

void ce_requant_row_avx2(const int32_t *acc, int32_t n, int32_t mult, int32_t shift, int32_t zp,
                         int32_t lo, int32_t hi, int8_t *dst)
{
    int32_t i;
    for (i = 0; i < n; i += 8)
        requant8(_mm256_loadu_si256((const __m256i *)(acc + i)), dst + i, ce_min32(8, n - i), mult,
                 shift, zp, lo, hi);
}

/* n outputs of a depthwise convolution at consecutive positions of `base`:
 * y[i] = requant(bias + sum_t w[t] * base[tap[t] + i]). Taps are taken in pairs (vpmaddwd on
 * interleaved int16), 16 outputs per step; loads may read up to 15 bytes past the last tap
 * (the scratch plane and the arena have that much slack). */
void ce_dw_row_avx2(const int8_t *base, const int32_t *tap, const int8_t *w, int32_t kk, int32_t n,
                    int32_t bias, int32_t mult, int32_t shift, int32_t zp, int32_t lo, int32_t hi,
                    int8_t *y)
{
    int32_t i0, t;
    __m256i wv[32];
    rq_t q;
    rq_init(&q, mult, shift, zp, lo, hi);
    for (t = 0; t < kk; t += 2) {
        const int32_t w1 = t + 1 < kk ? w[t + 1] : 0;
        wv[t / 2] = _mm256_set1_epi32((int32_t)(uint16_t)(int16_t)w[t] |
                                      (int32_t)((uint32_t)(uint16_t)(int16_t)w1 << 16));
    }
    for (i0 = 0; i0 < n; i0 += 16) {
        const int32_t nt = ce_min32(16, n - i0);
        const int8_t *p = base + i0;
        __m256i a0 = _mm256_set1_epi32(bias), a1 = a0;
        for (t = 0; t < kk; t += 2) {
            const __m128i x0 = _mm_loadu_si128((const __m128i *)(p + tap[t]));
            const __m128i x1 = t + 1 < kk ? _mm_loadu_si128((const __m128i *)(p + tap[t + 1])) : _mm_setzero_si128();
            a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_unpacklo_epi8(x0, x1)), wv[t / 2]));
            a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_unpackhi_epi8(x0, x1)), wv[t / 2]));
        }
        requant8q(a0, y + i0, ce_min32(8, nt), &q);
        if (nt > 8) requant8q(a1, y + i0 + 8, nt - 8, &q);
    }
}

/* Stride-2 phases of one row of n <= 32 values: even[0..16) = s[0], s[2], ... (ne valid),
 * odd[0..16) = s[1], s[3], ... (no valid), the rest `fill`. Same over-read/over-write rules. */
void ce_deinterleave32_avx2(const int8_t *s, int32_t ne, int32_t no, int8_t fill, int8_t *even,
                            int8_t *odd)
{
    const __m128i sel = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    const __m128i iota = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m128i a = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)s), sel);
    const __m128i b = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(s + 16)), sel);
    const __m128i ev = _mm_unpacklo_epi64(a, b), od = _mm_unpackhi_epi64(a, b);
    const __m128i f = _mm_set1_epi8(fill);
    const __m128i e = _mm_blendv_epi8(f, ev, _mm_cmpgt_epi8(_mm_set1_epi8((char)ne), iota));
    const __m128i o = _mm_blendv_epi8(f, od, _mm_cmpgt_epi8(_mm_set1_epi8((char)no), iota));
    if (even < odd) { /* lower address first: its 16-byte store may spill into the other phase */
        _mm_storeu_si128((__m128i *)even, e);
        _mm_storeu_si128((__m128i *)odd, o);
    } else {
        _mm_storeu_si128((__m128i *)odd, o);
        _mm_storeu_si128((__m128i *)even, e);
    }
}

/* even[i] = s[2i] (i < ne), odd[i] = s[2i+1] (i < no): stride-2 column phases of one row. */
void ce_deinterleave2_avx2(const int8_t *s, int32_t ne, int32_t no, int8_t *even, int8_t *odd)
{
    const __m128i sel = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    int32_t i = 0;
    for (; i + 8 <= ne && i + 8 <= no; i += 8) {
        const __m128i v = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(s + 2 * i)), sel);
        _mm_storel_epi64((__m128i *)(even + i), v);
        _mm_storel_epi64((__m128i *)(odd + i), _mm_srli_si128(v, 8));
    }
    for (; i < ne || i < no; i++) {
        if (i < ne) even[i] = s[2 * i];
        if (i < no) odd[i] = s[2 * i + 1];
    }
}

/* Y[m][n] for 4 (or fewer) rows and 16 columns of X (row stride ldx; nt valid columns).
 * w16 holds the 4 rows' weights widened to int16, rows of kp pairs: (w[r][2j], w[r][2j+1]) is
 * the int32 w16[r * kp + j]. */
static void tile_4x16(int32_t rows, int32_t nt, int32_t K, const int32_t *w16, const int8_t *X,
                      int32_t ldx, int8_t *Y, int32_t ldy, const int32_t *bias, const rq_t *rq)
{
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00;
    __m256i a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    const int32_t kp = (K + 1) / 2;
    const int32_t *w0 = w16, *w1 = w16 + kp, *w2 = w16 + 2 * kp, *w3 = w16 + 3 * kp;
    int32_t j, r;
    for (j = 0; j < kp; j++) {
        const int32_t k = 2 * j;
        const __m128i x0 = _mm_loadu_si128((const __m128i *)(X + (size_t)k * ldx));
        const __m128i x1 = k + 1 < K ? _mm_loadu_si128((const __m128i *)(X + (size_t)(k + 1) * ldx))
                                     : _mm_setzero_si128();
        const __m256i xl = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(x0, x1));
        const __m256i xh = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(x0, x1));
        __m256i w = _mm256_set1_epi32(w0[j]);
        a00 = _mm256_add_epi32(a00, _mm256_madd_epi16(xl, w));
        a01 = _mm256_add_epi32(a01, _mm256_madd_epi16(xh, w));
        w = _mm256_set1_epi32(w1[j]);
        a10 = _mm256_add_epi32(a10, _mm256_madd_epi16(xl, w));
        a11 = _mm256_add_epi32(a11, _mm256_madd_epi16(xh, w));
        w = _mm256_set1_epi32(w2[j]);
        a20 = _mm256_add_epi32(a20, _mm256_madd_epi16(xl, w));
        a21 = _mm256_add_epi32(a21, _mm256_madd_epi16(xh, w));
        w = _mm256_set1_epi32(w3[j]);
        a30 = _mm256_add_epi32(a30, _mm256_madd_epi16(xl, w));
        a31 = _mm256_add_epi32(a31, _mm256_madd_epi16(xh, w));
    }
    {
        const __m256i acc[4][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31}};
        for (r = 0; r < rows; r++) {
            const __m256i b = _mm256_set1_epi32(bias[r]);
            int8_t *y = Y + (size_t)r * ldy;
            requant8q(_mm256_add_epi32(acc[r][0], b), y, ce_min32(8, nt), &rq[r]);
            if (nt > 8) requant8q(_mm256_add_epi32(acc[r][1], b), y + 8, nt - 8, &rq[r]);
        }
    }
}

static inline int32_t hsum8(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* Few output columns (N <= 8, the small spatial maps at the end of a CNN): dot products along k.
 * X is transposed and widened to int16 once, each block of 4 weight rows is widened, and a 4 x 2
 * block of outputs accumulates 16 k per vpmaddwd. */
static void gemm_wx_dot(int32_t M, int32_t N, int32_t K, const int8_t *W, const int8_t *X,
                        int32_t ldx, int8_t *Y, int32_t ldy, const int32_t *bias,
                        const int32_t *mult, const int32_t *shift, int32_t zp, int32_t lo, int32_t hi)
{
    const int32_t kq = (K + 15) / 16 * 16;
    int16_t *xt = (int16_t *)__builtin_alloca((size_t)(N + 1) * kq * sizeof(int16_t));
    int16_t *wt = (int16_t *)__builtin_alloca((size_t)4 * kq * sizeof(int16_t));
    int32_t m, n, k, r;
    memset(xt, 0, (size_t)(N + 1) * kq * sizeof(int16_t));
    for (k = 0; k < K; k++)
        for (n = 0; n < N; n++) xt[(size_t)n * kq + k] = X[(size_t)k * ldx + n];
    for (m = 0; m < M; m += 4) {
        const int32_t rows = ce_min32(4, M - m);
        memset(wt, 0, (size_t)4 * kq * sizeof(int16_t));
        for (r = 0; r < rows; r++)
            for (k = 0; k < K; k++) wt[(size_t)r * kq + k] = W[(size_t)(m + r) * K + k];
        for (n = 0; n < N; n += 2) { /* an odd N reads the zero row xt[N] */
            const int16_t *x0 = xt + (size_t)n * kq, *x1 = x0 + kq;
            __m256i c[4][2];
            for (r = 0; r < 4; r++) c[r][0] = c[r][1] = _mm256_setzero_si256();
            for (k = 0; k < kq; k += 16) {
                const __m256i u = _mm256_loadu_si256((const __m256i *)(x0 + k));
                const __m256i v = _mm256_loadu_si256((const __m256i *)(x1 + k));
                for (r = 0; r < 4; r++) {
                    const __m256i w = _mm256_loadu_si256((const __m256i *)(wt + (size_t)r * kq + k));
                    c[r][0] = _mm256_add_epi32(c[r][0], _mm256_madd_epi16(u, w));
                    c[r][1] = _mm256_add_epi32(c[r][1], _mm256_madd_epi16(v, w));
                }
            }
            for (r = 0; r < rows; r++) {
                int8_t *y = Y + (size_t)(m + r) * ldy + n;
                y[0] = ce_requant(hsum8(c[r][0]) + bias[m + r], mult[m + r], shift[m + r], zp, lo, hi);
                if (n + 1 < N)
                    y[1] = ce_requant(hsum8(c[r][1]) + bias[m + r], mult[m + r], shift[m + r], zp, lo, hi);
            }
        }
    }
}

void ce_gemm_wx_avx2(int32_t M, int32_t N, int32_t K, const int8_t *W, const int8_t *X,
                     int32_t ldx, int8_t *Y, int32_t ldy, const int32_t *bias, const int32_t *mult,
                     const int32_t *shift, int32_t zp, int32_t lo, int32_t hi)
{
    if (N <= 8 && K >= 32) {
        gemm_wx_dot(M, N, K, W, X, ldx, Y, ldy, bias, mult, shift, zp, lo, hi);
        return;
    }
    const int32_t kp = (K + 1) / 2;
    int16_t *w16 = (int16_t *)__builtin_alloca((size_t)kp * 4 * sizeof(int32_t));
    int8_t *panel = 0;
    int32_t m, n0, nb, k, r;
    if (N % 16) { /* the last columns, zero-padded to 16 (copied once) */
        const int32_t nt = N % 16;
        panel = (int8_t *)__builtin_alloca((size_t)K * 16 + 16);
        memset(panel, 0, (size_t)K * 16 + 16);
        for (k = 0; k < K; k++) memcpy(panel + (size_t)k * 16, X + (size_t)k * ldx + (N - nt), (size_t)nt);
    }
    /* column blocks outermost: a block of X (K x 256) stays in L1 while every row block uses it */
    for (nb = 0; nb < N; nb += 256) {
        const int32_t ne = ce_min32(N, nb + 256);
        for (m = 0; m < M; m += 4) {
            const int32_t rows = ce_min32(4, M - m);
            rq_t rq[4];
            for (r = 0; r < rows; r++) rq_init(&rq[r], mult[m + r], shift[m + r], zp, lo, hi);
            for (r = 0; r < 4; r++) { /* widen the block's rows to int16 (a zero pads odd K) */
                const int8_t *w = W + (size_t)(m + (r < rows ? r : 0)) * K;
                int16_t *d = w16 + (size_t)r * 2 * kp;
                for (k = 0; k < K; k++) d[k] = w[k];
                d[2 * kp - 1] = K % 2 ? 0 : d[2 * kp - 1];
            }
            for (n0 = nb; n0 < ne; n0 += 16) {
                const int32_t nt = ce_min32(16, N - n0);
                if (nt == 16)
                    tile_4x16(rows, 16, K, (const int32_t *)w16, X + n0, ldx, Y + (size_t)m * ldy + n0, ldy,
                              bias + m, rq);
                else
                    tile_4x16(rows, nt, K, (const int32_t *)w16, panel, 16, Y + (size_t)m * ldy + n0, ldy,
                              bias + m, rq);
            }
        }
    }
}

/* A*W^T (Gemm / MatMul with weights, Transformer linears): blocks of 4 weight rows x 4 activation
 * rows; 16 k per step, both sides widened to int16 and multiplied in pairs by vpmaddwd (exact
 * int32 sums). Weight rows are the outer loop, so each block of W is read from memory once and
 * the activations (T x K, reused by every block) stay in cache. */
static void xw_block(int32_t tn, int32_t mn, int32_t K, const int8_t *A, const int8_t *W, int32_t *acc)
{
    __m256i c[4][4];
    int32_t i, j, k;
    for (i = 0; i < 4; i++)
        for (j = 0; j < 4; j++) c[i][j] = _mm256_setzero_si256();
    for (k = 0; k + 16 <= K; k += 16) {
        __m256i a[4], w[4];
        for (i = 0; i < 4; i++)
            a[i] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(A + (size_t)(i < tn ? i : 0) * K + k)));
        for (j = 0; j < 4; j++)
            w[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(W + (size_t)(j < mn ? j : 0) * K + k)));
        for (i = 0; i < 4; i++)
            for (j = 0; j < 4; j++) c[i][j] = _mm256_add_epi32(c[i][j], _mm256_madd_epi16(a[i], w[j]));
    }
    for (i = 0; i < tn; i++)
        for (j = 0; j < mn; j++) {
            int32_t v = hsum8(c[i][j]), kk;
            const int8_t *ar = A + (size_t)i * K, *wr = W + (size_t)j * K;
            for (kk = k; kk < K; kk++) v += (int32_t)ar[kk] * wr[kk];
            acc[i * 4 + j] = v;
        }
}

void ce_gemm_xw_avx2(int32_t T, int32_t M, int32_t K, const int8_t *A, const int8_t *W, int8_t *Y,
                     int32_t ldy, const int32_t *bias, const int32_t *mult, const int32_t *shift,
                     int32_t zp, int32_t lo, int32_t hi, float *yf, const float *fscale)
{
    int32_t m, t, i, j, acc[16];
    for (m = 0; m < M; m += 4) {
        const int32_t mn = ce_min32(4, M - m);
        for (t = 0; t < T; t += 4) {
            const int32_t tn = ce_min32(4, T - t);
            xw_block(tn, mn, K, A + (size_t)t * K, W + (size_t)m * K, acc);
            for (i = 0; i < tn; i++)
                for (j = 0; j < mn; j++) {
                    const int32_t v = acc[i * 4 + j] + bias[m + j];
                    if (yf)
                        yf[(size_t)(t + i) * ldy + m + j] = (float)v * fscale[m + j];
                    else
                        Y[(size_t)(t + i) * ldy + m + j] = ce_requant(v, mult[m + j], shift[m + j], zp, lo, hi);
                }
        }
    }
}
#else
typedef int ce_x86_unused; /* ISO C forbids an empty translation unit */
#endif
