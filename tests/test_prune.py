"""The prune pass: CoFi gates, budgets, choosing units, the pipeline around it, resume."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from compressor import compress
from compressor.cli import main
from compressor.errors import Interrupted, CompressError
from compressor.prune.budget import Budget, from_options
from compressor.prune.cofi import choose_units
from compressor.prune.hardconcrete import HardConcreteGates
from compressor.prune.structure import UnitGroup


def test_hard_concrete_gates_are_exactly_zero_or_one_often_and_their_expected_l0_is_right():
    torch.manual_seed(0)
    gates = HardConcreteGates(4000, init_keep=0.7)
    assert float(gates.keep_probability().detach().mean()) == pytest.approx(0.7, abs=1e-5)
    sampled = gates.sample()
    samples = sampled.detach()
    assert float(samples.min()) == 0.0 and float(samples.max()) == 1.0
    assert float((samples == 0).float().mean()) > 0.05 and float((samples == 1).float().mean()) > 0.05
    assert float((samples > 0).float().mean()) == pytest.approx(0.7, abs=0.03)  # P(gate != 0)
    sampled.sum().backward()
    assert gates.log_alpha.grad is not None and gates.log_alpha.grad.abs().sum() > 0


class _Linear:
    """A Structure whose cost is the sum of its groups' kept units (to test choose_units alone)."""

    def __init__(self, groups):
        self.groups = groups

    def expected_cost(self, counts):
        total = sum(counts.values())
        return {"params": total, "macs": total}


def test_choose_units_meets_the_budget_with_rounded_widths():
    groups = [UnitGroup("a", "channels", 64), UnitGroup("b", "channels", 64), UnitGroup("block", "block", 1, 0)]
    torch.manual_seed(0)
    probabilities = {"a": torch.rand(64), "b": torch.full((64,), 0.9), "block": torch.tensor([0.8])}
    keep, fraction = choose_units(_Linear(groups), probabilities, "macs", 0.4, round_to=8)
    assert fraction <= 0.4
    for name in ("a", "b"):
        assert int(keep[name].sum()) % 8 == 0 and int(keep[name].sum()) >= 8
    # the most probable units are the ones kept
    kept_a = keep["a"].nonzero().flatten()
    assert probabilities["a"][kept_a].min() >= probabilities["a"][~keep["a"]].max()


def test_choose_units_refuses_a_budget_below_the_minimum():
    groups = [UnitGroup("a", "channels", 4, min_keep=4)]
    with pytest.raises(CompressError, match="cannot meet the budget"):
        choose_units(_Linear(groups), {"a": torch.ones(4)}, "macs", 0.5)


def test_budgets_are_checked():
    with pytest.raises(CompressError, match="--sparsity must be a fraction in"):
        Budget("sparsity", 1.5)
    with pytest.raises(CompressError, match="--macs-budget must be a fraction in"):
        Budget("macs", 0.0)
    with pytest.raises(CompressError, match="give one pruning budget"):
        from_options(0.5, 0.3, None)
    assert Budget("sparsity", 0.6).keep_fraction == pytest.approx(0.4)
    assert Budget("sparsity", 0.6).cost == "params" and Budget("latency", 0.5).cost == "macs"


def _config(tmp_path: Path, body: str, passes: str = '"prune", "export", "verify"') -> Path:
    path = tmp_path / "prune.toml"
    verify = "[verify]\nlatency_runs = 10\nwarmup = 2\n" if "verify" in passes else ""
    path.write_text(f'passes = [{passes}]\n[prune]\nprune_epochs = 2\nepochs = 1\nbatch = 64\n{body}\n{verify}')
    return path


def _loose_target(tmp_path: Path) -> Path:
    """x86-cpu with a 5-point metric budget: these tests check the pipeline, not the accuracy that
    a few training steps of a width-8 net can reach (bench/prune_bench.py measures that)."""
    text = (Path(__file__).resolve().parents[1] / "targets" / "x86-cpu.toml").read_text()
    path = tmp_path / "x86-loose.toml"
    path.write_text(text.replace("max_metric_drop = 0.01", "max_metric_drop = 0.05").replace('name = "x86-cpu"', 'name = "x86-loose"'))
    return path


def _conv_weights(path: Path) -> list[tuple[int, ...]]:
    model = onnx.load(str(path))
    return [tuple(numpy_helper.to_array(i).shape) for i in model.graph.initializer if len(i.dims) == 4]


def test_pruned_cnn_is_physically_smaller_within_budget_and_verified(trained_res, tmp_path):
    result = compress(trained_res, target=str(_loose_target(tmp_path)), calib="mnist", out=tmp_path / "run",
                      config=_config(tmp_path, "macs_budget = 0.5"))
    prune = result.report["passes"][0]["metrics"]
    assert prune["pruned"] and prune["family"] == "cnn"
    # a CNN's fine-tune warms its learning rate up (FAMILY_WARMUP) unless the config says otherwise
    assert prune["finetune"] == {"epochs": 1, "lr": 3e-3, "lr_warmup": 0.1}
    assert prune["macs"]["after"] <= 0.5 * prune["macs"]["before"] + 1
    assert prune["teacher_metric"] - prune["pruned_metric"] <= 0.05
    teacher_onnx = tmp_path / "teacher.onnx"
    from compressor.export.onnx_export import export_onnx
    from compressor.model_io import load_model, LoadOptions

    teacher = load_model(trained_res, LoadOptions())
    export_onnx(teacher.module, teacher.spec, teacher_onnx)
    before, after = _conv_weights(teacher_onnx), _conv_weights(result.engine)
    assert sum(torch.Size(s).numel() for s in after) < sum(torch.Size(s).numel() for s in before)
    # accuracy vs latency of teacher, pruned and final engine, each timed against the teacher
    trade = result.report["tradeoff"]
    assert [p["label"] for p in trade["points"]] == ["teacher", "pruned FP32", "final engine"]
    verify = result.report["passes"][-1]["metrics"]
    assert trade["points"][2]["time_vs_teacher"] == verify["latency"]["1_thread"]["engine_over_fp32_onnx"]
    assert (tmp_path / "run" / "tradeoff.png").is_file()
    assert "![accuracy vs latency](tradeoff.png)" in (tmp_path / "run" / "report.md").read_text()
    assert result.report["status"] == "ok"
    md = (result.run_dir / "report.md").read_text()
    assert "## Structured pruning (CoFi)" in md and "pruned FP32 latency" in md
    chart = next(result.run_dir.glob("01-prune/kept.png"))
    assert chart.stat().st_size > 0
    assert not list(result.run_dir.glob(".*.checkpoints"))  # removed once the pass finished


def test_unreachable_budget_fails_before_training(trained_res, tmp_path):
    with pytest.raises(CompressError, match="not prunable"):
        compress(trained_res, target="x86-cpu", calib="mnist", out=tmp_path / "run",
                 config=_config(tmp_path, "macs_budget = 0.001"))


def test_a_model_without_prunable_structure_passes_unchanged(tmp_path):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    result = compress(net, target="x86-cpu", calib="mnist", out=tmp_path / "run", input_shape=(1, 1, 28, 28),
                      config=_config(tmp_path, "sparsity = 0.5"))
    prune = result.report["passes"][0]["metrics"]
    assert prune["pruned"] is False and "no prunable structure" in prune["reason"]
    assert result.report["status"] == "ok"


def test_a_killed_pruning_resumes_from_its_checkpoint(trained_res, tmp_path, monkeypatch):
    import compressor.prune.prune_pass as prune_pass

    calls = {"n": 0, "die_at": 60}  # 3600 training digits / 64 = 57 steps an epoch: early in epoch 2
    real = prune_pass.prediction_loss

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prune_pass, "prediction_loss", counting)
    config = _config(tmp_path, "macs_budget = 0.5")
    target = str(_loose_target(tmp_path))
    with pytest.raises(Interrupted, match="interrupted during the prune pass"):
        compress(trained_res, target=target, calib="mnist", out=tmp_path / "run", config=config)
    assert list((tmp_path / "run").glob(".01-prune.*.checkpoints/gates.pt"))
    calls.update(n=0, die_at=-1)
    result = compress(trained_res, target=target, calib="mnist", out=tmp_path / "run", config=config, resume=True)
    assert calls["n"] < 2 * 57 + 57  # epoch 1 was not trained again (one gate epoch + the fine-tune epoch)
    assert [h["epoch"] for h in result.report["passes"][0]["metrics"]["gate_history"]] == [1, 2]


def test_cli_budget_puts_prune_in_front_and_bad_budgets_exit_2(trained_res, tmp_path):
    runner = CliRunner()
    bad = runner.invoke(main, ["run", str(trained_res), "--calib", "mnist", "--sparsity", "1.5",
                               "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--sparsity must be a fraction in (0, 1)" in bad.output
    from compressor.api import RunOptions, _pipeline_request
    from compressor.targets import load_target

    names, configs, _ = _pipeline_request(load_target("x86-cpu"), RunOptions(overrides={"prune": {"macs_budget": 0.3}}))
    assert names == ["prune", "quantize", "export", "lower", "verify"] and configs["prune"] == {"macs_budget": 0.3}
    names, _, _ = _pipeline_request(load_target("x86-cpu"), RunOptions(passes=["export", "verify"],
                                                                        overrides={"prune": {"macs_budget": 0.3}}))
    assert names == ["export", "verify"]  # --passes still decides


def test_latency_budget_prunes_through_a_measured_cost_model(trained_res, tmp_path):
    result = compress(trained_res, target=str(_loose_target(tmp_path)), calib="mnist", out=tmp_path / "run",
                      config=_config(tmp_path, "latency_budget = 0.7", passes='"prune"'))
    prune = result.report["passes"][0]["metrics"]
    model = prune["latency_model"]
    assert [p["variant"] for p in model["points"]][0] == "teacher" and len(model["points"]) >= 2
    assert all(p["median_ms"] > 0 for p in model["points"]) and model["slope_ms"] > 0
    # the MACs budget is what the fitted line predicts for 70% of the teacher's measured latency
    expected = (0.7 * model["teacher_ms"] - model["fixed_ms"]) / model["slope_ms"]
    assert prune["budget"]["keep_fraction"] == pytest.approx(min(1.0, expected), rel=1e-6)
    assert prune["macs"]["after"] <= prune["budget"]["keep_fraction"] * prune["macs"]["before"] + 1
    assert "Latency budget through a cost model" in (result.run_dir / "report.md").read_text()


def test_bert_encoder_prunes_heads_and_ffn_then_quantizes_end_to_end(tmp_path):
    """A tiny HF encoder: CoFi with layerwise distillation, physical shrink, then the x86 int8
    pipeline on the smaller encoder; the embedding keeps its width (the output is the hidden state)."""
    pytest.importorskip("transformers")
    from test_hf import ST_MODULES, text_recipe, tiny_folder

    folder = tiny_folder(tmp_path / "encoder", modules=ST_MODULES, pooling={"pooling_mode_mean_tokens": True})
    config = tmp_path / "p.toml"
    config.write_text('[prune]\nsparsity = 0.5\nprune_epochs = 2\nepochs = 1\nbatch = 16\n'
                      '[quantize]\nepochs = 0\nbatch = 16\nsensitivity_samples = 8\n[verify]\nlatency_runs = 5\nwarmup = 1\n')
    loose = _loose_target(tmp_path).read_text().replace("max_metric_drop = 0.05", "max_metric_drop = 1.0")
    (tmp_path / "x86-loose.toml").write_text(loose)  # a random tiny encoder: the pipeline is what is checked
    result = compress(folder, target=str(tmp_path / "x86-loose.toml"), calib=str(text_recipe(tmp_path, max_length=32)),
                      out=tmp_path / "run", config=config)
    assert result.report["pipeline"] == ["prune", "quantize", "export", "lower", "verify"]
    prune = result.report["passes"][0]["metrics"]
    assert prune["family"] == "transformer"
    assert prune["params"]["after"] <= 0.5 * prune["params"]["before"] + 1
    assert not any(row["kind"] == "hidden" for row in prune["structure"])
    assert result.report["status"] == "ok"
    verify = result.report["passes"][-1]["metrics"]
    assert verify["parity"]["cosine_mean"] >= 0.99
