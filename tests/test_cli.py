"""The command line: bad input gives exit 2 and one clear line, never a traceback or a result."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

import pytest
from click.testing import CliRunner

from compressor.cli import main
from compressor.targets import load_target


def _cli(*args, cwd=None, timeout=300):
    """The real console entry point in a subprocess: what a user sees."""
    return subprocess.run([sys.executable, "-m", "compressor.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def _bad_inputs(models, tmp_path):
    truncated = tmp_path / "cut.pt2"
    truncated.write_bytes(models["pt2"].read_bytes()[:3000])
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    bad_toml = tmp_path / "broken.toml"
    bad_toml.write_text('name = "x"\nbackend = \n')
    wrong_shape = tmp_path / "wrong.toml"
    import numpy as np
    np.save(tmp_path / "wrong.npy", np.zeros((8, 3, 32, 32), dtype=np.float32))
    wrong_shape.write_text('source = "npy"\npath = "wrong.npy"\ncalibration_samples = 4\nholdout_samples = 4\n')
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    return {
        "missing file": ([tmp_path / "nope.pt"], "file not found"),
        "truncated file": ([truncated], "corrupt or truncated"),
        "not a model": ([text], "not a PyTorch model"),
        "pickle without flag": ([models["pickle"], "--input-shape", "1x1x28x28"], "--allow-pickle"),
        "unknown target": ([models["pt2"], "--target", "vax"], "known targets: "),
        "malformed profile": ([models["pt2"], "--target", bad_toml], "broken.toml: malformed TOML"),
        "malformed pipeline config": ([models["pt2"], "--config", bad_toml], "broken.toml: malformed TOML"),
        "calibration of the wrong shape": ([models["pt2"], "--calib", wrong_shape], "do not fit the model input"),
        "output directory exists": ([models["pt2"], "--out", existing], "--resume"),
    }


CASES = ["missing file", "truncated file", "not a model", "pickle without flag", "unknown target",
         "malformed profile", "malformed pipeline config", "calibration of the wrong shape", "output directory exists"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line(case, models, tmp_path):
    args, message = _bad_inputs(models, tmp_path)[case]
    out = tmp_path / "run"
    if "--out" not in args:
        args = [*args, "--out", out]
    result = _cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "model.onnx").exists() and not (out / "report.json").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = _cli(tmp_path / "nope.pt", "--debug")
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr and "CompressError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    plain = _cli(tmp_path / "nope.pt")
    assert plain.returncode == 2 and "Traceback" not in plain.stderr


def test_engine_that_fails_verification_exits_3_with_the_numbers(models, tmp_path, fast_config):
    # a parity tolerance no FP32 runtime meets: onnxruntime and PyTorch sum in different orders
    profile = tmp_path / "strict.toml"
    profile.write_text(load_target("x86-cpu").path.read_text().replace("parity_atol = 1e-3", "parity_atol = 1e-12"))
    out = tmp_path / "run"
    result = _cli(models["pt2"], "--target", profile, "--calib", "mnist", "--out", out, "--config", fast_config)
    assert result.returncode == 3, result.stderr
    assert "verification failed: max abs difference" in result.stderr and "Traceback" not in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and "engine" not in report and not (out / "model.onnx").exists()


def test_internal_error_exits_1_with_a_traceback(models, tmp_path):
    # a bug (here: a user metric that crashes) is not bad input: exit 1, traceback shown
    (tmp_path / "broken_metric.py").write_text("def score(outputs, teacher, labels):\n    raise RuntimeError('boom')\n")
    config = tmp_path / "metric.toml"
    config.write_text('passes = ["export", "verify"]\n[verify]\nlatency_runs = 10\nmetric = "broken_metric:score"\n')
    result = subprocess.run([sys.executable, "-m", "compressor.cli", str(models["pt2"]), "--calib", "mnist",
                             "--out", str(tmp_path / "run"), "--config", str(config)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                [str(tmp_path), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 1, result.stderr
    assert "Traceback" in result.stderr and "RuntimeError: boom" in result.stderr


def test_force_deletes_the_old_run_and_starts_over(models, tmp_path, fast_config):
    out = tmp_path / "run"
    args = [models["pt2"], "--calib", "mnist", "--out", out, "--config", fast_config, "--quiet"]
    assert _cli(*args).returncode == 0
    first = json.loads((out / "report.json").read_text())
    (out / "left-over.txt").write_text("from the old run")
    assert _cli(*args).returncode == 2  # exists: refused without --force or --resume
    assert _cli(*args, "--force").returncode == 0
    second = json.loads((out / "report.json").read_text())
    assert not (out / "left-over.txt").exists()
    assert all(p["status"] == "ran" for p in second["passes"]) and second["started"] >= first["started"]


def test_calib_takes_an_npz_directly(models, tmp_path, fast_config):
    from compressor.datasets.mnist import load_mnist_split

    x, y, _, _ = load_mnist_split(seed=0)
    np.savez(tmp_path / "digits.npz", x=x[:300], y=y[:300])
    result = _cli(models["pt2"], "--calib", tmp_path / "digits.npz", "--out", tmp_path / "run", "--config", fast_config,
                  "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["calibration"]["recipe"] == "digits.npz" and report["calibration"]["labels"]
    assert report["calibration"]["calibration_samples"] + report["calibration"]["holdout_samples"] == 300


def _float_weights(onnx_path) -> int:
    import onnx

    model = onnx.load(str(onnx_path))
    return sum(1 for i in model.graph.initializer if len(i.dims) >= 2 and i.data_type == onnx.TensorProto.FLOAT)


def _quantize_config(tmp_path, body: str):
    path = tmp_path / "q.toml"
    path.write_text('passes = ["quantize", "export", "lower", "verify"]\n[verify]\nlatency_runs = 20\nwarmup = 2\n'
                    f"[quantize]\nepochs = 0\nobserver = \"minmax\"\n{body}\n")
    return path


@pytest.mark.slow
def test_keep_float_flag_changes_the_graph_and_the_summary_tells_speed_and_size(trained_res, tmp_path):
    # the TOML says keep none; the flag (which wins) keeps the most sensitive layer in float
    config = _quantize_config(tmp_path, "keep_float = 0\naccuracy_budget = 0.0")
    out = tmp_path / "run"
    result = _cli(trained_res, "--calib", "mnist", "--out", out, "--config", config, "--keep-float", "1", "--json",
                  timeout=1200)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    quant = report["passes"][0]["metrics"]
    assert len(quant["kept_float"]) == 1 and _float_weights(out / "model.onnx") == 1
    # the speed verdict, in words, matches the latency rows it summarises
    verify = report["passes"][-1]["metrics"]
    lat = verify["latency"]["1_thread"]
    ratio, noise = lat["engine_over_fp32_onnx"], lat["engine_over_fp32_onnx_noise"]
    words = "faster," if ratio < 1 - noise else "NOT faster (slower)" if ratio > 1 + noise else "NOT faster (no diff"
    line = next(s for s in result.stderr.splitlines() if "speed vs FP32 onnxruntime" in s)
    assert f"1 thread: {words}" in line and f"{ratio:.2f}x of FP32" in line
    # size against the same model in FP32 in the same format, named
    size = next(s for s in result.stderr.splitlines() if s.strip().startswith("size (vs the teacher as FP32 ONNX)"))
    expected = verify["fp32_onnx_bytes"] / report["sizes"]["engine_bytes"]
    assert f"({expected:.2f}x smaller" in size


@pytest.mark.slow
def test_accuracy_budget_flag_keeps_layers_float_in_the_graph(trained_res, tmp_path):
    # 2-bit weights collapse this net; the TOML turns the budget off, the flag turns it on
    profile = tmp_path / "x86-2bit.toml"
    profile.write_text(load_target("x86-cpu").path.read_text().replace("bits = 7", "bits = 2")
                       .replace("max_metric_drop = 0.01", "max_metric_drop = 0.05"))
    config = _quantize_config(tmp_path, "accuracy_budget = 0.0")
    out = tmp_path / "run"
    result = _cli(trained_res, "--target", profile, "--calib", "mnist", "--out", out, "--config", config,
                  "--accuracy-budget", "0.02", "--json", timeout=1200)
    assert result.returncode == 0, result.stderr
    quant = json.loads(result.stdout)["passes"][0]["metrics"]
    assert len(quant["kept_float"]) >= 1 and _float_weights(out / "model.onnx") == len(quant["kept_float"])


def test_main_job_prints_summary_and_json(models, tmp_path, fast_config):
    result = _cli(models["pt2"], "--target", "cpu", "--calib", "mnist", "--out", tmp_path / "run",
                  "--config", fast_config, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "ok" and report["engine"]["path"].endswith("model.onnx")
    assert "parity (fp32" in result.stderr and "latency 1 thread" in result.stderr


def test_quiet_prints_nothing(models, tmp_path, fast_config):
    result = _cli(models["pt2"], "--calib", "mnist", "--out", tmp_path / "run", "--config", fast_config, "--quiet")
    assert result.returncode == 0 and result.stderr == "" and result.stdout == ""


def test_inspect(models):
    result = CliRunner().invoke(main, ["inspect", str(models["pt2_static"])])
    assert result.exit_code == 0
    assert "torch.export" in result.output and "batch:      static 1" in result.output


def test_profile_measures_an_onnx_engine_with_a_per_layer_breakdown(models, tmp_path):
    from compressor.export.onnx_export import export_onnx
    from compressor.model_io import load_model

    artifact = load_model(models["pt2"])
    path = tmp_path / "tiny.onnx"
    export_onnx(artifact.module, artifact.spec, path)
    result = CliRunner().invoke(main, ["profile", str(path), "--runs", "20", "--per-layer", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    engine = report["engines"][0]
    assert engine["median_ms"] > 0 and engine["input_shapes"] == [[1, 1, 28, 28]]
    assert {row["op"] for row in engine["layers"]} & {"Conv", "FusedConv", "Gemm"}

    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"x")
    result = CliRunner().invoke(main, ["profile", str(bad)])
    assert result.exit_code == 2 and "unknown engine type" in result.output
