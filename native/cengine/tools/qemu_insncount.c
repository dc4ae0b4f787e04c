/* qemu_insncount.c - a minimal qemu TCG plugin: counts the guest instructions a program executes
 * (an inline add of each translation block's length when the block runs) and prints
 * "insncount N" on stderr at exit. Used by compressor's toolchain.count_instructions: the same
 * count as qemu's exec log (tested), at close to normal qemu speed, so a whole Transformer
 * inference can be counted. It declares the few plugin API items it uses (plugin API version 1:
 * qemu 4.2 to 8.x); where qemu refuses it, the toolchain falls back to the exec log.
 * With the argument mark=ADDRESS (hex, a function of a non-PIE program, e.g. the C engine's
 * ce_trace, called after every kernel), it also notes the count each time that function is entered
 * and prints "insnmarks C1 C2 ..." at exit: the differences are the instructions between the calls
 * (compress profile --device qemu: instructions per layer).
 *   cc -shared -fPIC -O2 -o libinsncount.so qemu_insncount.c
 *   qemu-riscv64 -plugin ./libinsncount.so[,mark=0x10a2c] PROGRAM ARGS... */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
typedef struct {
    const char *target_name;
    struct { int min; int cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;
static uint64_t count;
static uint64_t mark;  /* 0: no marks */
static uint64_t *marks;
static size_t n_marks, cap_marks;

static void at_mark(unsigned int vcpu, void *userdata)
{
    (void)vcpu; (void)userdata;
    if (n_marks == cap_marks) {
        cap_marks = cap_marks ? 2 * cap_marks : 1024;
        marks = realloc(marks, cap_marks * sizeof *marks);
        if (!marks) { fprintf(stderr, "insncount: out of memory\n"); exit(1); }
    }
    marks[n_marks++] = count;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &count,
                                             qemu_plugin_tb_n_insns(tb));
    if (mark && qemu_plugin_tb_vaddr(tb) == mark)
        qemu_plugin_register_vcpu_tb_exec_cb(tb, at_mark, QEMU_PLUGIN_CB_NO_REGS, NULL);
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    size_t i;
    (void)id; (void)p;
    fprintf(stderr, "insncount %" PRIu64 "\n", count);
    if (mark) {
        fprintf(stderr, "insnmarks");
        for (i = 0; i < n_marks; i++) fprintf(stderr, " %" PRIu64, marks[i]);
        fprintf(stderr, "\n");
    }
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                               int argc, char **argv)
{
    int i;
    (void)info;
    for (i = 0; i < argc; i++)
        if (!strncmp(argv[i], "mark=", 5)) mark = strtoull(argv[i] + 5, NULL, 16);
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
