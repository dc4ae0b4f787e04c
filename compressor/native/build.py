"""Building the native ops: the JIT compile of native/ops with torch.utils.cpp_extension, its
per-machine cache, and whether the built kernels can serve a tensor.

Compiled on first use (never at import) and cached per user, per machine and per source/torch
version under ``$COMPRESSOR_CACHE/native/<key>`` (default ``~/.cache/compressor/native/<key>``).
Sources are looked up in ``compressor/_data/native/ops`` (installed package; setup.py copies them
there) and then in ``<repo>/native/ops`` (source checkout, editable install).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

import torch

from compressor.errors import CompressError

from .switch import requested_backend

log = logging.getLogger("compressor.native")

ENV_CACHE = "COMPRESSOR_CACHE"
ENV_CFLAGS = "COMPRESSOR_NATIVE_CFLAGS"
_PACKAGE = Path(__file__).resolve().parent.parent  # compressor/ (this file is compressor/native/build.py)
_CPU_SOURCES = ("ops.cpp", "lsq_cpu.cpp", "kd_cpu.cpp")
_CUDA_SOURCES = ("cuda_binding.cpp", "lsq_cuda.cu", "kd_cuda.cu")
NATIVE_CPU_DTYPES = (torch.float32, torch.float64)


class NativeBuildError(CompressError, RuntimeError):
    """The native extension was required (backend "native") but cannot be built or used."""


_lock = threading.RLock()
_state = {
    "attempted": False,
    "built": False,
    "with_cuda": False,
    "error": None,
    "build_seconds": None,
    "build_dir": None,
    "library": None,
    "warned": False,
    "cuda_error": None,
}


# ----------------------------------------------------------------------------- which implementation runs

def backend() -> str:
    """The implementation in use: "native" or "reference". May build the extension (auto, native)."""
    requested = requested_backend()
    if requested == "reference":
        return "reference"
    return "native" if load(strict=requested == "native") else "reference"


def use_native(t: torch.Tensor) -> bool:
    requested = requested_backend()
    if requested == "reference":
        return False
    strict = requested == "native"
    if not load(strict=strict):
        return False
    kind = t.device.type
    if kind == "cpu" or (kind == "cuda" and _state["with_cuda"]):
        return True
    if strict:
        raise NativeBuildError(
            f"compressor native ops have no kernels for device {t.device} "
            f"(built with CUDA: {_state['with_cuda']}); use backend 'auto' or 'reference'"
        )
    return False

# ----------------------------------------------------------------------------- build

def sources_dir() -> Path:
    """Folder with the C++/CUDA sources: package data first, then the source checkout."""
    for candidate in (_PACKAGE / "_data" / "native" / "ops", _PACKAGE.parent / "native" / "ops"):
        if (candidate / "ops.cpp").is_file():
            return candidate
    raise NativeBuildError(
        "compressor native op sources are missing: looked in "
        f"{_PACKAGE / '_data' / 'native' / 'ops'} and {_PACKAGE.parent / 'native' / 'ops'}"
    )


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            fields = {}
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags", "Features", "CPU implementer", "CPU part") and key not in fields:
                    fields[key] = value.strip()
            if fields:
                return "|".join(f"{k}={v}" for k, v in sorted(fields.items()))
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}"


def _compile_flags() -> tuple[list[str], list[str]]:
    if os.name == "nt":
        return ["/O2", "/openmp"], []
    # -fno-trapping-math lets GCC if-convert (and so vectorise) the branch-free exp and clamps;
    # it changes no result (no fast-math: NaN, inf and rounding behave as IEEE says).
    cflags = ["-O3", "-fno-trapping-math"]
    ldflags: list[str] = []
    if sys.platform != "darwin":  # Apple clang has no -fopenmp: the kernels then run on one thread
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    custom = os.environ.get(ENV_CFLAGS)
    if custom is not None:
        cflags += custom.split()
    else:
        machine = platform.machine().lower()
        if machine in ("x86_64", "amd64"):
            cflags.append("-march=native")
        elif machine in ("aarch64", "arm64"):
            cflags.append("-mcpu=native")
    return cflags, ldflags


def _want_cuda() -> bool:
    if torch.version.cuda is None:
        return False
    from torch.utils import cpp_extension

    return cpp_extension.CUDA_HOME is not None


def _cache_root() -> Path:
    root = os.environ.get(ENV_CACHE)
    if root:
        return Path(root).expanduser() / "native"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "compressor" / "native"


def _build_plan(with_cuda: bool) -> dict:
    src = sources_dir()
    names = list(_CPU_SOURCES) + (list(_CUDA_SOURCES) if with_cuda else [])
    cflags, ldflags = _compile_flags()
    h = hashlib.sha256()
    for path in sorted(src.iterdir()):
        if path.suffix in (".cpp", ".h", ".cu", ".cuh"):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    for part in (
        torch.__version__,
        str(torch.version.cuda),
        str(with_cuda),
        sys.implementation.cache_tag,
        platform.machine(),
        " ".join(cflags + ldflags),
        os.environ.get("CXX", ""),
        os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else "",
        _cpu_identity() if any("native" in f for f in cflags) else "",
    ):
        h.update(b"\0" + part.encode())
    key = h.hexdigest()[:16]
    return {
        "key": key,
        "name": f"compressor_native_{key}",
        "sources": [str(src / n) for n in names],
        "build_dir": _cache_root() / key,
        "cflags": cflags,
        "ldflags": ldflags,
        "with_cuda": with_cuda,
    }


def load(strict: bool = False) -> bool:
    """Build (or load from the cache) the native ops once per process; True when they are usable.

    With strict=True a failure raises NativeBuildError; otherwise it warns once and returns False.
    """
    if _state["built"]:
        return True
    with _lock:
        if not _state["attempted"]:
            _state["attempted"] = True
            _build()
        if _state["built"]:
            return True
        message = (
            f"compressor native ops are unavailable: {_error_summary(_state['error'])}"
            " (full compiler output: compressor.native.build_info()['error'])"
        )
        if strict:
            raise NativeBuildError(message + "; set COMPRESSOR_NATIVE=reference to use pure PyTorch")
        if not _state["warned"]:
            _state["warned"] = True
            log.warning(message)
            warnings.warn(message + "; using the pure-PyTorch reference", RuntimeWarning, stacklevel=4)
        return False


def _error_summary(error: Optional[str]) -> str:
    """The most telling line of a build failure: the first compiler error, else the last line."""
    lines = [line.strip() for line in (error or "unknown error").strip().splitlines() if line.strip()]
    for marker in ("error:", "fatal", "not found", "No such file"):
        for line in lines:
            if marker in line and not line.startswith("RuntimeError: Error building"):
                return line[:500]
    return lines[0][:500] if lines else "unknown error"


def _ops_registered() -> bool:
    try:
        torch.ops.compressor.lsq_fake_quant_fwd  # noqa: B018
        return True
    except (AttributeError, RuntimeError):
        return False


def _build() -> None:
    start = time.perf_counter()
    try:
        if _ops_registered():  # already loaded into this process (another copy of the library)
            try:
                has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("compressor::kd_loss_fwd", "CUDA")
            except (AttributeError, RuntimeError):
                has_cuda = False
            _state.update(built=True, with_cuda=bool(has_cuda))
            return
        with_cuda = _want_cuda()
        try:
            _compile_and_load(with_cuda)
        except Exception as exc:  # noqa: BLE001
            if not with_cuda:
                raise
            # A broken CUDA toolchain should not cost the CPU kernels: build those alone.
            _state["cuda_error"] = f"{type(exc).__name__}: {exc}"
            log.warning("compressor native ops: CUDA build failed (%s); building the CPU ops only",
                        _error_summary(_state["cuda_error"]))
            _compile_and_load(False)
    except Exception as exc:  # noqa: BLE001 - any build failure means "fall back"
        _state["error"] = f"{type(exc).__name__}: {exc}"
        if _state["build_dir"]:
            try:
                Path(_state["build_dir"], "build-error.log").write_text(_state["error"], encoding="utf-8")
            except OSError:
                pass
    finally:
        _state["build_seconds"] = round(time.perf_counter() - start, 2)


def _compile_and_load(with_cuda: bool) -> None:
    plan = _build_plan(with_cuda)
    build_dir: Path = plan["build_dir"]
    build_dir.mkdir(parents=True, exist_ok=True)
    _state["build_dir"] = str(build_dir)
    from torch.utils import cpp_extension

    with _builder_lock(build_dir):
        cpp_extension.load(
            name=plan["name"],
            sources=plan["sources"],
            extra_cflags=plan["cflags"],
            extra_ldflags=plan["ldflags"],
            extra_cuda_cflags=["-O3"] if with_cuda else None,
            build_directory=str(build_dir),
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=False,
        )
    library = build_dir / f"{plan['name']}{'.pyd' if os.name == 'nt' else '.so'}"
    _state.update(built=_ops_registered(), with_cuda=with_cuda, library=str(library))
    if not _state["built"]:
        raise RuntimeError(f"{library} loaded but registered no torch.ops.compressor ops")


@contextlib.contextmanager
def _builder_lock(build_dir: Path):
    """Serialise builders of one cache folder with an OS lock, which dies with its process.

    torch's own build lock (the file `lock` in the build folder) is a plain file: a build killed
    mid-way (Ctrl-C, a killed worker) leaves it behind and every later load waits on it forever.
    Whoever holds our flock is the only builder, so a `lock` file seen then is such a leftover.
    """
    with open(build_dir / "builder.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        stale = build_dir / "lock"
        if stale.exists():
            log.warning("compressor native ops: removing %s, left by a build that was killed", stale)
            stale.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_info() -> dict:
    """Whether the extension is built, where it is cached, and the compiler error if any. Builds nothing."""
    try:
        requested = requested_backend()
    except ValueError as exc:
        requested = f"invalid: {exc}"
    info = {
        "requested_backend": requested,
        "attempted": _state["attempted"],
        "built": _state["built"],
        "with_cuda": _state["with_cuda"],
        "build_dir": _state["build_dir"],
        "library": _state["library"],
        "build_seconds": _state["build_seconds"],
        "error": _state["error"],
        "cuda_error": _state["cuda_error"],
        "torch": torch.__version__,
    }
    try:
        plan = _build_plan(_state["with_cuda"] if _state["attempted"] else _want_cuda())
        info.update(
            cache_dir=str(plan["build_dir"]), sources=str(sources_dir()), cflags=plan["cflags"], key=plan["key"]
        )
    except Exception as exc:  # noqa: BLE001
        info.update(cache_dir=None, sources=None, cflags=None, key=None, sources_error=str(exc))
    return info

