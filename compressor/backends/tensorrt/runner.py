"""Run a TensorRT engine from numpy: verification (engine vs PyTorch) and `compress profile` on the device.

Importing this module needs nothing beyond numpy; TensorRT and a CUDA memory backend are needed only
when a TrtRunner is created. GPU memory is handled by cuda-python (`pip install cuda-python`) or,
failing that, by PyTorch built with CUDA; any object with the `CudaMemory` methods can be passed in.
"""
from __future__ import annotations

import importlib
import statistics
import time
from pathlib import Path
from typing import Protocol

import numpy as np

try:
    from ...errors import CompressError
    from ..chunks import run_in_chunks
except ImportError:  # copied with chunks.py beside the device profiling script (profile/scripts/trt_device.py)
    from chunks import run_in_chunks

    class CompressError(Exception):
        """A one-line error for the user."""


class CudaMemory(Protocol):
    stream: int  # the CUDA stream handle TensorRT enqueues on

    def alloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def to_device(self, ptr: int, array: np.ndarray) -> None: ...
    def to_host(self, array: np.ndarray, ptr: int) -> None: ...
    def synchronize(self) -> None: ...


class _CudaPython:
    def __init__(self):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        self.rt = cudart
        self.stream = int(self._ok(cudart.cudaStreamCreate()))

    def _ok(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise CompressError(f"CUDA error {err}")
        return rest[0] if rest else None

    def alloc(self, nbytes):
        return int(self._ok(self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr):
        self.rt.cudaFree(ptr)

    def to_device(self, ptr, array):
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, self.stream))

    def to_host(self, array, ptr):
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes, kind, self.stream))

    def synchronize(self):
        self._ok(self.rt.cudaStreamSynchronize(self.stream))


class _TorchCuda:
    def __init__(self):
        import torch

        if not torch.cuda.is_available():
            raise ImportError("torch has no CUDA")
        self.torch = torch
        self._stream = torch.cuda.Stream()
        self.stream = int(self._stream.cuda_stream)
        self.buffers: dict[int, object] = {}

    def alloc(self, nbytes):
        t = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device="cuda")
        self.buffers[t.data_ptr()] = t
        return t.data_ptr()

    def free(self, ptr):
        self.buffers.pop(ptr, None)

    def to_device(self, ptr, array):
        src = self.torch.from_numpy(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        with self.torch.cuda.stream(self._stream):
            self.buffers[ptr][: array.nbytes].copy_(src)

    def to_host(self, array, ptr):
        with self.torch.cuda.stream(self._stream):
            host = self.buffers[ptr][: array.nbytes].cpu()
        array.reshape(-1).view(np.uint8)[:] = host.numpy()

    def synchronize(self):
        self._stream.synchronize()


def default_memory() -> CudaMemory:
    errors = []
    for backend in (_CudaPython, _TorchCuda):
        try:
            return backend()
        except ImportError as e:
            errors.append(str(e))
    raise CompressError("TrtRunner needs a way to reach GPU memory: install cuda-python (pip install cuda-python) "
                        f"or PyTorch with CUDA ({'; '.join(errors)})")


def _import_tensorrt():
    try:
        trt = importlib.import_module("tensorrt")
    except Exception:  # noqa: BLE001
        trt = None
    if trt is None or not hasattr(trt, "Runtime"):
        raise CompressError("running a TensorRT engine needs the tensorrt Python package, which is not installed "
                            "here; run on the device (JetPack: sudo apt install python3-libnvinfer)")
    return trt


class TrtRunner:
    """Load a serialized engine; `run` maps numpy inputs to numpy outputs, `time` measures latency."""

    def __init__(self, engine_path: Path | str, memory: CudaMemory | None = None):
        self.path = Path(engine_path)
        trt = _import_tensorrt()
        if not self.path.exists():
            raise CompressError(f"{self.path}: no such engine file")
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise CompressError(f"{self.path}: TensorRT {trt.__version__} cannot load this engine; an engine runs "
                                "only with the TensorRT release and GPU it was built on: rebuild it here")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.memory = memory or default_memory()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity in bytes)

    # -- shapes -----------------------------------------------------------------------------
    def shape_range(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
        """(min, opt, max) of a dynamic input in the engine's first optimization profile."""
        shape = tuple(self.engine.get_tensor_shape(name))
        if all(d >= 0 for d in shape):
            return None
        lo, opt, hi = self.engine.get_tensor_profile_shape(name, 0)
        return tuple(lo), tuple(opt), tuple(hi)

    @property
    def max_batch(self) -> int | None:
        rng = self.shape_range(self.inputs[0])
        return rng[2][0] if rng else int(self.engine.get_tensor_shape(self.inputs[0])[0])

    # -- running ----------------------------------------------------------------------------
    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if cap < nbytes:
            if ptr:
                self.memory.free(ptr)
            ptr, cap = self.memory.alloc(nbytes), nbytes
            self._buffers[name] = (ptr, cap)
        return ptr

    def _prepare(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise CompressError(f"engine inputs {missing} were not given (it takes {self.inputs})")
        for name in self.inputs:
            arr = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            rng = self.shape_range(name)
            if rng and not all(lo <= d <= hi for lo, d, hi in zip(rng[0], arr.shape, rng[2])):
                raise CompressError(f"input '{name}' shape {arr.shape} is outside the engine's range "
                                    f"{rng[0]}..{rng[2]}; rebuild with a wider [tensorrt] range or feed smaller batches")
            self.context.set_input_shape(name, arr.shape)
            ptr = self._buffer(name, arr.nbytes)
            self.context.set_tensor_address(name, ptr)
            self.memory.to_device(ptr, arr)
        outs = {}
        for name in self.outputs:
            out = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name])
            self.context.set_tensor_address(name, self._buffer(name, out.nbytes))
            outs[name] = out
        return outs

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.memory.stream):
            raise CompressError(f"{self.path}: TensorRT failed to run the engine")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._prepare(feeds)
        self._execute()
        for name, out in outs.items():
            self.memory.to_host(out, self._buffers[name][0])
        self.memory.synchronize()
        return outs

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        """First output for positional inputs, fed in chunks of the engine's largest batch."""
        def first(*a):
            return self.run(dict(zip(self.inputs, a)))[self.outputs[0]]

        batch = self.max_batch
        if batch is None or arrays[0].shape[0] <= batch:
            return first(*arrays)
        return run_in_chunks(first, arrays, batch)

    def time(self, feeds: dict[str, np.ndarray], runs: int = 100, warmup: int = 10) -> dict[str, float]:
        """Latency of the engine itself (inputs already on the GPU), in milliseconds."""
        self._prepare(feeds)
        for _ in range(max(warmup, 0)):
            self._execute()
        self.memory.synchronize()
        samples = []
        for _ in range(max(runs, 1)):
            start = time.perf_counter()
            self._execute()
            self.memory.synchronize()
            samples.append((time.perf_counter() - start) * 1e3)
        samples.sort()
        return {"median_ms": statistics.median(samples), "mean_ms": statistics.fmean(samples),
                "p90_ms": samples[min(len(samples) - 1, int(0.9 * len(samples)))], "min_ms": samples[0],
                "runs": float(len(samples))}

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.memory.free(ptr)
        self._buffers.clear()

    def __enter__(self) -> TrtRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
