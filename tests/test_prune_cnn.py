"""CNN structure discovery for pruning: coupled channel groups, removable residual blocks, the gated
model, the expected cost and the physically shrunk module (compressor/prune/cnn*.py)."""
from __future__ import annotations

import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from compressor.artifacts import InputSpec, TensorSpec
from compressor.export.onnx_export import export_onnx
from compressor.prune.cnn import discover_cnn
from compressor.prune.structure import full_counts
from compressor.quantize.graph import fold_batchnorm, insert_fake_quants, to_graph_module
from compressor.quantize.scheme import QuantScheme
from compressor.targets import load_target


def conv_bn(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


class Basic(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1, self.conv2 = conv_bn(cin, cout, stride=stride), conv_bn(cout, cout, act=None)
        self.shortcut = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.layer1, self.layer2 = Basic(8, 8), Basic(8, 16, stride=2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, expand, stride=1):
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(conv_bn(cin, hidden, 1, act=nn.ReLU6),
                                  conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                                  conv_bn(hidden, cout, 1, act=None))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, stride=2, act=nn.ReLU6)
        self.block1 = InvertedResidual(8, 8, 2)
        self.block2 = InvertedResidual(8, 12, 2, stride=2)
        self.head = conv_bn(12, 16, 1, act=nn.ReLU6)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.head(self.block2(self.block1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(10, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.c(y)), 1), 1))


class FlattenHead(nn.Module):
    """Flatten of (N, C, H, W) into a linear, through a view with its feature count as a constant."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.fc1, self.fc2 = nn.Linear(6 * 4 * 4, 12), nn.Linear(12, 3)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(x.reshape(x.shape[0], 6 * 4 * 4))))


class SqueezeExcite(nn.Module):
    """A channel attention multiply: the excitation conv's outputs are the features' channels."""

    def __init__(self):
        super().__init__()
        self.features, self.head = conv_bn(3, 8), conv_bn(8, 6, act=nn.SiLU)
        self.squeeze, self.excite = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        y = self.features(x)
        y = y * torch.sigmoid(self.excite(torch.relu(self.squeeze(y.mean((2, 3), keepdim=True)))))
        return self.fc(nn.functional.adaptive_avg_pool2d(self.head(y), 1).flatten(1))


def _randomize_bn(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net.eval()


def spec_for(size: int) -> InputSpec:
    return InputSpec((TensorSpec("x", ("batch", 3, size, size)),))


def discover(net: nn.Module, size: int = 16, fold: bool = True):
    spec = spec_for(size)
    gm, _ = to_graph_module(_randomize_bn(net), spec)
    if fold:
        fold_batchnorm(gm)
    x = torch.rand(2, 3, size, size)
    reference = gm(x)
    structure = discover_cnn(gm, (x,))
    torch.testing.assert_close(structure.model(x), reference, rtol=0, atol=0)  # gate points are identities
    return structure, spec, x


def eager_cost(net: nn.Module, size: int) -> tuple[int, int]:
    """MACs and params (BatchNorm folded into a bias) of an eager net's convs and linears."""
    from samples.mnist.model import count_macs

    params = sum(p.numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())
    params += sum(m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    return count_macs(net, (1, 3, size, size)), params


def random_keep(structure, seed: int, p: float = 0.5) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    keep = {}
    for g in structure.groups:
        k = torch.rand(g.size, generator=gen) < p
        if int(k.sum()) < g.min_keep:
            k[torch.randperm(g.size, generator=gen)[:g.min_keep]] = True
        keep[g.name] = k
    return keep


def assert_shrink_matches_gates(structure, keep, x) -> nn.Module:
    small = structure.shrink(keep)
    with structure.gated({k: v.float() for k, v in keep.items()}):
        gated = structure.model(x)
    torch.testing.assert_close(small(x), gated)
    assert not any(n.op == "call_module" for n in small.graph.nodes)  # an ordinary module
    # its cost is what expected_cost promised for these counts
    counts = {k: v.sum().double() for k, v in keep.items()}
    again = discover_cnn(small, (x,))
    small_cost = again.expected_cost(full_counts(again)) if again else None
    if small_cost is not None:
        promised = structure.expected_cost(counts)
        assert small_cost["macs"].item() == promised["macs"].item()
        assert small_cost["params"].item() == promised["params"].item()
    return structure.shrink(keep)


def names(structure, kind: str) -> list[str]:
    return [g.name for g in structure.groups if g.kind == kind]


def conv_count(gm) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and "conv" in str(n.target))


# --- the small nets -----------------------------------------------------------------------------

def test_resnet_groups_blocks_and_cost():
    net = ResNetish()
    structure, _, x = discover(net)
    # stage 1's residual stream (stem + layer1.conv2) is one group; layer2's stream (conv2 + its
    # projection shortcut) another; each block's hidden conv1; the logits are not prunable
    assert names(structure, "channels") == ["stem.0:out", "layer1.conv1.0:out", "layer2.conv1.0:out",
                                           "layer2.conv2.0:out"]
    assert [g.size for g in structure.groups if g.kind == "channels"] == [8, 8, 16, 16]
    blocks = [g for g in structure.groups if g.kind == "block"]
    assert [(b.name, b.min_keep, b.contains) for b in blocks] == [("layer1:block", 0, ("layer1.conv1.0:out",))]
    macs, params = eager_cost(net, 16)
    cost = structure.expected_cost(full_counts(structure))
    assert (cost["macs"].item(), cost["params"].item()) == (macs, params)
    # differentiable in every group's count and gate
    counts = {k: v.clone().requires_grad_() for k, v in full_counts(structure).items()}
    structure.expected_cost(counts)["macs"].backward()
    assert all(c.grad is not None and c.grad.item() > 0 for c in counts.values())
    gates = {g.name: torch.full((g.size,), 0.5, requires_grad=True) for g in structure.groups}
    with structure.gated(gates):
        structure.model(x).square().sum().backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gates.values())


def test_resnet_gated_equals_shrunk_and_blocks_vanish():
    structure, _, x = discover(ResNetish())
    for seed in range(3):
        assert_shrink_matches_gates(structure, random_keep(structure, seed), x)
    keep = {g.name: torch.ones(g.size, dtype=torch.bool) for g in structure.groups}
    keep["layer1:block"] = torch.tensor([False])
    small = assert_shrink_matches_gates(structure, keep, x)
    assert conv_count(small) == conv_count(structure.model) - 2


def test_unfolded_batchnorm_couples_and_is_sliced():
    structure, _, x = discover(ResNetish(), fold=False)
    assert len(names(structure, "channels")) == 4
    small = assert_shrink_matches_gates(structure, random_keep(structure, 7), x)
    bn = [n for n in small.graph.nodes if "batch_norm" in str(n.target)]
    assert bn and all(small.get_parameter(n.args[1].target).shape[0] < 16 for n in bn[-1:])


def test_mobilenet_depthwise_follows_its_input_and_inverted_residual_is_a_block():
    net = MobileNetish()
    structure, _, x = discover(net)
    assert names(structure, "channels") == ["stem.0:out", "block1.body.0.0:out", "block2.body.0.0:out",
                                           "block2.body.2.0:out", "head.0:out"]
    assert [(g.name, g.contains) for g in structure.groups if g.kind == "block"] == [
        ("block1:block", ("block1.body.0.0:out",))]
    macs, params = eager_cost(net, 16)
    cost = structure.expected_cost(full_counts(structure))
    assert (cost["macs"].item(), cost["params"].item()) == (macs, params)
    # a depthwise conv's MACs are linear in its group's count
    half = full_counts(structure) | {"block1.body.0.0:out": torch.tensor(8.0)}
    per_layer = structure.layer_macs(half)
    assert per_layer["block1.body.1.0"].item() == 8 * 9 * 8 * 8
    for seed in range(3):
        small = assert_shrink_matches_gates(structure, random_keep(structure, seed), x)
    dw = next(n for n in small.graph.nodes if "conv" in str(n.target) and len(n.args) > 6 and n.args[6] != 1)
    assert dw.args[6] == small.get_parameter(dw.args[1].target).shape[0] < 16


def test_concat_is_sliced_per_segment():
    structure, _, x = discover(Concat())
    assert names(structure, "channels") == ["a:out", "b:out", "c:out"]
    keep = {"a:out": torch.tensor([1, 0, 1, 0]).bool(), "b:out": torch.tensor([0, 0, 1, 1, 1, 0]).bool(),
            "c:out": torch.ones(8, dtype=torch.bool)}
    small = assert_shrink_matches_gates(structure, keep, x)
    c = next(n for n in small.graph.nodes if n.target == torch.ops.aten.conv2d.default and n.args[0].op != "placeholder")
    assert small.get_parameter(c.args[1].target).shape[1] == 5


def test_flatten_into_linear_maps_each_channel_to_its_pixels():
    net = _randomize_bn(FlattenHead())
    x = torch.rand(2, 3, 8, 8)
    program = torch.export.export(net, (x,))  # static batch: the view keeps 96 as a constant
    gm, _ = to_graph_module(program.module(), spec_for(8))
    structure = discover_cnn(gm, (x,))
    assert names(structure, "channels") == ["conv1:out", "conv2:out", "fc1:out"]  # not fc2: the logits
    macs, params = eager_cost(net, 8)
    assert structure.expected_cost(full_counts(structure))["macs"].item() == macs
    keep = random_keep(structure, 3)
    small = assert_shrink_matches_gates(structure, keep, x)
    fc1 = next(n for n in small.graph.nodes if n.target == torch.ops.aten.linear.default)
    assert small.get_parameter(fc1.args[1].target).shape[1] == 16 * int(keep["conv2:out"].sum())


def test_squeeze_excite_multiply_couples_the_excitation_with_the_features():
    net = SqueezeExcite()
    structure, _, x = discover(net)
    assert names(structure, "channels") == ["features.0:out", "squeeze:out", "head.0:out"]
    macs, params = eager_cost(net, 16)
    cost = structure.expected_cost(full_counts(structure))
    assert (cost["macs"].item(), cost["params"].item()) == (macs, params)
    for seed in range(2):
        assert_shrink_matches_gates(structure, random_keep(structure, seed), x)


def test_nothing_prunable_gives_none():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Softmax(dim=1)).eval()
    gm, _ = to_graph_module(net, spec_for(8))
    assert discover_cnn(gm, (torch.rand(2, 3, 8, 8),)) is None


@pytest.mark.parametrize("make", [ResNetish, MobileNetish])
def test_shrunk_module_saves_exports_and_quantizes(make, tmp_path):
    structure, spec, x = discover(make())
    keep = random_keep(structure, 1)
    small = structure.shrink(keep)
    torch.save(small, tmp_path / "small.pt")
    again = torch.load(tmp_path / "small.pt", weights_only=False)
    torch.testing.assert_close(again(x), small(x))

    def conv_weights(path):
        model = onnx.load(str(path))
        return sum(numpy_helper.to_array(t).size for t in model.graph.initializer if len(t.dims) == 4)

    assert export_onnx(small, spec, tmp_path / "small.onnx") == "dynamo"  # re-traced by torch.export
    export_onnx(make().eval(), spec, tmp_path / "full.onnx")
    assert conv_weights(tmp_path / "small.onnx") < conv_weights(tmp_path / "full.onnx")
    gm, _ = to_graph_module(small, spec)
    fold_batchnorm(gm)
    placed = insert_fake_quants(gm, QuantScheme.from_target(load_target("x86-cpu")))
    weighted = [l for l in placed.layers if any(f.startswith("wq_") for f in l.fake_quants)]
    assert len(weighted) == conv_count(small) + 1  # every conv and the linear head
    assert gm(x).shape == small(x).shape


# --- the MNIST sample teacher -------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist():
    from pathlib import Path

    from compressor.model_io import example_inputs, load_model

    artifact = load_model(Path(__file__).resolve().parents[1] / "samples" / "mnist" / "teacher.pt2")
    gm, _ = to_graph_module(artifact.module, artifact.spec)
    fold_batchnorm(gm)
    x = example_inputs(artifact.spec, batch=2)
    return discover_cnn(gm, x), x[0]


def test_mnist_sample_structure_and_cost(mnist):
    structure, _ = mnist
    channels = names(structure, "channels")
    # one residual stream per stage (the stem's, and each stage's projection + convs), one hidden
    # group per block
    assert channels[0] == "stem.0.0:out" and "layers.2.conv2.0:out" in channels and "layers.4.conv2.0:out" in channels
    assert len(channels) == 3 + 6
    # six residual adds; the first block of stages 2 and 3 has a projection shortcut
    assert names(structure, "block") == ["layers.0:block", "layers.1:block", "layers.3:block", "layers.5:block"]
    assert structure.expected_cost(full_counts(structure))["macs"].item() == 80_508_672


def test_mnist_sample_at_half_width(mnist):
    structure, x = mnist
    keep = {g.name: torch.arange(g.size) < (g.size + 1) // 2 for g in structure.groups}
    small = assert_shrink_matches_gates(structure, keep, x)
    full = structure.layer_macs(full_counts(structure))
    again = discover_cnn(small, (x,))
    half = again.layer_macs(full_counts(again))
    for layer in full:
        ratio = half[layer].item() / full[layer].item()
        expected = 0.5 if layer in ("stem.0.0", "fc") else 0.25  # the image and the logits stay
        assert ratio == expected, layer
