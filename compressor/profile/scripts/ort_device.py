"""Runs ONNX engines in onnxruntime on a device and writes what it measured as JSON.

Self-contained: copied to the device with the engines and run there by `compress profile` and by
`compress --device`, so it needs only the standard library, numpy and onnxruntime.

    python3 ort_device.py request.json result.json

request.json: {"mode": "profile" | "outputs", "engines": [file, ...], "threads": 1, "runs": 200,
"warmup": 20, "per_layer_runs": 50, "inputs": "inputs.npz" (arrays in input order; profile mode:
their first sample; default: example inputs), "outputs": "outputs.npz" (outputs mode: the first
output of each engine over every sample, in batches of "batch")}.

The result holds the raw per-call times (the host computes the statistics), the per-node times
from onnxruntime's profiler, this process's peak resident memory, and its host name and process id
so the caller can tell the numbers come from the device.
"""
import json
import os
import tempfile
import time

from device_job import require, serve  # shipped beside this script

np, ort = require({"numpy": "pip install numpy", "onnxruntime": "pip install onnxruntime"})

DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
          "tensor(bool)": np.bool_}
DYNAMIC_SIZES = {"batch": 1, "sequence": 128}


def session(path, threads, profile_prefix=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def example(arg):
    shape = [d if isinstance(d, int) else DYNAMIC_SIZES.get(str(d), 1) for d in arg.shape]
    dtype = DTYPES.get(arg.type, np.float32)
    if np.issubdtype(dtype, np.floating):
        return np.random.default_rng(0).random(shape).astype(dtype)
    return np.ones(shape, dtype=dtype)


def feeds_for(sess, arrays):
    args = sess.get_inputs()
    if arrays is None:
        return {a.name: example(a) for a in args}
    return {a.name: x[:1].astype(DTYPES.get(a.type, np.float32)) for a, x in zip(args, arrays)}


def per_node(path, threads, feeds, runs):
    """Mean microseconds per node over `runs` profiled calls, from onnxruntime's profiler."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(path, threads, os.path.join(tmp, "profile"))
        for _ in range(runs):
            sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    total, order = {}, []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = (e["name"][: -len("_kernel_time")], e.get("args", {}).get("op_name", "?"))
            if key not in total:
                order.append(key)
                total[key] = 0.0
            total[key] += e["dur"]
    return [{"name": n, "op": op, "ms": total[(n, op)] / runs / 1e3} for n, op in order]


def load_inputs(request):
    if not request.get("inputs"):
        return None
    with np.load(request["inputs"]) as data:
        return [data[f"x{i}"] for i in range(len(data.files))]


def profile(request):
    threads, arrays = request.get("threads", 1), load_inputs(request)
    sessions = [session(p, threads) for p in request["engines"]]
    feeds = [feeds_for(s, arrays) for s in sessions]
    for s, f in zip(sessions, feeds):
        for _ in range(request.get("warmup", 20)):
            s.run(None, f)
    times = [[] for _ in sessions]
    for _ in range(request.get("runs", 200)):  # alternately: A B A B ..., so drift hits both alike
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            start = time.perf_counter()
            s.run(None, f)
            times[i].append((time.perf_counter() - start) * 1e3)
    result = []
    for path, s, f, t in zip(request["engines"], sessions, feeds, times):
        entry = {"engine": path, "times_ms": t, "input_shapes": [list(v.shape) for v in f.values()]}
        if request.get("per_layer_runs"):
            entry["layers"] = per_node(path, threads, f, request["per_layer_runs"])
        result.append(entry)
    return {"engines": result}


def outputs(request):
    arrays = load_inputs(request)
    sess = session(request["engines"][0], request.get("threads", 1))
    names = [a.name for a in sess.get_inputs()]
    batch = sess.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) else request.get("batch", 64)
    outs = []
    for start in range(0, len(arrays[0]), step):
        chunk = [a[start:start + step] for a in arrays]
        short = step - len(chunk[0]) if isinstance(batch, int) else 0
        if short:  # a static-batch graph: pad the last chunk with its last sample
            chunk = [np.concatenate([c, np.repeat(c[-1:], short, axis=0)]) for c in chunk]
        outs.append(sess.run(None, dict(zip(names, chunk)))[0][: len(chunk[0]) - short])
    np.savez(request["outputs"], y=np.concatenate(outs))
    return {"outputs": request["outputs"], "samples": len(arrays[0])}


def check(request):
    """The runtime imports (numpy and the runtime were imported on start): nothing else to do."""
    return {}


def main():
    serve({"profile": profile, "outputs": outputs, "check": check}, f"onnxruntime {ort.__version__}",
          cpu_count=os.cpu_count())

if __name__ == "__main__":
    main()
