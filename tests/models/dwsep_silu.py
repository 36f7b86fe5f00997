"""Depthwise-separable convolutions with SiLU and BatchNorm, built by a factory function."""

from torch import nn


def separable(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.Conv2d(cin, cout, 1),
                         nn.BatchNorm2d(cout), nn.SiLU())


def make_net(width: int = 12, classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
                         separable(width, 2 * width), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(2 * width * 7 * 7, classes))
