"""Device profiles: shipped data found by name or alias, with errors that name file and key."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
from click.testing import CliRunner

from compressor.backends.cengine.emit import makefile
from compressor.backends.cengine.toolchain import RiscvToolchain, engine_toolchain, missing_tools
from compressor.cli import main
from compressor.errors import CompressError
from compressor.quantize.scheme import QuantScheme
from compressor.targets import backend_sections, bundled_profiles, load_target, register_sections
from compressor.tomlfile import read_toml

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
    assert trt.weights.granularity == "per_channel" and trt.device.arch == "sm_87"
    assert trt.quantization.bias == "float" and trt.precision.fallback == "fp16"
    qnn = load_target("npu")
    assert qnn.activations.dtype == "uint8" and not qnn.activations.symmetric and qnn.activations.qrange == (0, 255)
    assert qnn.quantization.bias == "int32" and qnn.device.htp_arch == 73 and qnn.device.soc_model == 43
    assert qnn.precision.fallback == "int16" and not qnn.settings.allow_cpu_fallback
    gen3, elite = load_target("snapdragon-8-gen3"), load_target("snapdragon-8-elite")
    assert (gen3.device.htp_arch, gen3.device.soc_model) == (75, 57)
    assert (elite.device.htp_arch, elite.device.soc_model) == (79, 69)
    rv = load_target("riscv")
    assert rv.activations.dtype == "int8" and rv.weights.granularity == "per_channel"
    assert rv.quantization.bias == "int32" and rv.quantization.accuracy_budget == 0.0


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
    assert any(line.startswith("jetson-orin-nano") and "alias jetson" in line and " sm_87 " in line for line in lines)
    # every bundled profile's engine builder is here (a planned one would say so on its line)
    assert not [line for line in lines if "engine builder not available yet" in line]
    assert any(line.startswith("snapdragon-htp") and "alias npu" in line and " hexagon-v73 " in line for line in lines)


def _variant(tmp_path, base: str, **replace: str):
    """A copy of a bundled profile with text replaced (each old text must be there)."""
    text = load_target(base).path.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{base}-variant.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("base, old, new, message", [
    ("x86-cpu", "latency_runs = 100", "latency_runs = 100\nlatency_run = 5",
     r"unknown key 'budgets.latency_run'; allowed in \[budgets\]: max_metric_drop, parity_atol, latency_runs"),
    ("x86-cpu", "[onnxruntime]", "[tensorrt]\nworkspace_mb = 64\n\n[onnxruntime]",
     r"unknown section '\[tensorrt\]'; allowed sections for backend 'onnxruntime': device, precision, "
     r"quantization, pipeline, budgets, onnxruntime"),
    ("x86-cpu", 'backend = "onnxruntime"', 'backend = "onnxruntime"\nbackends = ["x"]',
     "unknown key 'backends'; allowed at the top level: name, summary, backend, aliases"),
    ("jetson-orin-nano", 'arch = "sm_87"', 'arch = "sm_87"\ncuda = "12.6"',
     r"unknown key 'device.cuda'; allowed in \[device\]: arch, memory_gb, jetpack, tensorrt, dla_cores"),
    ("jetson-orin-nano", "workspace_mb = 1024", 'workspace_mb = "x"', "key 'tensorrt.workspace_mb' must be int, got 'x'"),
    ("jetson-orin-nano", "batch = [1, 1, 8]", "batch = [4, 1, 8]",
     r"key 'tensorrt.batch' must satisfy 1 <= min <= opt <= max, got \[4, 1, 8\]"),
    ("jetson-orin-nano", "dla_cores = 0", "dla_cores = false", "key 'device.dla_cores' must be int, got False"),
    ("rv64gcv", "vlen = 128", "vlen = 100", "key 'device.vlen' must be a power of two"),
    ("rv64gcv", 'emulator = "qemu-riscv64"', 'emulator = "qemu-riscv64 -cpu rv64"', "key 'device.emulator' must not set -cpu"),
    ("x86-cpu", 'bias = "int32"', 'bias = "int32"\nkeep_float_dtype = "fp32"',
     "key 'quantization.keep_float_dtype' is now 'precision.fallback'"),
    ("x86-cpu", 'compute = "int8"', 'compute = "int16"',
     "key 'precision.compute' is 'int16', but quantization.activations.dtype is 'uint8'"),
    ("x86-cpu", 'fallback = "fp32"', 'fallback = "fp64"', "key 'precision.fallback' must be one of fp32, fp16, bf16, int16"),
    ("snapdragon-htp", 'htp_performance_mode = "burst"', 'htp_performance_mode = "warp"',
     "key 'qnn.htp_performance_mode' must be one of"),
])
def test_profile_mistakes_name_file_and_key(tmp_path, base, old, new, message):
    path = _variant(tmp_path, base, **{old: new})
    with pytest.raises(CompressError, match=f"^{re.escape(str(path))}: {message}"):
        load_target(str(path))


def _normal(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _normal(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def _unread(toml: dict, typed: dict, where: str = "") -> list[str]:
    """Keys of `toml` whose value the typed sections do not hold as written."""
    missing = []
    for key, value in toml.items():
        if key not in typed:
            missing.append(where + key)
        elif isinstance(value, dict) and isinstance(typed[key], dict):
            missing += _unread(value, typed[key], f"{where}{key}.")
        elif _normal(value) != typed[key]:
            missing.append(f"{where}{key} ({value!r} read as {typed[key]!r})")
    return missing


@pytest.mark.parametrize("profile", bundled_profiles(), ids=lambda p: p.name)
def test_every_key_of_every_bundled_profile_is_read(profile):
    typed = {"name": profile.name, "summary": profile.summary, "backend": profile.backend,
             "aliases": list(profile.aliases)}
    for name in read_toml(profile.path):
        if name not in typed:
            typed[name] = _normal(profile.section(name))
    assert _unread(read_toml(profile.path), typed) == []
    # [precision] fallback is what quantize keeps sensitive layers in
    assert QuantScheme.from_target(profile).keep_float_dtype == profile.precision.fallback


def test_a_new_backend_adds_its_sections_with_one_call(tmp_path, monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class ToyDevice(backend_sections.Device):
        cores: int = 1

    @dataclasses.dataclass(frozen=True)
    class ToySettings:
        level: int = 3

    path = _variant(tmp_path, "x86-cpu", **{'backend = "onnxruntime"': 'backend = "toy"',
                                            '[onnxruntime]\nexecution_provider = "CPUExecutionProvider"': "[toy]\nlevel = 5"})
    with pytest.raises(CompressError, match=r"unknown section '\[toy\]'"):
        load_target(str(path))  # an unregistered backend has no section of its own
    monkeypatch.setattr(backend_sections, "SECTIONS", dict(backend_sections.SECTIONS))  # undone after the test
    register_sections("toy", ToyDevice, ToySettings)
    toy = load_target(str(path))
    assert toy.section("toy") == ToySettings(level=5) and toy.device == ToyDevice(arch="x86-64", cores=1)
    with pytest.raises(CompressError, match=r"has no \[tensorrt\] section"):
        toy.section("tensorrt")


def test_riscv_toolchain_defaults_are_the_bundled_profile():
    assert RiscvToolchain.from_device(load_target("riscv").device) == RiscvToolchain()


def test_riscv_toolchain_follows_the_profile(tmp_path, monkeypatch):
    path = _variant(tmp_path, "rv64gcv", **{"vlen = 128": "vlen = 256",
                                            'cross_compiler = "clang-16"': 'cross_compiler = "clang-17"',
                                            'emulator = "qemu-riscv64"': 'emulator = "qemu-riscv64 -L /opt/rv"'})
    tools = RiscvToolchain.from_device(load_target(str(path)).device)
    assert tools.emulator_command("build/rv64gcv/runner", "rv64gcv") == [
        "qemu-riscv64", "-L", "/opt/rv", "-cpu", "rv64,v=true,vlen=256", "build/rv64gcv/runner"]
    assert tools.emulator_command("r", "rv64gc")[-3:] == ["-cpu", "rv64,v=false", "r"]
    # the RVV build promises what the emulator (and the board) has: VLEN >= 256
    text = makefile("model", tools)
    assert "RV_CC       ?= clang-17\n" in text and "-march=rv64gcv_zvl256b -DCE_USE_RVV" in text
    assert "-march=rv64gc\n" in text and "-mabi=lp64d" in text
    assert "qemu-riscv64 -L /opt/rv -cpu rv64,v=true,vlen=256 build/rv64gcv/runner IN OUT" in text
    default = makefile("model", RiscvToolchain())
    assert "RV_CC       ?= clang-16\n" in default and "-march=rv64gcv -DCE_USE_RVV" in default
    # an engine keeps the toolchain it was generated for; every later build and run reads it there
    (tmp_path / "engine.json").write_text(json.dumps({"toolchain": tools.to_json()}))
    assert engine_toolchain(tmp_path) == tools
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "clang-17" in missing_tools("rv64gcv", run=True, toolchain=tools)
