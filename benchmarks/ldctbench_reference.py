"""ldct-benchmark's own PyTorch networks (`ldctbench.methods.<method>.network.Model`), for the
parity tests and `bench_zoo`: imported from the installed package (`pip install --no-deps
ldct-benchmark`), with random but non-trivial weights, and imported into ldct-jax.

Two networks import a module that does not install beside the PyTorch these run with:
TransCT imports `torchvision.transforms.GaussianBlur` (torchvision has no CPU build for torch
2.13) and the bilateral filters `bilateral_filter_layer` (its `BilateralFilter3d` needs CUDA
to build). Where those are missing, `network` imports the package's module over stand-ins
that compute what they compute (`gaussian_blur_stand_in`, `stand_in_bilateral_filter_layer`);
`STAND_INS` names them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import tempfile
import types
from typing import Iterator, Mapping

import numpy as np
import torch

from ldct_jax import models

# method -> (the module it imports that may be missing, what stands in for it)
STAND_INS = {"transct": ("torchvision", "GaussianBlur stand-in"),
             "bilateral": ("bilateral_filter_layer", "BilateralFilter3d stand-in")}
# The bilateral filters' (sigma_x, sigma_y, sigma_z, color_sigma) in `randomize`: per axis
# and filter different windows (5 to 11 px), range sigmas 25 to 150 HU.
BILATERAL_SIGMAS = ((0.8, 1.2, 0.5, 0.05), (1.6, 0.8, 1.0, 0.3), (2.2, 1.6, 2.0, 0.15))


def gaussian_blur_stand_in() -> type:
    """`torchvision.transforms.GaussianBlur(kernel_size, sigma)` for one int size and one float
    sigma, as torchvision's `gaussian_blur` defines it: the 1-D kernel exp(-t^2 / (2 sigma^2))
    at t = linspace(-(k - 1) / 2, (k - 1) / 2, k), normalised; its outer product with itself,
    per channel, on the image padded by k // 2 in 'reflect' mode (edge not repeated)."""
    fn = torch.nn.functional

    class GaussianBlur(torch.nn.Module):
        def __init__(self, kernel_size, sigma):
            super().__init__()
            self.kernel_size, self.sigma = kernel_size, sigma

        def forward(self, img):
            k, half = self.kernel_size, (self.kernel_size - 1) * 0.5
            pdf = torch.exp(-0.5 * (torch.linspace(-half, half, steps=k) / self.sigma) ** 2)
            k1 = pdf / pdf.sum()
            c = img.shape[-3]
            kernel = torch.mm(k1[:, None], k1[None, :]).expand(c, 1, k, k)
            img = fn.pad(img, [k // 2] * 4, mode="reflect")
            return fn.conv2d(img, kernel, groups=c)

    return GaussianBlur


def stand_in_bilateral_filter_layer() -> types.ModuleType:
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

    module = types.ModuleType("bilateral_filter_layer")
    module.BilateralFilter3d = BilateralFilter3d
    return module


def _stand_in_modules(method: str) -> dict[str, types.ModuleType]:
    if method == "transct":
        transforms = types.ModuleType("torchvision.transforms")
        transforms.GaussianBlur = gaussian_blur_stand_in()
        vision = types.ModuleType("torchvision")
        vision.transforms = transforms
        return {"torchvision": vision, "torchvision.transforms": transforms}
    return {"bilateral_filter_layer": stand_in_bilateral_filter_layer()}


@contextlib.contextmanager
def _modules_restored(names: list[str], package: types.ModuleType) -> Iterator[None]:
    """`sys.modules[name]` for `names`, and `package.network`, put back as they were."""
    saved = {n: sys.modules.get(n) for n in names}
    had, attr = hasattr(package, "network"), getattr(package, "network", None)
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
        if had:
            package.network = attr
        elif hasattr(package, "network"):
            del package.network


def uses_stand_in(method: str) -> bool:
    """Whether `network(method)` imports the package's module over a stand-in (the module it
    needs is missing here)."""
    if method not in STAND_INS:
        return False
    try:
        importlib.import_module(STAND_INS[method][0])
    except ImportError:
        return True
    return False


def network(method: str) -> types.ModuleType:
    """`ldctbench.methods.<method>.network` (raises ImportError without ldct-benchmark).

    Where it needs a module that is missing (`uses_stand_in`), it is imported afresh over the
    stand-in, and `sys.modules` is left as it was (the stand-ins and the network's module are
    not registered there: a later plain import still fails, or finds the real thing).
    """
    name = f"ldctbench.methods.{method}.network"
    if not uses_stand_in(method):
        return importlib.import_module(name)
    stand_ins = _stand_in_modules(method)
    package = importlib.import_module(name.rsplit(".", 1)[0])
    with _modules_restored([*stand_ins, name], package):
        sys.modules.update(stand_ins)
        sys.modules.pop(name, None)
        return importlib.import_module(name)


def randomize(method: str, model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """`model` (the package's `Model` of `method`, PyTorch's or the package's init) made
    non-trivial in place: parameters the package initialises to constants drawn at random,
    so that every one counts. Q-AE: its zero W_g, W_b, b_r, b_b -> 0.01 noise; ResNet:
    BatchNorm running statistics and affine parameters; TransCT: every bias (the attention's
    are zero) moved by 0.02 noise; bilateral: `BILATERAL_SIGMAS`. Returns `model`."""
    g = torch.Generator().manual_seed(seed)

    def noise(p):
        return torch.randn(p.shape, generator=g, dtype=p.dtype)

    def uniform(p):
        return torch.rand(p.shape, generator=g, dtype=p.dtype)

    with torch.no_grad():
        if method == "qae":
            for name, p in model.named_parameters():
                if name.rsplit(".", 1)[1] in ("W_g", "W_b", "b_r", "b_b"):
                    p.copy_(0.01 * noise(p))
        elif method == "resnet":
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.copy_(0.1 * noise(m.running_mean))
                    m.running_var.copy_(0.5 + uniform(m.running_var))
                    m.weight.copy_(0.5 + uniform(m.weight))
                    m.bias.copy_(0.1 * noise(m.bias))
        elif method == "transct":
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.add_(0.02 * noise(p))
        elif method == "bilateral":
            for layer, values in zip(model.filters, BILATERAL_SIGMAS):
                for p, v in zip((layer.sigma_x, layer.sigma_y, layer.sigma_z,
                                 layer.color_sigma), values):
                    p.fill_(v)
    return model


def model(method: str, seed: int = 0) -> torch.nn.Module:
    """The package's `Model` of `method` at its default sizes (RED-CNN 96 channels, ResNet
    128 x 10 blocks, ...), its init drawn from `seed`, made non-trivial by `randomize`, in eval
    mode (BatchNorm on its running statistics)."""
    cls = network(method).Model
    torch.manual_seed(seed)
    # Q-AE draws its W_r from numpy's global generator: seeded too, and put back afterwards.
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        out = cls(argparse.Namespace(cuda=False))
    finally:
        np.random.set_state(saved)
    return randomize(method, out, seed).eval()


def write_checkpoint(state: Mapping[str, torch.Tensor], method: str, path: str) -> None:
    """As ldct-benchmark's trainer saves it (`args` a Namespace naming the method)."""
    args = argparse.Namespace(trainer=method, lr=1e-4, patchsize=64)
    torch.save({"args": args, "iteration": 10, "model_state_dict": dict(state)}, path)


def to_jax(net: torch.nn.Module, method: str) -> models.Denoiser:
    """`net`'s weights imported into ldct-jax as a user imports them: saved as an
    ldct-benchmark checkpoint and read with `models.import_ldctbench`."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "best_SSIM.pt")
        write_checkpoint(net.state_dict(), method, path)
        return models.import_ldctbench(path)
