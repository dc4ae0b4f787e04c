"""Jetson profiles, the on-device build recipe, the engine build (fake and real TensorRT) and the runner."""
from __future__ import annotations

import dataclasses
import enum
import json
import os
import shlex
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from test_tensorrt_lint import G, trt_cnn

from compressor.backends.tensorrt import (TrtRunner, autofix, build_engine, lint, tensorrt_available, trtexec_args,
                                          write_build_scripts)
from compressor.backends.tensorrt import device_build
from compressor.backends.tensorrt.facts import compute_capability, facts_for
from compressor.errors import CompressError
from compressor.targets import TargetProfile, load_target

JETSONS = {"jetson-orin-nano": (8, 0), "jetson-orin-nx": (16, 2), "jetson-agx-orin": (64, 2)}


def profile(name: str = "jetson", **trt) -> TargetProfile:
    target = load_target(name)
    return dataclasses.replace(target, settings=dataclasses.replace(target.section("tensorrt"), **trt))


@pytest.fixture
def qdq_file(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(trt_cnn(), str(path))
    return path


# -- profiles ----------------------------------------------------------------------------------


def test_jetson_alias_is_orin_nano():
    assert load_target("jetson").name == "jetson-orin-nano"


@pytest.mark.parametrize("name", sorted(JETSONS))
def test_jetson_profiles(name):
    p = load_target(name)
    memory, dla = JETSONS[name]
    assert p.backend == "tensorrt"
    assert compute_capability(p) == (8, 7)
    assert (p.device.memory_gb, p.device.dla_cores) == (memory, dla)
    assert p.device.jetpack and p.device.tensorrt  # the assumed software, written down
    assert facts_for(p).max_opset >= 17
    assert p.weights.granularity == "per_channel"
    lo, opt, hi = p.section("tensorrt").batch
    assert 1 <= lo <= opt <= hi


# -- build scripts -----------------------------------------------------------------------------


def test_build_scripts_for_dynamic_batch(qdq_file, tmp_path):
    out = tmp_path / "run"
    paths = write_build_scripts(qdq_file, out, profile(), {"input": ("batch", 1, 8, 8)})
    assert sorted(p.name for p in paths) == ["build_config.json", "build_engine.py", "build_engine.sh"]
    sh = (out / "build_engine.sh").read_text()
    line = " ".join(shlex.split(sh[sh.index('\n"$TRTEXEC"'):sh.index("2>&1 | tee")].replace("\\\n", " ")))
    assert line == ("$TRTEXEC --onnx=../model.onnx --saveEngine=model.engine --int8 --fp16 "
                    "--minShapes=input:1x1x8x8 --optShapes=input:1x1x8x8 --maxShapes=input:8x1x8x8 "
                    "--timingCacheFile=timing.cache --memPoolSize=workspace:1024M --profilingVerbosity=detailed "
                    "--exportLayerInfo=layers.json --skipInference")
    assert "tee build.log" in sh and "/usr/src/tensorrt/bin/trtexec" in sh
    assert os.access(out / "build_engine.sh", os.X_OK)
    subprocess.run(["bash", "-n", str(out / "build_engine.sh")], check=True)
    # build_engine.py is the module build_engine() runs: they cannot drift
    assert (out / "build_engine.py").read_text() == Path(device_build.__file__).read_text()
    config = json.loads((out / "build_config.json").read_text())
    assert config["shapes"] == {"input": {"min": [1, 1, 8, 8], "opt": [1, 1, 8, 8], "max": [8, 1, 8, 8]}}
    assert (config["builder_flags"], config["dla_core"], config["tensorrt"]) == (["int8", "fp16"], None, "10.3")
    assert not list(out.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_dla_with_gpu_fallback_on_orin_nx(qdq_file, tmp_path):
    args = trtexec_args(json.loads(_config(qdq_file, tmp_path, profile("orin-nx", use_dla=True, dla_core=1))), profile("orin-nx"))
    assert "--useDLACore=1" in args and "--allowGPUFallback" in args
    assert "--memPoolSize=workspace:2048M" in args


def _config(onnx_path, tmp_path, p) -> str:
    write_build_scripts(onnx_path, tmp_path / "dla", p, None)
    return (tmp_path / "dla" / "build_config.json").read_text()


def test_dla_on_orin_nano_is_refused(qdq_file, tmp_path):
    with pytest.raises(CompressError, match="no DLA"):
        write_build_scripts(qdq_file, tmp_path, profile(use_dla=True), None)
    with pytest.raises(CompressError, match="DLA cores 0..1"):
        write_build_scripts(qdq_file, tmp_path, profile("orin-nx", use_dla=True, dla_core=2), None)


def test_static_model_has_no_shape_flags(tmp_path):
    path = tmp_path / "static.onnx"
    onnx.save(trt_cnn(dims=(1, 1, 8, 8)), str(path))
    args = trtexec_args(json.loads(_config(path, tmp_path, profile())), profile())
    assert not any(a.startswith(("--minShapes", "--optShapes", "--maxShapes")) for a in args)


def test_token_input_takes_the_sequence_range(tmp_path):
    g = G()
    ids = g.input("input_ids", ("batch", "sequence"), TensorProto.INT64)
    emb = g.node("Gather", [g.init("table", np.ones((100, 4), np.float32)), ids], name="embed")
    path = tmp_path / "tokens.onnx"
    onnx.save(g.model(emb), str(path))
    config = json.loads(_config(path, tmp_path, profile()))
    assert config["shapes"]["input_ids"] == {"min": [1, 16], "opt": [1, 128], "max": [8, 128]}


def test_missing_range_and_wrong_names_are_user_errors(tmp_path, qdq_file):
    path = tmp_path / "hw.onnx"
    onnx.save(trt_cnn(dims=("batch", 1, "height", "width")), str(path))
    with pytest.raises(CompressError, match="'height'.*no range"):
        write_build_scripts(path, tmp_path / "a", profile(), None)
    config = json.loads(_config(path, tmp_path, profile(dims={"height": [8, 16, 32], "width": [8, 16, 32]})))
    assert config["shapes"]["input"]["max"] == [8, 1, 32, 32]
    with pytest.raises(CompressError, match="does not have"):
        write_build_scripts(qdq_file, tmp_path / "b", profile(), {"pixels": (1, 1, 8, 8)})
    with pytest.raises(CompressError, match="differs"):
        write_build_scripts(qdq_file, tmp_path / "c", profile(), {"input": ("batch", 3, 8, 8)})
    with pytest.raises(CompressError, match="'batch' must satisfy 1 <= min <= opt <= max"):
        profile(batch=(4, 1, 8))


def test_tensorrt_11_builds_strongly_typed_without_precision_flags(qdq_file, tmp_path):
    p = profile()
    p = dataclasses.replace(p, device=dataclasses.replace(p.device, tensorrt="11.1"))
    args = trtexec_args(json.loads(_config(qdq_file, tmp_path, p)), p)
    assert "--int8" not in args and "--fp16" not in args


# -- engine build without TensorRT -----------------------------------------------------------------


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_writes_scripts_and_says_so(qdq_file, tmp_path):
    with pytest.raises(CompressError, match="not installed here.*build_engine.sh.*build_engine.py"):
        build_engine(qdq_file, tmp_path / "run", profile(), None)
    assert (tmp_path / "run" / "build_engine.sh").exists()
    proc = subprocess.run([sys.executable, str(tmp_path / "run" / "build_engine.py")], capture_output=True, text=True)
    assert proc.returncode == 2 and "tensorrt Python package is not installed" in proc.stderr


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
def test_runner_without_tensorrt_is_a_clear_error(tmp_path):
    with pytest.raises(CompressError, match="needs the tensorrt Python package"):
        TrtRunner(tmp_path / "model.engine")


# -- the same code against a stand-in TensorRT: every call the build makes, checked ------------------


def fake_tensorrt(calls: list, dla_cores: int = 0, engine_io=None) -> types.ModuleType:
    """Just enough of the tensorrt module for device_build.build and TrtRunner; records what they ask for."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0.30"

    class Severity(enum.IntEnum):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity

    class Logger(ILogger):
        WARNING = Severity.WARNING

        def __init__(self, severity=Severity.WARNING):
            super().__init__()

        def log(self, severity, msg):
            pass

    trt.ILogger, trt.Logger = ILogger, Logger
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH STRONGLY_TYPED", start=0)
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", "FP16 BF16 INT8 GPU_FALLBACK")
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", "WORKSPACE")
    trt.DeviceType = enum.IntEnum("DeviceType", "GPU DLA")
    trt.ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", "LAYER_NAMES_ONLY DETAILED")
    trt.LayerInformationFormat = enum.IntEnum("LayerInformationFormat", "ONELINE JSON")
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", "NONE INPUT OUTPUT", start=0)
    trt.DataType = enum.IntEnum("DataType", "FLOAT")
    trt.nptype = lambda dt: np.float32

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        inputs: list = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            model = onnx.load(path)
            self.network.inputs = [Tensor(i.name, tuple(d.dim_value or -1 for d in i.type.tensor_type.shape.dim))
                                   for i in model.graph.input]
            calls.append(("parse", Path(path).name))
            return True

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return memoryview(b"CACHE:" + self.data)

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("profile", name, lo, opt, hi))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("pool", pool.name, size))

        def set_flag(self, flag):
            calls.append(("flag", flag.name))

        def add_optimization_profile(self, profile):
            calls.append(("add_profile",))

        def create_timing_cache(self, data):
            calls.append(("timing_cache_in", bytes(data)))
            return Cache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

        def __setattr__(self, key, value):
            if key in ("default_device_type", "DLA_core", "profiling_verbosity"):
                calls.append((key, getattr(value, "name", value)))
            object.__setattr__(self, key, value)

    class Builder:
        num_DLA_cores = dla_cores

        def __init__(self, logger):
            logger.log(Severity.INFO, "builder created")

        def create_network(self, flags):
            calls.append(("network_flags", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return memoryview(b"ENGINE")

    class Inspector:
        def get_engine_information(self, fmt):
            return '{"Layers": []}'

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.ptrs = engine, {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)

        def get_tensor_shape(self, name):
            return self.shapes["input"]

        def set_tensor_address(self, name, ptr):
            self.ptrs[name] = ptr

        def execute_async_v3(self, stream):  # the "engine": output = 2 * input
            mem, n = self.engine.memory, int(np.prod(self.shapes["input"])) * 4
            x = np.frombuffer(bytes(mem.store[self.ptrs["input"]][:n]), np.float32)
            mem.store[self.ptrs["output"]][:n] = (2 * x).tobytes()
            calls.append(("execute", self.shapes["input"]))
            return True

    class Engine:
        num_io_tensors = 2
        memory = None

        def create_engine_inspector(self):
            return Inspector()

        def get_tensor_name(self, i):
            return ["input", "output"][i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def get_tensor_shape(self, name):
            return (-1, 3)

        def get_tensor_profile_shape(self, name, index):
            return (1, 3), (2, 3), (4, 3)

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            engine = Engine()
            trt.last_engine = engine
            return engine

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def test_build_engine_through_the_python_api(qdq_file, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls))
    assert tensorrt_available()
    out = tmp_path / "run"
    engine = build_engine(qdq_file, out, profile(), {"input": ("batch", 1, 8, 8)})
    assert engine == out / "model.engine" and engine.read_bytes() == b"ENGINE"
    assert (out / "timing.cache").read_bytes() == b"CACHE:"
    assert json.loads((out / "layers.json").read_text()) == {"Layers": []}
    log = (out / "build.log").read_text()
    assert "TensorRT 10.3.0.30" in log and "builder created" in log and "engine written" in log
    assert ("network_flags", 0) in calls  # TensorRT 10: explicit batch is the only mode
    assert ("pool", "WORKSPACE", 1024 << 20) in calls
    assert [c[1] for c in calls if c[0] == "flag"] == ["INT8", "FP16"]
    assert ("profile", "input", (1, 1, 8, 8), (1, 1, 8, 8), (8, 1, 8, 8)) in calls and ("add_profile",) in calls
    assert not any(c[0] == "default_device_type" for c in calls)
    # a second build reuses the timing cache written by the first
    calls.clear()
    build_engine(qdq_file, out, profile(), None)
    assert ("timing_cache_in", b"CACHE:") in calls


def test_build_on_dla_core_with_gpu_fallback(qdq_file, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls, dla_cores=2))
    build_engine(qdq_file, tmp_path, profile("orin-nx", use_dla=True, dla_core=1), None)
    assert ("default_device_type", "DLA") in calls and ("DLA_core", 1) in calls
    assert [c[1] for c in calls if c[0] == "flag"] == ["INT8", "FP16", "GPU_FALLBACK"]


def test_build_script_runs_standalone(qdq_file, tmp_path, monkeypatch):
    """build_engine.py as the user runs it on the device: its own main(), only tensorrt importable."""
    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(calls))
    write_build_scripts(qdq_file, tmp_path / "dev", profile(), None)
    namespace: dict = {"__name__": "build_engine_script", "__file__": str(tmp_path / "dev" / "build_engine.py")}
    exec(compile((tmp_path / "dev" / "build_engine.py").read_text(), "build_engine.py", "exec"), namespace)
    assert namespace["main"]([]) == 0
    assert (tmp_path / "dev" / "model.engine").read_bytes() == b"ENGINE"


class FakeMemory:
    stream = 0

    def __init__(self):
        self.store: dict[int, bytearray] = {}
        self.next = 1

    def alloc(self, nbytes):
        ptr, self.next = self.next, self.next + 1
        self.store[ptr] = bytearray(nbytes)
        return ptr

    def free(self, ptr):
        self.store.pop(ptr)

    def to_device(self, ptr, array):
        self.store[ptr][: array.nbytes] = array.tobytes()

    def to_host(self, array, ptr):
        array.reshape(-1).view(np.uint8)[:] = np.frombuffer(bytes(self.store[ptr][: array.nbytes]), np.uint8)

    def synchronize(self):
        pass


def test_runner_moves_data_and_checks_shapes(tmp_path, monkeypatch):
    calls: list = []
    trt = fake_tensorrt(calls)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    (tmp_path / "m.engine").write_bytes(b"ENGINE")
    memory = FakeMemory()
    with TrtRunner(tmp_path / "m.engine", memory=memory) as runner:
        trt.last_engine.memory = memory
        assert (runner.inputs, runner.outputs, runner.max_batch) == (["input"], ["output"], 4)
        x = np.arange(6, dtype=np.float64).reshape(2, 3)
        np.testing.assert_array_equal(runner.run({"input": x})["output"], 2 * x)
        big = np.ones((10, 3), np.float32)  # more than the engine's max batch: fed in chunks of 4
        np.testing.assert_array_equal(runner(big), 2 * big)
        assert [c[1][0] for c in calls if c[0] == "execute"][-3:] == [4, 4, 4]
        with pytest.raises(CompressError, match="outside the engine's range"):
            runner.run({"input": np.ones((2, 5), np.float32)})
        stats = runner.time({"input": x}, runs=5, warmup=1)
        assert stats["runs"] == 5 and stats["median_ms"] >= 0
    assert memory.store == {}  # buffers freed


# -- a real engine, where TensorRT and a GPU are present ----------------------------------------


def test_real_engine_build_and_parity(qdq_file, tmp_path):
    trt = pytest.importorskip("tensorrt")
    if not hasattr(trt, "Builder"):
        pytest.skip("a placeholder tensorrt package")
    fixed, _ = autofix(onnx.load(str(qdq_file)), profile())
    assert lint(fixed, profile()) == []
    engine = build_engine(qdq_file, tmp_path / "run", profile(), None)
    x = np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype(np.float32)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # QDQ semantics, no int8 fusion
    expect = ort.InferenceSession(str(qdq_file), options, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with TrtRunner(engine) as runner:
        got = runner.run({"input": x})[runner.outputs[0]]
    assert (got.argmax(1) == expect.argmax(1)).mean() >= 0.995 or np.allclose(got, expect, atol=0.05)


# -- the whole lowering ----------------------------------------------------------------------------


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
def test_lower_onnx_fixes_lints_and_writes_the_recipe(tmp_path):
    from compressor.backends.tensorrt import lower_onnx

    src = tmp_path / "in.onnx"
    onnx.save(trt_cnn(float_weights=True), str(src))
    done = lower_onnx(src, tmp_path / "run", profile(), {"input": ("batch", 1, 8, 8)})
    assert done.onnx_path == tmp_path / "run" / "model.onnx" and done.engine is None
    assert done.violations == [] and any("float weights" in c for c in done.changes)
    assert "bash build_engine.sh" in done.instructions and (tmp_path / "run" / "build_engine.py").exists()
    assert json.loads(json.dumps(done.to_json()))["engine"] is None
    onnx.save(trt_cnn(act_zp=3), str(src))
    with pytest.raises(CompressError, match="asymmetric-zero-point"):
        lower_onnx(src, tmp_path / "bad", profile(), None)
