/* ce_float.c - float kernels kept out of int8 (Softmax, LayerNorm, GELU).
 *
 * They are scalar in every build and avoid libm transcendental functions, whose last bit differs
 * between C libraries and ISAs: ce_expf and ce_erff are polynomial approximations (ce_expf: relative
 * error about 2e-7; ce_erff: absolute error below 5e-7). Compile with -ffp-contract=off (no fused
 * multiply-add) so host, rv64gc and rv64gcv builds produce identical bits. sqrtf is IEEE correctly
 * rounded everywhere and is used as is.
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

float ce_erff(float x)
{
    /* erf(x) = 1 - t * exp(-x^2 + P(t)), t = 1 / (1 + |x|/2), where P is a degree-9 least-squares
     * fit (done for this engine) of log(erfcx(|x|) / t) over t in [0.05, 1]; |error| < 5e-7. */
    static const float c[10] = {-1.26551357f, 1.00008057f, 0.37324853f, 0.1028891f, -0.21107847f,
                                0.3391718f, -1.22493255f, 1.56848355f, -0.86133778f, 0.17898891f};
    const float ax = x < 0.0f ? -x : x;
    const float t = 1.0f / (1.0f + 0.5f * ax);
    float p = c[9], r;
    int i;
    for (i = 8; i >= 0; i--) p = p * t + c[i];
    r = 1.0f - t * ce_expf(-ax * ax + p);
    return x < 0.0f ? -r : r;
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

void ce_layernorm_f32(int32_t rows, int32_t cols, const float *x, const float *gamma,
                      const float *beta, float eps, float *y)
{
    int32_t r, i;
    for (r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * cols;
        float *yr = y + (size_t)r * cols;
        float mean = 0.0f, var = 0.0f, inv;
        for (i = 0; i < cols; i++) mean += xr[i];
        mean /= (float)cols;
        for (i = 0; i < cols; i++) {
            const float d = xr[i] - mean;
            var += d * d;
        }
        var /= (float)cols;
        inv = 1.0f / sqrtf(var + eps);
        for (i = 0; i < cols; i++) {
            float v = (xr[i] - mean) * inv;
            if (gamma) v *= gamma[i];
            if (beta) v += beta[i];
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
