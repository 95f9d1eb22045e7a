"""Models, plain nn.Modules. Input shape and class count come from the data at build time; every
other argument from conf/model/ (no defaults here: the YAML is the one source of each number)."""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


# MLP's weight initialisations. A Literal, so that validation (src/config.py, which checks a
# built group's keys against its constructor's annotations) refuses any other model.init in one
# line before anything is built, from this one spelling.
MLPInit = Literal["torch", "keras"]


class MLP(nn.Module):
    """The blog demo's bottleneck MLP: Dense 512 -> Drop -> 256 -> 256 -> Drop -> 128 -> 256 ->
    256 -> Drop -> 512 -> Drop -> classes, ReLU. `dropout_after` lists the hidden layers
    (0-based) followed by dropout.

    init: "torch", PyTorch's nn.Linear default (weights and biases uniform in +-1/sqrt(fan_in));
    "keras", Keras' Dense default (glorot-uniform weights, uniform in
    +-sqrt(6 / (fan_in + fan_out)), zero biases), the blog demo's own (it is Keras code).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        hidden: Sequence[int],
        dropout: float,
        dropout_after: Sequence[int],
        init: MLPInit,
    ):
        super().__init__()
        if init not in typing.get_args(MLPInit):
            raise ValueError(f"MLP init={init!r}: allowed: {', '.join(typing.get_args(MLPInit))}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for index, size in enumerate(hidden):
            layers += [nn.Linear(width, size), nn.ReLU()]
            if index in dropout_after:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)
        if init == "keras":
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)  # glorot_uniform
                    nn.init.zeros_(layer.bias)

    def forward(self, x):
        return self.net(x)


class CNN1d(nn.Module):
    """A small 1-D convnet for MNIST-1D: strided conv blocks, then a linear classifier on the
    flattened feature map. A flat input is one channel; (C, L) inputs keep their channels.

    batch_norm: a BatchNorm1d between each conv and its ReLU, off by default; on, it makes the
    conv weights scale-invariant, as the paper's WRN is (an ablation of docs/reproduction.md asks
    whether that is what lets it take the figure-5 lr). Its statistics are over what one forward
    pass sees: the whole batch in one process, but a DDP rank's share under torchrun and each half
    of a step measured for the noise scale (trainer.gns, one step in trainer.gns_every), which
    then trains a little differently; micro-batches are refused with it (src/config.py).

    ghost_batch_size (given as `+model.ghost_batch_size=51`; absent, None): batch norm over ghost
    batches of that many samples (GhostBatchNorm1d), as the paper's WRN normalises 128 of 50,000
    at any B, so that the normalisation's noise does not shrink as the batch grows; None: over the
    whole forward pass, whose noise does shrink as B grows."""

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        channels: Sequence[int],
        kernel_size: int,
        batch_norm: bool,
        ghost_batch_size: int | None = None,  # None: not in conf/model/cnn1d.yaml, plain batch norm
    ):
        super().__init__()
        if ghost_batch_size is not None and not batch_norm:
            raise ValueError(f"ghost_batch_size={ghost_batch_size} needs batch_norm=true")
        if len(input_shape) == 1:
            in_channels, length = 1, input_shape[0]
            layers: list[nn.Module] = [nn.Unflatten(1, (1, length))]
        else:
            in_channels, length = input_shape
            layers = []
        for out_channels in channels:
            layers.append(nn.Conv1d(in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2))
            if batch_norm:
                layers.append(nn.BatchNorm1d(out_channels) if ghost_batch_size is None
                              else GhostBatchNorm1d(out_channels, ghost_batch_size))
            layers.append(nn.ReLU())
            in_channels = out_channels
            length = (length - 1) // 2 + 1  # stride 2, 'same' padding
        layers += [nn.Flatten(), nn.Linear(in_channels * length, n_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class _GhostBatches:
    """Ghost batch norm (Hoffer et al. 2017), as the paper uses it: in training the batch is cut
    into chunks of `ghost_batch_size` samples (the last may be smaller) and each chunk is
    normalised with its own mean and variance, so the normalisation noise does not shrink as B
    grows. With ghost_batch_size >= the batch, and in eval mode, it is the plain batch norm it extends
    (GhostBatchNorm2d for images, GhostBatchNorm1d for 1-D feature maps).

    The running statistics take one update per forward call in training, as plain BN's do,
    towards the mean over chunks of the chunk means and of the (unbiased) chunk variances: what
    TensorFlow's virtual_batch_size does, and what eval mode then normalises with. A forward call
    is one batch, or one micro-batch when trainer.micro_batch_size splits the batch: then the
    statistics take k updates per parameter update (k micro-batches), each towards that
    micro-batch's chunks, so they forget k times faster per step (momentum 0.1: over the last
    ~10 micro-batches rather than ~10 batches). The ghost batches themselves, and so training,
    are the same when the micro-batch is a multiple of ghost_batch_size (src/config.py checks).
    """

    def __init__(self, num_features: int, ghost_batch_size: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.ghost_batch_size = ghost_batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or len(x) <= self.ghost_batch_size:
            return super().forward(x)
        chunks = x.split(self.ghost_batch_size)
        # F.batch_norm with momentum 1 overwrites a running buffer with the chunk's own mean
        # and unbiased variance: each chunk's statistics, with no second pass over the data.
        means = self.running_mean.new_zeros(len(chunks), self.num_features)
        variances = self.running_var.new_zeros(len(chunks), self.num_features)
        outputs = [
            F.batch_norm(chunk, means[i], variances[i], self.weight, self.bias, True, 1.0, self.eps)
            for i, chunk in enumerate(chunks)
        ]
        with torch.no_grad():
            self.running_mean.lerp_(means.mean(0), self.momentum)
            self.running_var.lerp_(variances.mean(0), self.momentum)
            self.num_batches_tracked.add_(1)
        return torch.cat(outputs)


class GhostBatchNorm2d(_GhostBatches, nn.BatchNorm2d):
    """Ghost batch norm over (N, C, H, W): the wide ResNet's."""


class GhostBatchNorm1d(_GhostBatches, nn.BatchNorm1d):
    """Ghost batch norm over (N, C, L): cnn1d's, with `+model.ghost_batch_size`."""


class _WideBasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3(stride)-BN-ReLU-dropout-conv3x3, plus the
    input. When the width or resolution changes, the shortcut is a strided 1x1 conv of the
    BN-ReLU'd input (shared with the residual branch, as in the authors' code)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, ghost_batch_size: int, dropout: float):
        super().__init__()
        self.bn1 = GhostBatchNorm2d(in_channels, ghost_batch_size)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = GhostBatchNorm2d(out_channels, ghost_batch_size)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            if in_channels != out_channels or stride != 1
            else None
        )

    def forward(self, x):
        activated = F.relu(self.bn1(x))
        residual = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(activated)))))
        return residual + (x if self.shortcut is None else self.shortcut(activated))


class WideResNet(nn.Module):
    """WRN-depth-width (Zagoruyko & Komodakis 2016), the paper's CIFAR-10 model (16-4, 2.7M
    parameters) with ghost batch norm in every BN layer.

    conv3x3 to 16 channels; three stages of (depth - 4) / 6 pre-activation basic blocks, 16k,
    32k and 64k channels wide, strides 1, 2, 2; BN-ReLU; global average pool; linear.
    input_shape is (channels, height, width).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        depth: int,
        width: int,
        ghost_batch_size: int,
        dropout: float,
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth={depth}: must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...)")
        blocks_per_stage = (depth - 4) // 6
        layers: list[nn.Module] = [nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)]
        in_channels = 16
        for stage_channels, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
            for block in range(blocks_per_stage):
                layers.append(
                    _WideBasicBlock(in_channels, stage_channels, stride if block == 0 else 1, ghost_batch_size, dropout)
                )
                in_channels = stage_channels
        layers += [
            GhostBatchNorm2d(in_channels, ghost_batch_size),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(in_channels, n_classes),
        ]
        self.net = nn.Sequential(*layers)
        for module in self.modules():  # the authors' initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.net(x)
