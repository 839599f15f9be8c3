"""Residual blocks and the projection shortcut, small enough to read at a glance.

A block computes only its residual branch plus the sum with a shortcut that the caller passes
in: the projection shortcut (``group{g}_ds{i}``) is a separate module because a skipped
downsampling block still runs it (its output is what the skipped block passes on).
Parameter names follow torchvision and the SkipNet authors (``conv1``, ``bn1``, ...).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (BN follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (BN follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """1x1 conv + BN that matches the shortcut to a block's output shape."""
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (CIFAR ResNets, ImageNet ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, shortcut: Tensor) -> Tensor:
        # (B, C, H, W) -> (B, planes, H/stride, W/stride)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, as in the authors' code), 1x1 expand x4."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, shortcut: Tensor) -> Tensor:
        # (B, C, H, W) -> (B, 4 * planes, H/stride, W/stride)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


Block = BasicBlock | Bottleneck


def init_weights(model: nn.Module, gates: Sequence[nn.Module] = (),
                 generator: torch.Generator | None = None) -> None:
    """The one initialisation of the family: He-normal convs (fan-out), BN at (1, 0).

    Same scheme as the SkipNet authors and torchvision; ``fc`` keeps PyTorch's Linear scheme; the
    recurrent gate's output layer (``control.proj``) gets the authors' Linear init,
    N(0, 2 / (in * out)), 2.5 times the spread of PyTorch's default, so its probability depends
    on its input from the start; the gates' other Linear and LSTM layers keep PyTorch's defaults.

    The network's own layers are drawn first from ``generator``, the modules in ``gates`` after:
    a SkipNet's stem, blocks and classifier start exactly as those of the plain ResNet built from
    the same seed, whatever its gate, so SP and the plain ResNet it is compared with differ only
    by what the gates do. Why: short runs on hard data depend on the draw (measured on the
    synthetic set at difficulty 0.4-1: the same seed gave the recurrent SkipNet-20 blocks that
    stayed on the loss plateau through SP's warm-up, 84.8 % against the plain ResNet's 99.8 %).
    """
    gate_modules = [m for g in gates for m in g.modules()]
    in_gates = {id(m) for m in gate_modules}
    for m in [m for m in model.modules() if id(m) not in in_gates] + gate_modules:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and id(m) not in in_gates:     # PyTorch's scheme, from ``generator``
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                bound = 1 / math.sqrt(m.in_features)
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
    proj = getattr(getattr(model, "control", None), "proj", None)
    if isinstance(proj, nn.Linear):
        nn.init.normal_(proj.weight, 0.0, (2.0 / proj.weight.numel()) ** 0.5, generator=generator)


__all__ = ["BasicBlock", "Bottleneck", "Block", "conv1x1", "conv3x3", "projection_shortcut",
           "init_weights"]
