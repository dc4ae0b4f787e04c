"""Builds TensorRT engines from their recipes and runs them, on the device, and writes what it measured as JSON.

A TensorRT engine runs only on the GPU and TensorRT release it was built with, so a run folder holds
the recipe (build_config.json and the QDQ ONNX beside it) and the engine is built where it will run.
`compress profile` and `compress --device` copy this script there with the build module
(build_engine.py), the runner (trt_runner.py, chunks.py), device_job.py and the engines, and run:

    python3 trt_device.py request.json result.json

request.json: {"mode": "profile" | "outputs", "engines": [{"plan": file} | {"recipe": build_config.json}, ...],
"runs": 200, "warmup": 20, "per_layer_runs": 50, "inputs": "inputs.npz" (arrays in input order; profile
mode: their first sample; default: random floats at each input's `opt` shape), "outputs": "outputs.npz"
(outputs mode: the first output of the one engine over every sample)}.

Needs numpy, tensorrt (JetPack: python3-libnvinfer) and a way to reach GPU memory (cuda-python, or
PyTorch with CUDA); a missing one exits 17 with "missing-runtime NAME: HOW TO INSTALL" on stderr.
The result holds the raw per-call times (the caller computes the statistics), each layer's time from
TensorRT's IProfiler, each recipe's build time, this process's peak memory, host name and process id.
"""
import json
import os
import sys
import time

from device_job import missing, require, serve  # shipped beside this script

INSTALL = {"numpy": "pip install numpy",
           "tensorrt": "sudo apt install python3-libnvinfer (JetPack) or pip install tensorrt",
           "cuda-python": "pip install cuda-python"}
np, trt = require({k: INSTALL[k] for k in ("numpy", "tensorrt")})
import build_engine  # noqa: E402 - shipped beside this script
import trt_runner  # noqa: E402


def _memory():
    try:
        return trt_runner.default_memory()
    except trt_runner.CompressError:
        missing(["cuda-python"], INSTALL)


def engines(request, memory):
    """A runner per engine, building each recipe here first; and what each build took."""
    runners, builds = [], []
    for entry in request["engines"]:
        plan = entry.get("plan")
        if "recipe" in entry:
            with open(entry["recipe"]) as f:
                config = json.load(f)
            start = time.perf_counter()
            try:
                plan = str(build_engine.build(config, os.path.dirname(os.path.abspath(entry["recipe"]))))
            except build_engine.BuildError as e:
                sys.stderr.write("TensorRT build of {} failed: {}\n".format(entry["recipe"], e))
                sys.exit(1)
            builds.append({"recipe": entry["recipe"], "seconds": time.perf_counter() - start,
                           "engine_bytes": os.path.getsize(plan), "flags": config.get("builder_flags", [])})
        runners.append(trt_runner.TrtRunner(plan, memory))
    return runners, builds


def load_inputs(request):
    if not request.get("inputs"):
        return None
    with np.load(request["inputs"]) as data:
        return [data["x{}".format(i)] for i in range(len(data.files))]


def example_feeds(runner):
    """Random floats, ones for integer inputs, at each input's optimization-profile `opt` shape."""
    rng, feeds = np.random.default_rng(0), {}
    for name in runner.inputs:
        shapes = runner.shape_range(name)
        shape = shapes[1] if shapes else tuple(runner.engine.get_tensor_shape(name))
        dtype = runner.dtypes[name]
        feeds[name] = rng.random(shape).astype(dtype) if np.issubdtype(dtype, np.floating) else np.ones(shape, dtype)
    return feeds


def layer_profiler():
    class LayerTimes(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)
            self.ms, self.order = {}, []

        def report_layer_time(self, layer_name, ms):
            if layer_name not in self.ms:
                self.order.append(layer_name)
                self.ms[layer_name] = 0.0
            self.ms[layer_name] += ms

    return LayerTimes()


def per_layer(runner, feeds, runs):
    """Each layer's mean ms per call, in execution order, from TensorRT's IProfiler."""
    profiler = layer_profiler()
    runner._prepare(feeds)
    runner.context.profiler = profiler
    runner.context.enqueue_emits_profile = False  # report once per call, after it finished
    for _ in range(runs):
        runner._execute()
        runner.memory.synchronize()
        runner.context.report_to_profiler()
    return [{"name": n, "op": "layer", "ms": profiler.ms[n] / runs} for n in profiler.order]


def profile(request):
    memory = _memory()
    runners, builds = engines(request, memory)
    arrays = load_inputs(request)
    feeds = [example_feeds(r) if arrays is None else dict(zip(r.inputs, (x[:1] for x in arrays))) for r in runners]
    for r, f in zip(runners, feeds):
        r._prepare(f)
        for _ in range(request.get("warmup", 20)):
            r._execute()
        memory.synchronize()
    times = [[] for _ in runners]
    for _ in range(request.get("runs", 200)):  # alternately, A B A B ...: drift hits both alike
        for r, t in zip(runners, times):  # each runner keeps its own context and buffers
            start = time.perf_counter()
            r._execute()
            memory.synchronize()
            t.append((time.perf_counter() - start) * 1e3)
    result = []
    for entry, r, f, t in zip(request["engines"], runners, feeds, times):
        out = {"engine": entry.get("plan") or entry["recipe"], "times_ms": t,
               "input_shapes": [list(v.shape) for v in f.values()]}
        if request.get("per_layer_runs"):
            out["layers"] = per_layer(r, f, request["per_layer_runs"])
        result.append(out)
        r.close()
    return {"engines": result, "builds": builds}


def outputs(request):
    memory = _memory()
    (runner,), builds = engines(request, memory)
    y = runner(*load_inputs(request))
    np.savez(request["outputs"], y=y)
    runner.close()
    return {"outputs": request["outputs"], "samples": len(y), "builds": builds}


def check(request):
    """numpy and tensorrt imported on start; GPU memory is reachable."""
    _memory()
    return {}


def main():
    serve({"profile": profile, "outputs": outputs, "check": check}, "TensorRT {}".format(trt.__version__))

if __name__ == "__main__":
    main()
