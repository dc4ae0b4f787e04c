"""A tiny CNN for loader and pipeline tests (importable as `tinynet:TinyNet` from this folder)."""
import torch.nn as nn


class TinyNet(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width * 26 * 26, 10)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).relu().flatten(1))


class ResTiny(nn.Module):
    """Conv-BN-ReLU, a residual block with an Add, global pooling, a Linear head: every op kind
    the quantization schemes place Q/DQ around, in a model that trains on MNIST in seconds."""

    def __init__(self, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, stride=2), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(width * 7 * 7, 10)

    def forward(self, x):
        x = self.stem(x)
        x = (x + self.body(x)).relu()
        return self.head(self.pool(x).flatten(1))


class TinyEncoder(nn.Module):
    """One post-LayerNorm (BERT-style) Transformer block over (batch, 8, 16) features and a pooled
    linear head: the residual Adds feed LayerNorm, so a CPU int8 scheme should leave them float."""

    def __init__(self, dim=16, classes=4):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attn = (q @ k.transpose(1, 2) / 4.0).softmax(dim=-1)
        x = self.norm1(x + self.proj(attn @ v))
        x = self.norm2(x + self.fc2(nn.functional.gelu(self.fc1(x))))
        return self.head(x.mean(dim=1))


class TinyEmbedder(nn.Module):
    """Token ids (batch, 6) -> embedding lookup -> mean -> linear: an embedding table to store int8."""

    def __init__(self, vocab=50, dim=16, classes=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(dim=1))
