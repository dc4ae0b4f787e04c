/* classify.c - a small program that embeds a generated C engine and classifies an input file.
 *
 *   classify IMAGE
 *
 * IMAGE is either a binary PGM (P5, 8-bit grayscale, the model's input height x width, pixels
 * scaled to [0, 1]) for single-channel models, or a raw file of MODEL_INPUT_SIZE float32 values
 * in the model's input layout (NCHW). Prints the predicted class and the scores.
 *
 * Build it against an engine directory written by compressor (see Makefile):
 *   make ENGINE=out/engine            # host
 *   make ENGINE=out/engine ARCH=rv64gcv && qemu-riscv64 -cpu rv64,v=true,vlen=128 ./classify x.pgm
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model.h"

static float input[MODEL_INPUT_SIZE];
static float scores[MODEL_OUTPUT_SIZE];

static int read_pgm(FILE *f, float *dst)
{
    int w, h, maxval, c, i;
    if (fscanf(f, "P5 %d %d %d", &w, &h, &maxval) != 3) return -1;
    c = fgetc(f); /* the single whitespace after the header */
    (void)c;
    if (model_info.input.rank != 4 || model_info.input.dims[1] != 1 || model_info.input.dims[2] != h ||
        model_info.input.dims[3] != w || maxval <= 0 || maxval > 255) {
        fprintf(stderr, "PGM is %dx%d (max %d); the model wants 1x%dx%d\n", w, h, maxval,
                (int)model_info.input.dims[2], (int)model_info.input.dims[3]);
        return -1;
    }
    for (i = 0; i < w * h; i++) {
        int v = fgetc(f);
        if (v == EOF) return -1;
        dst[i] = (float)v / (float)maxval;
    }
    return 0;
}

int main(int argc, char **argv)
{
    FILE *f;
    char magic[2] = {0, 0};
    int i, best = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: %s IMAGE.pgm|INPUT.f32\n", argv[0]);
        return 2;
    }
    f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    if (fread(magic, 1, 2, f) == 2 && magic[0] == 'P' && magic[1] == '5') {
        rewind(f);
        if (read_pgm(f, input)) {
            fprintf(stderr, "%s: unsupported PGM\n", argv[1]);
            return 2;
        }
    } else {
        rewind(f);
        if (fread(input, sizeof(float), MODEL_INPUT_SIZE, f) != MODEL_INPUT_SIZE) {
            fprintf(stderr, "%s: expected %d float32 values\n", argv[1], MODEL_INPUT_SIZE);
            return 2;
        }
    }
    fclose(f);

    if (model_run(input, scores) != 0) {
        fprintf(stderr, "inference failed\n");
        return 1;
    }
    for (i = 1; i < MODEL_OUTPUT_SIZE; i++)
        if (scores[i] > scores[best]) best = i;
    printf("class %d\n", best);
    for (i = 0; i < MODEL_OUTPUT_SIZE; i++) printf("  %d: %.4f\n", i, (double)scores[i]);
    printf("engine: arena %d bytes, weights %d bytes, %lld MACs\n", (int)model_info.arena_bytes,
           (int)model_info.weight_bytes, (long long)model_info.macs);
    return 0;
}
