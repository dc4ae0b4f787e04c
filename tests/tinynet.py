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
