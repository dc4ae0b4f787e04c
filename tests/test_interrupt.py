"""Ctrl-C: a real SIGINT to the command line during a pass gives exit 130, a report that says
"interrupted" and names the pass (no engine), and --resume finishes the run."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest


def _start(*args):
    proc = subprocess.Popen([sys.executable, "-m", "compressor.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    return proc, seen, reader


@pytest.mark.slow
def test_sigint_during_quantize_reports_interrupted_and_resume_finishes(models, tmp_path):
    config = tmp_path / "pipeline.toml"
    config.write_text('passes = ["quantize", "export", "verify"]\n[verify]\nlatency_runs = 10\nwarmup = 2\n'
                      "[quantize]\nepochs = 3\nobserver = \"minmax\"\n")
    out = tmp_path / "run"
    args = [models["pt2"], "--calib", "mnist", "--out", out, "--config", config]
    proc, seen, reader = _start(*args)
    deadline = time.time() + 240
    while "quantize ..." not in "".join(seen):
        assert proc.poll() is None and time.time() < deadline, "".join(seen)
        time.sleep(0.1)
    time.sleep(2.0)  # inside the pass
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=120)
    reader.join(timeout=10)
    stderr = "".join(seen)
    assert rc == 130, stderr
    assert "interrupted during the quantize pass" in stderr and "Traceback" not in stderr and "Aborted" not in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "interrupted" and report["interrupted_pass"] == "quantize"
    assert "engine" not in report and not (out / "model.onnx").exists()
    assert "interrupted" in (out / "report.md").read_text()

    done = subprocess.run([sys.executable, "-m", "compressor.cli", *map(str, args), "--resume", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "ok" and (out / "model.onnx").is_file()
