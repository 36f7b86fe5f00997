"""The built-in models: a small CNN and a fully connected baseline."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from toolkit.errors import CheckpointError


class CNN(nn.Module):
    """The built-in CNN: 9,098 parameters, 290,080 multiply-adds per image."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_hw: tuple[int, int] = (28, 28)):
        super().__init__()
        if min(input_hw) < 4:
            raise CheckpointError(f"the built-in cnn needs images of at least 4×4 pixels (two 2×2 pools), not "
                                  f"{input_hw[1]}×{input_hw[0]}")
        self.conv1 = nn.Conv2d(in_channels=in_channels, out_channels=8, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(in_channels=8, out_channels=16, kernel_size=3, padding=1)
        # 16 channels × 7×7 after two pools on MNIST's 28×28
        self.fc1 = nn.Linear(16 * (input_hw[0] // 4) * (input_hw[1] // 4), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N×C×H×W in [0, 1] (N×1×28×28 on MNIST)
        x = self.pool(F.relu(self.conv1(x)))  # N×8×14×14
        x = self.pool(F.relu(self.conv2(x)))  # N×16×7×7
        x = x.reshape(x.shape[0], -1)  # N×784
        return self.fc1(x)  # N×10 logits


class MLP(nn.Module):
    """A plain feed-forward baseline (784-128-64-10 on MNIST, ReLU)."""

    def __init__(self, num_classes: int = 10, hidden: tuple[int, int] = (128, 64), in_features: int = 28 * 28):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class Normalized(nn.Module):
    """A model with its input normalisation inside it: (x - mean) / std per channel, then the model. What
    train --mean/--std builds (toolkit.contract.InputSpec): every artifact then takes pixel/255 in [0, 1]
    and carries the normalisation, so no runtime and no integrator can forget it."""

    def __init__(self, model: nn.Module, mean: tuple, std: tuple):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = cast(torch.Tensor, self.mean), cast(torch.Tensor, self.std)
        return self.model((x - mean) / std)


ARCHS = {"cnn": CNN, "mlp": MLP}


def build_model(arch: str) -> nn.Module:
    if arch not in ARCHS:
        raise CheckpointError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[arch]()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
