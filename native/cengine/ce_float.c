/* ce_float.c - float kernels kept out of int8 (Softmax, LayerNorm, GELU), and the generic float
 * pieces of Transformer graphs (element-wise ops with broadcasting, reductions, matmul).
 *
 * They avoid libm transcendental functions, whose last bit differs between C libraries and ISAs:
 * ce_expf and ce_erff are polynomial approximations (ce_expf: relative error about 2e-7; ce_erff:
 * absolute error below 6e-8, onnxruntime's algorithm). Compile with -ffp-contract=off (no fused multiply-add) so host,
 * rv64gc and rv64gcv builds produce identical bits. sqrtf is IEEE correctly rounded everywhere and
 * is used as is. Everything is scalar except the RVV paths of ce_matmul_f32 (vectors across
 * output columns) and of Add/Sub/Mul/Div rows: each output element gets the same sequence of
 * correctly rounded operations as in the scalar loop, so the bits are the same. ce_matmul_f32 accumulates with explicit fused
 * multiply-adds (fmaf, vfmacc: one IEEE rounding each, the same on every ISA), in k order from
 * 0.0f: what onnxruntime's MLAS SGEMM computes on FMA hardware for K <= 256, so attention scores
 * and contexts match onnxruntime's bit for bit there.
 */
#include "ce_internal.h"
#include <math.h>

float ce_expf(float x)
{
    /* exp(x) = 2^k * exp(r), k = round(x / ln2), r = x - k*ln2 split in two parts (Cody-Waite),
     * exp(r) by a degree-6 Taylor/Horner polynomial on |r| <= ln2/2. */
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
    float k, r, p;
    int32_t ki;
    union {
        float f;
        uint32_t u;
    } s;
    if (x > 88.0f) x = 88.0f;
    if (x < -87.0f) return 0.0f;
    k = x * 1.44269504088896341f;
    k = (k >= 0.0f) ? (float)(int32_t)(k + 0.5f) : (float)(int32_t)(k - 0.5f);
    ki = (int32_t)k;
    r = (x - k * ln2_hi) - k * ln2_lo;
    p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    s.u = (uint32_t)(ki + 127) << 23;
    return p * s.f;
}

static float pow2i(int32_t i)
{
    union {
        float f;
        uint32_t u;
    } s;
    s.u = (uint32_t)(i + 127) << 23;
    return s.f;
}

float ce_erff(float x)
{
    /* The faithfully rounded erff of onnxruntime's MLAS (N. Juffa's polynomials: odd polynomial
     * in x below |x| = 0.921875, 1 - exp(-P(|x|)) above), every step an explicit fused
     * multiply-add: |error| < 6e-8, and on FMA hosts the same bits as onnxruntime's Erf. */
    const float ax = x < 0.0f ? -x : x;
    float r;
    if (ax > 0.921875f) {
        float t = 1.72948930e-5f, a, q, f, y;
        t = fmaf(t, ax, -3.83208680e-4f);
        t = fmaf(t, ax, 3.88393435e-3f);
        t = fmaf(t, ax, -2.42545605e-2f);
        t = fmaf(t, ax, 1.06777847e-1f);
        t = fmaf(t, ax, 6.34846687e-1f);
        t = fmaf(t, ax, 1.28717512e-1f);
        t = fmaf(t, ax, ax);
        a = -t < -88.3762626647949f ? -88.3762626647949f : -t; /* exp(a), a <= 0 */
        q = fmaf(1.44269504088896341f, a, 1.25829120e+7f) - 1.25829120e+7f;
        f = fmaf(q, -6.93145752e-1f, a);
        f = fmaf(q, -1.42860677e-6f, f);
        y = 1.38319808e-3f;
        y = fmaf(y, f, 8.37550033e-3f);
        y = fmaf(y, f, 4.16689515e-2f);
        y = fmaf(y, f, 1.66664466e-1f);
        y = fmaf(y, f, 4.99999851e-1f);
        y = fmaf(y, f, 1.0f);
        y = fmaf(y, f, 1.0f);
        r = 1.0f - y * pow2i((int32_t)q);
    } else {
        const float s2 = ax * ax;
        r = -5.99104969e-4f;
        r = fmaf(r, s2, 4.99339588e-3f);
        r = fmaf(r, s2, -2.67667342e-2f);
        r = fmaf(r, s2, 1.12818025e-1f);
        r = fmaf(r, s2, -3.76124859e-1f);
        r = fmaf(r, s2, 1.28379151e-1f);
        r = fmaf(r, ax, ax);
    }
    {
        union {
            float f;
            uint32_t u;
        } b;
        b.f = x;
        return (b.u >> 31) ? -r : r; /* erf(-0) = -0 */
    }
}

void ce_softmax_f32(int32_t rows, int32_t cols, const float *x, float *y)
{
    int32_t r, i;
    for (r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * cols;
        float *yr = y + (size_t)r * cols;
        float m = xr[0], sum = 0.0f, inv;
        for (i = 1; i < cols; i++) m = xr[i] > m ? xr[i] : m;
        for (i = 0; i < cols; i++) {
            yr[i] = ce_expf(xr[i] - m);
            sum += yr[i];
        }
        inv = 1.0f / sum;
        for (i = 0; i < cols; i++) yr[i] *= inv;
    }
}

/* The formula of onnxruntime's CPU LayerNormalization kernel (one pass of sum and sum of squares,
 * var = E[x^2] - mean^2, (x - mean) / std * gamma + beta): LayerNorm outputs are quantized right
 * after, so staying close to the reference's rounding keeps values on the same side of int8
 * rounding boundaries (measured against onnxruntime 1.31: within about one ulp). */
void ce_layernorm_f32(int32_t rows, int32_t cols, const float *x, const float *gamma,
                      const float *beta, float eps, float *y)
{
    int32_t r, i;
    for (r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * cols;
        float *yr = y + (size_t)r * cols;
        float mean = 0.0f, msq = 0.0f, sd;
        for (i = 0; i < cols; i++) {
            mean += xr[i];
            msq += xr[i] * xr[i];
        }
        mean = mean / (float)cols;
        sd = sqrtf(msq / (float)cols - mean * mean + eps);
        for (i = 0; i < cols; i++) {
            float v = (xr[i] - mean) / sd;
            if (gamma) v = v * gamma[i];
            if (beta) v = v + beta[i];
            yr[i] = v;
        }
    }
}

void ce_gelu_f32(int32_t n, const float *x, float *y)
{
    int32_t i;
    for (i = 0; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + ce_erff(x[i] * 0.70710678118654752f));
}

void ce_relu_f32(int32_t n, const float *x, float *y, float lo, float hi)
{
    int32_t i;
    for (i = 0; i < n; i++) {
        const float v = x[i];
        y[i] = v < lo ? lo : (v > hi ? hi : v);
    }
}

/* ---- generic float element-wise ops ---- */
static float unary1(int32_t op, float v)
{
    switch (op) {
    case CE_SQRT: return sqrtf(v);
    case CE_ERF: return ce_erff(v);
    case CE_NEG: return -v;
    case CE_ABS: return v < 0.0f ? -v : v;
    case CE_EXP: return ce_expf(v);
    case CE_RECIP: return 1.0f / v;
    case CE_TANH: {
        /* tanh(v) = sign(v) * (1 - 2 / (exp(2|v|) + 1)) */
        const float a = v < 0.0f ? -v : v;
        const float t = 1.0f - 2.0f / (ce_expf(2.0f * a) + 1.0f);
        return v < 0.0f ? -t : t;
    }
    case CE_SIGMOID: return 1.0f / (1.0f + ce_expf(-v));
    case CE_SQUARE: return v * v;
    default: return v;
    }
}

void ce_unary_f32(int32_t op, int32_t n, const float *x, float *y)
{
    int32_t i;
    for (i = 0; i < n; i++) y[i] = unary1(op, x[i]);
}

#if defined(CE_RVV)
/* Add/Sub/Mul/Div of a contiguous row with a contiguous row or a scalar: one IEEE operation per
 * element, the same bits as the scalar loop. Returns 0 where the strides are not covered. */
static int binary_row_rvv(int32_t op, int32_t n, const float *a, int32_t sa, const float *b, int32_t sb,
                          float *y)
{
    int32_t i = 0;
    if (op > CE_DIV || (sa > 1 || sb > 1) || (sa == 0 && sb == 0)) return 0;
    while (i < n) {
        const size_t vl = __riscv_vsetvl_e32m4((size_t)(n - i));
        vfloat32m4_t r;
        if (sa == 1 && sb == 1) {
            const vfloat32m4_t u = __riscv_vle32_v_f32m4(a + i, vl), v = __riscv_vle32_v_f32m4(b + i, vl);
            r = op == CE_ADD ? __riscv_vfadd_vv_f32m4(u, v, vl)
                : op == CE_SUB ? __riscv_vfsub_vv_f32m4(u, v, vl)
                : op == CE_MUL ? __riscv_vfmul_vv_f32m4(u, v, vl) : __riscv_vfdiv_vv_f32m4(u, v, vl);
        } else if (sa == 1) { /* b is a scalar */
            const vfloat32m4_t u = __riscv_vle32_v_f32m4(a + i, vl);
            r = op == CE_ADD ? __riscv_vfadd_vf_f32m4(u, b[0], vl)
                : op == CE_SUB ? __riscv_vfsub_vf_f32m4(u, b[0], vl)
                : op == CE_MUL ? __riscv_vfmul_vf_f32m4(u, b[0], vl) : __riscv_vfdiv_vf_f32m4(u, b[0], vl);
        } else { /* a is a scalar */
            const vfloat32m4_t v = __riscv_vle32_v_f32m4(b + i, vl);
            r = op == CE_ADD ? __riscv_vfadd_vf_f32m4(v, a[0], vl)
                : op == CE_SUB ? __riscv_vfrsub_vf_f32m4(v, a[0], vl)
                : op == CE_MUL ? __riscv_vfmul_vf_f32m4(v, a[0], vl) : __riscv_vfrdiv_vf_f32m4(v, a[0], vl);
        }
        __riscv_vse32_v_f32m4(y + i, r, vl);
        i += (int32_t)vl;
    }
    return 1;
}
#endif

/* One innermost row of a broadcast binary op (n outputs; a and b with element strides sa, sb). */
static void binary_row(int32_t op, int32_t n, const float *a, int32_t sa, const float *b, int32_t sb,
                       float *y)
{
    int32_t i;
#if defined(CE_RVV)
    if (binary_row_rvv(op, n, a, sa, b, sb, y)) return;
#endif
    switch (op) {
    case CE_ADD: for (i = 0; i < n; i++) y[i] = a[(size_t)i * sa] + b[(size_t)i * sb]; break;
    case CE_SUB: for (i = 0; i < n; i++) y[i] = a[(size_t)i * sa] - b[(size_t)i * sb]; break;
    case CE_MUL: for (i = 0; i < n; i++) y[i] = a[(size_t)i * sa] * b[(size_t)i * sb]; break;
    case CE_DIV: for (i = 0; i < n; i++) y[i] = a[(size_t)i * sa] / b[(size_t)i * sb]; break;
    case CE_MAX:
        for (i = 0; i < n; i++) {
            const float u = a[(size_t)i * sa], v = b[(size_t)i * sb];
            y[i] = u >= v ? u : v;
        }
        break;
    case CE_MIN:
        for (i = 0; i < n; i++) {
            const float u = a[(size_t)i * sa], v = b[(size_t)i * sb];
            y[i] = u <= v ? u : v;
        }
        break;
    default: break;
    }
}

/* Advance the row counters idx[0..rank-1) of an output of rank 1..6 to the next innermost row,
 * moving the element offsets off[j] of nops operands with their strides st[j]. */
static void next_row(int32_t rank, const int32_t *dims, int32_t *idx, int32_t nops,
                     const int32_t *const *st, size_t *off)
{
    int32_t d, j;
    for (d = rank - 2; d >= 0; d--) {
        for (j = 0; j < nops; j++) off[j] += (size_t)st[j][d];
        if (++idx[d] < dims[d]) return;
        for (j = 0; j < nops; j++) off[j] -= (size_t)st[j][d] * (size_t)dims[d];
        idx[d] = 0;
    }
}

static size_t n_rows(int32_t rank, const int32_t *dims)
{
    size_t r = 1;
    int32_t d;
    for (d = 0; d < rank - 1; d++) r *= (size_t)dims[d];
    return r;
}

void ce_binary_f32(int32_t op, int32_t rank, const int32_t *dims, const int32_t *as,
                   const int32_t *bs, const float *a, const float *b, float *y)
{
    const int32_t *st[2];
    const int32_t n = dims[rank - 1];
    int32_t idx[6] = {0, 0, 0, 0, 0, 0};
    size_t off[2] = {0, 0}, r, rows = n_rows(rank, dims);
    st[0] = as;
    st[1] = bs;
    for (r = 0; r < rows; r++) {
        binary_row(op, n, a + off[0], as[rank - 1], b + off[1], bs[rank - 1], y + r * (size_t)n);
        next_row(rank, dims, idx, 2, st, off);
    }
}

void ce_where_f32(int32_t rank, const int32_t *dims, const int32_t *cs, const int32_t *as,
                  const int32_t *bs, const uint8_t *c, const float *a, const float *b, float *y)
{
    const int32_t *st[3];
    const int32_t n = dims[rank - 1], sc = cs[rank - 1], sa = as[rank - 1], sb = bs[rank - 1];
    int32_t idx[6] = {0, 0, 0, 0, 0, 0}, i;
    size_t off[3] = {0, 0, 0}, r, rows = n_rows(rank, dims);
    st[0] = cs;
    st[1] = as;
    st[2] = bs;
    for (r = 0; r < rows; r++) {
        const uint8_t *cr = c + off[0];
        const float *ar = a + off[1], *br = b + off[2];
        float *yr = y + r * (size_t)n;
        for (i = 0; i < n; i++) yr[i] = cr[(size_t)i * sc] ? ar[(size_t)i * sa] : br[(size_t)i * sb];
        next_row(rank, dims, idx, 3, st, off);
    }
}

void ce_reduce_f32(int32_t op, int32_t outer, int32_t n, int32_t inner, const float *x, float *y)
{
    int32_t o, k, i;
    for (o = 0; o < outer; o++) {
        const float *xo = x + (size_t)o * n * inner;
        float *yo = y + (size_t)o * inner;
        const int sq = op == CE_RSUMSQ || op == CE_RL2;
        for (i = 0; i < inner; i++) yo[i] = (op == CE_RMAX || op == CE_RMIN) ? xo[i] : 0.0f;
        for (k = (op == CE_RMAX || op == CE_RMIN) ? 1 : 0; k < n; k++) {
            const float *xk = xo + (size_t)k * inner;
            if (op == CE_RMAX)
                for (i = 0; i < inner; i++) yo[i] = xk[i] > yo[i] ? xk[i] : yo[i];
            else if (op == CE_RMIN)
                for (i = 0; i < inner; i++) yo[i] = xk[i] < yo[i] ? xk[i] : yo[i];
            else if (sq)
                for (i = 0; i < inner; i++) yo[i] += xk[i] * xk[i];
            else
                for (i = 0; i < inner; i++) yo[i] += xk[i];
        }
        if (op == CE_RMEAN)
            for (i = 0; i < inner; i++) yo[i] /= (float)n;
        else if (op == CE_RL2)
            for (i = 0; i < inner; i++) yo[i] = sqrtf(yo[i]);
    }
}

#if !defined(CE_RVV)
void ce_matmul_f32(int32_t T, int32_t M, int32_t K, const float *A, int32_t lda, const float *B,
                   int32_t ldb, float *Y, int32_t ldy)
{
    int32_t t, k, m;
    for (t = 0; t < T; t++) {
        const float *a = A + (size_t)t * lda;
        float *y = Y + (size_t)t * ldy;
        for (m = 0; m < M; m++) y[m] = 0.0f;
        for (k = 0; k < K; k++) {
            const float av = a[k];
            const float *b = B + (size_t)k * ldb;
            for (m = 0; m < M; m++) y[m] = fmaf(av, b[m], y[m]);
        }
    }
}
#else
/* Vectors along m: per k, one vle32 of a B row and one fused multiply-add (vfmacc) into the
 * accumulator: the same single rounding as fmaf in the scalar loop. */
void ce_matmul_f32(int32_t T, int32_t M, int32_t K, const float *A, int32_t lda, const float *B,
                   int32_t ldb, float *Y, int32_t ldy)
{
    int32_t t, k;
    for (t = 0; t < T; t++) {
        const float *a = A + (size_t)t * lda;
        int32_t m = 0;
        while (m < M) {
            const size_t vl = __riscv_vsetvl_e32m4((size_t)(M - m));
            vfloat32m4_t acc = __riscv_vfmv_v_f_f32m4(0.0f, vl);
            const float *bp = B + m;
            for (k = 0; k < K; k++, bp += ldb)
                acc = __riscv_vfmacc_vf_f32m4(acc, a[k], __riscv_vle32_v_f32m4(bp, vl), vl);
            __riscv_vse32_v_f32m4(Y + (size_t)t * ldy + m, acc, vl);
            m += (int32_t)vl;
        }
    }
}
#endif
