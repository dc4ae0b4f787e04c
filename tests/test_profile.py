"""compress profile: per-layer profiling of every engine kind here, and of ONNX engines on a device
over SSH (a real sshd on 127.0.0.1, see sshd.py)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compressor.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from sshd import LoopbackSshd, free_port, start_sshd  # noqa: E402

PYTHON = sys.executable


@pytest.fixture(scope="module")
def onnx_engines(models, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny CNN as FP32 ONNX, and a narrower one (fewer channels: faster)."""
    import torch

    from compressor.export.onnx_export import export_onnx
    from compressor.model_io import load_model
    from conftest import tiny_net

    folder = tmp_path_factory.mktemp("engines")
    artifact = load_model(models["pt2"])
    wide = folder / "wide.onnx"
    export_onnx(artifact.module, artifact.spec, wide)
    batch = torch.export.Dim("batch", min=1, max=1024)
    small = folder / "small.pt2"
    torch.export.save(torch.export.export(tiny_net(2), (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: batch},)), small)
    narrow = folder / "narrow.onnx"
    narrow_artifact = load_model(small)
    export_onnx(narrow_artifact.module, narrow_artifact.spec, narrow)
    return wide, narrow


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    if isinstance(server, str):
        pytest.skip(f"no test sshd: {server}")
    yield server
    server.process.terminate()
    server.process.wait(10)


def _profile(*args):
    return CliRunner().invoke(main, ["profile", *map(str, args)])


def test_onnx_engine_per_layer_json_table_and_chart(onnx_engines, tmp_path):
    wide, _ = onnx_engines
    chart = tmp_path / "layers.png"
    result = _profile(wide, "--runs", "20", "--per-layer", "--json", "--chart", chart)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    engine = report["engines"][0]
    assert 0 < engine["min_ms"] <= engine["median_ms"] <= engine["p90_ms"] <= engine["p99_ms"]
    assert engine["throughput_per_s"] == pytest.approx(1e3 / engine["median_ms"])
    assert engine["input_shapes"] == [[1, 1, 28, 28]] and engine["runs"] == 20
    assert {row["op"] for row in engine["layers"]} & {"Conv", "FusedConv", "Gemm"}
    assert report["peak_rss_bytes"] > 1e6 and report["measured_on"]["pid"] != os.getpid()
    from PIL import Image

    assert Image.open(chart).size[1] > 40
    table = _profile(wide, "--runs", "10", "--per-layer", "--top", "3")
    assert table.exit_code == 0 and "slowest 3 of" in table.output and "inferences/s" in table.output


def test_two_engines_alternate_and_give_the_ratio_with_its_noise(onnx_engines):
    wide, narrow = onnx_engines
    result = _profile(wide, narrow, "--runs", "30", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    a, b = report["engines"]
    c = report["comparison"]
    assert c["b_over_a"] == pytest.approx(b["median_ms"] / a["median_ms"])
    assert len(c["part_ratios"]) == 5 and c["noise"] >= 0
    assert c["verdict"] in ("faster", "slower", "same")


def test_profile_errors_are_one_line(onnx_engines, tmp_path):
    wide, _ = onnx_engines
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"x")
    for args, words in (([bad], "unknown engine type"), ([wide, "--device", "ftp://x"], "unknown device"),
                        ([wide, "--device", "qemu"], "runs here or on a device"),
                        ([wide, "--device", "ssh://h?pyhton=x"], "unknown option(s) pyhton"),
                        ([tmp_path / "none.onnx"], "file not found")):
        result = _profile(*args)
        assert result.exit_code == 2 and words in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_profile_over_ssh_runs_on_the_device(onnx_engines, sshd: LoopbackSshd):
    wide, narrow = onnx_engines
    for url in (sshd.url(PYTHON), sshd.url(PYTHON, alias=True)):
        result = _profile(wide, narrow, "--runs", "10", "--per-layer", "--device", url, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        # the numbers come from a process the test's sshd started: its session names that server's port
        assert report["remote"] and report["measured_on"]["pid"] != os.getpid()
        assert report["measured_on"]["ssh_connection"].split()[-1] == str(sshd.port)
        assert report["engines"][1]["layers"] and "comparison" in report


@pytest.mark.parametrize("case", ["refused", "wrong_key", "missing_runtime", "missing_python"])
def test_ssh_failures_are_one_line_errors_with_exit_2(onnx_engines, sshd: LoopbackSshd, case):
    wide, _ = onnx_engines
    url, words = {
        "refused": (f"ssh://{sshd.user}@127.0.0.1:{free_port()}?ssh_config={sshd.ssh_config}", "connection refused"),
        "wrong_key": (sshd.url(PYTHON, key=sshd.wrong_key), "authentication failed"),
        # a Python without the runtime (the system's, outside the venv): the error names what to install
        "missing_runtime": (sshd.url("/usr/bin/python3"), "pip install"),
        "missing_python": (sshd.url("/nonexistent/python3"), "not found on the device"),
    }[case]
    if case == "missing_runtime" and _has_onnxruntime("/usr/bin/python3"):
        pytest.skip("/usr/bin/python3 has onnxruntime here")
    result = _profile(wide, "--runs", "5", "--device", url)
    assert result.exit_code == 2, result.output
    assert words in result.output and len(result.output.strip().splitlines()) == 1, result.output
    if case == "missing_runtime":
        assert "onnxruntime" in result.output


def test_a_device_that_never_answers_times_out_in_one_line(onnx_engines, tmp_path):
    import shutil
    import socket

    if not shutil.which("ssh"):
        pytest.skip("no ssh client (apt-get install -y openssh-client)")
    wide, _ = onnx_engines
    with socket.socket() as silent:  # accepts the TCP connection, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        config = tmp_path / "ssh_config"
        config.write_text("Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
        result = _profile(wide, "--device", f"ssh://127.0.0.1:{port}?connect_timeout=1&ssh_config={config}")
    assert result.exit_code == 2 and "connection timed out (no answer in 1 s)" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def _has_onnxruntime(python: str) -> bool:
    import subprocess

    return os.path.exists(python) and subprocess.run([python, "-c", "import onnxruntime"],
                                                     capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def c_engine(tmp_path_factory) -> Path:
    """The demo MNIST CNN (untrained: profiling needs no accuracy), quantized and generated as a C engine."""
    from conftest import sample_module

    from compressor.backends import cengine as ce

    demo = sample_module("samples/apps/c/models.py", "cengine_demo_models")
    folder = tmp_path_factory.mktemp("cengine")
    torch = demo._torch()
    torch.manual_seed(0)
    x_train, _, x_test, _ = demo.mnist_data()
    fp32 = demo.export_onnx(demo.mnist_cnn().eval(), x_test, folder / "fp32.onnx")
    qdq = demo.quantize_qdq(fp32, folder / "qdq.onnx", x_train[:64])
    ce.generate(qdq, folder / "engine")
    return folder / "engine"


def test_c_engine_per_layer_timers_here(c_engine):
    result = _profile(c_engine, "--runs", "20", "--per-layer", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    engine = report["engines"][0]
    assert report["kind"] == "cengine" and engine["arch"] == "host"
    meta = json.loads((c_engine / "engine.json").read_text())
    assert [r["op"] for r in engine["layers"]] == [m["kind"] for m in meta["layers"]]
    conv = max((r for r in engine["layers"] if r["op"] == "conv"), key=lambda r: r["ms"])
    assert conv["ms"] > 0 and engine["layers_total_ms"] > 0 and report["peak_rss_bytes"] > 0


def test_two_c_engines_alternate_by_rounds_of_processes(c_engine, tmp_path):
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(c_engine, twin, ignore=shutil.ignore_patterns("build"))
    result = _profile(c_engine, twin, "--runs", "25", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    a, b = report["engines"]
    assert a["runs"] == b["runs"] == 25 and "5 rounds" in report["alternation"]
    assert len(report["comparison"]["part_ratios"]) == 5


def test_c_engine_instructions_per_layer_under_qemu(c_engine):
    from compressor.backends.cengine import compile_engine, count_instructions
    from compressor.backends.cengine.toolchain import APT_INSTALL, missing_tools

    if missing_tools("rv64gcv", run=True):
        pytest.skip(f"RISC-V toolchain missing: {APT_INSTALL}")
    result = _profile(c_engine, "--runs", "3", "--per-layer", "--device", "qemu", "--json")
    assert result.exit_code == 0, result.output
    engine = json.loads(result.output)["engines"][0]
    assert engine["arch"] == "rv64gcv" and all(r["instructions"] > 0 for r in engine["layers"])
    # the layers add up to the whole inference as the toolchain counts it (run 1 minus run 0), up to
    # the marker calls' few instructions per layer
    whole = count_instructions(compile_engine(c_engine, "rv64gcv"),
                               np.random.default_rng(0).standard_normal(784), "rv64gcv")
    assert 0 <= engine["instructions"] - whole <= 50 * len(engine["layers"])


def test_c_engine_on_a_device_over_ssh_needs_no_python(c_engine, sshd: LoopbackSshd):
    result = _profile(c_engine, "--runs", "10", "--per-layer", "--device", sshd.url("/nonexistent/python3"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["measured_on"]["ssh_connection"].split()[-1] == str(sshd.port)
    assert report["engines"][0]["layers"][0]["ms"] >= 0
    # parity on the device: the outputs computed there are the host build's, bit for bit
    from compressor.backends.cengine import run_engine
    from compressor.profile.cengine import PROFILER
    from compressor.profile.devices import open_device

    x = np.random.default_rng(1).standard_normal((5, 1, 28, 28)).astype(np.float32)
    y, ran = PROFILER.outputs(c_engine, [x], open_device(sshd.url("/nonexistent/python3")))
    assert np.array_equal(y, run_engine(c_engine, x)) and ran["ssh_connection"].split()[-1] == str(sshd.port)


def test_tensorrt_plan_per_layer(tmp_path):
    from compressor.backends.tensorrt.build import tensorrt_available

    if not tensorrt_available():
        pytest.skip("TensorRT is not installed here (it runs on a Jetson or a CUDA host)")
    import tensorrt as trt
    onnx_path = tmp_path / "tiny.onnx"
    _tiny_onnx(onnx_path)
    plan = tmp_path / "tiny.plan"
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, builder.logger)
    assert parser.parse(onnx_path.read_bytes())
    plan.write_bytes(bytes(builder.build_serialized_network(network, builder.create_builder_config())))
    result = _profile(plan, "--runs", "20", "--per-layer", "--json")
    assert result.exit_code == 0, result.output
    engine = json.loads(result.output)["engines"][0]
    assert engine["median_ms"] > 0 and engine["layers"] and sum(r["ms"] for r in engine["layers"]) > 0


@pytest.fixture(scope="module")
def trt_recipe(tmp_path_factory) -> Path:
    """The tiny CNN's TensorRT recipe as a jetson run folder holds it: build_config.json beside the ONNX."""
    from compressor.backends.tensorrt.scripts import write_build_scripts
    from compressor.targets import load_target

    folder = tmp_path_factory.mktemp("recipe")
    _tiny_onnx(folder / "model.onnx")
    write_build_scripts(folder / "model.onnx", folder, load_target("jetson"), None)
    return folder / "build_config.json"


def test_tensorrt_recipe_goes_to_the_device_to_be_built(trt_recipe, sshd: LoopbackSshd):
    """The recipe, its ONNX and the build and profiling scripts go to the device, whose Python is asked
    for TensorRT: here it has none, which is a one-line error naming what to install there."""
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt imports here: this test needs a device without it")
    except ImportError:
        pass
    result = _profile(trt_recipe, "--runs", "5", "--device", sshd.url(PYTHON))
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"127.0.0.1:{sshd.port}: tensorrt not installed on the device" in result.output
    assert "python3-libnvinfer" in result.output


def test_tensorrt_recipe_whose_onnx_is_gone_fails_before_connecting(trt_recipe, tmp_path):
    recipe = tmp_path / "build_config.json"
    recipe.write_text(trt_recipe.read_text())  # names model.onnx, which is not in tmp_path
    result = _profile(recipe, "--device", "ssh://nobody@127.0.0.1:1")
    assert result.exit_code == 2 and "model.onnx, is missing" in result.output, result.output


def test_fp32_baseline_recipe_builds_the_teacher_in_fp32_with_the_engine_shapes(trt_recipe, tmp_path):
    from compressor.backends.tensorrt.backend import BACKEND

    engine_config = json.loads(trt_recipe.read_text())
    assert "int8" in engine_config["builder_flags"]
    teacher = tmp_path / "teacher_fp32.onnx"
    teacher.write_bytes((trt_recipe.parent / "model.onnx").read_bytes())
    path = BACKEND.device_baseline(teacher, trt_recipe, tmp_path)
    config = json.loads(path.read_text())
    assert BACKEND.opens(path) and (tmp_path / config["onnx"]).resolve() == teacher.resolve()
    assert not {"int8", "fp16", "bf16"} & set(config["builder_flags"]) and config["shapes"] == engine_config["shapes"]
    assert config["engine"] != engine_config["engine"] and config["dla_core"] is None
    assert BACKEND.device_baseline(teacher, trt_recipe.with_name("model.engine"), tmp_path) is None  # a plan: no recipe


def test_tensorrt_recipe_built_and_profiled_here(trt_recipe, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (it runs on a Jetson or a CUDA host)")
    result = _profile(trt_recipe, "--runs", "20", "--per-layer", "--json")
    assert result.exit_code == 0, result.output
    engine = json.loads(result.output)["engines"][0]
    assert engine["median_ms"] > 0 and engine["layers"]
    assert (trt_recipe.parent / "timing.cache").is_file()  # the device's timing cache came back beside the recipe


def _tiny_onnx(path: Path) -> None:
    import torch

    from compressor.export.onnx_export import export_onnx
    from compressor.model_io import load_model
    from conftest import tiny_net

    pt2 = path.with_suffix(".pt2")
    torch.export.save(torch.export.export(tiny_net(), (torch.rand(1, 1, 28, 28),)), pt2)
    artifact = load_model(pt2)
    export_onnx(artifact.module, artifact.spec, path)


def _compress(*args) -> "subprocess.CompletedProcess":
    import subprocess

    return subprocess.run([PYTHON, "-m", "compressor.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


def test_main_command_verifies_on_the_device(models, fast_config, sshd: LoopbackSshd, tmp_path):
    out = tmp_path / "run"
    result = _compress(models["pt2"], "--calib", "mnist", "--out", out, "--config", fast_config, "--quiet",
                       "--device", sshd.url(PYTHON))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    verify = next(p for p in report["passes"] if p["name"] == "verify")["metrics"]
    # parity outputs and latency both came from processes the test's sshd started
    for measured in (verify["parity_measured_on"], verify["device_latency"]["measured_on"]):
        assert measured["ssh_connection"].split()[-1] == str(sshd.port) and measured["pid"] != os.getpid()
    assert verify["parity"]["max_abs_diff"] < 1e-3 and not verify["latency_stand_in"] and "latency" not in verify
    md = (out / "report.md").read_text()
    assert f"measured on {sshd.user}@127.0.0.1:{sshd.port}" in md and "stand-in" not in md
    assert (out / "02-verify" / "layers.png").is_file() and "![time per layer](02-verify/layers.png)" in md


def test_main_command_fails_fast_on_an_unreachable_device(models, sshd: LoopbackSshd, tmp_path):
    out = tmp_path / "run"
    result = _compress(models["pt2"], "--calib", "mnist", "--out", out, "--device",
                       sshd.url(PYTHON, key=sshd.wrong_key))
    assert result.returncode == 2 and "authentication failed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_main_command_fails_fast_on_a_device_without_the_engines_runtime(models, sshd: LoopbackSshd, tmp_path):
    """jetson: verify builds the engine on the device from the run's recipe; a device without
    TensorRT is refused before any compressing."""
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt imports here: this test needs a device without it")
    except ImportError:
        pass
    out = tmp_path / "run"
    result = _compress("--target", "jetson", models["pt2"], "--calib", "mnist", "--out", out,
                       "--device", sshd.url(PYTHON))
    assert result.returncode == 2 and "tensorrt not installed on the device" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.slow
def test_sample_teacher_compressed_and_verified_on_the_device(sshd: LoopbackSshd, tmp_path):
    """The issue's command: the MNIST sample for x86-cpu, quantized (minutes), verified over SSH."""
    out = tmp_path / "run"
    teacher = Path(__file__).resolve().parents[1] / "samples" / "mnist" / "teacher.pt2"
    result = _compress("--target", "x86-cpu", teacher, "--calib", "mnist", "--out", out, "--quiet",
                       "--device", sshd.url(PYTHON))
    assert result.returncode == 0, result.stderr
    verify = next(p for p in json.loads((out / "report.json").read_text())["passes"] if p["name"] == "verify")["metrics"]
    d = verify["device_latency"]
    assert d["measured_on"]["ssh_connection"].split()[-1] == str(sshd.port)
    assert d["comparison"]["b_over_a"] == pytest.approx(d["engine"]["median_ms"] / d["fp32_onnx"]["median_ms"])
