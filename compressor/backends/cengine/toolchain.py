"""Building and running generated engines: host compiler, clang-16 for RISC-V, qemu-riscv64.

Each arch is a Makefile target of the generated engine (`make host|rv64gc|rv64gcv`); RISC-V
binaries are static and run under qemu-user with the Vector extension at VLEN=128. The cross
compiler, the emulator and VLEN are a RiscvToolchain: the target profile's [device] keys, these
defaults for callers without a target; `generate` writes it into the engine's Makefile and
engine.json, and everything here that builds or runs an engine reads it from there. Instruction
counts come from a small counting qemu plugin (native/cengine/tools/qemu_insncount.c) or, where
qemu does not load it, from qemu's exec trace; both are deterministic and give the same number.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from compressor.errors import CompressError

ARCHS = ("host", "rv64gc", "rv64gcv")
APT_INSTALL = ("apt-get update && apt-get install -y gcc-riscv64-linux-gnu g++-riscv64-linux-gnu "
               "qemu-user clang-16")
RV_SYSROOT = "/usr/riscv64-linux-gnu"
RV_ARCHS = ("rv64gc", "rv64gcv")


@dataclass(frozen=True)
class RiscvToolchain:
    """How the RISC-V builds are compiled and run: a target's [device] cross_compiler, emulator,
    vlen and abi (targets/backend_sections.py RiscvDevice); the defaults are rv64gcv.toml's."""

    cross_compiler: str = "clang-16"  # a command; the Makefile adds --target, --sysroot, -march, -mabi
    emulator: str = "qemu-riscv64"  # a command; -cpu follows from the build and vlen
    vlen: int = 128  # bits per vector register: the rv64gcv build's minimum (zvl) and qemu's
    abi: str = "lp64d"

    @classmethod
    def from_device(cls, device) -> RiscvToolchain:
        return cls(device.cross_compiler, device.emulator, device.vlen, device.abi)

    def march(self, arch: str) -> str:
        """-march of a RISC-V build: rv64gcv promises VLEN >= 128 (zvl128b); a longer VLEN is a zvl extension."""
        return f"rv64gcv_zvl{self.vlen}b" if arch == "rv64gcv" and self.vlen != 128 else arch

    def qemu_cpu(self, arch: str) -> str:
        return {"rv64gc": "rv64,v=false", "rv64gcv": f"rv64,v=true,vlen={self.vlen}"}[arch]

    def emulator_command(self, binary, arch: str) -> list[str]:
        return shlex.split(self.emulator) + ["-cpu", self.qemu_cpu(arch), str(binary)]

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def compiler_program(self) -> str:
        return shlex.split(self.cross_compiler)[0]

    @property
    def emulator_program(self) -> str:
        return shlex.split(self.emulator)[0]


def engine_toolchain(out_dir: Path) -> RiscvToolchain:
    """The toolchain an engine was generated for (engine.json); the defaults for older engines."""
    meta = engine_meta(out_dir)
    return RiscvToolchain(**meta["toolchain"]) if "toolchain" in meta else RiscvToolchain()


def host_cc() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def missing_tools(arch: str, run: bool = False, toolchain: RiscvToolchain | None = None) -> list[str]:
    """Names of the tools `arch` needs that are not installed (run=True: also the emulator)."""
    tools = toolchain or RiscvToolchain()
    if arch not in ARCHS:
        raise CompressError(f"unknown arch '{arch}': expected one of {', '.join(ARCHS)}")
    miss = [] if shutil.which("make") else ["make"]
    if arch == "host":
        return miss + ([] if host_cc() else ["cc (gcc or clang)"])
    if not shutil.which(tools.compiler_program):
        miss.append(tools.compiler_program)
    if not shutil.which("riscv64-linux-gnu-ar") or not Path(RV_SYSROOT, "lib").is_dir():
        miss.append("gcc-riscv64-linux-gnu (riscv64 libc and binutils)")
    if run and not shutil.which(tools.emulator_program):
        miss.append(f"{tools.emulator_program} (qemu-user)")
    return miss


def require_tools(arch: str, run: bool = False, toolchain: RiscvToolchain | None = None) -> None:
    miss = missing_tools(arch, run, toolchain)
    if miss:
        extra = "apt-get install -y make && " if "make" in miss else ""
        raise CompressError(
            f"cannot build the {arch} C engine: missing {', '.join(miss)}. Install the toolchain with: "
            f"{extra}{APT_INSTALL}")


def compile_engine(out_dir: Path, arch: str) -> Path:
    """Build the engine in `out_dir` for `arch` with its Makefile; returns the runner binary."""
    out_dir = Path(out_dir)
    require_tools(arch, toolchain=engine_toolchain(out_dir) if arch != "host" else None)
    env = dict(os.environ)
    args = ["make", "-s", "-C", str(out_dir), arch]
    if arch == "host":
        args.append(f"HOST_CC={host_cc()}")
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise CompressError(f"building the {arch} C engine failed:\n{r.stdout[-2000:]}{r.stderr[-4000:]}")
    return out_dir / "build" / arch / "runner"


def _engine_dir(out_dir_or_binary: Path) -> tuple[Path, Path | None]:
    p = Path(out_dir_or_binary)
    if p.is_dir():
        return p, None
    return p.parents[2], p  # <out_dir>/build/<arch>/runner


def engine_meta(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "engine.json").read_text())


NP_DTYPES = {"float32": np.float32, "int8": np.int8, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


def input_specs(meta: dict) -> list[dict]:
    """The engine's inputs (name, shape, dtype) in order, from its engine.json."""
    return meta.get("inputs") or [meta["input"]]


def input_arrays(meta: dict, inputs) -> list[np.ndarray]:
    """`inputs` as batch-first arrays of the engine's input shapes and dtypes, in input order.
    `inputs`: one array (single-input engines), a list/tuple of arrays in input order, or a dict
    by input name; each batch-first (N x input shape) or a single sample."""
    specs = input_specs(meta)
    if isinstance(inputs, dict):
        missing = [s["name"] for s in specs if s["name"] not in inputs]
        if missing:
            raise CompressError(f"missing engine input(s): {', '.join(missing)}")
        arrays = [inputs[s["name"]] for s in specs]
    elif isinstance(inputs, (list, tuple)) and len(specs) > 1:
        arrays = list(inputs)
    else:
        arrays = [inputs]
    if len(arrays) != len(specs):
        raise CompressError(f"the engine takes {len(specs)} input(s) ({', '.join(s['name'] for s in specs)}), "
                            f"got {len(arrays)}")
    out: list[np.ndarray] = []
    for a, spec in zip(arrays, specs):
        size = int(np.prod(spec["shape"]))
        a = np.asarray(a)
        if a.size % size:
            raise CompressError(f"engine input '{spec['name']}' takes {size} values per sample "
                                f"(shape {spec['shape']}), got an array of shape {list(a.shape)}")
        x = np.ascontiguousarray(a.astype(NP_DTYPES[spec["dtype"]], copy=False)).reshape((-1,) + tuple(spec["shape"][1:]))
        if out and len(x) != len(out[0]):
            raise CompressError(f"engine inputs have different sample counts ({len(out[0])} and {len(x)})")
        out.append(x)
    return out


def pack_inputs(meta: dict, inputs) -> tuple[np.ndarray, int]:
    """Samples as the runner reads them: one record per sample, the raw bytes of every input in
    order (`inputs` in any `input_arrays` form), and the sample count."""
    arrays = input_arrays(meta, inputs)
    n = len(arrays[0])
    return np.ascontiguousarray(np.concatenate([a.reshape(n, -1).view(np.uint8) for a in arrays], axis=1)), n


def _command(binary: Path, arch: str, toolchain: RiscvToolchain) -> list[str]:
    if arch == "host":
        return [str(binary)]
    require_tools(arch, run=True, toolchain=toolchain)
    return toolchain.emulator_command(binary, arch)


def run_engine(out_dir_or_binary, inputs, arch: str = "host") -> np.ndarray:
    """Run the engine on a batch (see `pack_inputs` for the forms of `inputs`) -> float32 N x out."""
    out_dir, binary = _engine_dir(Path(out_dir_or_binary))
    meta = engine_meta(out_dir)
    if binary is None:  # make is incremental: a no-op when the build is up to date
        binary = compile_engine(out_dir, arch)
    records, n = pack_inputs(meta, inputs)
    with tempfile.TemporaryDirectory() as td:
        fin, fout = Path(td, "in.bin"), Path(td, "out.bin")
        records.tofile(fin)
        r = subprocess.run(_command(binary, arch, engine_toolchain(out_dir)) + [str(fin), str(fout)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise CompressError(f"the {arch} engine failed (exit {r.returncode}): {r.stderr[-2000:]}")
        y = np.fromfile(fout, np.float32)
    return y.reshape((n,) + tuple(meta["output"]["shape"][1:]))


def _singlestep_count(cmd: list[str]) -> int:
    """Instructions executed by a RISC-V program: qemu -singlestep makes every translation block
    one instruction and -d exec,nochain logs every block execution as one 'Trace' line."""
    qemu_cmd = cmd[:1] + ["-singlestep", "-d", "exec,nochain", "-D", "/dev/stdout"] + cmd[1:]
    proc = subprocess.Popen(qemu_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    count, tail = 0, b""
    assert proc.stdout is not None
    while True:
        chunk = proc.stdout.read(1 << 22)
        if not chunk:
            break
        data = tail + chunk
        count += data.count(b"Trace ")
        tail = data[-5:]  # shorter than the marker: a marker split across chunks counts once
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.wait() != 0:
        raise CompressError(f"instruction counting failed: {err[-2000:]}")
    return count


_TB_BLOCK = re.compile(rb"IN:[^\n]*\n((?:0x[0-9a-f]+:[^\n]*\n)+)")
_TB_EXEC = re.compile(rb"Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")


def _block_count(cmd: list[str]) -> int:
    """The same count, about ten times faster: qemu logs each translation block's instructions
    once (-d in_asm) and each block execution (-d exec,nochain); the count is the sum over
    executions of the executed block's length. Exactly equal to the -singlestep count (tested)."""
    qemu_cmd = cmd[:1] + ["-d", "in_asm,exec,nochain", "-D", "/dev/stdout"] + cmd[1:]
    proc = subprocess.Popen(qemu_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sizes: dict[bytes, int] = {}
    execs: Counter = Counter()
    conflict = False
    tail = b""
    assert proc.stdout is not None

    def consume(data: bytes) -> None:
        nonlocal conflict
        for body in _TB_BLOCK.findall(data):
            pc = body[2:body.index(b":")].lstrip(b"0") or b"0"
            n = body.count(b"\n")
            if sizes.setdefault(pc, n) != n:
                conflict = True
        execs.update(pc.lstrip(b"0") or b"0" for pc in _TB_EXEC.findall(data))

    while True:
        chunk = proc.stdout.read(1 << 22)
        if not chunk:
            break
        data = tail + chunk
        cut = data.rfind(b"\nTrace ")  # never split a block listing between two chunks
        if cut <= 0:
            tail = data
            continue
        consume(data[:cut + 1])
        tail = data[cut + 1:]
    consume(tail)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.wait() != 0:
        raise CompressError(f"instruction counting failed: {err[-2000:]}")
    missing = [pc for pc in execs if pc not in sizes]
    if conflict or missing:
        return _singlestep_count(cmd)
    return sum(n * sizes[pc] for pc, n in execs.items())


def _plugin_path(out_dir: Path) -> Path | None:
    """The instruction-counting qemu plugin (native/cengine/tools/qemu_insncount.c), built once per
    engine directory with the host compiler; None where it cannot be built."""
    from .emit import kernels_dir

    so = Path(out_dir) / "build" / "libinsncount.so"
    src = kernels_dir() / "tools" / "qemu_insncount.c"
    if so.is_file() and so.stat().st_mtime >= src.stat().st_mtime:
        return so
    cc = host_cc()
    if cc is None or not src.is_file():
        return None
    so.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(so), str(src)], capture_output=True, text=True)
    return so if r.returncode == 0 else None


def _plugin_count(cmd: list[str], plugin: Path) -> int | None:
    r = subprocess.run(cmd[:1] + ["-plugin", str(plugin)] + cmd[1:], capture_output=True, text=True)
    found = re.findall(r"insncount (\d+)", r.stderr)
    if r.returncode != 0 and found:
        raise CompressError(f"instruction counting failed: {r.stderr[-2000:]}")
    return int(found[-1]) if found else None  # None: this qemu refuses the plugin


def count_instructions(binary, one_input, arch: str, method: str = "auto") -> int:
    """Dynamic RISC-V instructions of one inference under qemu (run 1 minus run 0: the program's
    start-up and file reading cancel out), deterministic. method: "plugin" (a counting qemu
    plugin, near qemu's normal speed), "blocks" (qemu's exec log, about 10x slower than the
    plugin), "singlestep" (qemu -singlestep -d exec,nochain, one log line per instruction), or
    "auto" (the plugin where qemu loads it, else blocks). All give the same number."""
    if arch not in RV_ARCHS:
        raise CompressError(f"instruction counting needs a RISC-V build (rv64gc or rv64gcv), not '{arch}'")
    out_dir, b = _engine_dir(Path(binary))
    if b is None:
        b = out_dir / "build" / arch / "runner"
    meta = engine_meta(out_dir)
    records, _ = pack_inputs(meta, one_input)
    with tempfile.TemporaryDirectory() as td:
        fin = Path(td, "in.bin")
        records[:1].tofile(fin)
        base = _command(b, arch, engine_toolchain(out_dir))
        runs = [base + ["--repeat", "1", str(fin)], base + ["--repeat", "0", str(fin)]]
        if method in ("auto", "plugin"):
            plugin = _plugin_path(out_dir)
            counts = [_plugin_count(c, plugin) for c in runs] if plugin is not None else [None]
            if None not in counts:
                return counts[0] - counts[1]
            if method == "plugin":
                raise CompressError("this qemu cannot load the instruction-counting plugin (plugin API version 1)")
            method = "blocks"
        counter = {"blocks": _block_count, "singlestep": _singlestep_count}[method]
        n1 = counter(runs[0])
        n0 = counter(runs[1])
    return n1 - n0


def host_latency_ns(out_dir: Path, runs: int = 200, sample=None) -> float:
    """Median single-thread latency of one inference of the host build, in ns (timed in C), on
    `sample` (one sample in any `pack_inputs` form; default: random floats, ones for integer inputs)."""
    out_dir = Path(out_dir)
    meta = engine_meta(out_dir)
    binary = compile_engine(out_dir, "host")
    if sample is None:
        rng = np.random.default_rng(0)
        sample = [rng.standard_normal(int(np.prod(s["shape"]))) if s["dtype"] in ("float32", "int8")
                  else np.ones(int(np.prod(s["shape"]))) for s in input_specs(meta)]
        sample = sample if len(sample) > 1 else sample[0]
    records, _ = pack_inputs(meta, sample)
    with tempfile.TemporaryDirectory() as td:
        fin = Path(td, "in.bin")
        records[:1].tofile(fin)
        r = subprocess.run([str(binary), "--bench", str(runs), str(fin)], capture_output=True, text=True)
        if r.returncode != 0:
            raise CompressError(f"host benchmark failed: {r.stderr[-2000:]}")
    return float(r.stdout.strip())


def code_bytes(out_dir: Path, arch: str) -> int:
    """Bytes of machine code (.text sections) of the engine's objects, weights excluded."""
    obj = Path(out_dir) / "build" / arch / "obj"
    tool = shutil.which("llvm-size-16") or shutil.which("size")
    if tool is None or not obj.is_dir():
        return -1
    total = 0
    for o in sorted(obj.glob("*.o")):
        r = subprocess.run([tool, "-A", str(o)], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            parts = line.split()
            if parts and parts[0].startswith(".text") and len(parts) >= 2 and parts[1].isdigit():
                total += int(parts[1])
    return total


TRACE_MAIN = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "%(name)s.h"
static FILE *tf;
void ce_trace(int op, const char *tensor, const void *data, long nbytes)
{
    int len = (int)strlen(tensor);
    fwrite(&op, 4, 1, tf); fwrite(&len, 4, 1, tf); fwrite(tensor, 1, (size_t)len, tf);
    fwrite(&nbytes, 8, 1, tf); fwrite(data, 1, (size_t)nbytes, tf);
}
int main(int argc, char **argv)
{
    static float out[%(up)s_OUTPUT_SIZE];
    const long sizes[%(up)s_N_INPUTS] = { %(sizes)s };
    void *ins[%(up)s_N_INPUTS];
    long k;
    FILE *f = fopen(argv[1], "rb");
    if (!f) return 2;
    for (k = 0; k < %(up)s_N_INPUTS; k++) {
        ins[k] = malloc((size_t)sizes[k] + 64);
        if (fread(ins[k], 1, (size_t)sizes[k], f) != (size_t)sizes[k]) return 2;
    }
    fclose(f);
    tf = fopen(argv[2], "wb");
    %(name)s_run_inputs((const void *const *)ins, out);
    fclose(tf);
    return 0;
}
"""


def trace_engine(out_dir: Path, one_input) -> list[tuple[int, str, bytes]]:
    """Run one inference of a host build with a dump after every kernel: [(op, tensor, bytes)]."""
    out_dir = Path(out_dir)
    meta = engine_meta(out_dir)
    name = meta["name"]
    cc = host_cc()
    if cc is None:
        require_tools("host")
    up = name.upper()
    sizes = ", ".join(f"{up}_INPUT{k}_BYTES" for k in range(len(input_specs(meta))))
    with tempfile.TemporaryDirectory() as td:
        main = Path(td, "trace_main.c")
        main.write_text(TRACE_MAIN % {"name": name, "up": up, "sizes": sizes})
        exe = Path(td, "trace")
        srcs = [str(out_dir / f"{name}.c")] + [str(p) for p in sorted((out_dir / "cengine").glob("*.c"))]
        r = subprocess.run([cc, "-std=c99", "-O1", "-ffp-contract=off", "-DCE_TRACE_ENABLE",
                            f"-I{out_dir}", f"-I{out_dir / 'cengine'}", str(main), *srcs, "-lm", "-o", str(exe)],
                           capture_output=True, text=True)
        if r.returncode:
            raise CompressError(f"trace build failed: {r.stderr[-2000:]}")
        fin, fout = Path(td, "in.bin"), Path(td, "trace.bin")
        records, _ = pack_inputs(meta, one_input)
        records[:1].tofile(fin)
        subprocess.run([str(exe), str(fin), str(fout)], check=True)
        data = fout.read_bytes()
    recs, i = [], 0
    while i < len(data):
        op, ln = np.frombuffer(data[i:i + 8], np.int32)
        i += 8
        tensor = data[i:i + ln].decode()
        i += ln
        nb = int(np.frombuffer(data[i:i + 8], np.int64)[0])
        i += 8
        recs.append((int(op), tensor, data[i:i + nb]))
        i += nb
    return recs


class EngineRunner:
    """callable(x) -> outputs of a generated engine (batch N, float32), like the other backends'
    runners; arch "host" by default (threads is accepted for the common interface: one thread)."""

    def __init__(self, path: Path, threads: int | None = None, arch: str = "host"):
        self.path, self.arch = Path(path), arch

    def __call__(self, *arrays) -> np.ndarray:
        return run_engine(self.path, list(arrays) if len(arrays) > 1 else arrays[0], self.arch)


def make_runner(path: Path, threads: int | None = None) -> EngineRunner:
    return EngineRunner(path, threads)
