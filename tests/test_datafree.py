"""Data-free calibration (compressor.datafree) and cross-layer equalisation (quantize.equalize):
what a user without data relies on. Tiny models, few optimisation steps."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from compressor.api import RunOptions, run
from compressor.artifacts import MODULE, Artifact, InputSpec, TensorSpec
from compressor.capture import to_graph_module
from compressor.datafree import DataFreeConfig, bn_mismatch, choose_method, synthesize
from compressor.datafree.bn_statistics import batchnorm_model
from compressor.model_io import example_inputs, load_model
from compressor.progress import Progress
from compressor.quantize.equalize import equalize_weights
from compressor.quantize.graph import fold_batchnorm

IMAGE = InputSpec((TensorSpec("x", ("batch", 1, 28, 28)),), "classification")
FAST = DataFreeConfig(calibration_samples=64, holdout_samples=64, batch=32, iterations=25)


def res_tiny() -> nn.Module:
    """ResTiny whose BatchNorm statistics are those of real digits (reachable, and far from what
    random inputs give): a forward pass in training mode with a cumulative average."""
    from compressor.datasets.mnist import load_mnist_split
    from tinynet import ResTiny

    torch.manual_seed(0)
    net = ResTiny()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    x = torch.from_numpy(load_mnist_split(seed=0)[0][:512])
    with torch.no_grad():
        net.train()(x)
    return net.eval()


def artifact(module: nn.Module, spec: InputSpec = IMAGE) -> Artifact:
    return Artifact(MODULE, spec, "test-model", module=module, meta={"format": "nn.Module", "source_sha256": "x"})


def test_synthetic_inputs_match_batchnorm_statistics_better_than_random(tmp_path):
    model = res_tiny()
    data = synthesize(artifact(model), tmp_path, Progress(quiet=True), cfg=FAST)
    assert data.extras["method"] == "bn-statistics" and data.extras["data_source"] == "synthetic"
    assert data.num_calib == 64 and data.num_holdout == 64 and data.holdout_labels is None  # dealt classes are not labels
    graph = batchnorm_model(model, IMAGE)
    random_uniform = bn_mismatch(graph, example_inputs(IMAGE, batch=64, seed=5))
    random_normal = bn_mismatch(graph, (torch.randn(64, 1, 28, 28),))
    synthetic = bn_mismatch(graph, data.calib)
    assert synthetic < 0.5 * min(random_uniform, random_normal), (synthetic, random_uniform, random_normal)
    assert bn_mismatch(graph, data.holdout) < 0.5 * min(random_uniform, random_normal)  # held-out made the same way
    classes = torch.bincount(model(data.calib[0]).argmax(1), minlength=10)
    assert int((classes > 0).sum()) >= 5  # class-conditional targets: not one class for everything


def test_synthesis_is_cached_and_resumes_batch_by_batch(tmp_path):
    model = res_tiny()
    first = choose_method(artifact(model), None, FAST)
    calls = []

    class Counting:  # the real synthesizer, counting the batches it makes
        name, description, steps_per_batch = first.name, first.description, first.steps_per_batch

        def batch(self, count, seed, on_step):
            calls.append(seed)
            return first.batch(count, seed, on_step)

    data = synthesize(artifact(model), tmp_path, Progress(quiet=True), cfg=FAST, synthesizer=Counting())
    assert len(calls) == 4  # 2 calibration + 2 held-out batches of 32
    files = sorted((tmp_path / "datafree").rglob("batch-*.pt"))
    assert len(files) == 4
    files[1].unlink()  # a run killed before this batch was written
    calls.clear()
    again = synthesize(artifact(model), tmp_path, Progress(quiet=True), cfg=FAST, synthesizer=Counting())
    assert len(calls) == 1  # only the missing batch is made again, from its own seed
    assert all(torch.equal(a, b) for a, b in zip((*data.calib, *data.holdout), (*again.calib, *again.holdout)))
    assert again.fingerprint == data.fingerprint
    calls.clear()
    synthesize(artifact(model), tmp_path, Progress(quiet=True), cfg=FAST, synthesizer=Counting())
    assert calls == []


def test_models_without_batchnorm_get_the_named_fallback(tmp_path):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    data = synthesize(artifact(mlp), tmp_path, Progress(quiet=True), cfg=FAST)
    assert data.extras["method"] == "input-range"
    assert "no statistics to match" in data.extras["description"]
    x = data.calib[0]
    assert x.shape == (64, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_equalization_keeps_the_function_and_evens_channel_ranges():
    gm, _ = to_graph_module(res_tiny(), IMAGE)
    fold_batchnorm(gm)
    with torch.no_grad():  # one channel of the first conv of the pair much wider than the rest
        next(p for n, p in gm.named_parameters() if p.dim() == 4 and p.shape[1] == 8)[0].mul_(20)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        before = gm(x)
    info = equalize_weights(gm)
    with torch.no_grad():
        after = gm(x)
    assert info["pairs"] == 1  # the block's conv-ReLU-conv; the stem feeds the residual add too
    assert info["channel_range_spread_after"] < info["channel_range_spread_before"]
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4 * float(before.abs().max()))


@pytest.fixture(scope="module")
def datafree_run(trained_res, tmp_path_factory):
    """The x86-cpu pipeline on a trained residual CNN with no --calib (short QAD, small synthesis)."""
    folder = tmp_path_factory.mktemp("datafree")
    config = folder / "fast.toml"
    config.write_text("[quantize]\nepochs = 1\nsensitivity_samples = 16\nobserver = \"minmax\"\n"
                      "[verify]\nlatency_runs = 5\nwarmup = 1\n")
    options = RunOptions(out=folder / "run", config=config, quiet=True, datafree=FAST)
    return run(trained_res, "x86-cpu", None, options), config


def test_datafree_run_finishes_and_says_no_real_data_was_used(datafree_run):
    result, _ = datafree_run
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["status"] == "ok" and result.engine is not None
    calibration = report["calibration"]
    assert calibration["data_source"] == "synthetic" and calibration["method"] == "bn-statistics"
    assert calibration["bn_mismatch"] < calibration["bn_mismatch_at_start"]
    summary = result.summary()
    assert "no real data was used" in summary
    assert "accuracy on real inputs is unmeasured" in summary
    assert "64 held-out synthetic inputs" in summary
    verify = next(p for p in report["passes"] if p["name"] == "verify")["metrics"]
    assert verify["labels"] is False and verify["holdout_samples"] == 64  # agreement with the teacher, not labels
    quantize = next(p for p in report["passes"] if p["name"] == "quantize")["metrics"]
    assert quantize["equalization"]["pairs"] == 1 and "applied" in quantize["equalization"]
    assert len(quantize["qad_history"]) == 2  # QAD trained an epoch on the synthetic set, without labels
    assert "no real data was used" in (result.run_dir / "report.md").read_text()


def test_calib_with_real_data_wins(trained_res, tmp_path):
    from compressor.datasets.mnist import load_mnist_split

    x, y, _, _ = load_mnist_split(seed=0)
    np.savez(tmp_path / "digits.npz", x=x[:800], y=y[:800])
    config = tmp_path / "quantize.toml"
    config.write_text('passes = ["quantize"]\n[quantize]\nepochs = 0\nsensitivity_samples = 16\nobserver = "minmax"\n')
    result = run(trained_res, "x86-cpu", str(tmp_path / "digits.npz"),
                 RunOptions(out=tmp_path / "run", config=config, quiet=True, datafree=FAST))
    report = result.report
    assert report["calibration"]["data_source"] == "real" and report["calibration"]["labels"]
    assert "no real data" not in result.summary()
    assert not (tmp_path / "run" / "datafree").exists()  # nothing was synthesised
    quantize = next(p for p in report["passes"] if p["name"] == "quantize")["metrics"]
    assert "equalization" not in quantize  # "auto": only for synthetic data


def test_export_only_pipeline_keeps_random_inputs_and_says_so(models, fast_config, tmp_path):
    result = run(models["pt2"], "x86-cpu", None, RunOptions(out=tmp_path / "run", config=fast_config, quiet=True))
    assert result.report["calibration"]["data_source"] == "random"
    assert "verified on random inputs" in result.summary()
    assert not (tmp_path / "run" / "datafree").exists()


def test_vocabulary_fallback_for_a_hugging_face_encoder(tmp_path):
    from conftest import sample_module

    try:
        folder = sample_module("samples/minilm/locate.py", "minilm_locate").model_folder()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    import transformers

    teacher = load_model(folder)
    data = synthesize(teacher, tmp_path, Progress(quiet=True), folder, DataFreeConfig(calibration_samples=8, holdout_samples=8))
    assert data.extras["method"] == "tokenizer-vocabulary"
    ids, mask = data.calib
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    lengths = mask.sum(1)
    assert ids.shape[1] == 128 and len(set(lengths.tolist())) > 1  # sentences of different lengths, padded
    special = set(tokenizer.all_special_ids)
    for row, n in zip(ids, lengths):
        inner = row[1:int(n) - 1].tolist()  # between [CLS] and [SEP]
        assert not special & set(inner)
    assert len(data.extras["holdout_texts"]) == 8


def test_retrieval_is_gated_on_real_sentences_only():
    """Rank-1 retrieval among synthesised sentences turns on tiny margins: without real data the
    target's retrieval gate is reported, not applied; with real data it fails the engine."""
    from compressor.calibration import CalibrationData
    from compressor.export.verify import retrieval_failures, retrieval_minimum

    x = (torch.zeros(4, 8),)
    weak = {"retrieval_agreement": 0.77}
    real = CalibrationData("minilm", x, x, None, "f", {})
    synthetic = CalibrationData("data-free", x, x, None, "f", {"data_source": "synthetic"})
    assert retrieval_failures(weak, retrieval_minimum(real, 0.8))
    assert retrieval_minimum(synthetic, 0.8) == 0.0 and not retrieval_failures(weak, retrieval_minimum(synthetic, 0.8))
