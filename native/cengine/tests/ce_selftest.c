/* ce_selftest.c - runs every kernel on deterministic pseudo-random cases (odd sizes, strides,
 * padding, dilation, groups, broadcasts) and prints one FNV-1a checksum per case. The scalar,
 * AVX2, rv64gc and rv64gcv builds must print identical lines (tests/test_cengine_kernels.py);
 * the scalar build itself is checked against numpy through ctypes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cengine.h"

static uint32_t rng = 12345u;
static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}
static int32_t rint_(int32_t lo, int32_t hi) { return lo + (int32_t)(next() % (uint32_t)(hi - lo + 1)); }
static void fill8(int8_t *p, size_t n, int lo, int hi)
{
    size_t i;
    for (i = 0; i < n; i++) p[i] = (int8_t)rint_(lo, hi);
}
static uint32_t fnv(const void *p, size_t n)
{
    const uint8_t *b = (const uint8_t *)p;
    uint32_t h = 2166136261u;
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ b[i]) * 16777619u;
    return h;
}
/* multipliers like the code generator's: M in [2^-12, 2^-5] */
static void mults(int32_t *m, int32_t *s, int n)
{
    int i;
    for (i = 0; i < n; i++) {
        m[i] = (int32_t)((1u << 30) + (next() & 0x3fffffffu));
        s[i] = rint_(36, 43);
    }
}

static void conv_case(int id, int cin, int cout, int groups, int h, int w, int k, int s, int pad, int d, int ntile)
{
    ce_conv_t p;
    const int kd = (k - 1) * d + 1;
    const int ho = (h + 2 * pad - kd) / s + 1, wo = (w + 2 * pad - kd) / s + 1;
    int8_t *x = malloc((size_t)cin * h * w + 32), *wt = malloc((size_t)cout * (cin / groups) * k * k);
    int8_t *y = calloc((size_t)cout * ho * wo, 1);
    int32_t *b = malloc(4 * (size_t)cout), *m = malloc(4 * (size_t)cout), *sh = malloc(4 * (size_t)cout);
    int8_t *scr;
    int i;
    fill8(x, (size_t)cin * h * w + 32, -128, 127);
    fill8(wt, (size_t)cout * (cin / groups) * k * k, -127, 127);
    for (i = 0; i < cout; i++) b[i] = rint_(-20000, 20000);
    mults(m, sh, cout);
    memset(&p, 0, sizeof p);
    p.cin = cin; p.hin = h; p.win = w; p.cout = cout; p.hout = ho; p.wout = wo;
    p.kh = p.kw = k; p.sh = p.sw = s; p.dh = p.dw = d; p.pt = p.pl = p.pb = p.pr = pad;
    p.groups = groups; p.in_zp = rint_(-20, 20); p.out_zp = rint_(-10, 10);
    p.lo = (id % 3 == 0) ? p.out_zp : -128; p.hi = (id % 5 == 0) ? 100 : 127;
    p.ntile = ntile; p.w = wt; p.bias = b; p.mult = m; p.shift = sh;
    scr = malloc(ce_conv2d_scratch(&p) + 16);
    ce_conv2d(&p, x, y, scr);
    printf("conv%d %d %d %d %dx%d k%d s%d p%d d%d %08x\n", id, cin, cout, groups, h, w, k, s, pad, d,
           fnv(y, (size_t)cout * ho * wo));
    free(x); free(wt); free(y); free(b); free(m); free(sh); free(scr);
}

static void gemm_case(int id, int M, int N, int K)
{
    int8_t *W = malloc((size_t)M * K), *X = malloc((size_t)K * N + 16), *Y = calloc((size_t)M * N, 1);
    int32_t *b = malloc(4 * (size_t)M), *m = malloc(4 * (size_t)M), *s = malloc(4 * (size_t)M);
    float *yf = malloc(4 * (size_t)M * N), *fs = malloc(4 * (size_t)M);
    int i;
    fill8(W, (size_t)M * K, -127, 127);
    fill8(X, (size_t)K * N + 16, -128, 127);
    for (i = 0; i < M; i++) { b[i] = rint_(-30000, 30000); fs[i] = 1e-4f * (float)(i + 1); }
    mults(m, s, M);
    ce_gemm_wx(M, N, K, W, X, N, Y, N, b, m, s, 3, -128, 127);
    printf("gemm_wx%d %d %d %d %08x\n", id, M, N, K, fnv(Y, (size_t)M * N));
    /* A is N x K here */
    ce_gemm_xw(N, M, K, X, W, Y, M, b, m, s, -7, -100, 120, 0, 0);
    printf("gemm_xw%d %d %d %d %08x\n", id, N, M, K, fnv(Y, (size_t)M * N));
    ce_gemm_xw(N, M, K, X, W, 0, M, b, 0, 0, 0, -128, 127, yf, fs);
    printf("gemm_xwf%d %08x\n", id, fnv(yf, 4 * (size_t)M * N));
    ce_matmul_q8(N, M, K, X, K, 5, W, M, -3, Y, M, m[0], s[0], 1, -128, 127);
    printf("matmul%d %08x\n", id, fnv(Y, (size_t)M * N));
    free(W); free(X); free(Y); free(b); free(m); free(s); free(yf); free(fs);
}

static void eltwise_cases(void)
{
    enum { N = 1237 };
    static int8_t a[N], b[N], y[N];
    static float f[N], g[N];
    int i;
    fill8(a, N, -128, 127);
    fill8(b, N, -128, 127);
    ce_add_q8(N, a, 3, 700000, b, -9, 1300000, N, 1, 21, y, 4, -128, 127);
    printf("add_same %08x\n", fnv(y, N));
    ce_add_q8(N, a, 3, 700000, b, -9, 1300000, 37, 1, 21, y, 4, -20, 110);
    printf("add_period %08x\n", fnv(y, N));
    ce_add_q8(1200, a, 3, 700000, b, -9, 1300000, 12, 100, 21, y, 4, -128, 127);
    printf("add_channel %08x\n", fnv(y, 1200));
    ce_add_q8(N, a, 3, 700000, b, -9, 1300000, 1, N, 21, y, 4, -128, 127);
    printf("add_scalar %08x\n", fnv(y, N));
    ce_mul_q8(N, a, 3, b, -9, N, 1, 1500000000, 42, y, 4, -128, 127);
    printf("mul_same %08x\n", fnv(y, N));
    ce_mul_q8(1200, a, 3, b, -9, 12, 100, 1500000000, 42, y, 4, -128, 127);
    printf("mul_channel %08x\n", fnv(y, 1200));
    ce_requant_q8(N, a, -5, 1500000, 20, y, 7, -128, 127);
    printf("requant %08x\n", fnv(y, N));
    ce_clamp_q8(N, a, y, -3, 90);
    printf("clamp %08x\n", fnv(y, N));
    for (i = 0; i < N; i++) f[i] = (float)((int32_t)(next() % 20001) - 10000) * 0.00731f;
    f[3] = 0.5f; f[4] = 1.5f; f[5] = -2.5f; f[6] = 1e9f; f[7] = -1e9f;
    { volatile float zero = 0.0f; f[8] = zero / zero; } /* NaN quantizes to -128 */
    ce_quantize_f32(N, f, 0.25f, -3, y);
    printf("quantize %08x\n", fnv(y, N));
    f[8] = 0.25f; /* NaN bits differ between ISAs: no NaN in the float kernels below */
    ce_dequantize_i8(N, a, 0.037f, 5, g);
    printf("dequantize %08x\n", fnv(g, 4 * N));
    ce_softmax_f32(1, N, f, g);
    ce_softmax_f32(N / 7, 7, f, g);
    printf("softmax %08x\n", fnv(g, 4 * (N / 7) * 7));
    ce_layernorm_f32(N / 7, 7, f, f, 0, 1e-5f, g);
    printf("layernorm %08x\n", fnv(g, 4 * (N / 7) * 7));
    ce_gelu_f32(N, f, g);
    printf("gelu %08x\n", fnv(g, 4 * N));
}

static void pool_cases(void)
{
    static int8_t x[6 * 13 * 11 + 16], y[6 * 13 * 11], scr[4096];
    static int32_t m[9], s[9];
    int32_t mm, ss;
    int i;
    ce_pool_t p;
    fill8(x, sizeof x, -128, 127);
    memset(&p, 0, sizeof p);
    p.c = 6; p.hin = 13; p.win = 11; p.kh = 3; p.kw = 3; p.sh = 2; p.sw = 2; p.dh = p.dw = 1;
    p.pt = p.pl = p.pb = p.pr = 1; p.hout = 7; p.wout = 6;
    ce_maxpool_q8(&p, x, y, scr);
    printf("maxpool_pad %08x\n", fnv(y, 6 * 7 * 6));
    p.pt = p.pl = p.pb = p.pr = 0; p.hout = 6; p.wout = 5; p.kh = p.kw = 2;
    ce_maxpool_q8(&p, x, y, scr);
    printf("maxpool %08x\n", fnv(y, 6 * 6 * 5));
    mults(m, s, 9);
    for (i = 0; i < 9; i++) s[i] -= 6; /* M around 1/8: visible averages */
    p.kh = p.kw = 3; p.pt = p.pl = p.pb = p.pr = 1; p.hout = 7; p.wout = 6; p.mult = m; p.shift = s;
    p.in_zp = -4; p.out_zp = 2;
    ce_avgpool_q8(&p, x, y, scr);
    printf("avgpool %08x\n", fnv(y, 6 * 7 * 6));
    p.count_include_pad = 1;
    ce_avgpool_q8(&p, x, y, scr);
    printf("avgpool_cip %08x\n", fnv(y, 6 * 7 * 6));
    mults(&mm, &ss, 1);
    ce_global_avgpool_q8(6, 143, x, -3, y, mm, ss - 6, 1);
    printf("gap %08x\n", fnv(y, 6));
    {
        const int32_t dims[4] = {2, 3, 5, 7}, perm[4] = {0, 2, 3, 1};
        ce_transpose(4, dims, perm, 1, x, y);
        printf("transpose %08x\n", fnv(y, 210));
    }
    {
        const int32_t dims[4] = {1, 5, 3, 7}, perm[4] = {0, 2, 1, 3}; /* rows move whole */
        static float xf[105], yf[105];
        for (i = 0; i < 105; i++) xf[i] = (float)i * 0.5f;
        ce_transpose(4, dims, perm, 4, xf, yf);
        printf("transpose_rows %08x\n", fnv(yf, sizeof yf));
    }
}

static void transformer_cases(void)
{
    enum { T = 13, K = 37, M = 29 };
    static float a[T * K], b[K * M], y[T * M], z[T * M], pos[T * M];
    static int8_t x8[1000], y8[1000], lut[256], tab[50 * 24];
    static int64_t ids[9] = {3, 0, 49, -1, 7, 7, 60, 12, 25};
    static float sc[50], g[9 * 24];
    static uint8_t c[T * M];
    static int64_t i64[40];
    static int32_t i32[40];
    int i;
    for (i = 0; i < T * K; i++) a[i] = (float)((int32_t)(next() % 2001) - 1000) * 0.0173f;
    for (i = 0; i < K * M; i++) b[i] = (float)((int32_t)(next() % 2001) - 1000) * 0.0091f;
    ce_matmul_f32(T, M, K, a, K, b, M, y, M);
    printf("matmul_f32 %08x\n", fnv(y, sizeof y));
    {
        const int32_t dims[3] = {T, 1, M}, as[3] = {M, 0, 1}, bs[3] = {0, 0, 1};
        const int32_t dims2[2] = {T, M}, s1[2] = {M, 1}, s0[2] = {1, 0}, cs[2] = {0, 1};
        ce_binary_f32(CE_ADD, 3, dims, as, bs, y, b, z);
        printf("binary_add_bcast %08x\n", fnv(z, sizeof z));
        ce_binary_f32(CE_DIV, 2, dims2, s1, s0, y, a, z);
        printf("binary_div_col %08x\n", fnv(z, sizeof z));
        ce_binary_f32(CE_MUL, 2, dims2, s1, s1, y, z, z);
        printf("binary_mul_inplace %08x\n", fnv(z, sizeof z));
        ce_binary_f32(CE_SUB, 2, dims2, s0, s1, a, y, z); /* a scalar per row, minus a row */
        printf("binary_rsub %08x\n", fnv(z, sizeof z));
        ce_binary_f32(CE_DIV, 2, dims2, s0, s1, a, y, z);
        printf("binary_rdiv %08x\n", fnv(z, sizeof z));
        for (i = 0; i < T * M; i++) c[i] = (uint8_t)(next() & 1);
        ce_where_f32(2, dims2, cs, s1, s0, c, y, a, z);
        printf("where %08x\n", fnv(z, sizeof z));
    }
    for (i = 0; i < T * M; i++) pos[i] = y[i] < 0.0f ? -y[i] : y[i];
    for (i = 0; i < 9; i++) { /* sqrt of |y|: NaN bits differ between ISAs (x86 -NaN, RISC-V +NaN) */
        ce_unary_f32(i, T * M, i == CE_SQRT ? pos : y, z);
        printf("unary%d %08x\n", i, fnv(z, sizeof z));
    }
    for (i = 0; i < 6; i++) ce_reduce_f32(i, 3, 5, 7, a, z), printf("reduce%d %08x\n", i, fnv(z, 4 * 21));
    ce_layernorm_f32(T, K, a, b, b + K, 1e-12f, z);
    printf("layernorm_ort %08x\n", fnv(z, 4 * T * K));
    fill8(x8, sizeof x8, -128, 127);
    fill8(lut, sizeof lut, -128, 127);
    ce_lut_q8(999, x8, lut, y8);
    printf("lut %08x\n", fnv(y8, 999));
    fill8(tab, sizeof tab, -127, 127);
    for (i = 0; i < 50; i++) sc[i] = 0.001f * (float)(i + 1);
    ce_gather_dq_rows(9, ids, CE_I64, 50, 24, tab, 0, sc, 1, g);
    printf("gather_dq_rows %08x\n", fnv(g, sizeof g));
    ce_gather_dq_rows(9, ids, CE_I64, 50, 24, tab, 3, sc + 7, 0, g);
    printf("gather_dq_tensor %08x\n", fnv(g, sizeof g));
    ce_gather(2, 25, 24, 9, ids, CE_I64, tab, x8);
    printf("gather %08x\n", fnv(x8, 2 * 9 * 24));
    for (i = 0; i < 40; i++) i64[i] = (int64_t)(next() % 5) - 2;
    ce_cast(40, CE_I64, i64, CE_F32, z);
    ce_cast(40, CE_F32, z, CE_U8, c);
    ce_cast(40, CE_F32, a, CE_I32, i32);
    printf("cast %08x %08x %08x\n", fnv(z, 160), fnv(c, 40), fnv(i32, 160));
    {
        static int64_t big[120];
        const int32_t dims[3] = {4, 5, 6}, xs[3] = {6, 0, 1};
        ce_broadcast_copy(3, dims, xs, 8, i64, big); /* (4, 1, 6) -> (4, 5, 6) */
        printf("expand %08x\n", fnv(big, sizeof big));
    }
}

int main(void)
{
    /* pointwise, depthwise, grouped, strided, padded, dilated; small and odd sizes */
    conv_case(0, 16, 24, 1, 12, 12, 1, 1, 0, 1, 16);
    conv_case(1, 3, 8, 1, 17, 13, 3, 2, 1, 1, 32);
    conv_case(2, 8, 8, 8, 15, 15, 3, 1, 1, 1, 16);
    conv_case(3, 12, 12, 12, 16, 16, 3, 2, 1, 1, 16);
    conv_case(4, 6, 6, 6, 9, 9, 5, 1, 2, 1, 16);
    conv_case(5, 8, 12, 4, 10, 10, 3, 1, 1, 1, 48);
    conv_case(6, 5, 7, 1, 11, 9, 3, 1, 2, 2, 16);
    conv_case(7, 4, 4, 4, 2, 2, 3, 1, 1, 1, 16);
    conv_case(8, 10, 10, 10, 7, 7, 3, 2, 1, 2, 16);
    conv_case(9, 7, 5, 1, 5, 5, 1, 2, 0, 1, 16);
    conv_case(10, 9, 9, 9, 4, 4, 3, 1, 1, 1, 16);
    conv_case(11, 33, 17, 1, 3, 3, 1, 1, 0, 1, 16);
    gemm_case(0, 17, 37, 33);
    gemm_case(1, 4, 1, 300);
    gemm_case(2, 13, 4, 96);
    gemm_case(3, 40, 19, 7);
    eltwise_cases();
    pool_cases();
    transformer_cases();
    printf("expf %08x erff %08x\n", (unsigned)fnv((float[]){ce_expf(-3.3f), ce_expf(0.7f), ce_expf(20.f)}, 12),
           (unsigned)fnv((float[]){ce_erff(-0.3f), ce_erff(1.7f), ce_erff(4.f)}, 12));
    return 0;
}
