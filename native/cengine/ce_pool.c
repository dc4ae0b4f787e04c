/* ce_pool.c - MaxPool, AveragePool and GlobalAveragePool on int8 planes. */
#include "ce_internal.h"

static int pool_padded(const ce_pool_t *p) { return (p->pt | p->pl | p->pb | p->pr) != 0; }

/* MaxPool's padded plane; AveragePool needs no scratch. */
size_t ce_pool_scratch(const ce_pool_t *p)
{
    return pool_padded(p) ? (size_t)(p->hin + p->pt + p->pb) * (size_t)(p->win + p->pl + p->pr) : 0;
}

/* MaxPool: padded positions hold -128, so they never win. */
void ce_maxpool_q8(const ce_pool_t *p, const int8_t *x, int8_t *y, int8_t *scratch)
{
    const int32_t hw = p->hin * p->win, ohw = p->hout * p->wout;
    const int32_t wp = p->win + p->pl + p->pr;
    int32_t c, oy, ky, kx;
    for (c = 0; c < p->c; c++) {
        const int8_t *plane = x + (size_t)c * hw;
        int8_t *yp = y + (size_t)c * ohw;
        if (pool_padded(p)) {
            ce_pad_plane(plane, p->hin, p->win, p->pt, p->pl, p->pb, p->pr, (int8_t)-128, scratch, c == 0);
            plane = scratch;
        }
        for (oy = 0; oy < p->hout; oy++) {
#if defined(CE_RVV)
            int32_t ox = 0;
            while (ox < p->wout) {
                const size_t vl = __riscv_vsetvl_e8m1((size_t)(p->wout - ox));
                vint8m1_t m = __riscv_vmv_v_x_i8m1(-128, vl);
                for (ky = 0; ky < p->kh; ky++) {
                    const int8_t *row = plane + (size_t)(oy * p->sh + ky * p->dh) * wp + (size_t)ox * p->sw;
                    for (kx = 0; kx < p->kw; kx++) {
                        const int8_t *src = row + kx * p->dw;
                        const vint8m1_t v = p->sw == 1 ? __riscv_vle8_v_i8m1(src, vl)
                                                       : __riscv_vlse8_v_i8m1(src, p->sw, vl);
                        m = __riscv_vmax_vv_i8m1(m, v, vl);
                    }
                }
                __riscv_vse8_v_i8m1(yp + (size_t)oy * p->wout + ox, m, vl);
                ox += (int32_t)vl;
            }
#else
            /* tap-outer so the inner loop over output columns vectorizes */
            int8_t *yr = yp + (size_t)oy * p->wout;
            const int32_t wout = p->wout, sw = p->sw;
            int32_t ox;
            for (ox = 0; ox < wout; ox++) yr[ox] = -128;
            for (ky = 0; ky < p->kh; ky++) {
                const int8_t *row = plane + (size_t)(oy * p->sh + ky * p->dh) * wp;
                for (kx = 0; kx < p->kw; kx++) {
                    const int8_t *src = row + kx * p->dw;
                    if (sw == 2)
                        for (ox = 0; ox < wout; ox++) yr[ox] = src[2 * ox] > yr[ox] ? src[2 * ox] : yr[ox];
                    else
                        for (ox = 0; ox < wout; ox++)
                            yr[ox] = src[(size_t)ox * sw] > yr[ox] ? src[(size_t)ox * sw] : yr[ox];
                }
            }
#endif
        }
    }
}

/* Ceiling division for a possibly negative numerator (b > 0). */
static int32_t pool_ceildiv(int32_t a, int32_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

/* Taps of one window along one axis: window start s0 (input coordinates, >= -pad_head), k taps
 * dilation d, n input positions, pad_tail. [*a, *b) are the taps inside the input; *np the
 * taps inside the padded input [-pad_head, n + pad_tail) (fewer than k only for a window that
 * hangs over the end in ceil_mode). */
static void pool_taps(int32_t s0, int32_t k, int32_t d, int32_t n, int32_t pad_tail, int32_t *a,
                      int32_t *b, int32_t *np)
{
    *a = s0 >= 0 ? 0 : ce_min32(k, pool_ceildiv(-s0, d));
    *b = ce_max32(*a, ce_min32(k, pool_ceildiv(n - s0, d)));
    *np = ce_max32(0, ce_min32(k, pool_ceildiv(n + pad_tail - s0, d)));
}

/* AveragePool with ONNX / onnxruntime semantics, ceil_mode included: pt/pl/pb/pr are the model's
 * pads and hout/wout may make the last windows hang over the bottom/right end (ceil_mode). Padded
 * positions hold the real value 0, so the sum runs over the taps inside the image only. The
 * divisor is, with count_include_pad = 1, the number of taps inside the padded input
 * [-pt, hin + pb) x [-pl, win + pr) (kh * kw but for windows hanging past it), otherwise the
 * number of taps inside the image; mult/shift are indexed by divisor - 1. Needs no scratch.
 * Scalar in every build (it is rare in the target networks). */
void ce_avgpool_q8(const ce_pool_t *p, const int8_t *x, int8_t *y, int8_t *scratch)
{
    const int32_t hw = p->hin * p->win, ohw = p->hout * p->wout, zx = p->in_zp;
    int32_t c, oy, ox, ky, kx;
    (void)scratch;
    for (c = 0; c < p->c; c++) {
        const int8_t *plane = x + (size_t)c * hw;
        int8_t *yp = y + (size_t)c * ohw;
        for (oy = 0; oy < p->hout; oy++) {
            const int32_t y0 = oy * p->sh - p->pt;
            int32_t ya, yb, ny;
            pool_taps(y0, p->kh, p->dh, p->hin, p->pb, &ya, &yb, &ny);
            for (ox = 0; ox < p->wout; ox++) {
                const int32_t x0 = ox * p->sw - p->pl;
                int32_t xa, xb, nx, sum = 0, d;
                pool_taps(x0, p->kw, p->dw, p->win, p->pr, &xa, &xb, &nx);
                for (ky = ya; ky < yb; ky++) {
                    const int8_t *row = plane + (size_t)(y0 + ky * p->dh) * p->win;
                    for (kx = xa; kx < xb; kx++) sum += row[x0 + kx * p->dw] - zx;
                }
                d = p->count_include_pad ? ny * nx : (yb - ya) * (xb - xa);
                if (d < 1) d = 1; /* a window with no tap inside: sum 0, the result is out_zp */
                yp[(size_t)oy * p->wout + ox] =
                    ce_requant(sum, p->mult[d - 1], p->shift[d - 1], p->out_zp, -128, 127);
            }
        }
    }
}

void ce_global_avgpool_q8(int32_t c, int32_t hw, const int8_t *x, int32_t zx, int8_t *y,
                          int32_t mult, int32_t shift, int32_t zy)
{
    int32_t ch;
    for (ch = 0; ch < c; ch++) {
        const int8_t *plane = x + (size_t)ch * hw;
        int32_t sum = 0;
#if defined(CE_RVV)
        const size_t vlmax = __riscv_vsetvlmax_e32m1();
        vint32m1_t acc = __riscv_vmv_v_x_i32m1(0, vlmax);
        int32_t i = 0;
        while (i < hw) {
            const size_t vl = __riscv_vsetvl_e8m1((size_t)(hw - i));
            const vint16m2_t v = __riscv_vsext_vf2_i16m2(__riscv_vle8_v_i8m1(plane + i, vl), vl);
            acc = __riscv_vwredsum_vs_i16m2_i32m1(v, acc, vl);
            i += (int32_t)vl;
        }
        sum = __riscv_vmv_x_s_i32m1_i32(acc);
#else
        int32_t i;
        for (i = 0; i < hw; i++) sum += plane[i];
#endif
        y[ch] = ce_requant(sum - zx * hw, mult, shift, zy, -128, 127);
    }
}
