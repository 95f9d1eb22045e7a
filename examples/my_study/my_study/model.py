"""A two-layer perceptron. What a model class receives: its YAML keys (here `width`), and from
the data, input_shape (one sample's shape, a tuple) and n_classes; forward takes a float batch of
shape (B, *input_shape) and returns logits of shape (B, n_classes)."""

from __future__ import annotations

import math

import torch
from torch import nn


class TwoLayer(nn.Module):
    def __init__(self, width: int, input_shape: tuple[int, ...], n_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                                 nn.Linear(width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
