"""`compress --target npu`: the QNN HTP scheme, compiled by onnxruntime's QNN execution provider
(onnxruntime-qnn, the `[qnn]` extra) into an EP context model and verified on the HTP backend,
which runs in Qualcomm's simulator on x86. Models are tiny: the simulator is slow."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from compressor import compress
from compressor.errors import CompressError

from conftest import REPO

try:
    import onnxruntime_qnn  # noqa: F401
    HAVE_QNN = True
except ImportError:
    HAVE_QNN = False
needs_qnn = pytest.mark.skipif(not HAVE_QNN, reason='onnxruntime-qnn is not installed: pip install -e ".[qnn]"')

# Fast settings: no fine-tuning, one observer, a short latency measurement on the simulator, and
# fewer held-out digits (each is one HTP simulator call)
FAST = "[quantize]\nepochs = 0\nobserver = \"minmax\"\nsensitivity_samples = 16\n[verify]\nlatency_runs = 3\nwarmup = 1\n"
DIGITS = 'name = "digits"\nsource = "mnist"\nseed = 0\ncalibration_samples = 128\nholdout_samples = 100\n'

# A Python that cannot import onnxruntime_qnn however it is installed: what a user without the
# extra runs (the import is refused, nothing of the runtime is faked).
WITHOUT_QNN = """
import sys
class _NoQnn:
    def find_spec(self, name, path=None, target=None):
        if name == "onnxruntime_qnn" or name.startswith("onnxruntime_qnn."):
            raise ImportError("No module named 'onnxruntime_qnn'")
sys.meta_path.insert(0, _NoQnn())
from compressor.cli import main
sys.argv = ["compress", *sys.argv[1:]]
main()
"""


def _config(tmp_path, extra: str = "", verify: bool = True) -> str:
    path = tmp_path / "fast.toml"
    text = FAST.replace("[quantize]\n", "[quantize]\n" + extra)
    path.write_text(text if verify else text.split("[verify]")[0])
    return str(path)


@pytest.fixture
def digits(tmp_path) -> str:
    """128 calibration and 100 held-out MNIST digits."""
    path = tmp_path / "digits.toml"
    path.write_text(DIGITS)
    return str(path)


def _save(module: nn.Module, path, shape=(2, 1, 28, 28)):
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(module.eval(), (torch.rand(*shape),), dynamic_shapes=({0: batch},)), path)
    return path


def test_without_the_extra_the_target_says_what_to_install_before_any_work(models, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", WITHOUT_QNN, str(models["pt2"]), "--target", "npu", "--calib", "mnist",
                             "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr
    assert 'pip install -e ".[qnn]"' in result.stderr and "onnxruntime-qnn" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing loaded, nothing written


@needs_qnn
def test_mnist_cnn_compiles_to_a_context_model_that_reloads_agrees_and_runs_in_the_app(trained_res, tmp_path, digits):
    out = tmp_path / "run"
    result = compress(trained_res, target="npu", calib=digits, out=out, config=_config(tmp_path))
    passes = {p["name"]: p["metrics"] for p in result.report["passes"]}
    low, verify = passes["lower"], passes["verify"]
    assert low["htp_arch"] == 73 and low["soc_model"] == 43 and low["cpu_nodes"] == []
    # the engine an app ships: the context model and the compiled HTP graph it names
    engine = out / "qnn" / "model_ctx.onnx"
    assert result.engine == engine and (out / "qnn" / low["context_binaries"][0]).stat().st_size > 0
    ctx = onnx.load(str(engine))
    assert [n.op_type for n in ctx.graph.node] == ["EPContext"]
    assert (out / "model.onnx").is_file()  # the static-shape QDQ graph it was compiled from
    # verify ran the reloaded context model on the HTP backend, with the module and teacher gates
    assert verify["runtime"].startswith("QNN HTP simulator") and verify["parity"]["top1_agreement"] >= 0.995
    assert verify["metric_drop"] <= 0.005 and verify["latency_stand_in"]
    summary = (out / "report.md").read_text()
    assert "latency 1 thread (QNN HTP simulator on x86, not device speed)" in summary

    # a new process (an app) loads the pair without compiling and gets the HTP's answers
    from compressor.backends.qnn import QnnRunner

    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    reloaded = QnnRunner(engine)
    assert reloaded.cpu_nodes == [] and reloaded(x).shape == (3, 10)

    # `compress profile` picks the QNN profiler for the context model: per-layer HTP cycles, labelled simulated
    from compressor.profile.engine import profile_engines
    from compressor.profile.profiler import Settings

    profile = profile_engines([engine], Settings(runs=2, warmup=1, per_layer_runs=1, inputs=[x[:1]]))
    assert profile["kind"] == "qnn" and "simulator" in profile["timing_note"]
    convs = [r for r in profile["engines"][0]["layers"] if r["op"] == "Conv"]
    assert convs and all(r["cycles"] > 0 and r["ms"] > 0 for r in convs)

    # the app sample (samples/apps/qnn) classifies digits with it, on the HTP backend only
    from compressor.datasets.mnist import load_mnist_split

    _, _, digits_x, digits_y = load_mnist_split(seed=0)
    inputs = tmp_path / "digits.npy"
    np.save(inputs, digits_x[:8])
    app = subprocess.run([sys.executable, str(REPO / "samples" / "apps" / "qnn" / "classify.py"), str(engine),
                          str(inputs), "--json"], capture_output=True, text=True, timeout=300)
    assert app.returncode == 0, app.stderr
    answer = json.loads(app.stdout.strip().splitlines()[-1])
    assert answer["providers"][0] == "QNNExecutionProvider" and len(answer["classes"]) == 8
    assert (np.array(answer["classes"]) == digits_y[:8]).mean() >= 0.75  # a trained net reads digits


class ErfNet(nn.Module):
    """A conv and erf, which the QNN EP does not take (an exact GELU exported below opset 20)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        return self.head(torch.special.erf(self.conv(x)).flatten(1))


@needs_qnn
def test_a_rejected_node_fails_the_run_by_name_unless_cpu_fallback_is_allowed(tmp_path, digits):
    torch.manual_seed(0)
    model = _save(ErfNet(), tmp_path / "erf.pt2")
    with pytest.raises(CompressError) as failed:
        compress(model, target="npu", calib=digits, out=tmp_path / "strict", config=_config(tmp_path),
                 passes=["quantize", "export", "lower", "verify"])
    message = str(failed.value)
    assert failed.value.exit_code == 2 and "rejects" in message
    assert "(Erf): Operators of type `Erf` are not supported by QNN EP" in message
    assert "qnn.allow_cpu_fallback = true" in message
    report = json.loads((tmp_path / "strict" / "report.json").read_text())
    assert [p["name"] for p in report["passes"]] == ["quantize", "export"]  # stopped before verification

    profile = tmp_path / "npu-fallback.toml"
    profile.write_text((REPO / "targets" / "snapdragon-htp.toml").read_text()
                       .replace("allow_cpu_fallback = false", "allow_cpu_fallback = true"))
    result = compress(model, target=str(profile), calib=digits, out=tmp_path / "fallback",
                      config=_config(tmp_path, verify=False), passes=["quantize", "export", "lower"])
    low = {p["name"]: p["metrics"] for p in result.report["passes"]}["lower"]
    assert "Erf" in {n["op"] for n in low["cpu_nodes"]}
    assert all(n["reason"] for n in low["cpu_nodes"])
    report = (tmp_path / "fallback" / "report.md").read_text()
    assert "fell back to the CPU" in report and "(Erf): Operators of type `Erf` are not supported" in report


@needs_qnn
def test_kept_layers_get_uint16_activations_that_the_htp_runs(trained_res, tmp_path, digits):
    out = tmp_path / "run"
    result = compress(trained_res, target="npu", calib=digits, out=out,
                      config=_config(tmp_path, "keep_float = 2\naccuracy_budget = 0\n"))
    passes = {p["name"]: p["metrics"] for p in result.report["passes"]}
    assert len(passes["quantize"]["kept_float"]) == 2 and passes["quantize"]["keep_float_dtype"] == "int16"
    assert passes["export"]["uint16_activations"] >= 2
    qdq = onnx.load(str(out / "model.onnx"))
    inits = {i.name: i for i in qdq.graph.initializer}
    wide = [n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.domain == "com.microsoft"]
    assert wide and all(inits[n.input[2]].data_type == onnx.TensorProto.UINT16 for n in wide)
    weights = [inits[n.input[0]] for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].dims and len(inits[n.input[0]].dims) > 1]
    assert weights and all(w.data_type == onnx.TensorProto.INT8 for w in weights)  # a16w8: weights stay int8
    assert passes["lower"]["cpu_nodes"] == [] and passes["verify"]["parity"]["top1_agreement"] >= 0.995


def test_exact_gelu_becomes_one_op_with_the_same_values(tmp_path):
    import onnxruntime as ort

    from compressor.backends.qnn.prepare import fuse_erf_gelu

    path = tmp_path / "gelu.onnx"
    torch.onnx.export(nn.Sequential(nn.Linear(4, 8), nn.GELU()), (torch.rand(2, 4),), str(path), dynamo=False,
                      opset_version=18, input_names=["x"])
    model = onnx.load(str(path))
    assert "Erf" in {n.op_type for n in model.graph.node}
    assert fuse_erf_gelu(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert "Erf" not in ops and ops.count("Gelu") == 1
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, atol=1e-6)


# What the HTP refuses in the MiniLM sample's QDQ graph (after the exact GELUs are fused): the int8
# word-embedding table read by row (qdq.gather_rows_then_dequantize: Gather int8 rows, Cast, scale).
# With qnn.allow_cpu_fallback those two run on the CPU: measured mean cosine to the float encoder
# 0.959 on 32 held-out sentences (the fake-quant module's own PTQ cosine, 0.9592; below the 0.98 aim).
MINILM_REJECTED = [("/Gather_int8_rows", "Gather"), ("/Gather_rows_float", "Cast")]


@needs_qnn
@pytest.mark.slow
def test_minilm_on_the_htp_names_exactly_the_nodes_it_rejects(tmp_path):
    from conftest import sample_module

    try:
        folder = sample_module("samples/minilm/locate.py", "minilm_locate").model_folder()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    config = tmp_path / "minilm.toml"
    # no budget, no collapse guard: only the graph matters here, not how well it is calibrated
    config.write_text('[quantize]\nepochs = 0\nobserver = "minmax"\nsensitivity_samples = 16\naccuracy_budget = 0\n'
                      'collapse_drop = 1.0\n')
    with pytest.raises(CompressError, match="rejects 2 node") as failed:
        compress(folder, target="npu", calib="minilm", out=tmp_path / "run", config=config,
                 passes=["quantize", "export", "lower"])
    listed = [line.strip() for line in str(failed.value).splitlines()[1:-1]]
    assert [tuple(line.split(": ")[0].rsplit(" (", 1)) for line in listed] == [(n, f"{op})") for n, op in MINILM_REJECTED]
