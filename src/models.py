"""Models, plain nn.Modules. Input shape and class count come from the data at build time."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn


class MLP(nn.Module):
    """The blog demo's bottleneck MLP: Dense 512 -> Drop -> 256 -> 256 -> Drop -> 128 -> 256 ->
    256 -> Drop -> 512 -> Drop -> classes, ReLU. `dropout_after` lists the hidden layers
    (0-based) followed by dropout."""

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        hidden: Sequence[int],
        dropout: float,
        dropout_after: Sequence[int],
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for index, size in enumerate(hidden):
            layers += [nn.Linear(width, size), nn.ReLU()]
            if index in dropout_after:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class CNN1d(nn.Module):
    """A small 1-D convnet for MNIST-1D: strided conv blocks, then a linear classifier on the
    flattened feature map. A flat input is one channel; (C, L) inputs keep their channels."""

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        channels: Sequence[int],
        kernel_size: int,
    ):
        super().__init__()
        if len(input_shape) == 1:
            in_channels, length = 1, input_shape[0]
            layers: list[nn.Module] = [nn.Unflatten(1, (1, length))]
        else:
            in_channels, length = input_shape
            layers = []
        for out_channels in channels:
            layers += [
                nn.Conv1d(in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2),
                nn.ReLU(),
            ]
            in_channels = out_channels
            length = (length - 1) // 2 + 1  # stride 2, 'same' padding
        layers += [nn.Flatten(), nn.Linear(in_channels * length, n_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
