"""A small residual network: Conv-BatchNorm-ReLU, one residual block, max pooling."""

from torch import nn


class Block(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv_a = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(ch)
        self.conv_b = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(ch)

    def forward(self, x):
        y = self.bn_b(self.conv_b(self.bn_a(self.conv_a(x)).relu()))
        return (x + y).relu()


class ResNetBN(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.block = Block(width)
        self.pool = nn.MaxPool2d(2)  # 14×14 -> 7×7
        self.head = nn.Linear(width * 49, num_classes)

    def forward(self, x):
        x = self.block(self.stem(x))
        return self.head(self.pool(x).flatten(1))
