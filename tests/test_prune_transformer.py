"""The prunable structure of BERT encoders: groups, gated forward, cost model, physical shrink."""
import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from compressor.artifacts import InputSpec, TensorSpec
from compressor.export.onnx_export import export_onnx
from compressor.hf import INPUTS, HFClassifier, HFEncoder
from compressor.prune.structure import full_counts
from compressor.prune.transformer import discover_transformer
from tinynet import TinyNet

transformers = pytest.importorskip("transformers")

LAYERS, HEADS, HIDDEN, FFN = 3, 4, 32, 64


def tiny(kind=HFEncoder, attention="sdpa", seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                     num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=64,
                                     num_labels=3, attn_implementation=attention)
    inner = transformers.BertModel(config) if kind is HFEncoder else transformers.BertForSequenceClassification(config)
    return kind(inner).eval()


def tokens(batch=3, length=12, seed=1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1:, length // 2:] = 0  # padded sequences: the attention mask must go through unchanged
    mask[2:, 3:] = 0
    return ids, mask


def random_keep(structure, seed):
    """Random units kept, and on top: layer 0 without heads (its MHA sub-layer on), layer 1 without
    its FFN sub-layer, layer 2 without its MHA sub-layer and with no FFN dims (FFN sub-layer on)."""
    gen = torch.Generator().manual_seed(seed)
    keep = {g.name: torch.rand(g.size, generator=gen) < 0.6 for g in structure.groups}
    for g in structure.groups:
        if g.size == 1 or g.kind == "hidden":
            keep[g.name][:] = True
        keep[g.name][: g.min_keep] = True
    keep["encoder.layer.0.attention:heads"][:] = False
    keep["encoder.layer.1.ffn:ffn_layer"][:] = False
    keep["encoder.layer.2.attention:mha_layer"][:] = False
    keep["encoder.layer.2.ffn:ffn_dims"][:] = False
    if structure.hidden_name:
        keep[structure.hidden_name][HIDDEN // 2:] = torch.rand(HIDDEN - HIDDEN // 2, generator=gen) < 0.5
    return keep


def encoder_params(module):
    return sum(p.numel() for p in module.model.base_model.encoder.layer.parameters())


def test_an_encoder_has_per_layer_groups_and_no_hidden_group():
    structure = discover_transformer(tiny(HFEncoder))
    by_name = {g.name: g for g in structure.groups}
    assert len(structure.groups) == LAYERS * 4 and not structure.hidden_name  # the embedding keeps its width
    heads, mha = by_name["encoder.layer.1.attention:heads"], by_name["encoder.layer.1.attention:mha_layer"]
    assert (heads.kind, heads.size, heads.min_keep, heads.layer) == ("heads", HEADS, 0, "layer 1")
    assert (mha.kind, mha.size, mha.contains) == ("mha_layer", 1, (heads.name,))
    dims, ffn = by_name["encoder.layer.2.ffn:ffn_dims"], by_name["encoder.layer.2.ffn:ffn_layer"]
    assert (dims.kind, dims.size, ffn.kind, ffn.contains) == ("ffn_dims", FFN, "ffn_layer", (dims.name,))
    assert [g.name for g in discover_transformer(tiny(HFEncoder, seed=5)).groups] == list(by_name)  # stable
    modules = dict(structure.model.named_modules())
    assert [modules[path] for path in structure.layer_paths] == list(structure.base.encoder.layer)


def test_a_classifier_may_shrink_its_hidden_dimension():
    structure = discover_transformer(tiny(HFClassifier))
    hidden = [g for g in structure.groups if g.kind == "hidden"]
    assert [(g.name, g.size, g.min_keep) for g in hidden] == [("embeddings:hidden", HIDDEN, HIDDEN // HEADS)]
    assert len(structure.groups) == LAYERS * 4 + 1


def test_no_structure_for_other_models():
    assert discover_transformer(TinyNet()) is None
    assert discover_transformer(tiny(HFEncoder).model) is None  # a bare BertModel exposes its hidden states
    config = transformers.BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=HEADS,
                                     intermediate_size=FFN, position_embedding_type="relative_key")
    assert discover_transformer(HFEncoder(transformers.BertModel(config))) is None


def test_gates_act_only_inside_the_context():
    model = tiny(HFClassifier)
    structure = discover_transformer(model)
    ids, mask = tokens()
    before = model(ids, mask)
    with structure.gated({g.name: torch.ones(g.size) for g in structure.groups}):
        torch.testing.assert_close(model(ids, mask), before)
    with structure.gated({g.name: torch.zeros(g.size) for g in structure.groups if g.kind == "mha_layer"}):
        assert not torch.allclose(model(ids, mask), before)
    assert torch.equal(model(ids, mask), before)


def test_every_gate_gets_a_gradient():
    model = tiny(HFClassifier)
    structure = discover_transformer(model)
    gates = {g.name: torch.full((g.size,), 0.7, requires_grad=True) for g in structure.groups}
    with structure.gated(gates):
        model(*tokens()).square().sum().backward()
    assert all(gate.grad is not None and gate.grad.abs().sum() > 0 for gate in gates.values())


@pytest.mark.parametrize("kind,attention", [(HFEncoder, "sdpa"), (HFClassifier, "eager"), (HFClassifier, "sdpa")])
def test_the_shrunk_model_computes_what_the_gated_model_computes(kind, attention):
    model = tiny(kind, attention)
    structure = discover_transformer(model)
    ids, mask = tokens()
    for seed in range(3):
        keep = random_keep(structure, seed)
        with structure.gated({name: k.float() for name, k in keep.items()}):
            gated = model(ids, mask)
        small = structure.shrink(keep)
        torch.testing.assert_close(small(ids, mask), gated)
        assert encoder_params(small) < encoder_params(model)
        cost = structure.expected_cost({name: k.sum().float() for name, k in keep.items()})
        assert cost["params"].item() == encoder_params(small)  # the cost model is the shrunk model's size


def test_a_shrunk_model_can_be_pruned_again():
    model = tiny(HFClassifier)
    structure = discover_transformer(model)
    small = structure.shrink(random_keep(structure, 1))
    again = discover_transformer(small)
    # layer 0 lost its heads, layer 1 its FFN, layer 2 its MHA and its FFN dims: no groups left for those
    assert len(again.groups) == len(structure.groups) - 8
    cost = again.expected_cost(full_counts(again))
    assert cost["params"].item() == encoder_params(small)
    gen = torch.Generator().manual_seed(2)
    keep = {g.name: torch.arange(g.size) < max(g.min_keep, 1) + torch.randint(0, g.size, (), generator=gen)
            for g in again.groups}
    ids, mask = tokens()
    with again.gated({name: k.float() for name, k in keep.items()}):
        gated = small(ids, mask)
    torch.testing.assert_close(again.shrink(keep)(ids, mask), gated)


def test_full_counts_cost_the_exact_params_and_macs():
    model = tiny(HFClassifier, "eager")  # eager attention: its matmuls are visible to the FLOP counter
    sequence = 16
    structure = discover_transformer(model, sequence=sequence)
    cost = structure.expected_cost(full_counts(structure))
    assert cost["params"].item() == encoder_params(model)
    embeddings = sum(p.numel() for p in model.model.bert.embeddings.parameters())
    assert cost["embedding_params"].item() == embeddings
    with FlopCounterMode(display=False) as counter:
        model(*tokens(batch=1, length=sequence))
    assert cost["macs"].item() + cost["head_macs"].item() == counter.get_total_flops() / 2


def test_expected_cost_is_differentiable_in_every_count():
    structure = discover_transformer(tiny(HFClassifier))
    counts = {name: c.requires_grad_() for name, c in full_counts(structure).items()}
    cost = structure.expected_cost(counts)
    (cost["params"] + cost["macs"]).backward()
    assert all(c.grad is not None and c.grad.item() > 0 for c in counts.values())
    # a removed sub-layer removes its units' cost
    half = {name: c.detach() for name, c in counts.items()}
    half["encoder.layer.0.attention:mha_layer"] = torch.tensor(0.0)
    less = structure.expected_cost(half)
    assert less["macs"] < cost["macs"] and less["params"] < cost["params"]


def test_the_shrunk_model_saves_reloads_and_exports_with_smaller_tensors(tmp_path):
    model = tiny(HFClassifier)
    structure = discover_transformer(model)
    small = structure.shrink(random_keep(structure, 0))
    buffer = io.BytesIO()
    torch.save(small, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    ids, mask = tokens()
    torch.testing.assert_close(reloaded(ids, mask), small(ids, mask))

    spec = InputSpec(tuple(TensorSpec(name, ("batch", "sequence"), "int64") for name in INPUTS), max_sequence=64)
    assert export_onnx(reloaded, spec, tmp_path / "small.onnx") == "dynamo"  # dynamic batch and sequence
    graph = onnx.load(str(tmp_path / "small.onnx")).graph
    exported = sum(int(np.prod(t.dims)) for t in graph.initializer)
    assert exported < sum(p.numel() for p in model.parameters())
    assert all(min(t.dims, default=1) > 0 for t in graph.initializer)  # no zero-width tensor left
    session = ort.InferenceSession(str(tmp_path / "small.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    np.testing.assert_allclose(got, small(ids, mask).detach().numpy(), atol=1e-4, rtol=1e-4)


def test_minilm_half_heads_and_ffn_halve_the_encoder():
    locate = pytest.importorskip("samples.minilm.locate")
    try:
        folder = locate.model_folder()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    from compressor.hf import load_hf_folder

    model, _ = load_hf_folder(folder)
    structure = discover_transformer(model)
    assert len(structure.groups) == 6 * 4 and not structure.hidden_name
    full = structure.expected_cost(full_counts(structure))
    assert full["params"].item() == encoder_params(model) == 10_646_784  # embeddings excluded
    keep = {}
    for g in structure.groups:
        keep[g.name] = torch.arange(g.size) < (g.size // 2 if g.kind in ("heads", "ffn_dims") else g.size)
    small = structure.shrink(keep)
    assert encoder_params(small) == pytest.approx(encoder_params(model) / 2, rel=0.01)
    ids, mask = tokens(batch=4, length=24)
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(model(ids, mask), small(ids, mask)).mean().item()
    print(f"MiniLM half heads and FFN dims, untrained: encoder params {encoder_params(small)} "
          f"of {encoder_params(model)}, cosine to the teacher {cosine:.3f}")
    assert small(ids, mask).shape == model(ids, mask).shape
