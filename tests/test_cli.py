"""The command line: bad input gives exit 2 and one clear line, never a traceback or a result."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from compressor.cli import main


def _cli(*args, cwd=None):
    """The real console entry point in a subprocess: what a user sees."""
    return subprocess.run([sys.executable, "-m", "compressor.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


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
    result = CliRunner().invoke(main, [str(tmp_path / "nope.pt"), "--debug"])
    assert result.exit_code == 2


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
    assert report["median_ms"] > 0 and report["input_shapes"] == [[1, 1, 28, 28]]
    assert {row["op"] for row in report["per_layer"]} & {"Conv", "FusedConv", "Gemm"}

    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"x")
    result = CliRunner().invoke(main, ["profile", str(bad)])
    assert result.exit_code == 2 and "unknown engine type" in result.output
