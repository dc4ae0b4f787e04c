"""The text side of pruning's distillation: an unpruned copy stays the teacher, padding stays out
of the layerwise loss, and the least-squares refit brings a shrunk encoder closer to its teacher."""
import copy

import pytest
import torch
import torch.nn.functional as F

from compressor.artifacts import InputSpec, TensorSpec
from compressor.distill import matched_layer_loss, split_validation
from compressor.distill.padding import mask_index
from compressor.prune.cofi import choose_units
from compressor.prune.prune_pass import BatchDistillation, PruneConfig
from compressor.prune.transformer import discover_transformer
from test_prune_transformer import tiny, tokens

pytest.importorskip("transformers")

SPEC = InputSpec([TensorSpec("input_ids", ("batch", "sequence"), "int64"),
                  TensorSpec("attention_mask", ("batch", "sequence"), "int64")], task="embedding")


def sentences(count=48, length=16, seed=3):
    """Token batches of varied lengths, padded at the end as the text recipes pad them."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (count, length), generator=gen)
    lengths = torch.randint(3, length, (count,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


def test_distilling_an_unpruned_copy_keeps_it_the_teacher():
    # The loss, learning rate and train mode are right only if the teacher itself is a fixed point:
    # dropout left on or padding in the loss would move an exact copy away from its teacher.
    teacher = tiny()
    student = copy.deepcopy(teacher).eval()
    structure = discover_transformer(student)
    data = split_validation(sentences(), None, 0.25, 0)
    distillation = BatchDistillation(teacher, data, SPEC, PruneConfig(sparsity=0.5, batch=8), structure.layer_paths)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-4)
    for step in range(4):
        loss = distillation.loss(student, torch.arange(step * 8, step * 8 + 8))
        assert float(loss.detach()) < 1e-8
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        cos = F.cosine_similarity(student(*data.val), teacher(*data.val))
    assert float(cos.min()) > 0.9999


def test_the_layerwise_loss_ignores_padding_positions():
    teacher = [torch.randn(2, 6, 8) for _ in range(3)]
    student = [t.clone() for t in teacher]
    tokens = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    for s in student:
        s[tokens == 0] += 100.0  # whatever sits on padding positions
    assert float(matched_layer_loss(student, teacher, tokens)) == 0.0
    assert float(matched_layer_loss(student, teacher)) > 1.0


def test_the_layerwise_loss_weighs_every_hidden_dimension_alike():
    # one dimension a hundred times larger (BERT's outlier dimensions) must not drown the others
    teacher = torch.randn(4, 5, 8)
    teacher[..., 0] *= 100
    off_small, off_large = teacher.clone(), teacher.clone()
    off_small[..., 1] += teacher[..., 1].std()
    off_large[..., 0] += teacher[..., 0].std()
    small, large = matched_layer_loss([off_small], [teacher]), matched_layer_loss([off_large], [teacher])
    assert float(small) == pytest.approx(float(large), rel=0.05)


def test_least_squares_refit_brings_a_shrunk_encoder_closer_to_its_teacher():
    teacher = tiny()
    structure = discover_transformer(copy.deepcopy(teacher))
    keep = {}
    for g in structure.groups:
        keep[g.name] = torch.ones(g.size, dtype=torch.bool)
        if g.kind in ("heads", "ffn_dims"):
            keep[g.name][g.size // 2:] = False
    keep["encoder.layer.1.attention:mha_layer"][:] = False  # a removed sub-layer is left alone
    student = structure.shrink(keep).eval()
    train, held_out = sentences(96, seed=4), sentences(32, seed=5)
    batches = [tuple(x[s:s + 32] for x in train) for s in range(0, 96, 32)]

    def distance(model):
        with torch.no_grad():
            return float((1 - F.cosine_similarity(model(*held_out), teacher(*held_out))).mean())

    before = distance(student)
    assert structure.refit(student, teacher, batches, mask_index(SPEC)) == 5  # 3 FFN + 2 attention projections
    assert distance(student) < 0.5 * before
    ids, mask = tokens()
    assert discover_transformer(student) is not None and student(ids, mask).shape == teacher(ids, mask).shape


def test_units_are_ranked_by_their_share_of_the_output_when_gates_did_not_move():
    model = tiny()
    structure = discover_transformer(model)
    layer = model.model.encoder.layer[1]
    head = layer.attention.self.attention_head_size
    with torch.no_grad():  # head 2 of layer 1 and FFN dims 0-9 of layer 0 contribute nothing
        layer.attention.output.dense.weight[:, 2 * head:3 * head] = 0
        model.model.encoder.layer[0].output.dense.weight[:, :10] = 0
    importance = structure.importance([sentences(16)], mask_index(SPEC))
    assert float(importance["encoder.layer.1.attention:heads"][2]) == 0.0
    assert float(importance["encoder.layer.0.ffn:ffn_dims"][:10].abs().max()) == 0.0
    # a whole sub-layer weighs what all its units weigh: never cheaper to drop than its units
    whole, heads = importance["encoder.layer.0.attention:mha_layer"], importance["encoder.layer.0.attention:heads"]
    assert whole.shape == (1,) and float(whole) == pytest.approx(float(heads.sum()))
    unmoved = {g.name: torch.full((g.size,), 0.98) for g in structure.groups}
    keep, kept = choose_units(structure, unmoved, "params", 0.7, round_to=8, importance=importance)
    assert kept <= 0.7
    removed = ~keep["encoder.layer.0.ffn:ffn_dims"]
    assert int(removed.sum()) >= 8 and int(removed[:10].sum()) == min(10, int(removed.sum()))  # the idle ones first
    assert (not keep["encoder.layer.1.attention:heads"][2]
                                or not keep["encoder.layer.1.attention:mha_layer"].any())
