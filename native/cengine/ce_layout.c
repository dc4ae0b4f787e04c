/* ce_layout.c - Transpose and Concat helpers (element size 1 or 4 bytes). */
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
