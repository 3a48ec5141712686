"""Stand-ins for what ldct-benchmark's networks import but cannot be installed here."""

import importlib
import sys

import numpy as np

from tests import optional


def bilateral_filter_layer(torch):
    """A module `bilateral_filter_layer` whose `BilateralFilter3d` follows the package's CPU
    kernel: per axis an odd window of side max(ceil(5 sigma) | 1, 5) (in float32), Gaussian
    spatial and range weights, neighbours outside the volume left out, the weighted mean.
    Plain loops over the offsets; its parameters carry the real layer's names."""

    def side(sigma):
        return max(int(np.ceil(np.float32(5.0) * np.float32(sigma))) | 1, 5)

    def overlap(d, n):
        """Where home pixels i and their neighbours i + d both lie in [0, n)."""
        return slice(max(0, -d), n - max(0, d)), slice(max(0, d), n + min(0, d))

    class BilateralFilter3d(torch.nn.Module):
        def __init__(self, sigma_x, sigma_y, sigma_z, color_sigma, use_gpu=True):
            super().__init__()
            self.sigma_x = torch.nn.Parameter(torch.tensor(sigma_x))
            self.sigma_y = torch.nn.Parameter(torch.tensor(sigma_y))
            self.sigma_z = torch.nn.Parameter(torch.tensor(sigma_z))
            self.color_sigma = torch.nn.Parameter(torch.tensor(color_sigma))

        def forward(self, x):  # [B, 1, X, Y, Z]
            sigmas = [float(s) for s in (self.sigma_x, self.sigma_y, self.sigma_z)]
            r = float(self.color_sigma)
            values, weights = torch.zeros_like(x), torch.zeros_like(x)
            halves = [side(s) // 2 for s in sigmas]
            for dx in range(-halves[0], halves[0] + 1):
                for dy in range(-halves[1], halves[1] + 1):
                    for dz in range(-halves[2], halves[2] + 1):
                        spans = [overlap(d, n) for d, n in zip((dx, dy, dz), x.shape[2:])]
                        if any(h.start >= h.stop for h, _ in spans):
                            continue  # every such neighbour lies outside the volume
                        home = (Ellipsis,) + tuple(h for h, _ in spans)
                        near = x[(Ellipsis,) + tuple(k for _, k in spans)]
                        spatial = np.exp(-sum(d * d / (2 * s * s) for d, s in
                                              zip((dx, dy, dz), sigmas)))
                        w = spatial * torch.exp(-(x[home] - near) ** 2 / (2 * r * r))
                        values[home] += w * near
                        weights[home] += w
            return values / weights

    module = type(sys)("bilateral_filter_layer")
    module.BilateralFilter3d = BilateralFilter3d
    return module


def ldctbench_bilateral_network(monkeypatch, torch):
    """ldct-benchmark's `ldctbench.methods.bilateral.network`, imported afresh over the
    `bilateral_filter_layer` stand-in (the real one needs CUDA to build); an earlier import, or
    none, is back after the test."""
    optional.require("ldctbench", "pip install --no-deps ldct-benchmark")
    monkeypatch.setitem(sys.modules, "bilateral_filter_layer", bilateral_filter_layer(torch))
    name = "ldctbench.methods.bilateral.network"
    monkeypatch.setitem(sys.modules, name, None)
    del sys.modules[name]
    monkeypatch.setattr(importlib.import_module(name.rsplit(".", 1)[0]), "network", None,
                        raising=False)
    return importlib.import_module(name)
