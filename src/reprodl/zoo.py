"""A small model zoo: architectures reprodl may rebuild from a record without an allow-list.

Both models end in ``log_softmax``, so they pair with ``torch.nn.NLLLoss`` as in the paper.

Example:
    >>> net = GenNet(input_channels=1, input_dim=8)      # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GenNet", "SmallResNet"]


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


def _count(value: object, name: str, *, least: int = 1) -> int:
    """``value`` as a count of at least ``least`` (a recorded argument: an int, not a bool or a float)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} should be an integer of at least {least}, but got {name}={value!r}")
    return value
