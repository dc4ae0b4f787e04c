"""`compress --target riscv`: QAD int8 in the C engine's scheme, generated C99 engine, built for
host / rv64gc / rv64gcv and verified under qemu, published as a self-contained folder."""
from __future__ import annotations

import shutil

import pytest

from compressor import compress

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-riscv64", "clang-16", "riscv64-linux-gnu-gcc")),
    reason="RISC-V cross toolchain missing: apt-get install -y gcc-riscv64-linux-gnu g++-riscv64-linux-gnu qemu-user clang-16")


def test_riscv_pipeline_builds_a_bit_exact_engine(trained_res, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "pipeline.toml"
    config.write_text("[quantize]\nepochs = 1\n")
    result = compress(trained_res, target="riscv", calib="mnist", out=out, config=config)
    passes = {p["name"]: p["metrics"] for p in result.report["passes"]}
    low = passes["lower"]
    assert low["bit_exact"] and set(low["builds"]) == {"host", "rv64gc", "rv64gcv"}
    assert low["parity_ref"]["top1_agreement"] >= 0.995
    assert low["instructions"]["rvv_over_scalar"] < 0.35
    verify = passes["verify"]
    assert verify["runtime"] == "cengine engine" and verify["parity"]["top1_agreement"] >= 0.995
    for name in ("model.c", "model.h", "Makefile", "runner.c", "cengine/cengine.h"):
        assert (out / "cengine" / name).is_file(), name
    assert result.engine == out / "cengine" / "model.c"
    # the size the report claims is what the board holds (weights + rv64gcv code), not model.c,
    # which spells the weights out as C literals
    sizes = result.report["sizes"]
    assert sizes["engine_bytes"] == low["sizes"]["weight_bytes"] + low["sizes"]["code_bytes"]["rv64gcv"]
    assert sizes["engine_bytes"] < min(sizes["model_bytes"], result.engine.stat().st_size)
    summary = (out / "report.md").read_text()
    assert "weights + rv64gcv code" in summary and "top-1 100.0% vs onnxruntime" in summary
