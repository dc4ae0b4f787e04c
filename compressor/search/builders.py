"""The built-in student families' networks (families.py declares their choices): small ResNet-like
and MobileNetV2-like image classifiers of conv, BatchNorm, ReLU(6), residual adds, global pooling
and a Linear head, built for the teacher's input channels, resolution and number of outputs."""
from __future__ import annotations

from torch import nn


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), nn.ReLU(), conv_bn(cout, cout, 3))
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers = [conv_bn(cin, hidden, 1), nn.ReLU6()] if expansion != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(), conv_bn(hidden, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class FamilyNet(nn.Module):
    """stem conv -> stages of blocks -> global average pool -> Linear."""

    def __init__(self, block: str, in_channels: int, classes: int, stem: int, stages: list[dict], stem_stride: int = 1):
        super().__init__()
        act = nn.ReLU6() if block == "inverted" else nn.ReLU()
        self.stem = nn.Sequential(conv_bn(in_channels, stem, 3, stem_stride), act)
        blocks, cin = [], stem
        for stage in stages:
            for i in range(stage["depth"]):
                stride = stage["stride"] if i == 0 else 1
                if block == "inverted":
                    blocks.append(InvertedResidual(cin, stage["width"], stride, stage["expansion"]))
                else:
                    blocks.append(BasicBlock(cin, stage["width"], stride))
                cin = stage["width"]
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


BLOCKS = ("basic", "inverted")
