"""Sample MNIST teacher in the MobileNetV2 style: what int8 finds hardest in small CNNs.

Inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 linear projection, identity shortcut
where the shape allows), BatchNorm after every conv, ReLU6 activations, global average pooling
and a Linear head. Depthwise convs have one input channel per output channel, so a per-tensor
activation range shared by all channels costs them most; ReLU6 bounds activations to [0, 6].
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MnistMobileNet(nn.Module):
    """MobileNetV2-style net for 1x28x28 inputs in [0, 1]; N x ``num_classes`` logits.

    `stages` lists (expand ratio, channels, blocks, first stride), as in the MobileNetV2 paper.
    """

    def __init__(self, stages: tuple[tuple[int, int, int, int], ...] = ((1, 16, 1, 1), (4, 24, 2, 2),
                                                                        (4, 40, 2, 2), (4, 64, 2, 1)),
                 stem: int = 16, head: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        blocks: list[nn.Module] = [conv_bn_relu6(1, stem, 3)]
        cin = stem
        for expand, cout, count, stride in stages:
            for i in range(count):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        blocks.append(conv_bn_relu6(cin, head, 1))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))
