"""What the summary promises: a speed verdict in words with the run's noise, size against the same
model in FP32 with the baseline named, retrieval agreement gated or labelled as not gated."""
from __future__ import annotations

import pytest
import torch

from compressor.api import fp32_weights_bytes
from compressor.export.verify import retrieval_failures
from compressor.profile.latency import measure, ratio_with_noise, speed_verdict
from compressor.report import summary_rows
from compressor.targets import load_target
from conftest import tiny_net


def _lat(engine_parts, fp32_parts):
    import numpy as np

    e, f = float(np.median(engine_parts)), float(np.median(fp32_parts))
    return {"engine": {"median_ms": e, "part_medians_ms": engine_parts},
            "fp32_onnx": {"median_ms": f, "part_medians_ms": fp32_parts}}


def test_ratio_noise_is_the_spread_over_the_parts_of_the_run():
    t = _lat([1.0, 1.1, 1.2, 1.0, 1.1], [1.0, 1.0, 1.0, 1.0, 1.0])
    ratio, noise = ratio_with_noise(t["engine"], t["fp32_onnx"])
    assert ratio == pytest.approx(1.1) and noise == pytest.approx(0.1)
    assert speed_verdict(ratio, noise) == "same"
    assert speed_verdict(1.08, 0.02) == "slower" and speed_verdict(0.6, 0.05) == "faster"


def test_measure_gives_part_medians():
    timings = measure({"a": lambda: None, "b": lambda: sum(range(200))}, runs=25, warmup=1)
    assert len(timings["a"]["part_medians_ms"]) == 5 and timings["b"]["runs"] == 25


def _report(verify: dict, sizes: dict) -> dict:
    return {"status": "ok", "target": {"name": "x86-cpu", "backend": "onnxruntime"}, "model": {"task": "classification"},
            "sizes": sizes, "passes": [{"name": "verify", "status": "ran", "seconds": 1.0, "metrics": verify}]}


def _verify(latency: dict, **extra) -> dict:
    return {"parity": {"max_abs_diff": 0.0, "cosine_mean": 1.0}, "precision": "int8", "metric_name": "top1",
            "labels": True, "teacher_metric": {"metric": 0.98}, "engine_metric": {"metric": 0.975},
            "metric_drop": 0.005, "holdout_samples": 100, "latency": latency, **extra}


def _timing(ratio: float, noise: float) -> dict:
    return {"threads": 1, "pytorch": {"median_ms": 1.0, "p90_ms": 1.0}, "engine": {"median_ms": ratio, "p90_ms": ratio},
            "speedup": 1 / ratio, "fp32_onnx": {"median_ms": 1.0, "p90_ms": 1.0}, "engine_over_fp32_onnx": ratio,
            "engine_over_fp32_onnx_noise": noise, "verdict": speed_verdict(ratio, noise)}


def test_summary_says_in_words_when_int8_is_not_faster():
    rows = dict(summary_rows(_report(_verify({"1_thread": _timing(1.08, 0.02), "all_threads": _timing(0.6, 0.05)}),
                                     {"model_bytes": 6_120_000, "engine_bytes": 724_000, "fp32_weights_bytes": 2_780_000})))
    verdict = rows["speed vs FP32 onnxruntime"]
    assert "1 thread: NOT faster (slower), engine time 1.08x of FP32 (noise +-0.02)" in verdict
    assert "all threads: faster, engine time 0.60x" in verdict


def test_size_is_against_fp32_in_the_same_format_not_the_input_file():
    sizes = {"model_bytes": 6_120_000, "engine_bytes": 724_000, "fp32_weights_bytes": 2_780_000}
    rows = dict(summary_rows(_report(_verify({}, fp32_onnx_bytes=2_780_000), sizes)))
    assert rows["size (vs the teacher as FP32 ONNX)"].startswith("2.78 MB -> 0.72 MB (3.84x smaller); input file 6.12 MB")
    rows = dict(summary_rows(_report(_verify({}), sizes)))  # no FP32 ONNX (e.g. the C engine): the FP32 weights
    assert rows["size (vs the teacher's FP32 weights)"].startswith("2.78 MB -> 0.72 MB (3.84x smaller)")


def test_fp32_weights_count_every_float_tensor_once():
    net = tiny_net()
    floats = sum(t.numel() for t in [*net.parameters(), *net.buffers()] if t.is_floating_point())
    assert fp32_weights_bytes(net) == 4 * floats
    tied = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    tied[1].weight = tied[0].weight  # shared: counted once
    assert fp32_weights_bytes(tied) == 4 * (16 + 4 + 4)


def test_retrieval_agreement_is_gated_where_the_target_sets_it():
    x86, riscv = load_target("x86-cpu").budgets, load_target("riscv").budgets
    assert x86.min_retrieval_agreement == 0.8 and riscv.min_retrieval_agreement == 0.0
    # the MiniLM int8 engine (bench/results/minilm_int8.json): 0.859 on 320 held-out sentences
    assert retrieval_failures({"retrieval_agreement": 0.859}, x86.min_retrieval_agreement) == []
    assert "retrieval agreement with the teacher 0.500 < 0.8" in retrieval_failures(
        {"retrieval_agreement": 0.5}, x86.min_retrieval_agreement)[0]
    assert retrieval_failures({"retrieval_agreement": 0.5}, riscv.min_retrieval_agreement) == []
    emb = _verify({}, min_retrieval_agreement=None)
    emb["engine_metric"] = {"metric": 0.99, "retrieval_agreement": 0.5}
    assert dict(summary_rows(_report(emb, {})))["rank-1 retrieval agreement"] == \
        "0.500 with the teacher (reported, not gated on this target)"
