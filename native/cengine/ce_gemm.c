/* ce_gemm.c - int8 matrix products with int32 accumulation and requantization. */
#include "ce_internal.h"

#if !defined(CE_RVV)
/* Output positions per tile of the scalar W*X kernel: the 4 x CE_NT int32 accumulators stay in
 * L1 and the inner loop over n vectorizes on hosts that have SIMD. */
#define CE_NT 64

static void gemm_wx_rows(int32_t rows, int32_t nt, int32_t K, const int8_t *W, const int8_t *X,
                         int32_t ldx, int8_t *Y, int32_t ldy, const int32_t *bias,
                         const int32_t *mult, const int32_t *shift, int32_t zp, int32_t lo,
                         int32_t hi)
{
    int32_t acc[4][CE_NT];
    int32_t i, k, n;
    for (i = 0; i < rows; i++)
        for (n = 0; n < nt; n++) acc[i][n] = bias[i];
    if (rows == 4) {
        const int8_t *w0 = W, *w1 = W + K, *w2 = W + 2 * K, *w3 = W + 3 * K;
        for (k = 0; k < K; k++) {
            const int8_t *xr = X + (size_t)k * ldx;
            const int32_t a0 = w0[k], a1 = w1[k], a2 = w2[k], a3 = w3[k];
            for (n = 0; n < nt; n++) {
                const int32_t xv = xr[n];
                acc[0][n] += a0 * xv;
                acc[1][n] += a1 * xv;
                acc[2][n] += a2 * xv;
                acc[3][n] += a3 * xv;
            }
        }
    } else {
        for (i = 0; i < rows; i++) {
            const int8_t *wr = W + (size_t)i * K;
            for (k = 0; k < K; k++) {
                const int8_t *xr = X + (size_t)k * ldx;
                const int32_t a = wr[k];
                for (n = 0; n < nt; n++) acc[i][n] += a * xr[n];
            }
        }
    }
    for (i = 0; i < rows; i++) {
        int8_t *yr = Y + (size_t)i * ldy;
        for (n = 0; n < nt; n++) yr[n] = ce_requant(acc[i][n], mult[i], shift[i], zp, lo, hi);
    }
}

void ce_gemm_wx(int32_t M, int32_t N, int32_t K, const int8_t *W, const int8_t *X, int32_t ldx,
                int8_t *Y, int32_t ldy, const int32_t *bias, const int32_t *mult,
                const int32_t *shift, int32_t zp, int32_t lo, int32_t hi)
{
    int32_t n0, m;
#if defined(CE_HAVE_AVX2)
    ce_gemm_wx_avx2(M, N, K, W, X, ldx, Y, ldy, bias, mult, shift, zp, lo, hi);
    return;
#endif
    for (n0 = 0; n0 < N; n0 += CE_NT) {
        const int32_t nt = ce_min32(CE_NT, N - n0);
        for (m = 0; m < M; m += 4) {
            const int32_t rows = ce_min32(4, M - m);
            gemm_wx_rows(rows, nt, K, W + (size_t)m * K, X + n0, ldx, Y + (size_t)m * ldy + n0,
                         ldy, bias + m, mult + m, shift + m, zp, lo, hi);
        }
    }
}

void ce_gemm_xw(int32_t T, int32_t M, int32_t K, const int8_t *A, const int8_t *W, int8_t *Y,
                int32_t ldy, const int32_t *bias, const int32_t *mult, const int32_t *shift,
                int32_t zp, int32_t lo, int32_t hi, float *yf, const float *fscale)
{
    int32_t t, m, k;
#if defined(CE_HAVE_AVX2)
    if (K >= 16) {
        ce_gemm_xw_avx2(T, M, K, A, W, Y, ldy, bias, mult, shift, zp, lo, hi, yf, fscale);
        return;
    }
#endif
    for (t = 0; t < T; t++) {
        const int8_t *a = A + (size_t)t * K;
        for (m = 0; m < M; m++) {
            const int8_t *w = W + (size_t)m * K;
            int32_t acc = 0;
            for (k = 0; k < K; k++) acc += (int32_t)a[k] * w[k];
            acc += bias[m];
            if (yf)
                yf[(size_t)t * ldy + m] = (float)acc * fscale[m];
            else
                Y[(size_t)t * ldy + m] = ce_requant(acc, mult[m], shift[m], zp, lo, hi);
        }
    }
}

void ce_matmul_q8(int32_t T, int32_t M, int32_t K, const int8_t *A, int32_t lda, int32_t za,
                  const int8_t *B, int32_t ldb, int32_t zb, int8_t *Y, int32_t ldy, int32_t mult,
                  int32_t shift, int32_t zp, int32_t lo, int32_t hi)
{
    int32_t t, m, k;
    for (t = 0; t < T; t++) {
        const int8_t *a = A + (size_t)t * lda;
        int32_t asum = 0;
        for (k = 0; k < K; k++) asum += a[k];
        for (m = 0; m < M; m++) {
            int32_t acc = 0, bsum = 0;
            for (k = 0; k < K; k++) {
                const int32_t b = B[(size_t)k * ldb + m];
                acc += (int32_t)a[k] * b;
                bsum += b;
            }
            acc += -zb * asum - za * bsum + K * za * zb;
            Y[(size_t)t * ldy + m] = ce_requant(acc, mult, shift, zp, lo, hi);
        }
    }
}

#else /* ------------------------------------------------------------------ RVV 1.0 */

/* W*X: vectors run along n (output positions); 4 output channels share each X load.
 * Per k: 1 vle8 + 4 x (vwmul.vx i8->i16, vwadd.wv i16->i32). */
void ce_gemm_wx(int32_t M, int32_t N, int32_t K, const int8_t *W, const int8_t *X, int32_t ldx,
                int8_t *Y, int32_t ldy, const int32_t *bias, const int32_t *mult,
                const int32_t *shift, int32_t zp, int32_t lo, int32_t hi)
{
    int32_t m = 0, k;
    for (; m + 4 <= M; m += 4) {
        const int8_t *w0 = W + (size_t)m * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
        int32_t n = 0;
        while (n < N) {
            const size_t vl = __riscv_vsetvl_e8m1((size_t)(N - n));
            vint32m4_t a0 = __riscv_vmv_v_x_i32m4(bias[m], vl);
            vint32m4_t a1 = __riscv_vmv_v_x_i32m4(bias[m + 1], vl);
            vint32m4_t a2 = __riscv_vmv_v_x_i32m4(bias[m + 2], vl);
            vint32m4_t a3 = __riscv_vmv_v_x_i32m4(bias[m + 3], vl);
            const int8_t *xp = X + n;
            for (k = 0; k < K; k++, xp += ldx) {
                const vint8m1_t xv = __riscv_vle8_v_i8m1(xp, vl);
                a0 = __riscv_vwadd_wv_i32m4(a0, __riscv_vwmul_vx_i16m2(xv, w0[k], vl), vl);
                a1 = __riscv_vwadd_wv_i32m4(a1, __riscv_vwmul_vx_i16m2(xv, w1[k], vl), vl);
                a2 = __riscv_vwadd_wv_i32m4(a2, __riscv_vwmul_vx_i16m2(xv, w2[k], vl), vl);
                a3 = __riscv_vwadd_wv_i32m4(a3, __riscv_vwmul_vx_i16m2(xv, w3[k], vl), vl);
            }
            int8_t *yp = Y + (size_t)m * ldy + n;
            ce_rvv_requant_store(a0, yp, mult[m], shift[m], zp, lo, hi, vl);
            ce_rvv_requant_store(a1, yp + ldy, mult[m + 1], shift[m + 1], zp, lo, hi, vl);
            ce_rvv_requant_store(a2, yp + 2 * (size_t)ldy, mult[m + 2], shift[m + 2], zp, lo, hi, vl);
            ce_rvv_requant_store(a3, yp + 3 * (size_t)ldy, mult[m + 3], shift[m + 3], zp, lo, hi, vl);
            n += (int32_t)vl;
        }
    }
    for (; m < M; m++) {
        const int8_t *w0 = W + (size_t)m * K;
        int32_t n = 0;
        while (n < N) {
            const size_t vl = __riscv_vsetvl_e8m1((size_t)(N - n));
            vint32m4_t a0 = __riscv_vmv_v_x_i32m4(bias[m], vl);
            const int8_t *xp = X + n;
            for (k = 0; k < K; k++, xp += ldx) {
                const vint8m1_t xv = __riscv_vle8_v_i8m1(xp, vl);
                a0 = __riscv_vwadd_wv_i32m4(a0, __riscv_vwmul_vx_i16m2(xv, w0[k], vl), vl);
            }
            ce_rvv_requant_store(a0, Y + (size_t)m * ldy + n, mult[m], shift[m], zp, lo, hi, vl);
            n += (int32_t)vl;
        }
    }
}

/* Dot product of two int8 rows of length K (vectors along k, reduced at the end). */
static inline int32_t dot_i8(const int8_t *a, const int8_t *b, int32_t K)
{
    const size_t vlmax = __riscv_vsetvlmax_e8m1();
    vint32m4_t acc = __riscv_vmv_v_x_i32m4(0, vlmax);
    size_t k = 0;
    while (k < (size_t)K) {
        const size_t vl = __riscv_vsetvl_e8m1((size_t)K - k);
        const vint8m1_t av = __riscv_vle8_v_i8m1(a + k, vl);
        const vint8m1_t bv = __riscv_vle8_v_i8m1(b + k, vl);
        /* tail-undisturbed add keeps the lanes >= vl of earlier iterations */
        acc = __riscv_vwadd_wv_i32m4_tu(acc, acc, __riscv_vwmul_vv_i16m2(av, bv, vl), vl);
        k += vl;
    }
    vint32m1_t s = __riscv_vredsum_vs_i32m4_i32m1(acc, __riscv_vmv_v_x_i32m1(0, 1), vlmax);
    return __riscv_vmv_x_s_i32m1_i32(s);
}

/* A*W^T: vectors run along k; 4 weight rows share each A load, reduced at the end. */
void ce_gemm_xw(int32_t T, int32_t M, int32_t K, const int8_t *A, const int8_t *W, int8_t *Y,
                int32_t ldy, const int32_t *bias, const int32_t *mult, const int32_t *shift,
                int32_t zp, int32_t lo, int32_t hi, float *yf, const float *fscale)
{
    const size_t vlmax = __riscv_vsetvlmax_e8m1();
    int32_t t, m, j;
    for (t = 0; t < T; t++) {
        const int8_t *a = A + (size_t)t * K;
        for (m = 0; m < M; m += 4) {
            int32_t acc[4];
            if (m + 4 <= M) {
                const int8_t *w0 = W + (size_t)m * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
                vint32m4_t c0 = __riscv_vmv_v_x_i32m4(0, vlmax), c1 = c0, c2 = c0, c3 = c0;
                size_t k = 0;
                /* whole vectors: the four products first (SEW 8), then the four widening adds
                 * (SEW 16), so the loop changes vtype twice per step rather than eight times */
                for (; k + vlmax <= (size_t)K; k += vlmax) {
                    const vint8m1_t av = __riscv_vle8_v_i8m1(a + k, vlmax);
                    const vint16m2_t p0 = __riscv_vwmul_vv_i16m2(av, __riscv_vle8_v_i8m1(w0 + k, vlmax), vlmax);
                    const vint16m2_t p1 = __riscv_vwmul_vv_i16m2(av, __riscv_vle8_v_i8m1(w1 + k, vlmax), vlmax);
                    const vint16m2_t p2 = __riscv_vwmul_vv_i16m2(av, __riscv_vle8_v_i8m1(w2 + k, vlmax), vlmax);
                    const vint16m2_t p3 = __riscv_vwmul_vv_i16m2(av, __riscv_vle8_v_i8m1(w3 + k, vlmax), vlmax);
                    c0 = __riscv_vwadd_wv_i32m4(c0, p0, vlmax);
                    c1 = __riscv_vwadd_wv_i32m4(c1, p1, vlmax);
                    c2 = __riscv_vwadd_wv_i32m4(c2, p2, vlmax);
                    c3 = __riscv_vwadd_wv_i32m4(c3, p3, vlmax);
                }
                while (k < (size_t)K) { /* the tail: lanes past vl keep their sums */
                    const size_t vl = __riscv_vsetvl_e8m1((size_t)K - k);
                    const vint8m1_t av = __riscv_vle8_v_i8m1(a + k, vl);
                    c0 = __riscv_vwadd_wv_i32m4_tu(c0, c0, __riscv_vwmul_vv_i16m2(av, __riscv_vle8_v_i8m1(w0 + k, vl), vl), vl);
                    c1 = __riscv_vwadd_wv_i32m4_tu(c1, c1, __riscv_vwmul_vv_i16m2(av, __riscv_vle8_v_i8m1(w1 + k, vl), vl), vl);
                    c2 = __riscv_vwadd_wv_i32m4_tu(c2, c2, __riscv_vwmul_vv_i16m2(av, __riscv_vle8_v_i8m1(w2 + k, vl), vl), vl);
                    c3 = __riscv_vwadd_wv_i32m4_tu(c3, c3, __riscv_vwmul_vv_i16m2(av, __riscv_vle8_v_i8m1(w3 + k, vl), vl), vl);
                    k += vl;
                }
                const vint32m1_t z = __riscv_vmv_v_x_i32m1(0, 1);
                acc[0] = __riscv_vmv_x_s_i32m1_i32(__riscv_vredsum_vs_i32m4_i32m1(c0, z, vlmax));
                acc[1] = __riscv_vmv_x_s_i32m1_i32(__riscv_vredsum_vs_i32m4_i32m1(c1, z, vlmax));
                acc[2] = __riscv_vmv_x_s_i32m1_i32(__riscv_vredsum_vs_i32m4_i32m1(c2, z, vlmax));
                acc[3] = __riscv_vmv_x_s_i32m1_i32(__riscv_vredsum_vs_i32m4_i32m1(c3, z, vlmax));
            } else {
                for (j = 0; j < M - m; j++) acc[j] = dot_i8(a, W + (size_t)(m + j) * K, K);
            }
            for (j = 0; j < 4 && m + j < M; j++) {
                const int32_t v = acc[j] + bias[m + j];
                if (yf)
                    yf[(size_t)t * ldy + m + j] = (float)v * fscale[m + j];
                else
                    Y[(size_t)t * ldy + m + j] =
                        ce_requant(v, mult[m + j], shift[m + j], zp, lo, hi);
            }
        }
    }
}

/* Activation x activation: vectors along m (B rows are contiguous), zero points folded in with
 * row/column sums. */
void ce_matmul_q8(int32_t T, int32_t M, int32_t K, const int8_t *A, int32_t lda, int32_t za,
                  const int8_t *B, int32_t ldb, int32_t zb, int8_t *Y, int32_t ldy, int32_t mult,
                  int32_t shift, int32_t zp, int32_t lo, int32_t hi)
{
    int32_t t, k;
    for (t = 0; t < T; t++) {
        const int8_t *a = A + (size_t)t * lda;
        int32_t asum = 0;
        for (k = 0; k < K; k++) asum += a[k];
        const int32_t c = -zb * asum + K * za * zb;
        int32_t m = 0;
        while (m < M) {
            const size_t vl = __riscv_vsetvl_e8m1((size_t)(M - m));
            vint32m4_t acc = __riscv_vmv_v_x_i32m4(c, vl);
            vint32m4_t bsum = __riscv_vmv_v_x_i32m4(0, vl);
            const int8_t *bp = B + m;
            for (k = 0; k < K; k++, bp += ldb) {
                const vint8m1_t bv = __riscv_vle8_v_i8m1(bp, vl);
                acc = __riscv_vwadd_wv_i32m4(acc, __riscv_vwmul_vx_i16m2(bv, a[k], vl), vl);
                bsum = __riscv_vwadd_wv_i32m4(bsum, __riscv_vsext_vf2_i16m2(bv, vl), vl);
            }
            acc = __riscv_vmacc_vx_i32m4(acc, -za, bsum, vl);
            ce_rvv_requant_store(acc, Y + (size_t)t * ldy + m, mult, shift, zp, lo, hi, vl);
            m += (int32_t)vl;
        }
    }
}
#endif
