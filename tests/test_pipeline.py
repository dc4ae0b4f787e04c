"""The pass manager: validation before work, caching, resume after a kill, and verification failures."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compressor import compress
from compressor.artifacts import ONNX, Artifact, sha256_file
from compressor.errors import CompressError, VerificationError
from compressor.pipeline import PASSES, Pass, PassResult, build_pipeline, register

from conftest import REPO


def test_pipeline_is_checked_before_any_work():
    with pytest.raises(CompressError, match="unknown pass 'quantise'"):
        build_pipeline(["quantise"], {}, "--passes")
    with pytest.raises(CompressError, match="pass 'verify' takes a onnx or engine artifact but gets a module"):
        build_pipeline(["verify"], {}, "--passes")
    with pytest.raises(CompressError, match="pass 'export' has no option 'opsett'"):
        build_pipeline(["export"], {"export": {"opsett": 18}}, "p.toml")
    with pytest.raises(CompressError, match="key 'export.opset' must be int"):
        build_pipeline(["export"], {"export": {"opset": "18"}}, "p.toml")
    with pytest.raises(CompressError, match="opset must be at least 17"):
        build_pipeline(["export"], {"export": {"opset": 13}}, "p.toml")
    with pytest.raises(CompressError, match="options given for passes not in the pipeline: verify"):
        build_pipeline(["export"], {"verify": {"batch": 8}}, "p.toml")


def test_planned_pass_is_reported_as_not_available(models, tmp_path, monkeypatch):
    import compressor.passes

    monkeypatch.setitem(compressor.passes.PLANNED, "nas", "a pass of the design not built yet")
    with pytest.raises(CompressError, match="not available yet"):
        compress(models["pt2"], target="x86-cpu", out=tmp_path / "run", passes=["nas", "export"])
    assert not (tmp_path / "run").exists()  # nothing written before the pipeline was valid


def test_planned_backend_fails_before_any_work(models, tmp_path, monkeypatch):
    import compressor.api
    import compressor.backends

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the missing backend was reported")

    monkeypatch.setattr(compressor.api, "_load", refuse)
    profile = tmp_path / "planned.toml"
    profile.write_text((REPO / "targets" / "x86-cpu.toml").read_text().replace('backend = "onnxruntime"', 'backend = "npu2"')
                       .replace('name = "x86-cpu"', 'name = "planned"').split("[onnxruntime]")[0])
    monkeypatch.setitem(compressor.backends.PLANNED, "npu2", "a backend of the design not built yet")
    with pytest.raises(CompressError, match=r"backend 'npu2' .* not available yet: target planned cannot "
                                            r"build its engine here; --passes quantize,export,verify stops at"):
        compress(models["pt2"], target=str(profile), calib="mnist", out=tmp_path / "run")
    assert not (tmp_path / "run").exists()

    # The same for a backend that is here but lacks its tools: the C engine without a cross toolchain.
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CompressError, match=r"cannot build the host C engine: missing make, cc .*Install the toolchain "
                                            r"with: .*: target rv64gcv cannot build its engine here"):
        compress(models["pt2"], target="riscv", calib="mnist", out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_run_writes_engine_report_and_resumes_from_cache(models, tmp_path, fast_config):
    out = tmp_path / "run"
    first = compress(models["pt2"], target="x86-cpu", calib="mnist", out=out, config=fast_config)
    assert first.passed and first.engine == out / "model.onnx"
    report = json.loads((out / "report.json").read_text())
    assert [p["status"] for p in report["passes"]] == ["ran", "ran"]
    assert report["engine"]["sha256"] == sha256_file(out / "model.onnx")
    assert {"torch", "onnx", "onnxruntime", "python"} <= set(report["versions"])
    verify = report["passes"][1]["metrics"]
    assert verify["passed"] and verify["parity"]["top1_agreement"] == 1.0
    assert verify["latency"]["1_thread"]["engine"]["median_ms"] > 0
    assert verify["latency_stand_in"] is False  # on x86 the ONNX file is the engine
    assert "fp32_onnx" not in verify["latency"]["1_thread"]  # an FP32 engine is its own baseline
    assert (out / "report.md").read_text().startswith("# Compression report")
    assert "not the device" not in (out / "report.md").read_text()

    with pytest.raises(CompressError, match="output directory exists"):
        compress(models["pt2"], target="x86-cpu", calib="mnist", out=out, config=fast_config)
    again = compress(models["pt2"], target="x86-cpu", calib="mnist", out=out, config=fast_config, resume=True)
    assert [p["status"] for p in again.report["passes"]] == ["cached", "cached"]

    # A damaged cached output is not trusted: the pass that made it runs again. Its new output
    # is byte-identical to the first, so verification of that content stays cached.
    engine = out / "01-export" / "model.onnx"
    engine.write_bytes(engine.read_bytes()[:-10])
    third = compress(models["pt2"], target="x86-cpu", calib="mnist", out=out, config=fast_config, resume=True)
    assert [p["status"] for p in third.report["passes"]] == ["ran", "cached"]
    assert third.report["engine"]["sha256"] == report["engine"]["sha256"]


def test_force_refuses_to_delete_a_folder_that_is_not_a_run(models, tmp_path):
    (tmp_path / "precious.txt").write_text("user data")
    with pytest.raises(CompressError, match="not a compress run directory"):
        compress(models["pt2"], out=tmp_path, force=True)
    assert (tmp_path / "precious.txt").exists()


@register
class PerturbPass(Pass):
    """Test-only: damages the engine's weights, as a buggy exporter or backend would."""

    name = "test-perturb"
    takes = (ONNX,)
    returns = ONNX

    @dataclass
    class Config:
        noise: float = 0.5

    def run(self, artifact, ctx, workdir):
        model = onnx.load(str(artifact.path))
        rng = np.random.default_rng(0)
        for init in model.graph.initializer:
            w = numpy_helper.to_array(init)
            if w.dtype == np.float32 and w.ndim >= 2:
                init.CopyFrom(numpy_helper.from_array(w + rng.normal(0, self.config.noise, w.shape).astype(np.float32), init.name))
        path = workdir / "model.onnx"
        onnx.save(model, str(path))
        return PassResult(Artifact(ONNX, artifact.spec, sha256_file(path), path=path, meta=artifact.meta))


def test_perturbed_engine_fails_verification_with_numbers_in_the_report(models, tmp_path, fast_config):
    out = tmp_path / "run"
    with pytest.raises(VerificationError, match="verification failed: max abs difference"):
        compress(models["pt2"], calib="mnist", out=out, config=fast_config, passes=["export", "test-perturb", "verify"])
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed"
    verify = report["passes"][-1]
    assert verify["status"] == "failed" and verify["metrics"]["parity"]["max_abs_diff"] > 1e-2
    assert not (out / "model.onnx").exists()  # a failed engine is never published as the result


# (engine-module cosine, engine-teacher, module-teacher, passes): MiniLM-L6 measurements (see
# compressor/export/verify.py), then exports broken on purpose
ENCODER_PARITY_CASES = [
    (0.9999, 0.9900, 0.9900, True),     # agreement at the bar
    (0.9982, 0.9938, 0.9939, True),     # x86-cpu engine: rounding flips, as close to the teacher
    (0.9952, 0.9917, 0.9918, True),     # riscv engine: the same
    (0.9944, 0.9926, 0.9939, False),    # one activation scale doubled in the file
    (0.9872, 0.9854, 0.9939, False),    # ... halved
    (0.9850, 0.9939, 0.9939, False),    # far from the module, whatever the teacher says
]


@pytest.mark.parametrize("cosine,engine_teacher,module_teacher,passes", ENCODER_PARITY_CASES)
def test_quantized_encoder_parity_accepts_rounding_flips_only(cosine, engine_teacher, module_teacher, passes):
    from compressor.export.verify import parity_failures

    p = {"cosine_mean": cosine, "teacher_cosine_engine": engine_teacher, "teacher_cosine_module": module_teacher}
    failures = parity_failures(p, "int8", 1e-3, "embedding")
    assert (not failures) == passes, failures


def test_kill_during_a_pass_loses_only_that_pass(models, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "slow_verify.toml"
    config.write_text('passes = ["export", "verify"]\n[verify]\nlatency_runs = 3000\nwarmup = 2\n')
    cmd = [sys.executable, "-m", "compressor.cli", str(models["pt2"]), "--calib", "mnist", "--out", str(out),
           "--config", str(config), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / ".02-verify.partial"
    deadline = time.time() + 120
    while not partial.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert partial.exists(), "verify never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "01-export" / "pass.json").exists() and not (out / "02-verify").exists()
    assert not (out / "model.onnx").exists() and not (out / "report.json").exists()

    config.write_text('passes = ["export", "verify"]\n[verify]\nlatency_runs = 10\nwarmup = 2\n')  # verify's key changes
    resumed = subprocess.run(cmd + ["--resume", "--json"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert [(p["name"], p["status"]) for p in report["passes"]] == [("export", "cached"), ("verify", "ran")]
    assert not partial.exists() and (out / "model.onnx").exists()


def teardown_module():
    PASSES.pop("test-perturb", None)


def test_fp32_baseline_that_does_not_export_drops_only_the_comparison(tmp_path, monkeypatch):
    """A teacher the exporter refuses leaves no half-written file and a reason, not a failed run."""
    import types

    import compressor.export.onnx_export as onnx_export
    from compressor.export.verify import fp32_baseline

    def half_write_then_fail(module, spec, path, **kwargs):
        path.write_bytes(b"partial")
        raise RuntimeError("Unsupported: data-dependent control flow\nmore detail")

    monkeypatch.setattr(onnx_export, "export_onnx", half_write_then_fail)
    ctx = types.SimpleNamespace(reference=types.SimpleNamespace(module=None, spec=None))
    path, why = fp32_baseline(ctx, tmp_path)
    assert path is None and why == "RuntimeError: Unsupported: data-dependent control flow"
    assert list(tmp_path.iterdir()) == []
