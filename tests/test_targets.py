"""Device profiles: shipped data found by name or alias, with errors that name file and key."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from compressor.cli import main
from compressor.errors import CompressError
from compressor.targets import bundled_profiles, load_target

REQUIRED = {"x86-cpu": "onnxruntime", "jetson-orin-nano": "tensorrt", "snapdragon-htp": "qnn", "rv64gcv": "cengine"}


def test_required_profiles_exist_with_their_backends():
    profiles = {p.name: p for p in bundled_profiles()}
    for name, backend in REQUIRED.items():
        assert profiles[name].backend == backend


@pytest.mark.parametrize("alias, name", [("jetson", "jetson-orin-nano"), ("npu", "snapdragon-htp"),
                                         ("riscv", "rv64gcv"), ("cpu", "x86-cpu")])
def test_aliases(alias, name):
    assert load_target(alias).name == name


def test_schemes_follow_the_architecture():
    trt = load_target("jetson")
    assert trt.activations.symmetric and trt.activations.dtype == "int8" and trt.activations.qrange == (-127, 127)
    assert trt.weights.granularity == "per_channel" and trt.data["device"]["arch"] == "sm_87"
    qnn = load_target("npu")
    assert qnn.activations.dtype == "uint8" and not qnn.activations.symmetric and qnn.activations.qrange == (0, 255)
    assert qnn.data["quantization"]["bias"] == "int32"
    rv = load_target("riscv")
    assert rv.activations.dtype == "int8" and rv.weights.granularity == "per_channel"
    assert rv.data["quantization"]["requantization"] == "fixed-point"


def test_unknown_target_lists_known_ones():
    with pytest.raises(CompressError, match="known targets: .*x86-cpu"):
        load_target("pdp-11")


def test_profile_from_path_and_errors_name_file_and_key(tmp_path):
    good = load_target("x86-cpu").path.read_text()
    path = tmp_path / "mine.toml"
    path.write_text(good.replace('name = "x86-cpu"', 'name = "mine"'))
    assert load_target(str(path)).name == "mine"

    path.write_text(good.replace("[pipeline]", "[pipeline\n"))
    with pytest.raises(CompressError, match=f"{path}: malformed TOML"):
        load_target(str(path))

    path.write_text(good.replace('symmetric = true', 'symmetric = "yes"'))
    with pytest.raises(CompressError, match="key 'quantization.weights.symmetric' must be bool"):
        load_target(str(path))

    path.write_text(good.replace('backend = "onnxruntime"\n', ""))
    with pytest.raises(CompressError, match="missing key 'backend'"):
        load_target(str(path))


def test_targets_command_lists_one_line_each():
    result = CliRunner().invoke(main, ["targets"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) == len(bundled_profiles())
    assert any(line.startswith("jetson-orin-nano") and "alias jetson" in line for line in lines)
    # a profile whose engine builder has not landed says so where users pick targets
    assert [line.split()[0] for line in lines if "engine builder not available yet" in line] == ["snapdragon-htp"]
