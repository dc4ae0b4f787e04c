/* ce_conv.c - 2-D convolution: pointwise, depthwise and general (im2col tiles + GEMM).
 *
 * Zero points: the accumulator is sum_k w * (x - in_zp) + bias. The code generator folds
 * "- in_zp * sum(w)" into the bias, so kernels compute sum_k w * x + bias'. Padded positions must
 * then hold in_zp (the real value 0), which is what the padding copies below write.
 */
#include "ce_internal.h"

static int is_pointwise(const ce_conv_t *p)
{
    return p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && p->pt == 0 && p->pl == 0 &&
           p->pb == 0 && p->pr == 0 && p->groups == 1;
}

static int is_depthwise(const ce_conv_t *p)
{
    return p->groups > 1 && p->groups == p->cin && p->groups == p->cout && p->sw <= 16 &&
           p->kh * p->kw <= 64;
}

size_t ce_conv2d_scratch(const ce_conv_t *p)
{
    if (is_pointwise(p)) return 0;
    if (is_depthwise(p)) /* padded plane + 32 bytes of slack for vector over-reads/-writes */
        return ((p->pt | p->pl | p->pb | p->pr) != 0 || p->sw > 1)
                   ? (size_t)(p->hin + p->pt + p->pb) * (size_t)(p->win + p->pl + p->pr) + 32
                   : 0;
    return (size_t)(p->cin / p->groups) * p->kh * p->kw * (size_t)p->ntile + 32; /* + SIMD slack */
}

void ce_pad_plane(const int8_t *src, int32_t h, int32_t w, int32_t pt, int32_t pl, int32_t pb,
                  int32_t pr, int8_t fill, int8_t *dst, int fill_border)
{
    const int32_t wp = w + pl + pr;
    int32_t y;
    if (fill_border) memset(dst, fill, (size_t)(h + pt + pb) * wp);
    for (y = 0; y < h; y++) memcpy(dst + (size_t)(y + pt) * wp + pl, src + (size_t)y * w, (size_t)w);
}

/* ---- depthwise: per channel, copy into a padded plane, then accumulate the taps ----
 *
 * The padded plane (hp x wp, filled with in_zp outside the image) stores each row by column
 * phase when the stride is > 1: columns p, p + sw, p + 2 sw, ... first for p = 0, then p = 1,
 * and so on, so every tap of a strided depthwise convolution reads contiguous memory. */
static void phase_offsets(int32_t wp, int32_t sw, int32_t *off)
{
    int32_t p, o = 0;
    for (p = 0; p < sw; p++) {
        off[p] = o;
        o += (wp - p + sw - 1) / sw;
    }
}

/* Per column phase ph: first image column x0[ph] with (x0 + pl) % sw == ph, how many such
 * columns n[ph], and where they start in a padded row dst[ph]. */
typedef struct {
    int32_t x0[16], n[16], dst[16];
} ce_phases_t;

static void phase_plan(const ce_conv_t *p, const int32_t *off, ce_phases_t *ph)
{
    int32_t k;
    for (k = 0; k < p->sw; k++) {
        const int32_t x0 = ((k - p->pl) % p->sw + p->sw) % p->sw;
        ph->x0[k] = x0;
        ph->n[k] = x0 < p->win ? (p->win - x0 + p->sw - 1) / p->sw : 0;
        ph->dst[k] = off[k] + (x0 + p->pl) / p->sw;
    }
}

static void pad_plane_phased(const int8_t *src, const ce_conv_t *p, int32_t wp,
                             const ce_phases_t *ph, int8_t *dst, int fill)
{
    const int32_t hp = p->hin + p->pt + p->pb, sw = p->sw, win = p->win;
    int32_t y, k;
    if (fill) memset(dst, (int8_t)p->in_zp, (size_t)hp * wp);
    for (y = 0; y < p->hin; y++) {
        const int8_t *s = src + (size_t)y * win;
        int8_t *d = dst + (size_t)(y + p->pt) * wp;
#if defined(CE_HAVE_AVX2)
        if (win <= 32) { /* one 32-byte vector per row (uses the 32 bytes of slack) */
            if (sw == 1) {
                ce_copy_row32_avx2(s, win, (int8_t)p->in_zp, d + p->pl);
                continue;
            }
            if (sw == 2) {
                const int32_t ke = ph->x0[0] == 0 ? 0 : 1, ko = 1 - ke;
                ce_deinterleave32_avx2(s, ph->n[ke], ph->n[ko], (int8_t)p->in_zp, d + ph->dst[ke], d + ph->dst[ko]);
                continue;
            }
        }
        if (sw == 2) { /* phase k holds image columns x0[k], x0[k] + 2, ...; x0 is 0 or 1 */
            const int32_t ke = ph->x0[0] == 0 ? 0 : 1, ko = 1 - ke;
            ce_deinterleave2_avx2(s, ph->n[ke], ph->n[ko], d + ph->dst[ke], d + ph->dst[ko]);
            continue;
        }
#endif
        if (sw == 1) {
            memcpy(d + p->pl, s, (size_t)win);
            continue;
        }
        for (k = 0; k < sw; k++) {
            int8_t *dd = d + ph->dst[k];
            const int8_t *ss = s + ph->x0[k];
            int32_t n = ph->n[k];
#if defined(CE_RVV)
            while (n > 0) {
                const size_t vl = __riscv_vsetvl_e8m1((size_t)n);
                __riscv_vse8_v_i8m1(dd, __riscv_vlse8_v_i8m1(ss, sw, vl), vl);
                dd += vl;
                ss += (size_t)vl * sw;
                n -= (int32_t)vl;
            }
#else
            int32_t i;
            if (sw == 2)
                for (i = 0; i < n; i++) dd[i] = ss[2 * i];
            else
                for (i = 0; i < n; i++) dd[i] = ss[(size_t)i * sw];
#endif
        }
    }
}

#if !defined(CE_RVV)
#define CE_DW_TILE 64
static void dw_plane(const ce_conv_t *p, const int8_t *xp, int32_t wp, const int32_t *tap,
                     const int8_t *w, int32_t bias, int32_t mult, int32_t shift, int8_t *y)
{
    const int32_t hout = p->hout, wout = p->wout, kk = p->kh * p->kw, rstep = p->sh * wp;
    const int32_t zp = p->out_zp, lo = p->lo, hi = p->hi;
    int32_t oy, ox0, t, i;
    for (oy = 0; oy < hout; oy++) {
        const int8_t *row = xp + (size_t)oy * rstep;
        int8_t *yr = y + (size_t)oy * wout;
#if defined(CE_HAVE_AVX2)
        if (wout < 16 && rstep <= 120) {
            /* small planes: one run over consecutive output rows (row pitch rstep in the padded,
             * column-phased plane), keeping the valid part of each row, when that takes no more
             * 16-wide steps than row by row */
            int8_t tmp[256];
            const int32_t rows = ce_max32(1, ce_min32(hout - oy, 240 / rstep));
            const int32_t len = (rows - 1) * rstep + wout;
            if ((len + 15) / 16 > rows) {
                ce_dw_row_avx2(row, tap, w, kk, wout, bias, mult, shift, zp, lo, hi, yr);
                continue;
            }
            ce_dw_row_avx2(row, tap, w, kk, len, bias, mult, shift, zp, lo, hi, tmp);
            for (t = 0; t < rows; t++) {
                int32_t j;
                for (j = 0; j < wout; j++) yr[(size_t)t * wout + j] = tmp[(size_t)t * rstep + j];
            }
            oy += rows - 1;
            continue;
        }
        ce_dw_row_avx2(row, tap, w, kk, wout, bias, mult, shift, zp, lo, hi, yr);
        continue;
#endif
        for (ox0 = 0; ox0 < wout; ox0 += CE_DW_TILE) {
            const int32_t nt = ce_min32(CE_DW_TILE, wout - ox0);
            int32_t acc[CE_DW_TILE];
            for (i = 0; i < CE_DW_TILE; i++) acc[i] = bias;
            for (t = 0; t < kk; t++) {
                const int8_t *src = row + tap[t] + ox0;
                const int16_t wv = w[t];
                for (i = 0; i < nt; i++) acc[i] += (int16_t)(wv * src[i]);
            }
#if defined(CE_HAVE_AVX2)
            ce_requant_row_avx2(acc, nt, mult, shift, zp, lo, hi, yr + ox0);
#else
            for (i = 0; i < nt; i++) yr[ox0 + i] = ce_requant(acc[i], mult, shift, zp, lo, hi);
#endif
        }
    }
}
#else
static void dw_plane(const ce_conv_t *p, const int8_t *xp, int32_t wp, const int32_t *tap,
                     const int8_t *w, int32_t bias, int32_t mult, int32_t shift, int8_t *y)
{
    const int32_t kk = p->kh * p->kw;
    int32_t oy, t;
    for (oy = 0; oy < p->hout; oy++) {
        const int8_t *row = xp + (size_t)oy * p->sh * wp;
        int32_t ox = 0;
        while (ox < p->wout) {
            const size_t vl = __riscv_vsetvl_e8m1((size_t)(p->wout - ox));
            vint32m4_t acc = __riscv_vmv_v_x_i32m4(bias, vl);
            for (t = 0; t < kk; t++) {
                const vint8m1_t xv = __riscv_vle8_v_i8m1(row + tap[t] + ox, vl);
                acc = __riscv_vwadd_wv_i32m4(acc, __riscv_vwmul_vx_i16m2(xv, w[t], vl), vl);
            }
            ce_rvv_requant_store(acc, y + (size_t)oy * p->wout + ox, mult, shift, p->out_zp, p->lo, p->hi, vl);
            ox += (int32_t)vl;
        }
    }
}
#endif

static void conv_depthwise(const ce_conv_t *p, const int8_t *x, int8_t *y, int8_t *scratch)
{
    const int32_t wp = p->win + p->pl + p->pr;
    const int32_t hw = p->hin * p->win, ohw = p->hout * p->wout, kk = p->kh * p->kw;
    const int copy = (p->pt | p->pl | p->pb | p->pr) != 0 || p->sw > 1;
    int32_t off[16], tap[64], ky, kx; /* is_depthwise() guarantees sw <= 16, kh * kw <= 64 */
    int32_t c;
    ce_phases_t ph;
    phase_offsets(wp, p->sw, off);
    phase_plan(p, off, &ph);
    for (ky = 0; ky < p->kh; ky++)
        for (kx = 0; kx < p->kw; kx++) {
            const int32_t col = kx * p->dw;
            tap[ky * p->kw + kx] = ky * p->dh * wp + off[col % p->sw] + col / p->sw;
        }
    for (c = 0; c < p->cin; c++) {
        const int8_t *plane = x + (size_t)c * hw;
        if (copy) {
            pad_plane_phased(plane, p, wp, &ph, scratch, c == 0);
            plane = scratch;
        }
        dw_plane(p, plane, wp, tap, p->w + (size_t)c * kk, p->bias[c], p->mult[c], p->shift[c], y + (size_t)c * ohw);
    }
}

/* ---- general: im2col of `ntile` output positions at a time, then W * cols ---- */
static void fill_i8(int8_t *dst, int8_t v, int32_t n)
{
#if defined(CE_RVV)
    while (n > 0) {
        const size_t vl = __riscv_vsetvl_e8m1((size_t)n);
        __riscv_vse8_v_i8m1(dst, __riscv_vmv_v_x_i8m1(v, vl), vl);
        dst += vl;
        n -= (int32_t)vl;
    }
#else
    int32_t i;
    for (i = 0; i < n; i++) dst[i] = v;
#endif
}

static void copy_strided_i8(int8_t *dst, const int8_t *src, int32_t n, int32_t stride)
{
#if defined(CE_RVV)
    while (n > 0) {
        const size_t vl = __riscv_vsetvl_e8m1((size_t)n);
        const vint8m1_t v = stride == 1 ? __riscv_vle8_v_i8m1(src, vl)
                                        : __riscv_vlse8_v_i8m1(src, (ptrdiff_t)stride, vl);
        __riscv_vse8_v_i8m1(dst, v, vl);
        dst += vl;
        src += (size_t)vl * stride;
        n -= (int32_t)vl;
    }
#else
    int32_t i;
    if (stride == 1)
        memcpy(dst, src, (size_t)n);
    else
        for (i = 0; i < n; i++) dst[i] = src[(size_t)i * stride];
#endif
}

/* Floor division for possibly negative numerators (b > 0). */
static int32_t floordiv(int32_t a, int32_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* cols[(c*kh + ky)*kw + kx][i] = x[c0 + c][iy][ix] for output positions n0 .. n0 + nt - 1,
 * in_zp where (iy, ix) falls into the padding. The tile is cut into output-row segments once;
 * every (c, ky, kx) row of the column buffer is then a fill / copy / fill per segment. */
#define CE_MAX_SEGS 272
static void im2col_tile(const ce_conv_t *p, const int8_t *x, int32_t c0, int32_t cg, int32_t n0,
                        int32_t nt, int8_t *cols)
{
    const int32_t hw = p->hin * p->win, sw = p->sw, win = p->win;
    const int8_t zp = (int8_t)p->in_zp;
    int32_t seg_oy[CE_MAX_SEGS], seg_ox[CE_MAX_SEGS], seg_len[CE_MAX_SEGS], seg_i[CE_MAX_SEGS];
    int32_t oxa[64], oxb[64], off[64];
    int32_t nseg = 0, c, ky, kx, k, i = 0, oy = n0 / p->wout, ox = n0 % p->wout;
    while (i < nt && nseg < CE_MAX_SEGS) {
        const int32_t len = ce_min32(p->wout - ox, nt - i);
        seg_oy[nseg] = oy, seg_ox[nseg] = ox, seg_len[nseg] = len, seg_i[nseg] = i;
        nseg++;
        i += len;
        ox = 0;
        oy++;
    }
    for (kx = 0; kx < p->kw && kx < 64; kx++) { /* output columns whose input column is inside */
        off[kx] = kx * p->dw - p->pl;
        oxa[kx] = ce_max32(0, floordiv(-off[kx] + sw - 1, sw));
        oxb[kx] = ce_min32(p->wout, floordiv(win - 1 - off[kx], sw) + 1);
    }
    for (c = 0; c < cg; c++) {
        const int8_t *plane = x + (size_t)(c0 + c) * hw;
        for (ky = 0; ky < p->kh; ky++) {
            for (kx = 0; kx < p->kw; kx++, cols += nt) {
                for (k = 0; k < nseg; k++) {
                    const int32_t sox = seg_ox[k], len = seg_len[k];
                    const int32_t iy = seg_oy[k] * p->sh - p->pt + ky * p->dh;
                    int8_t *d = cols + seg_i[k];
                    if (iy < 0 || iy >= p->hin || oxa[kx] >= oxb[kx]) {
                        fill_i8(d, zp, len);
                    } else {
                        const int32_t a = ce_min32(ce_max32(oxa[kx], sox), sox + len);
                        const int32_t b = ce_max32(ce_min32(oxb[kx], sox + len), a);
                        const int8_t *src = plane + (size_t)iy * win + a * sw + off[kx];
#if defined(CE_HAVE_AVX2)
                        if (sw == 1 && len <= 32) { /* one 32-byte move (slack past both buffers) */
                            int32_t j;
                            if (b > a) ce_copy32(d + (a - sox), src);
                            for (j = 0; j < a - sox; j++) d[j] = zp;
                            for (j = b - sox; j < len; j++) d[j] = zp;
                            continue;
                        }
#endif
                        fill_i8(d, zp, a - sox);
                        copy_strided_i8(d + (a - sox), src, b - a, sw);
                        fill_i8(d + (b - sox), zp, sox + len - b);
                    }
                }
            }
        }
    }
}

void ce_conv2d(const ce_conv_t *p, const int8_t *x, int8_t *y, int8_t *scratch)
{
    const int32_t ohw = p->hout * p->wout;
    if (is_pointwise(p)) {
        ce_gemm_wx(p->cout, ohw, p->cin, p->w, x, ohw, y, ohw, p->bias, p->mult, p->shift,
                   p->out_zp, p->lo, p->hi);
        return;
    }
    if (is_depthwise(p)) {
        conv_depthwise(p, x, y, scratch);
        return;
    }
    {
        const int32_t cg = p->cin / p->groups, mg = p->cout / p->groups;
        const int32_t K = cg * p->kh * p->kw;
        int32_t g, n0;
        for (g = 0; g < p->groups; g++) {
            for (n0 = 0; n0 < ohw; n0 += p->ntile) {
                const int32_t nt = ce_min32(p->ntile, ohw - n0);
                im2col_tile(p, x, g * cg, cg, n0, nt, scratch);
                ce_gemm_wx(mg, nt, K, p->w + (size_t)g * mg * K, scratch, nt,
                           y + (size_t)g * mg * ohw + n0, ohw, p->bias + g * mg,
                           p->mult + g * mg, p->shift + g * mg, p->out_zp, p->lo, p->hi);
            }
        }
    }
}
