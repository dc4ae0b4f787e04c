"""Shared fixtures: small real models saved in every format the loader accepts."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]


def sample_module(relpath: str, name: str):
    """A module of the repository's samples (not installed with the package), loaded by path under
    `name`: samples/minilm/locate.py, samples/apps/c/models.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
SAMPLE_TEACHER = REPO / "samples" / "mnist" / "teacher.pt2"

TINYNET_FILE = Path(__file__).resolve().parent / "tinynet.py"


def tiny_net(width: int = 4) -> nn.Module:
    from tinynet import TinyNet

    torch.manual_seed(0)
    net = TinyNet(width)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is tested too
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """The same tiny CNN saved as .pt2 (dynamic and static batch), TorchScript, state_dict, pickle."""
    folder = tmp_path_factory.mktemp("models")
    m = tiny_net()
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(m, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: batch},)), folder / "tiny.pt2")
    torch.export.save(torch.export.export(m, (torch.rand(1, 1, 28, 28),)), folder / "tiny_static.pt2")
    torch.jit.save(torch.jit.script(m), str(folder / "tiny_ts.pt"))
    torch.save(m.state_dict(), folder / "tiny_sd.pt")
    torch.save(m, folder / "tiny_pickle.pt")
    return {"pt2": folder / "tiny.pt2", "pt2_static": folder / "tiny_static.pt2", "torchscript": folder / "tiny_ts.pt",
            "state_dict": folder / "tiny_sd.pt", "pickle": folder / "tiny_pickle.pt", "class_file": TINYNET_FILE}


@pytest.fixture(scope="session")
def trained_res(tmp_path_factory) -> Path:
    """A small residual CNN trained briefly on the bundled MNIST digits, saved as .pt2."""
    from compressor.datasets.mnist import load_mnist_split
    from tinynet import ResTiny

    torch.manual_seed(0)
    x, y, _, _ = load_mnist_split(seed=0)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    net = ResTiny()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(3):
        for i in torch.randperm(len(x)).split(64):
            loss = nn.functional.cross_entropy(net(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    path = tmp_path_factory.mktemp("trained") / "res.pt2"
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.export.save(torch.export.export(net, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: batch},)), path)
    return path


@pytest.fixture
def fast_config(tmp_path) -> Path:
    """The FP32 pipeline with a short latency measurement, to keep tests quick."""
    path = tmp_path / "fast.toml"
    path.write_text('passes = ["export", "verify"]\n[verify]\nlatency_runs = 10\nwarmup = 2\n')
    return path
