"""AutoDistil (compressor.search.autodistil) on tiny random BERT teachers: weight sharing is exact,
the extracted student is a real smaller BertModel that computes what the supernet computed and
saves, reloads and exports like any encoder, constraints hold, and training lowers the loss."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="AutoDistil needs transformers: pip install -e '.[hf]'")
import transformers  # noqa: E402

from compressor.backends.ort_runner import OrtRunner  # noqa: E402
from compressor.distill import TrainingData, self_attention_relation_loss  # noqa: E402
from compressor.errors import CompressError  # noqa: E402
from compressor.export.onnx_export import export_onnx  # noqa: E402
from compressor.hf import HFClassifier, HFEncoder  # noqa: E402
from compressor.model_io import load_model  # noqa: E402
from compressor.search.autodistil import (SUBSPACES, AutoDistilConfig, SubnetSpec, Supernet, candidates,  # noqa: E402
                                          extract_subnet, full_spec, save_student, search, subnet_cost,
                                          train_supernet)
from compressor.search.autodistil.latency import text_spec  # noqa: E402
from compressor.search.outcome import SearchOutcome  # noqa: E402

VOCAB = 120


def bert_config(**kw) -> transformers.BertConfig:
    values = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64)
    return transformers.BertConfig(**{**values, **kw})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls on a shared, loaded machine: more threads only wait on each other (25x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoder() -> HFEncoder:
    torch.manual_seed(0)
    return HFEncoder(transformers.BertModel(bert_config()).eval(), "mean", True).eval()


@pytest.fixture(scope="module")
def classifier() -> HFClassifier:
    torch.manual_seed(1)
    return HFClassifier(transformers.BertForSequenceClassification(bert_config(num_labels=3)).eval()).eval()


def text(n: int, length: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded to `length` with sentences of varied real lengths."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=gen)
    real = torch.randint(4, length + 1, (n,), generator=gen)
    mask = (torch.arange(length)[None, :] < real[:, None]).long()
    return ids * mask, mask


@pytest.fixture(scope="module")
def data() -> TrainingData:
    return TrainingData(train=text(48, seed=0), val=text(16, seed=1), labels=None)


def test_largest_subnet_is_the_teacher(encoder, classifier):
    ids, mask = text(5)
    for teacher in (encoder, classifier):
        supernet = Supernet(teacher)
        with torch.no_grad():
            assert torch.equal(supernet(full_spec(supernet.dims), ids, mask), teacher(ids, mask))


def test_extracted_student_is_a_smaller_bert_computing_the_subnet(encoder, data):
    supernet = Supernet(encoder)
    with torch.no_grad():  # as if trained: the shared weights move away from the teacher's
        for p in supernet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    spec = SubnetSpec(layers=2, hidden=32, heads=4, ffn=24)
    student = extract_subnet(supernet, spec)
    assert type(student.model) is transformers.BertModel
    config = student.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (2, 32, 4, 24)
    assert student.pooling == "mean" and student.normalize
    ids, mask = data.val
    with torch.no_grad():
        assert torch.allclose(student(ids, mask), supernet(spec, ids, mask), atol=1e-6)
        # the shared weights are copied, not aliased: the student is standalone
        supernet.shared.model.encoder.layer[0].intermediate.dense.weight.zero_()
        assert not torch.allclose(student(ids, mask), supernet(spec, ids, mask), atol=1e-4)


def test_narrower_classifier_subnet_slices_hidden_and_heads(classifier):
    spec = SubnetSpec(layers=3, hidden=16, heads=2, ffn=32)
    student = extract_subnet(classifier, spec)  # a teacher directly: plain truncation
    assert type(student.model) is transformers.BertForSequenceClassification
    assert student.model.classifier.weight.shape == (3, 16)
    assert student.model.bert.encoder.layer[0].attention.self.query.weight.shape == (16, 16)
    ids, mask = text(4)
    with torch.no_grad():
        assert torch.allclose(student(ids, mask), Supernet(classifier)(spec, ids, mask), atol=1e-6)


def test_student_saves_reloads_and_exports(encoder, tmp_path):
    spec = SubnetSpec(layers=2, hidden=32, heads=4, ffn=32)
    student = extract_subnet(encoder, spec)
    folder = save_student(student, tmp_path / "student")
    loaded = load_model(folder)
    assert loaded.spec.task == "embedding"
    ids, mask = text(6)
    with torch.no_grad():
        expected = student(ids, mask)
        assert torch.allclose(loaded.module(ids, mask), expected, atol=1e-6)
    with pytest.raises(CompressError, match="not empty"):
        save_student(student, folder)
    export_onnx(student, text_spec(student), tmp_path / "student.onnx")
    got = OrtRunner(tmp_path / "student.onnx", threads=1)(ids.numpy(), mask.numpy())
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def test_relation_loss_is_zero_for_the_teacher_and_width_independent():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    teacher = tuple(torch.randn(2, 4, 8) for _ in range(3))
    assert float(self_attention_relation_loss(teacher, teacher, mask, 2)) == pytest.approx(0.0, abs=1e-6)
    student = tuple(torch.randn(2, 4, 4) for _ in range(3))  # narrower
    assert float(self_attention_relation_loss(student, teacher, mask, 2)) > 0
    # padding tokens play no part
    padded = tuple(t.clone() for t in teacher)
    for t in padded:
        t[0, 3] = 100.0
    assert float(self_attention_relation_loss(teacher, padded, mask, 2)) == pytest.approx(0.0, abs=1e-6)


def test_subspaces_are_data_and_keep_an_encoders_width(encoder, classifier):
    enc, cls = Supernet(encoder).dims, Supernet(classifier).dims
    for space in SUBSPACES.values():
        assert {s.hidden for s in candidates(space, enc)} == {32}
    assert min(s.hidden for s in candidates(SUBSPACES["tiny"], cls)) < 32
    tiny, base = candidates(SUBSPACES["tiny"], enc), candidates(SUBSPACES["base"], enc)
    assert max(subnet_cost(encoder, s, 24)["macs"] for s in tiny) < max(subnet_cost(encoder, s, 24)["macs"] for s in base)
    assert subnet_cost(encoder, full_spec(enc), 24)["params"] == sum(p.numel() for p in encoder.parameters())


def test_training_lowers_the_loss(encoder, data):
    cfg = AutoDistilConfig(epochs=3, lr=1e-3, batch=16, seed=0)
    _, history = train_supernet(encoder, data, SUBSPACES["tiny"], cfg)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert history[-1]["loss"] < history[1]["loss"]


def test_search_respects_the_constraints(encoder, data):
    full = subnet_cost(encoder, full_spec(Supernet(encoder).dims), 24)
    limit = SimpleNamespace(params=None, macs=full["macs"] // 2, peak_activation_bytes=None, latency_ms=None)
    cfg = SimpleNamespace(subspaces="tiny,small", epochs=1, lr=1e-3, batch=16, seed=0)
    outcome = search(encoder, data, limit, cfg)
    assert isinstance(outcome, SearchOutcome) and outcome.method == "autodistil"
    assert outcome.spec["macs"] <= limit.macs
    assert subnet_cost(encoder, SubnetSpec.from_json(outcome.spec), 24)["macs"] == outcome.spec["macs"]
    assert all(c.feasible == (c.macs <= limit.macs) for c in outcome.candidates)
    best = max((c for c in outcome.candidates if c.feasible), key=lambda c: c.score)
    assert outcome.spec["cosine"] == best.spec["cosine"] and outcome.spec["layers"] == best.spec["layers"]
    ids, mask = data.val
    assert outcome.student(ids, mask).shape == (16, 32)


def test_unreachable_constraints_name_the_binding_one(encoder, data):
    tiny = SimpleNamespace(macs=10, params=None)
    with pytest.raises(CompressError, match=r"smallest .* macs .* > 10"):
        search(encoder, data, tiny, SimpleNamespace(epochs=0))


def test_refuses_what_it_cannot_slice(encoder, data):
    with pytest.raises(CompressError, match="BERT-family"):
        search(torch.nn.Linear(4, 4), data)
    with pytest.raises(CompressError, match="unknown AutoDistil sub-space"):
        search(encoder, data, None, SimpleNamespace(subspaces="huge"))


def test_latency_limit_uses_the_pass_measure(encoder, data):
    # the search pass's measure (its target's runner); here: a cost proportional to the layers
    measured = []

    def latency_of(module) -> float:
        measured.append(module.model.config.num_hidden_layers)
        return float(module.model.config.num_hidden_layers)

    limit = SimpleNamespace(latency_ms=1.0, latency_of=latency_of)
    outcome = search(encoder, data, limit, SimpleNamespace(subspaces="tiny", epochs=0))
    assert outcome.spec["layers"] == 1 and measured
    assert all(c.feasible == (c.latency_ms is not None and c.latency_ms <= 1.0) for c in outcome.candidates)
