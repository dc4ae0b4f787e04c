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
