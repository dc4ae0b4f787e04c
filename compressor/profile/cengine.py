"""The C engine's profiler: the engine built with a timer after every kernel call (its CE_TRACE
hook), run here, on a device over SSH (the build for the device's ISA, no Python needed there),
or under qemu-user, where the counting plugin (native/cengine/tools/qemu_insncount.c) also gives
the dynamic RISC-V instructions of every layer.

The profiling build is the engine's own Makefile run on a copy of the engine folder
(build/profile/) whose runner.c is PROFILE_MAIN and whose compiler adds -DCE_TRACE_ENABLE, so
the kernels are compiled exactly as the engine's.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..backends.cengine.toolchain import (_plugin_path, engine_meta, engine_toolchain, host_cc, input_specs,
                                          pack_inputs, require_tools)
from ..errors import CompressError
from .devices import Device, Job
from .latency import PARTS
from .profiler import EngineProfiler, Settings

PROFILE_MAIN = r"""/* runner.c of the profiling build (compress profile): the engine with a timer after every kernel.
 *   runner prof IN RUNS WARMUP LAYER_RUNS   time RUNS inferences of the first sample, then LAYER_RUNS with
 *                                          a clock read after every kernel; JSON on stdout
 *   runner count IN                        one inference with a bare call of ce_trace after every kernel
 *                                          (the qemu plugin notes the instruction count at each)
 *   runner outputs IN OUT                  every sample of IN, raw float32 outputs to OUT (parity on a device) */
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include "%(name)s.h"

#define N_OPS %(n_ops)d
static const long in_bytes[%(up)s_N_INPUTS] = { %(sizes)s };
static void *ins[%(up)s_N_INPUTS];
static float out[%(up)s_OUTPUT_SIZE];
static int timing;
static long long last_ns, layer_ns[N_OPS + 1];
static int seq[16 * (N_OPS + 1)], n_seq;

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

__attribute__((noinline)) void ce_trace(int op, const char *tensor, const void *data, long nbytes)
{
    (void)tensor; (void)data; (void)nbytes;
    if (!timing) {  /* counting: the plugin noted the count at this call; remember which kernel it was */
        if (n_seq < (int)(sizeof seq / sizeof seq[0])) seq[n_seq++] = op;
        return;
    }
    {
        long long t = now_ns();
        if (op >= 0 && op < N_OPS) layer_ns[op] += t - last_ns;
        last_ns = t;
    }
}

static void run(void) { %(name)s_run_inputs((const void *const *)ins, out); }

static void load(const char *path)
{
    long k;
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    for (k = 0; k < %(up)s_N_INPUTS; k++) {
        ins[k] = malloc((size_t)in_bytes[k] + 64);
        if (fread(ins[k], 1, (size_t)in_bytes[k], f) != (size_t)in_bytes[k]) { fprintf(stderr, "short input\n"); exit(2); }
    }
    fclose(f);
}

static void identity(void)
{
    char host[256] = "?";
    struct rusage u;
    gethostname(host, sizeof host - 1);
    getrusage(RUSAGE_SELF, &u);
    const char *ssh = getenv("SSH_CONNECTION");  /* set by sshd: where the caller reached this process */
    printf("\"host\": \"%%s\", \"pid\": %%ld, \"peak_rss_bytes\": %%ld", host, (long)getpid(), (long)u.ru_maxrss * 1024L);
    if (ssh && !strpbrk(ssh, "\"\\")) printf(", \"ssh_connection\": \"%%s\"", ssh);
}

int main(int argc, char **argv)
{
    long i, k;
    if (argc == 6 && !strcmp(argv[1], "prof")) {
        long runs = atol(argv[3]), warmup = atol(argv[4]), layer_runs = atol(argv[5]);
        long long *t = (long long *)malloc((size_t)(runs > 0 ? runs : 1) * sizeof(long long));
        load(argv[2]);
        for (i = 0; i < warmup; i++) run();
        for (i = 0; i < runs; i++) {
            long long a = now_ns();
            run();
            t[i] = now_ns() - a;
        }
        timing = 1;
        for (i = 0; i < layer_runs; i++) { last_ns = now_ns(); run(); }
        printf("{\"times_ns\": [");
        for (i = 0; i < runs; i++) printf("%%s%%lld", i ? ", " : "", t[i]);
        printf("], \"layer_ns\": [");
        for (k = 0; k < N_OPS; k++) printf("%%s%%lld", k ? ", " : "", layer_ns[k]);
        printf("], \"layer_runs\": %%ld, ", layer_runs);
        identity();
        printf("}\n");
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "count")) {
        load(argv[2]);
        ce_trace(-1, "", 0, 0);  /* the mark before the first kernel */
        run();
        printf("{\"seq\": [");
        for (i = 0; i < n_seq; i++) printf("%%s%%d", i ? ", " : "", seq[i]);
        printf("], ");
        identity();
        printf("}\n");
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "outputs")) {
        FILE *f = fopen(argv[2], "rb"), *o = fopen(argv[3], "wb");
        unsigned char *rec = (unsigned char *)malloc(%(up)s_INPUTS_BYTES);
        if (!f || !o) { perror("outputs"); return 2; }
        for (k = 0; k < %(up)s_N_INPUTS; k++) ins[k] = malloc((size_t)in_bytes[k] + 64);
        while (fread(rec, 1, %(up)s_INPUTS_BYTES, f) == %(up)s_INPUTS_BYTES) {
            long off = 0;
            for (k = 0; k < %(up)s_N_INPUTS; k++) { memcpy(ins[k], rec + off, (size_t)in_bytes[k]); off += in_bytes[k]; }
            run();
            fwrite(out, sizeof(float), %(up)s_OUTPUT_SIZE, o);
        }
        fclose(f);
        fclose(o);
        printf("{");
        identity();
        printf("}\n");
        return 0;
    }
    fprintf(stderr, "usage: %%s prof IN RUNS WARMUP LAYER_RUNS | count IN | outputs IN OUT\n", argv[0]);
    return 2;
}
"""

ROUNDS = PARTS  # two engines: rounds of A then B, the parts of the run a ratio's noise comes from
ELF_EXEC = 2  # e_type of a program linked at fixed addresses (not PIE): the plugin's mark is its symbol's address


def _sync_copy(src: Path, dst: Path) -> None:
    """Copy the engine's sources into the profiling folder, only what changed (make stays incremental)."""
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if "build" in rel.parts or not path.is_file():
            continue
        target = dst / rel
        if not target.exists() or target.stat().st_mtime < path.stat().st_mtime:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def profiling_build(engine_dir: Path, arch: str) -> Path:
    """The profiling runner for `arch` (host, rv64gc, rv64gcv), built with the engine's Makefile."""
    meta = engine_meta(engine_dir)
    toolchain = engine_toolchain(engine_dir)
    require_tools(arch, toolchain=toolchain if arch != "host" else None)
    src = engine_dir / "build" / "profile"
    _sync_copy(engine_dir, src)
    name, up = meta["name"], meta["name"].upper()
    main = PROFILE_MAIN % {"name": name, "up": up, "n_ops": max(1, meta["n_ops"]),
                           "sizes": ", ".join(f"{up}_INPUT{k}_BYTES" for k in range(len(input_specs(meta))))}
    runner_c = src / "runner.c"
    if not runner_c.exists() or runner_c.read_text() != main:
        runner_c.write_text(main)
    compiler = (f"HOST_CC={host_cc()} -DCE_TRACE_ENABLE" if arch == "host"
                else f"RV_CC={toolchain.cross_compiler} -DCE_TRACE_ENABLE")
    r = subprocess.run(["make", "-s", "-C", str(src), arch, compiler], capture_output=True, text=True)
    if r.returncode:
        raise CompressError(f"building the {arch} profiling C engine failed: {(r.stderr or r.stdout).strip()[-1500:]}")
    return src / "build" / arch / "runner"


def _mark_address(binary: Path) -> str:
    """The address of ce_trace in a RISC-V build (static, linked at fixed addresses)."""
    header = binary.read_bytes()[:18]
    if header[:4] != b"\x7fELF" or int.from_bytes(header[16:18], "little") != ELF_EXEC:
        raise CompressError(f"{binary}: per-layer instruction counts need a statically linked, non-PIE build")
    nm = shutil.which("llvm-nm-16") or shutil.which("riscv64-linux-gnu-nm") or shutil.which("nm")
    if nm is None:
        raise CompressError("per-layer instruction counts need nm (binutils) to find the marker function")
    out = subprocess.run([nm, str(binary)], capture_output=True, text=True).stdout
    found = re.search(r"^([0-9a-fA-F]+) [Tt] ce_trace$", out, re.MULTILINE)
    if not found:
        raise CompressError(f"{binary}: no ce_trace symbol (not a profiling build)")
    return "0x" + found.group(1)


def _sample(meta: dict, inputs: list[np.ndarray] | None, folder: Path, name: str = "in.bin") -> Path:
    if inputs is None:  # random floats, ones for integer inputs (as toolchain.host_latency_ns)
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal(int(np.prod(s["shape"]))) if s["dtype"] in ("float32", "int8")
                  else np.ones(int(np.prod(s["shape"]))) for s in input_specs(meta)]
    records, _ = pack_inputs(meta, inputs if len(inputs) > 1 else inputs[0])
    path = folder / name
    records[:1].tofile(path)
    return path


def _stdout_json(text: str, device: Device) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise CompressError(f"{device.label}: the profiling engine printed no result: {text.strip()[-200:]}") from None


class CEngineProfiler(EngineProfiler):
    """Each engine is its own program, so two engines alternate by process: ROUNDS rounds of A then
    B, each round a share of the runs (the rounds are the parts `ratio_with_noise` compares)."""

    kind = "cengine"
    emulates = True

    def profile(self, engines: list[Path], settings: Settings, device: Device) -> dict:
        arch = self._arch(device)
        dirs = [e if e.is_dir() else e.parent for e in engines]
        binaries = [profiling_build(d, arch) for d in dirs]
        rounds = ROUNDS if len(engines) > 1 else 1
        result: dict = {"engines": [], "runtime": f"C engine ({arch} build" + (", qemu-user)" if device.emulated else ")")}
        if rounds > 1:
            result["alternation"] = f"alternated in {rounds} rounds of one process per engine"
        with tempfile.TemporaryDirectory() as tmp:
            samples = [_sample(engine_meta(d), settings.inputs, Path(tmp), f"in{i}.bin") for i, d in enumerate(dirs)]
            runs: list[list[dict]] = [[] for _ in engines]
            for r, share in enumerate(np.array_split(np.arange(settings.runs), rounds)):
                layer_runs = settings.per_layer_runs if r == rounds - 1 else 0
                for i, (d, binary, sample) in enumerate(zip(dirs, binaries, samples)):
                    runs[i].append(self._run(d, binary, sample, arch, device, len(share), settings.warmup, layer_runs))
            for engine, d, binary, sample, engine_runs in zip(engines, dirs, binaries, samples, runs):
                counts = (self._count(d, binary, sample, arch, device)
                          if device.emulated and settings.per_layer_runs else None)
                result["engines"].append(self._entry(engine, d, arch, engine_runs, counts))
                result.update({k: engine_runs[-1].get(k) for k in ("host", "pid", "peak_rss_bytes", "ssh_connection")})
        if device.emulated:
            result["timing_note"] = ("times under qemu-user emulation are not device times; the instruction "
                                     "counts are exact for the rv64gcv build")
            result["instructions_note"] = f"dynamic {arch} instructions, qemu plugin"
        return result

    def _arch(self, device: Device) -> str:
        return "rv64gcv" if device.emulated else getattr(device, "arch", None) or "host"

    def _prefix(self, engine_dir: Path, arch: str, device: Device) -> list[str]:
        return engine_toolchain(engine_dir).emulator_command("runner", arch)[:-1] if device.emulated else []

    def _run(self, engine_dir: Path, binary: Path, sample: Path, arch: str, device: Device, runs: int, warmup: int,
             layer_runs: int) -> dict:
        argv = [*self._prefix(engine_dir, arch, device), "./runner", "prof", "in.bin", str(runs), str(warmup),
                str(layer_runs)]
        done = device.run(Job({"runner": binary, "in.bin": sample}, argv, needs="the C engine's runner"))
        return _stdout_json(done.stdout, device)

    def _count(self, engine_dir: Path, binary: Path, sample: Path, arch: str, device: Device) -> list[int]:
        """Instructions per kernel: one inference under qemu with the plugin marking every ce_trace call."""
        plugin = _plugin_path(engine_dir)
        if plugin is None:
            raise CompressError("per-layer instruction counts need the qemu plugin, which did not build "
                                "(a host C compiler is needed)")
        prefix = self._prefix(engine_dir, arch, device)
        argv = [*prefix[:1], "-plugin", f"./libinsncount.so,mark={_mark_address(binary)}", *prefix[1:],
                "./runner", "count", "in.bin"]
        files = {"runner": binary, "in.bin": sample, "libinsncount.so": plugin}
        done = device.run(Job(files, argv, needs=engine_toolchain(engine_dir).emulator_program))
        seq = _stdout_json(done.stdout, device)["seq"]
        return _layer_instructions(seq, done.stderr, engine_meta(engine_dir)["n_ops"])

    def _entry(self, engine: Path, engine_dir: Path, arch: str, runs: list[dict], counts: list[int] | None) -> dict:
        meta = engine_meta(engine_dir)
        entry = {"engine": str(engine), "times_ms": [t / 1e6 for run in runs for t in run["times_ns"]], "arch": arch,
                 "input_shapes": [list(s["shape"]) for s in input_specs(meta)]}
        last = runs[-1]
        if last["layer_runs"]:
            layers_meta = meta.get("layers") or [{"kind": "op", "node": f"#{i}"} for i in range(meta["n_ops"])]
            entry["layers"] = [{"name": m["node"] or f"#{i}", "op": m["kind"], "ms": ns / last["layer_runs"] / 1e6}
                               for i, (m, ns) in enumerate(zip(layers_meta, last["layer_ns"]))]
            if counts is not None:
                for layer, c in zip(entry["layers"], counts):
                    layer["instructions"] = c
                entry["instructions"] = sum(counts)
        return entry

    def outputs(self, engine: Path, arrays: list[np.ndarray], device: Device,
                batch: int = 64) -> tuple[np.ndarray, dict]:
        engine_dir = engine if engine.is_dir() else engine.parent
        meta = engine_meta(engine_dir)
        arch = self._arch(device)
        binary = profiling_build(engine_dir, arch)
        prefix = engine_toolchain(engine_dir).emulator_command("runner", arch)[:-1] if device.emulated else []
        records, n = pack_inputs(meta, arrays if len(arrays) > 1 else arrays[0])
        with tempfile.TemporaryDirectory() as tmp:
            records.tofile(Path(tmp, "in.bin"))
            done = device.run(Job({"runner": binary, "in.bin": Path(tmp, "in.bin")},
                                  [*prefix, "./runner", "outputs", "in.bin", "out.bin"], fetch=["out.bin"],
                                  needs="the C engine's runner"))
        y = np.frombuffer(done.files.get("out.bin", b""), np.float32)
        shape = (n,) + tuple(meta["output"]["shape"][1:])
        if y.size != int(np.prod(shape)):
            raise CompressError(f"{device.label}: the C engine wrote {y.size} outputs, expected {int(np.prod(shape))}")
        return y.reshape(shape), _stdout_json(done.stdout, device)


def _layer_instructions(seq: list[int], stderr: str, n_ops: int) -> list[int]:
    """Instructions of each kernel call: the plugin's count at each ce_trace entry (the first is
    the mark before the first kernel), differenced, summed per kernel."""
    found = re.search(r"insnmarks([ 0-9]*)", stderr)
    if not found:
        raise CompressError("this qemu did not load the instruction-counting plugin's marks (plugin API version 1)")
    marks = [int(x) for x in found.group(1).split()]
    if len(marks) != len(seq):
        raise CompressError(f"instruction marks ({len(marks)}) do not match the kernel calls ({len(seq)})")
    per_op = [0] * n_ops
    for (op, count), previous in zip(zip(seq[1:], marks[1:]), marks):
        if 0 <= op < n_ops:
            per_op[op] += count - previous
    return per_op


PROFILER = CEngineProfiler()
