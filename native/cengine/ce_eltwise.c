/* ce_eltwise.c - element-wise int8 kernels: Add, requantize, ReLU/Clip, table lookup,
 * (de)quantize. */
#include "ce_internal.h"

/* The add kernel folds both zero points into one constant:
 * (a - za) * ma + (b - zb) * mb == a * ma + b * mb + c, then rounds with ce_shift_round (rne). */
#if !defined(CE_RVV)
void ce_add_q8(int32_t n, const int8_t *a, int32_t za, int32_t ma, const int8_t *b, int32_t zb,
               int32_t mb, int32_t bn, int32_t binner, int32_t shift, int8_t *y, int32_t zy,
               int32_t lo, int32_t hi)
{
    const int32_t c = -za * ma - zb * mb;
    int32_t i, o;
    if (binner == 1) { /* b repeats with period bn (bn == n: same shape) */
        for (o = 0; o < n; o += bn) {
            const int32_t len = ce_min32(bn, n - o);
            const int8_t *ao = a + o;
            int8_t *yo = y + o;
            for (i = 0; i < len; i++) yo[i] = ce_shift_round(ao[i] * ma + b[i] * mb + c, shift, zy, lo, hi);
        }
        return;
    }
    for (o = 0; o < n; o += binner) {
        const int32_t cb = b[(o / binner) % bn] * mb + c;
        for (i = o; i < o + binner; i++) y[i] = ce_shift_round(a[i] * ma + cb, shift, zy, lo, hi);
    }
}

void ce_mul_q8(int32_t n, const int8_t *a, int32_t za, const int8_t *b, int32_t zb, int32_t bn,
               int32_t binner, int32_t mult, int32_t shift, int8_t *y, int32_t zy, int32_t lo,
               int32_t hi)
{
    int32_t i;
    for (i = 0; i < n; i++) {
        const int32_t bv = b[binner == 1 ? i % bn : (i / binner) % bn];
        y[i] = ce_requant((a[i] - za) * (bv - zb), mult, shift, zy, lo, hi);
    }
}

void ce_requant_q8(int32_t n, const int8_t *x, int32_t zx, int32_t m, int32_t shift, int8_t *y,
                   int32_t zy, int32_t lo, int32_t hi)
{
    const int32_t c = -zx * m;
    int32_t i;
    for (i = 0; i < n; i++) y[i] = ce_shift_round(x[i] * m + c, shift, zy, lo, hi);
}

void ce_clamp_q8(int32_t n, const int8_t *x, int8_t *y, int32_t lo, int32_t hi)
{
    int32_t i;
    for (i = 0; i < n; i++) {
        const int32_t v = x[i];
        y[i] = (int8_t)(v < lo ? lo : (v > hi ? hi : v));
    }
}

#else
void ce_add_q8(int32_t n, const int8_t *a, int32_t za, int32_t ma, const int8_t *b, int32_t zb,
               int32_t mb, int32_t bn, int32_t binner, int32_t shift, int8_t *y, int32_t zy,
               int32_t lo, int32_t hi)
{
    const int32_t c = -za * ma - zb * mb;
    int32_t i = 0, o;
    if (binner == 1 && bn == n) {
        while (i < n) {
            const size_t vl = __riscv_vsetvl_e8m1((size_t)(n - i));
            vint32m4_t va = __riscv_vsext_vf4_i32m4(__riscv_vle8_v_i8m1(a + i, vl), vl);
            vint32m4_t vb = __riscv_vsext_vf4_i32m4(__riscv_vle8_v_i8m1(b + i, vl), vl);
            vint32m4_t v = __riscv_vmul_vx_i32m4(va, ma, vl);
            v = __riscv_vmacc_vx_i32m4(v, mb, vb, vl);
            v = __riscv_vadd_vx_i32m4(v, c, vl);
            ce_rvv_shift_store(v, y + i, shift, zy, lo, hi, vl);
            i += (int32_t)vl;
        }
        return;
    }
    if (binner == 1) { /* b repeats with period bn */
        for (o = 0; o < n; o += bn) {
            const int32_t len = ce_min32(bn, n - o);
            for (i = 0; i < len;) {
                const size_t vl = __riscv_vsetvl_e8m1((size_t)(len - i));
                vint32m4_t va = __riscv_vsext_vf4_i32m4(__riscv_vle8_v_i8m1(a + o + i, vl), vl);
                vint32m4_t vb = __riscv_vsext_vf4_i32m4(__riscv_vle8_v_i8m1(b + i, vl), vl);
                vint32m4_t v = __riscv_vmul_vx_i32m4(va, ma, vl);
                v = __riscv_vmacc_vx_i32m4(v, mb, vb, vl);
                v = __riscv_vadd_vx_i32m4(v, c, vl);
                ce_rvv_shift_store(v, y + o + i, shift, zy, lo, hi, vl);
                i += (int32_t)vl;
            }
        }
        return;
    }
    for (o = 0; o < n; o += binner) {
        const int32_t cb = b[(o / binner) % bn] * mb + c;
        for (i = 0; i < binner;) {
            const size_t vl = __riscv_vsetvl_e8m1((size_t)(binner - i));
            vint32m4_t va = __riscv_vsext_vf4_i32m4(__riscv_vle8_v_i8m1(a + o + i, vl), vl);
            vint32m4_t v = __riscv_vmul_vx_i32m4(va, ma, vl);
            v = __riscv_vadd_vx_i32m4(v, cb, vl);
            ce_rvv_shift_store(v, y + o + i, shift, zy, lo, hi, vl);
            i += (int32_t)vl;
        }
    }
}

void ce_mul_q8(int32_t n, const int8_t *a, int32_t za, const int8_t *b, int32_t zb, int32_t bn,
               int32_t binner, int32_t mult, int32_t shift, int8_t *y, int32_t zy, int32_t lo,
               int32_t hi)
{
    int32_t o, i;
    if (binner == 1) { /* b repeats with period bn (bn == n: same shape) */
        for (o = 0; o < n; o += bn) {
            const int32_t len = ce_min32(bn, n - o);
            for (i = 0; i < len;) {
                const size_t vl = __riscv_vsetvl_e8m1((size_t)(len - i));
                const vint16m2_t va = __riscv_vwsub_vx_i16m2(__riscv_vle8_v_i8m1(a + o + i, vl), (int8_t)0, vl);
                const vint16m2_t vb = __riscv_vwsub_vx_i16m2(__riscv_vle8_v_i8m1(b + i, vl), (int8_t)0, vl);
                const vint16m2_t da = __riscv_vsub_vx_i16m2(va, (int16_t)za, vl);
                const vint16m2_t db = __riscv_vsub_vx_i16m2(vb, (int16_t)zb, vl);
                ce_rvv_requant_store(__riscv_vwmul_vv_i32m4(da, db, vl), y + o + i, mult, shift, zy, lo, hi, vl);
                i += (int32_t)vl;
            }
        }
        return;
    }
    for (o = 0; o < n; o += binner) {
        const int16_t bv = (int16_t)(b[(o / binner) % bn] - zb);
        for (i = 0; i < binner;) {
            const size_t vl = __riscv_vsetvl_e8m1((size_t)(binner - i));
            const vint16m2_t va = __riscv_vwsub_vx_i16m2(__riscv_vle8_v_i8m1(a + o + i, vl), (int8_t)0, vl);
            const vint16m2_t da = __riscv_vsub_vx_i16m2(va, (int16_t)za, vl);
            ce_rvv_requant_store(__riscv_vwmul_vx_i32m4(da, bv, vl), y + o + i, mult, shift, zy, lo, hi, vl);
            i += (int32_t)vl;
        }
    }
}

void ce_requant_q8(int32_t n, const int8_t *x, int32_t zx, int32_t m, int32_t shift, int8_t *y,
                   int32_t zy, int32_t lo, int32_t hi)
{
    const int32_t c = -zx * m;
    int32_t i = 0;
    while (i < n) {
        const size_t vl = __riscv_vsetvl_e8m1((size_t)(n - i));
        vint32m4_t v = __riscv_vsext_vf4_i32m4(__riscv_vle8_v_i8m1(x + i, vl), vl);
        v = __riscv_vmul_vx_i32m4(v, m, vl);
        v = __riscv_vadd_vx_i32m4(v, c, vl);
        ce_rvv_shift_store(v, y + i, shift, zy, lo, hi, vl);
        i += (int32_t)vl;
    }
}

void ce_clamp_q8(int32_t n, const int8_t *x, int8_t *y, int32_t lo, int32_t hi)
{
    int32_t i = 0;
    while (i < n) {
        const size_t vl = __riscv_vsetvl_e8m1((size_t)(n - i));
        vint8m1_t v = __riscv_vle8_v_i8m1(x + i, vl);
        v = __riscv_vmax_vx_i8m1(v, (int8_t)lo, vl);
        v = __riscv_vmin_vx_i8m1(v, (int8_t)hi, vl);
        __riscv_vse8_v_i8m1(y + i, v, vl);
        i += (int32_t)vl;
    }
}
#endif

#if !defined(CE_RVV)
void ce_lut_q8(int32_t n, const int8_t *x, const int8_t *table, int8_t *y)
{
    int32_t i;
    for (i = 0; i < n; i++) y[i] = table[(int32_t)x[i] + 128];
}
#else
/* Indexed load with 8-bit offsets: x + 128 (x ^ 0x80 as unsigned) addresses the 256-entry table. */
void ce_lut_q8(int32_t n, const int8_t *x, const int8_t *table, int8_t *y)
{
    int32_t i = 0;
    while (i < n) {
        const size_t vl = __riscv_vsetvl_e8m1((size_t)(n - i));
        const vuint8m1_t off = __riscv_vxor_vx_u8m1(__riscv_vle8_v_u8m1((const uint8_t *)x + i, vl), 0x80, vl);
        __riscv_vse8_v_i8m1(y + i, __riscv_vluxei8_v_i8m1(table, off, vl), vl);
        i += (int32_t)vl;
    }
}
#endif

/* QuantizeLinear: clamp first (to integer bounds, which commutes with rounding), then round half
 * to even with the 1.5 * 2^23 trick (exact for |v| < 2^22); NaN maps to -128. Branch-free so that
 * compilers vectorize it. */
void ce_quantize_f32(int32_t n, const float *x, float scale, int32_t zp, int8_t *y)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    const float lo = (float)(-128 - zp), hi = (float)(127 - zp);
    int32_t i = 0;
#if defined(CE_RVV)
    /* the same IEEE operations per element (vfmax returns lo for a NaN, like the scalar code); the
     * rounded integer is read from the bits of v + 1.5 * 2^23 (0x4B400000) rather than converted
     * with vfcvt, which qemu 7.2 cannot run in -singlestep mode */
    while (i < n) {
        const size_t vl = __riscv_vsetvl_e32m4((size_t)(n - i));
        vfloat32m4_t v = __riscv_vfdiv_vf_f32m4(__riscv_vle32_v_f32m4(x + i, vl), scale, vl);
        v = __riscv_vfmin_vf_f32m4(__riscv_vfmax_vf_f32m4(v, lo, vl), hi, vl);
        v = __riscv_vfadd_vf_f32m4(v, magic, vl);
        const vint32m4_t q = __riscv_vadd_vx_i32m4(__riscv_vreinterpret_v_f32m4_i32m4(v), zp - 0x4B400000, vl);
        __riscv_vse8_v_i8m1(y + i, __riscv_vncvt_x_x_w_i8m1(__riscv_vncvt_x_x_w_i16m2(q, vl), vl), vl);
        i += (int32_t)vl;
    }
    return;
#endif
    for (; i < n; i++) {
        float v = x[i] / scale;
        v = v >= lo ? v : lo;
        v = v <= hi ? v : hi;
        v = (v + magic) - magic; /* not folded: the build forbids re-association */
        y[i] = (int8_t)((int32_t)v + zp);
    }
}

void ce_dequantize_i8(int32_t n, const int8_t *x, float scale, int32_t zp, float *y)
{
    int32_t i;
    for (i = 0; i < n; i++) y[i] = (float)((int32_t)x[i] - zp) * scale;
}
