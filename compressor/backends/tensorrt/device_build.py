#!/usr/bin/env python3
"""Build a TensorRT engine from a QDQ ONNX file, on the machine that will run it.

Written by compressor's TensorRT backend as `build_engine.py` next to `build_config.json`;
the same file is the module that `compressor.backends.tensorrt.build_engine` runs, so the
two cannot drift. It needs Python 3.8+ and the `tensorrt` package only (JetPack installs it
as python3-libnvinfer), nothing from compressor.

A TensorRT engine only runs on the GPU model and TensorRT release it was built with: run this
on the Jetson itself.

    python3 build_engine.py                 # reads build_config.json beside this file
    python3 build_engine.py --verbose       # full TensorRT log in build.log

Writes the engine, the timing cache (reused by the next build, which is then faster),
the build log and layers.json (each layer's precision and fusion, to check that the
convolutions run in int8).
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

CONFIG_NAME = "build_config.json"


class BuildError(Exception):
    """The engine could not be built; the message says why (and the log has the details)."""


def _write_atomic(path, data):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, str(path))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _version_tuple(text):
    parts = []
    for p in str(text).split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


class _Log:
    """Everything into the build log; warnings and errors also to stderr."""

    def __init__(self, path, verbose):
        self.file = open(str(path), "w", encoding="utf-8")
        self.verbose = verbose

    def write(self, level, msg):
        line = "[{}] {}".format(level, msg)
        self.file.write(line + "\n")
        self.file.flush()
        if level in ("W", "E", "F"):
            sys.stderr.write(line + "\n")

    def close(self):
        self.file.close()


def _trt_logger(trt, log):
    S = trt.ILogger.Severity
    letters = {S.INTERNAL_ERROR: "F", S.ERROR: "E", S.WARNING: "W", S.INFO: "I", S.VERBOSE: "V"}
    floor = S.VERBOSE if log.verbose else S.INFO

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if int(severity) <= int(floor):
                log.write(letters.get(severity, "I"), msg)

    return Logger()


def _describe_machine():
    lines = ["{} {} python {}".format(platform.system(), platform.machine(), platform.python_version())]
    try:
        with open("/etc/nv_tegra_release") as f:
            lines.append("L4T: " + f.readline().strip())
    except OSError:
        pass
    return lines


def _parse(trt, network, onnx_path, logger):
    parser = trt.OnnxParser(network, logger)
    if hasattr(parser, "parse_from_file"):
        ok = parser.parse_from_file(str(onnx_path))
    else:
        with open(str(onnx_path), "rb") as f:
            ok = parser.parse(f.read())
    if not ok:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError("TensorRT's ONNX parser rejected {}:\n  {}".format(onnx_path, "\n  ".join(errors)))
    return parser


def _network_flags(trt, flags):
    value = 0
    major = _version_tuple(trt.__version__)[0]
    F = trt.NetworkDefinitionCreationFlag
    if major < 10 and hasattr(F, "EXPLICIT_BATCH"):
        value |= 1 << int(F.EXPLICIT_BATCH)
    if "strongly_typed" in flags:
        if not hasattr(F, "STRONGLY_TYPED"):
            raise BuildError("strongly_typed needs TensorRT 9.1 or newer, this is " + trt.__version__)
        value |= 1 << int(F.STRONGLY_TYPED)
    return value


def _set_precision(trt, cfg, flags, log):
    for name in flags:
        if name == "strongly_typed":
            continue
        flag = getattr(trt.BuilderFlag, name.upper(), None)
        if flag is None:
            log.write("W", "this TensorRT has no BuilderFlag.{} (TensorRT 11 builds strongly typed: the Q/DQ nodes "
                           "decide the precision); skipped".format(name.upper()))
            continue
        cfg.set_flag(flag)


def _set_workspace(trt, cfg, mb):
    if hasattr(cfg, "set_memory_pool_limit"):
        cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(mb) << 20)
    else:  # TensorRT < 8.4
        cfg.max_workspace_size = int(mb) << 20


def _set_dla(trt, builder, cfg, config, log):
    core = config.get("dla_core")
    if core is None:
        return
    available = getattr(builder, "num_DLA_cores", 0)
    if available <= int(core):
        raise BuildError("DLA core {} requested but this device has {} DLA core(s)".format(core, available))
    cfg.default_device_type = trt.DeviceType.DLA
    cfg.DLA_core = int(core)
    if config.get("gpu_fallback", True):
        cfg.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    log.write("I", "DLA core {} (GPU fallback {})".format(core, "on" if config.get("gpu_fallback", True) else "off"))


def _set_profile(trt, builder, network, cfg, shapes, log):
    dynamic = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(int(d) < 0 for d in tensor.shape):
            dynamic.append(tensor.name)
    if not dynamic:
        return
    missing = [n for n in dynamic if n not in shapes]
    if missing:
        raise BuildError("dynamic inputs {} have no min/opt/max shapes in {}".format(missing, CONFIG_NAME))
    profile = builder.create_optimization_profile()
    for name in dynamic:
        s = shapes[name]
        profile.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
        log.write("I", "optimization profile {}: min {} opt {} max {}".format(name, s["min"], s["opt"], s["max"]))
    cfg.add_optimization_profile(profile)


def _export_layers(trt, logger, engine_bytes, path, log):
    try:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(engine_bytes)
        inspector = engine.create_engine_inspector()
        info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
        _write_atomic(path, info.encode("utf-8"))
    except Exception as e:  # noqa: BLE001 - the layer report is a nicety, never fail the build for it
        log.write("W", "could not write the layer report: {}".format(e))


def build(config, base, verbose=False):
    """Build the engine described by `config` (paths relative to `base`); returns the engine path."""
    import tensorrt as trt

    base = Path(base)
    onnx_path = base / config["onnx"]
    engine_path = base / config["engine"]
    cache_path = base / config["timing_cache"]
    log = _Log(base / config["log"], verbose)
    try:
        if not onnx_path.exists():
            raise BuildError("{} not found (copy it beside {})".format(onnx_path, CONFIG_NAME))
        log.write("I", "TensorRT {} on {}".format(trt.__version__, "; ".join(_describe_machine())))
        assumed = config.get("tensorrt")
        if assumed and _version_tuple(assumed) != _version_tuple(trt.__version__):
            log.write("W", "the target profile assumed TensorRT {}, this is {}: the engine is built for the one "
                           "installed here".format(assumed, trt.__version__))
        logger = _trt_logger(trt, log)
        flags = list(config.get("builder_flags", []))
        builder = trt.Builder(logger)
        network = builder.create_network(_network_flags(trt, flags))
        parser = _parse(trt, network, onnx_path, logger)  # noqa: F841 - keep alive with the network
        cfg = builder.create_builder_config()
        _set_workspace(trt, cfg, config.get("workspace_mb", 1024))
        _set_precision(trt, cfg, flags, log)
        _set_dla(trt, builder, cfg, config, log)
        _set_profile(trt, builder, network, cfg, config.get("shapes", {}), log)
        if hasattr(trt, "ProfilingVerbosity"):
            cfg.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        cache_bytes = cache_path.read_bytes() if cache_path.exists() else b""
        cache = cfg.create_timing_cache(cache_bytes)
        cfg.set_timing_cache(cache, False)
        log.write("I", "building {} -> {} (flags {}, workspace {} MiB, timing cache {})".format(
            onnx_path.name, engine_path.name, ",".join(flags) or "none", config.get("workspace_mb", 1024),
            "reused" if cache_bytes else "new"))
        start = time.time()
        serialized = builder.build_serialized_network(network, cfg)
        if serialized is None:
            raise BuildError("TensorRT could not build the engine; see {}".format(base / config["log"]))
        engine_bytes = bytes(memoryview(serialized))
        _write_atomic(engine_path, engine_bytes)
        _write_atomic(cache_path, bytes(memoryview(cfg.get_timing_cache().serialize())))
        log.write("I", "engine written: {} ({} bytes) in {:.1f} s".format(engine_path, len(engine_bytes),
                                                                         time.time() - start))
        if config.get("layers"):
            _export_layers(trt, logger, engine_bytes, base / config["layers"], log)
        return engine_path
    except BuildError as e:
        log.write("E", str(e))
        raise
    finally:
        log.close()


def main(argv=None):
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description="Build the TensorRT engine on this device.")
    ap.add_argument("--config", default=str(here / CONFIG_NAME), help="build_config.json (default: beside this file)")
    ap.add_argument("--verbose", action="store_true", help="full TensorRT log in the build log")
    args = ap.parse_args(argv)
    config_path = Path(args.config)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        sys.stderr.write("cannot read {}: {}\n".format(config_path, e))
        return 2
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        sys.stderr.write("the tensorrt Python package is not installed here. On a Jetson it comes with JetPack "
                         "(sudo apt install python3-libnvinfer); build on the device, not on the host.\n")
        return 2
    try:
        engine = build(config, config_path.parent, verbose=args.verbose)
    except BuildError as e:
        sys.stderr.write("build failed: {}\n".format(e))
        return 1
    print("engine: {}\ntiming cache: {}\nlog: {}".format(engine, config_path.parent / config["timing_cache"],
                                                         config_path.parent / config["log"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
