"""A backend added from outside the package: registered, picked by a target profile's `backend`
key, preflighted, lowered, run by verify and by `compress profile`, with no other module touched."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import REPO, SAMPLE_TEACHER

from compressor.api import compress
from compressor.artifacts import ENGINE, ONNX, Artifact, sha256_file
from compressor.backends import BACKENDS, Backend, backend_for_file, get_backend, register_backend
from compressor.cli import main
from compressor.errors import CompressError
from compressor.pipeline import PassResult

FAST = {"verify": {"latency_runs": 5, "warmup": 1}}


class ToyRunner:
    """Runs a .toy file: the ONNX bytes behind an 8-byte magic, in onnxruntime."""

    def __init__(self, path: Path, backend: ToyBackend):
        data = Path(path).read_bytes()
        assert data[:8] == ToyBackend.MAGIC, f"{path} is not a toy engine"
        self.session = ort.InferenceSession(data[8:], providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.backend = backend

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        self.backend.calls += 1
        return self.session.run(None, dict(zip(self.names, arrays)))[0]


class ToyBackend(Backend):
    name = "toy"
    suffixes = (".toy",)
    runs_on_host = True
    MAGIC = b"TOYENGN1"

    def __init__(self):
        self.missing: str | None = None  # what preflight reports as missing
        self.lowered = 0
        self.calls = 0

    def preflight(self, target) -> None:
        if self.missing:
            raise CompressError(f"the toy backend needs {self.missing}")

    def lower(self, artifact, ctx, workdir, config):
        self.lowered += 1
        engine = workdir / "model.toy"
        engine.write_bytes(self.MAGIC + artifact.path.read_bytes())
        meta = {**artifact.meta, "engine_built": True}
        return PassResult(Artifact(ENGINE, artifact.spec, sha256_file(engine), path=engine, meta=meta),
                          {"toy_bytes": engine.stat().st_size})

    def runner(self, path, threads=None):
        return ToyRunner(path, self)

    def input_specs(self, runner):
        return [(tuple(i.shape), np.float32) for i in runner.session.get_inputs()]


@pytest.fixture
def toy():
    backend = register_backend(ToyBackend())
    try:
        yield backend
    finally:
        BACKENDS.pop("toy")


@pytest.fixture
def toy_target(tmp_path) -> Path:
    """targets/x86-cpu.toml with another name and backend, without its [onnxruntime] section."""
    text = (REPO / "targets" / "x86-cpu.toml").read_text()
    text = re.sub(r'(?m)^name = .*$', 'name = "toy-cpu"', text)
    text = re.sub(r'(?m)^backend = .*$', 'backend = "toy"', text)
    text = text.split("[onnxruntime]")[0]
    path = tmp_path / "toy-cpu.toml"
    path.write_text(text)
    return path


def test_registry_lists_refuses_and_finds_by_name_and_suffix(toy, monkeypatch):
    import compressor.backends

    monkeypatch.setitem(compressor.backends.PLANNED, "npu2", "a backend of the design not built yet")
    assert get_backend("toy") is toy
    assert backend_for_file(Path("m.toy")) is toy and backend_for_file(Path("m.onnx")).name == "onnxruntime"
    with pytest.raises(ValueError, match="registered already"):
        register_backend(ToyBackend())
    with pytest.raises(CompressError, match=r"backend 'npu2' .* not available yet"):
        get_backend("npu2")
    with pytest.raises(CompressError, match=r"unknown backend 'nope'; known backends: .*toy"):
        get_backend("nope")


def test_pipeline_runs_through_a_registered_backend(toy, toy_target, tmp_path):
    out = tmp_path / "run"
    result = compress(SAMPLE_TEACHER, target=str(toy_target), calib="mnist", out=out,
                      config=_config(tmp_path))
    assert result.passed and toy.lowered == 1
    assert result.engine == out / "model.toy" and result.engine.read_bytes()[:8] == ToyBackend.MAGIC
    report = json.loads((out / "report.json").read_text())
    assert report["target"]["backend"] == "toy"
    lower, verify = (p["metrics"] for p in report["passes"][1:])
    assert lower["toy_bytes"] == result.engine.stat().st_size
    # verify ran the toy engine in the toy runner (parity and latency), not onnxruntime's
    assert verify["runtime"] == "toy engine" and toy.calls > 0
    assert verify["parity"]["top1_agreement"] == 1.0
    assert verify["latency"]["1_thread"]["engine"]["median_ms"] > 0
    assert verify["latency_stand_in"] is False  # runs_on_host: its times are the engine's own
    assert "fp32_onnx" not in verify["latency"]["1_thread"]


def test_backend_preflight_failure_stops_the_run_before_any_work(toy, toy_target, tmp_path, monkeypatch):
    import compressor.api

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the preflight failure was reported")

    monkeypatch.setattr(compressor.api, "_load", refuse)
    toy.missing = "a toy compiler"
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(SAMPLE_TEACHER), "--target", str(toy_target), "--calib", "mnist",
                                       "--passes", "export,lower,verify", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "error: the toy backend needs a toy compiler: target toy-cpu cannot build its engine here; "
        "--passes export,verify stops at the verified QDQ ONNX"]
    assert not out.exists() and toy.lowered == 0


def test_profile_picks_the_backend_by_file_suffix(toy, tmp_path):
    from compressor.export.onnx_export import export_onnx
    from compressor.model_io import load_model

    artifact = load_model(SAMPLE_TEACHER)
    onnx_path = tmp_path / "teacher.onnx"
    export_onnx(artifact.module, artifact.spec, onnx_path)
    engine = tmp_path / "teacher.toy"
    engine.write_bytes(ToyBackend.MAGIC + onnx_path.read_bytes())
    result = CliRunner().invoke(main, ["profile", str(engine), "--runs", "5", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    # a backend with only a runner is timed here, in this process, with no per-layer times
    assert report["engines"][0]["median_ms"] > 0 and report["engines"][0]["input_shapes"] == [[1, 1, 28, 28]]
    assert toy.calls >= 5 and report["measured_on"]["pid"] == os.getpid()

    bad = tmp_path / "model.xyz"
    bad.write_bytes(b"x")
    result = CliRunner().invoke(main, ["profile", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {bad}: unknown engine type '.xyz'; known: .onnx, .engine, .plan, .toy"]


@pytest.mark.parametrize("backend, kind, path, meta, runtime, stand_in, timed, fp32", [
    # the ONNX file is the onnxruntime engine, whether or not lower ran: timed for real, and a
    # quantized one against the FP32 teacher in the same runtime
    ("onnxruntime", ONNX, "m.onnx", {}, "onnxruntime (all optimizations)", False, True, True),
    ("onnxruntime", ENGINE, "m.onnx", {"engine_built": True}, "onnxruntime (all optimizations)", False, True, True),
    # a TensorRT engine built here (on the device) runs in TensorRT; else its ONNX is a host stand-in
    ("tensorrt", ENGINE, "m.engine", {"engine_built": True, "onnx": "m.onnx"}, "tensorrt engine", False, True, False),
    ("tensorrt", ENGINE, "m.onnx", {"engine_built": False, "onnx": "m.onnx"},
     "onnxruntime (QDQ reference semantics)", True, True, False),
    ("tensorrt", ONNX, "m.onnx", {}, "onnxruntime (QDQ reference semantics)", True, True, False),
    # the C engine's host build is timed by its lower pass, not by verify
    ("cengine", ENGINE, "cengine/model.c", {"engine_built": True}, "cengine engine", True, False, False),
    ("cengine", ONNX, "m.onnx", {}, "onnxruntime (QDQ reference semantics)", True, True, False),
    # the QNN context model runs on the HTP simulator here, labelled as such
    ("qnn", ENGINE, "qnn/model_ctx.onnx", {"engine_built": True}, "QNN HTP simulator on x86 (onnxruntime-qnn)",
     True, True, False),
    ("qnn", ONNX, "m.onnx", {}, "onnxruntime (QDQ reference semantics)", True, True, False),
])
def test_how_verify_runs_each_backends_artifact(backend, kind, path, meta, runtime, stand_in, timed, fp32):
    artifact = Artifact(kind, None, "", path=Path("/nowhere") / path, meta=meta)
    check = get_backend(backend, planned=True).verification(artifact)
    assert (check.runtime, check.latency_stand_in, check.timed, check.fp32_baseline) == (runtime, stand_in, timed, fp32)


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "fast.toml"
    path.write_text('passes = ["export", "lower", "verify"]\n' + "".join(
        f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()) for name, options in FAST.items()))
    return path
