/* ce_layout.c - Transpose and Concat helpers (element size 1, 4 or 8 bytes), Expand, Gather
 * (embedding lookups, int8 tables dequantized row by row), Cast. */
#include "ce_internal.h"

void ce_transpose(int32_t rank, const int32_t *dims, const int32_t *perm, int32_t esize,
                  const void *x, void *y)
{
    /* Output dims od[i] = dims[perm[i]]; walk the output in order and step through the input
     * with the matching strides. */
    int32_t istride[6], od[6], ostep[6], idx[6];
    int32_t i, total = 1;
    size_t src = 0;
    if (rank < 1 || rank > 6) return;
    if (rank > 1 && perm[rank - 1] == rank - 1) {
        /* the last axis stays last (attention heads: (S, H, D) <-> (H, S, D)): move whole rows */
        int32_t d2[6], p2[6], rows = 1, row = dims[rank - 1];
        size_t rbytes = (size_t)row * (size_t)esize;
        for (i = 0; i < rank - 1; i++) {
            d2[i] = dims[i];
            p2[i] = perm[i];
            rows *= dims[i];
        }
        if (rank == 2) {
            memcpy(y, x, (size_t)rows * rbytes);
            return;
        }
        istride[rank - 2] = 1;
        for (i = rank - 3; i >= 0; i--) istride[i] = istride[i + 1] * d2[i + 1];
        for (i = 0; i < rank - 1; i++) {
            od[i] = d2[p2[i]];
            ostep[i] = istride[p2[i]];
            idx[i] = 0;
        }
        for (i = 0; i < rows; i++) {
            int32_t d;
            memcpy((char *)y + (size_t)i * rbytes, (const char *)x + src * rbytes, rbytes);
            for (d = rank - 2; d >= 0; d--) {
                src += (size_t)ostep[d];
                if (++idx[d] < od[d]) break;
                src -= (size_t)ostep[d] * od[d];
                idx[d] = 0;
            }
        }
        return;
    }
    istride[rank - 1] = 1;
    for (i = rank - 2; i >= 0; i--) istride[i] = istride[i + 1] * dims[i + 1];
    for (i = 0; i < rank; i++) {
        od[i] = dims[perm[i]];
        ostep[i] = istride[perm[i]];
        idx[i] = 0;
        total *= od[i];
    }
    for (i = 0; i < total; i++) {
        int32_t d;
        if (esize == 1)
            ((int8_t *)y)[i] = ((const int8_t *)x)[src];
        else if (esize == 8)
            ((int64_t *)y)[i] = ((const int64_t *)x)[src];
        else
            ((float *)y)[i] = ((const float *)x)[src];
        for (d = rank - 1; d >= 0; d--) {
            src += (size_t)ostep[d];
            if (++idx[d] < od[d]) break;
            src -= (size_t)ostep[d] * od[d];
            idx[d] = 0;
        }
    }
}

void ce_copy_blocks(int32_t outer, int32_t chunk, const void *x, void *y, int32_t ystride)
{
    int32_t o;
    for (o = 0; o < outer; o++)
        memcpy((char *)y + (size_t)o * ystride, (const char *)x + (size_t)o * chunk, (size_t)chunk);
}

void ce_broadcast_copy(int32_t rank, const int32_t *dims, const int32_t *xs, int32_t esize,
                       const void *x, void *y)
{
    int32_t idx[6] = {0, 0, 0, 0, 0, 0}, d;
    size_t total = 1, i, src = 0;
    for (d = 0; d < rank; d++) total *= (size_t)dims[d];
    for (i = 0; i < total; i++) {
        memcpy((char *)y + i * (size_t)esize, (const char *)x + src * (size_t)esize, (size_t)esize);
        for (d = rank - 1; d >= 0; d--) {
            src += (size_t)xs[d];
            if (++idx[d] < dims[d]) break;
            src -= (size_t)xs[d] * (size_t)dims[d];
            idx[d] = 0;
        }
    }
}

static int32_t index_at(const void *idx, int32_t type, int32_t j, int32_t len)
{
    int64_t v = type == CE_I64 ? ((const int64_t *)idx)[j] : (int64_t)((const int32_t *)idx)[j];
    if (v < 0) v += len;
    if (v < 0) v = 0;
    if (v >= len) v = len - 1;
    return (int32_t)v;
}

void ce_gather(int32_t outer, int32_t axis_len, int32_t inner_bytes, int32_t nidx, const void *idx,
               int32_t idx_type, const void *x, void *y)
{
    int32_t o, j;
    for (o = 0; o < outer; o++)
        for (j = 0; j < nidx; j++) {
            const int32_t i = index_at(idx, idx_type, j, axis_len);
            memcpy((char *)y + ((size_t)o * nidx + j) * (size_t)inner_bytes,
                   (const char *)x + ((size_t)o * axis_len + i) * (size_t)inner_bytes, (size_t)inner_bytes);
        }
}

void ce_gather_dq_rows(int32_t nidx, const void *idx, int32_t idx_type, int32_t rows, int32_t cols,
                       const int8_t *table, int32_t zp, const float *scale, int32_t per_row,
                       float *y)
{
    int32_t j, c;
    for (j = 0; j < nidx; j++) {
        const int32_t i = index_at(idx, idx_type, j, rows);
        const int8_t *r = table + (size_t)i * cols;
        const float s = scale[per_row ? i : 0];
        float *yr = y + (size_t)j * cols;
        for (c = 0; c < cols; c++) yr[c] = (float)((int32_t)r[c] - zp) * s;
    }
}

static double load_as_double(int32_t type, const void *x, int32_t i)
{
    switch (type) {
    case CE_F32: return (double)((const float *)x)[i];
    case CE_I8: return (double)((const int8_t *)x)[i];
    case CE_I64: return (double)((const int64_t *)x)[i];
    case CE_I32: return (double)((const int32_t *)x)[i];
    default: return ((const uint8_t *)x)[i] ? 1.0 : 0.0;
    }
}

void ce_cast(int32_t n, int32_t from, const void *x, int32_t to, void *y)
{
    int32_t i;
    for (i = 0; i < n; i++) {
        if (to == CE_U8) {
            ((uint8_t *)y)[i] = load_as_double(from, x, i) != 0.0;
            continue;
        }
        if (to == CE_F32) { /* integers up to 2^53 are exact in double; one rounding to float */
            if (from == CE_I64)
                ((float *)y)[i] = (float)((const int64_t *)x)[i];
            else
                ((float *)y)[i] = (float)load_as_double(from, x, i);
            continue;
        }
        {
            double v = load_as_double(from, x, i);
            double lo = to == CE_I8 ? -128.0 : (to == CE_I32 ? -2147483648.0 : -9223372036854775808.0);
            double hi = to == CE_I8 ? 127.0 : (to == CE_I32 ? 2147483647.0 : 9223372036854774784.0);
            if (from == CE_I64 && to == CE_I64) {
                ((int64_t *)y)[i] = ((const int64_t *)x)[i];
                continue;
            }
            v = v != v ? 0.0 : (v < lo ? lo : (v > hi ? hi : v));
            if (to == CE_I8)
                ((int8_t *)y)[i] = (int8_t)v;
            else if (to == CE_I32)
                ((int32_t *)y)[i] = (int32_t)v;
            else
                ((int64_t *)y)[i] = (int64_t)v;
        }
    }
}
