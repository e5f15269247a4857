"""A small model zoo: architectures reprodl may rebuild from a record without an allow-list.

GenNet, SmallResNet and SimpleScalingCNN end in ``log_softmax``, so they pair with
``torch.nn.NLLLoss`` as in the paper; ResNet18 gives logits, as torchvision's does (pair it with
``torch.nn.CrossEntropyLoss``). SimpleScalingCNN and ResNet18 are the architectures of the original
dtoolAI 0.2.0 (its ``GenNet`` and ``ResNet18Pretrained``), with the same state-dict keys, so the
weights it saved load into them.

Example:
    >>> net = GenNet(input_channels=1, input_dim=8)      # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GenNet", "ResNet18", "SimpleScalingCNN", "SmallResNet"]


class GenNet(nn.Module):
    """The paper's simple scaling CNN: two conv/pool stages and a linear classifier.

    Convolutions keep the spatial size (padding 2), so any input from 4x4 up works;
    8x8 digits and 28x28 MNIST both do.

    Args:
        input_channels: channels of the input images (1 gray, 3 RGB).
        input_dim: height and width of the (square) input images.
        n_outputs: number of classes.
        hidden_channels: channels of the first conv stage (the second has twice as many).
    """

    def __init__(
        self, input_channels: int = 1, input_dim: int = 28, n_outputs: int = 10, hidden_channels: int = 10
    ) -> None:
        super().__init__()
        if input_dim < 4:
            raise ValueError(f"input_dim should be at least 4, but got input_dim={input_dim}")
        self.conv1 = nn.Conv2d(input_channels, hidden_channels, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(hidden_channels, 2 * hidden_channels, kernel_size=5, padding=2)
        final_dim = input_dim // 2 // 2
        self.fc1 = nn.Linear(final_dim * final_dim * 2 * hidden_channels, n_outputs)

    @staticmethod
    def planned_size(
        input_channels: int = 1, input_dim: int = 28, n_outputs: int = 10, hidden_channels: int = 10
    ) -> tuple[int, int]:
        """(parameters, modules) these arguments build, counted without building (:func:`reprodl.trust.check_size`)."""
        c, k = _count(input_channels, "input_channels"), _count(n_outputs, "n_outputs")
        d, h = _count(input_dim, "input_dim"), _count(hidden_channels, "hidden_channels")
        if d < 4:
            raise ValueError(f"input_dim should be at least 4, but got input_dim={d}")
        final = d // 4
        n = (c * h * 25 + h) + (h * 2 * h * 25 + 2 * h) + (final * final * 2 * h * k + k)
        return n, 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.log_softmax(self.fc1(torch.flatten(x, 1)), dim=1)


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small ResNet (no torchvision): a stem and ``len(widths)`` residual stages.

    Args:
        input_channels: channels of the input images.
        n_outputs: number of classes.
        widths: channels per stage; each stage after the first halves the spatial size.
        blocks_per_stage: residual blocks per stage.
    """

    def __init__(
        self,
        input_channels: int = 1,
        n_outputs: int = 10,
        widths: tuple[int, ...] | list[int] = (16, 32),
        blocks_per_stage: int = 1,
    ) -> None:
        super().__init__()
        widths = list(widths)
        self.stem = nn.Sequential(
            nn.Conv2d(input_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        layers: list[nn.Module] = []
        c_in = widths[0]
        for i, width in enumerate(widths):
            for b in range(blocks_per_stage):
                layers.append(_Block(c_in, width, 2 if (i > 0 and b == 0) else 1))
                c_in = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_outputs)

    @staticmethod
    def planned_size(
        input_channels: int = 1,
        n_outputs: int = 10,
        widths: tuple[int, ...] | list[int] = (16, 32),
        blocks_per_stage: int = 1,
    ) -> tuple[int, int]:
        """(parameters, modules) these arguments build, counted per stage without building anything
        (:func:`reprodl.trust.check_size`): a million blocks cost no more to count than one."""
        c, k = _count(input_channels, "input_channels"), _count(n_outputs, "n_outputs")
        blocks = _count(blocks_per_stage, "blocks_per_stage", least=0)
        if isinstance(widths, (str, bytes)) or not isinstance(widths, (list, tuple)) or not widths:
            raise TypeError(f"widths should be a non-empty list of channel counts, but got widths={widths!r}")
        ws = [_count(w, "widths") for w in widths]
        n, modules = c * ws[0] * 9 + 2 * ws[0], 4  # stem: conv, batch norm, ReLU in a Sequential
        c_in = ws[0]
        for i, w in enumerate(ws if blocks else []):
            # A block: two 3x3 convolutions and two batch norms; the first of a stage also projects
            # its input (1x1 convolution, batch norm) when it strides (stages after the first) or
            # changes the width.
            projected = i > 0 or c_in != w
            n += c_in * w * 9 + w * w * 9 + 4 * w + ((c_in * w + 2 * w) if projected else 0)
            modules += 5 + (3 if projected else 1)
            n += (blocks - 1) * (2 * w * w * 9 + 4 * w)
            modules += (blocks - 1) * 6
            c_in = w
        return n + c_in * k + k, modules + 3  # head, stages (a Sequential), the network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.log_softmax(self.head(x), dim=1)


class SimpleScalingCNN(nn.Module):
    """dtoolAI 0.2.0's ``GenNet`` ("simpleScalingCNN"): two unpadded 5x5 conv/pool stages, two linear layers.

    The layers and their state-dict keys are dtoolAI's (``conv1``, ``conv2``, ``fc1``, ``fc2``), so
    a ``model.pt`` it saved loads into this class. Inputs are ``input_dim`` x ``input_dim``; the
    smallest that works is 16.

    Args:
        input_channels: channels of the input images.
        input_dim: height and width of the (square) input images.
        n_outputs: number of classes.
    """

    model_name = "simpleScalingCNN"
    categorical_output = True

    def __init__(self, input_channels: int = 1, input_dim: int = 28, n_outputs: int = 10) -> None:
        super().__init__()
        self.fcdim = _scaled_dim(input_dim)
        self.conv1 = nn.Conv2d(input_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(self.fcdim * self.fcdim * 16, 84)
        self.fc2 = nn.Linear(84, n_outputs)

    @staticmethod
    def planned_size(input_channels: int = 1, input_dim: int = 28, n_outputs: int = 10) -> tuple[int, int]:
        """(parameters, modules) these arguments build, counted without building (:func:`reprodl.trust.check_size`)."""
        c, k = _count(input_channels, "input_channels"), _count(n_outputs, "n_outputs")
        f = _scaled_dim(_count(input_dim, "input_dim"))
        n = (c * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (f * f * 16 * 84 + 84) + (84 * k + k)
        return n, 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = x.reshape(-1, self.fcdim * self.fcdim * 16)
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def _scaled_dim(input_dim: int) -> int:
    """The side of SimpleScalingCNN's last feature map for ``input_dim`` x ``input_dim`` inputs."""
    dim = ((input_dim - 4) // 2 - 4) // 2
    if dim < 1:
        raise ValueError(f"input_dim should be at least 16, but got input_dim={input_dim}")
    return dim


class _BasicBlock(nn.Module):
    """torchvision's BasicBlock: the same layers under the same names."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


_RESNET18_WIDTHS = (64, 128, 256, 512)


class ResNet18(nn.Module):
    """ResNet-18 in plain torch, with torchvision's state-dict keys (``conv1``, ``layer1.0.bn1``, ``fc``...).

    torchvision's ``resnet18`` ImageNet weights (a state dict) load into ``ResNet18()`` as they are;
    nothing is downloaded here (see ``reprodl.compat.dtoolai.models.ResNet18Pretrained``).

    Args:
        n_outputs: number of classes (1000 for ImageNet weights).
        input_channels: channels of the input images.
    """

    model_name = "resnet18"
    categorical_output = True

    def __init__(self, n_outputs: int = 1000, input_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = 64
        for i, width in enumerate(_RESNET18_WIDTHS):
            stride = 1 if i == 0 else 2
            self.add_module(
                f"layer{i + 1}", nn.Sequential(_BasicBlock(c_in, width, stride), _BasicBlock(width, width, 1))
            )
            c_in = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, n_outputs)

    @staticmethod
    def planned_size(n_outputs: int = 1000, input_channels: int = 3) -> tuple[int, int]:
        """(parameters, modules) these arguments build, counted without building (:func:`reprodl.trust.check_size`)."""
        k, c = _count(n_outputs, "n_outputs"), _count(input_channels, "input_channels")
        n, modules, c_in = c * 64 * 49 + 2 * 64, 6, 64  # stem (conv, bn, relu, maxpool), avgpool, the network
        for i, w in enumerate(_RESNET18_WIDTHS):
            projected = i > 0
            n += c_in * w * 9 + w * w * 9 + 4 * w + ((c_in * w + 2 * w) if projected else 0)
            n += 2 * w * w * 9 + 4 * w
            modules += 1 + 2 * 6 + (3 if projected else 0)  # a Sequential, two blocks, a downsample
            c_in = w
        return n + 512 * k + k, modules + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(len(_RESNET18_WIDTHS)):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _count(value: object, name: str, *, least: int = 1) -> int:
    """``value`` as a count of at least ``least`` (a recorded argument: an int, not a bool or a float)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} should be an integer of at least {least}, but got {name}={value!r}")
    return value
