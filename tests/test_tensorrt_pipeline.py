"""`compress --target jetson`: quantize in TensorRT's scheme, lint-clean QDQ ONNX, device build recipe."""
from __future__ import annotations

import json

import onnx
import pytest

from compressor import compress
from compressor.backends.tensorrt import lint
from compressor.targets import load_target
from conftest import SAMPLE_TEACHER


def _config(tmp_path, epochs: int = 1):
    path = tmp_path / "pipeline.toml"
    path.write_text(f"[quantize]\nepochs = {epochs}\n[verify]\nlatency_runs = 10\nwarmup = 2\n")
    return path


def _check_jetson_run(out, result):
    passes = {p["name"]: p for p in result.report["passes"]}
    assert list(passes) == ["quantize", "export", "lower", "verify"]
    lower = passes["lower"]["metrics"]
    assert not [v for v in lower["violations"] if v["severity"] == "error"]
    verify = passes["verify"]["metrics"]
    assert verify["runtime"] == "onnxruntime (QDQ reference semantics)"
    assert verify["latency_stand_in"]  # host times of the ONNX file, never passed off as the device's
    report_md = (out / "report.md").read_text()
    assert "latency 1 thread (host QDQ reference, not the device)" in report_md
    assert "says nothing about the device's speed" in report_md
    assert verify["parity"]["top1_agreement"] >= 0.995
    model = onnx.load(str(out / "model.onnx"))
    assert lint(model, load_target("jetson")) == [] or all(v.severity == "warning" for v in lint(model, load_target("jetson")))
    for name in ("build_engine.sh", "build_engine.py", "build_config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "build_config.json").read_text())
    assert config["onnx"] == "model.onnx"  # the published folder is self-contained for the device
    assert "trtexec" in (out / "build_engine.sh").read_text()
    if not lower["engine_built"]:
        assert "build_engine" in lower["device_instructions"]


def test_jetson_pipeline_writes_lint_clean_qdq_and_build_recipe(trained_res, tmp_path):
    out = tmp_path / "run"
    profile = tmp_path / "jetson.toml"  # a tiny 8-channel net may lose a point at int8: widen the budget
    profile.write_text(load_target("jetson").path.read_text().replace("max_metric_drop = 0.01", "max_metric_drop = 0.05"))
    result = compress(trained_res, target=str(profile), calib="mnist", out=out, config=_config(tmp_path))
    _check_jetson_run(out, result)


@pytest.mark.slow
def test_jetson_pipeline_on_the_sample_teacher(tmp_path):
    out = tmp_path / "run"
    result = compress(SAMPLE_TEACHER, target="jetson", calib="mnist", out=out, config=_config(tmp_path))
    _check_jetson_run(out, result)
