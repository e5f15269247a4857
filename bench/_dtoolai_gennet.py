"""dtoolAI 0.2.0's GenNet layout (dtoolai/models.py, MIT), for training the same network on both sides.

reprodl's own ``reprodl.zoo.GenNet`` is a different (wider, padded) network, so
bench_dtoolai.py trains this one with reprodl: the same layers, sizes and forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GenNet(nn.Module):
    """conv(5) 6 -> pool -> conv(5) 16 -> pool -> fc 84 -> fc n_outputs, log-softmax."""

    def __init__(self, input_channels: int = 1, input_dim: int = 28, n_outputs: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, 6, 5)
        dim = (input_dim - 4) // 2
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fcdim = (dim - 4) // 2
        self.fc1 = nn.Linear(self.fcdim * self.fcdim * 16, 84)
        self.fc2 = nn.Linear(84, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = F.relu(self.fc1(x.view(-1, self.fcdim * self.fcdim * 16)))
        return F.log_softmax(self.fc2(x), dim=1)
