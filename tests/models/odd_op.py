"""A small CNN whose head uses an operator not every converter has (torch.cumsum over the features):
ONNX has it (CumSum); a target whose converter lacks it is listed as not exportable."""

import torch
from torch import nn


class CumsumNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(8 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(x))).flatten(1)
        return self.fc(torch.cumsum(x, dim=1) / x.shape[1])
