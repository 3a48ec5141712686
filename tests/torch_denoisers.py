"""PyTorch reference networks laid out as ldct-benchmark defines them (for parity tests only).

Attribute names follow ldct-benchmark (ldctbench/methods/{cnn10,wganvgg}/network.py) so that
`state_dict()` keys are those of its checkpoints: CNN-10 `layers.{0,2,4}`, the WGAN-VGG
generator `net.{0,2,...,14}`, the critic `net.{0,2,...,10}`, `fc1`, `fc2`. All work on
`[B, 1, H, W]` in ldct-benchmark's network units.
"""

import torch
from torch import nn


class CNN10(nn.Module):
    """9x9/64, ReLU, 3x3/32, ReLU, 5x5/1; zero padding keeps the size; linear output."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([
            nn.Conv2d(1, 64, 9, padding=4), nn.ReLU(),
            nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 1, 5, padding=2),
        ])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Generator(nn.Module):
    """8 convs 3x3 padding 1: 1->32, six 32->32, 32->1; ReLU between, none at the end."""

    def __init__(self):
        super().__init__()
        layers = [nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU()]
        for _ in range(6):
            layers += [nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU()]
        layers.append(nn.Conv2d(32, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Critic(nn.Module):
    """6 convs 3x3 unpadded (64,64,128,128,256,256; strides 1,2,1,2,1,2), LeakyReLU(0.01),
    flatten (C, H, W), Linear 1024, LeakyReLU, Linear 1 -> `[B, 1]`."""

    def __init__(self, input_size: int):
        super().__init__()
        layers, cin = [], 1
        for cout, stride in [(64, 1), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2)]:
            layers += [nn.Conv2d(cin, cout, 3, stride, 0), nn.LeakyReLU()]
            cin = cout
        self.net = nn.Sequential(*layers)
        n = input_size
        for stride in (1, 2, 1, 2, 1, 2):
            n = (n - 3) // stride + 1
        self.output_size = n
        self.fc1 = nn.Linear(256 * n * n, 1024)
        self.fc2 = nn.Linear(1024, 1)
        self.lrelu = nn.LeakyReLU()

    def forward(self, x):
        out = self.net(x).view(-1, 256 * self.output_size * self.output_size)
        return self.fc2(self.lrelu(self.fc1(out)))

