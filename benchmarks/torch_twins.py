"""PyTorch twins of ldct-jax's networks, for parity tests and side-by-side benchmarks.

The networks are laid out as their PyTorch originals define them, so that `state_dict()` keys are
theirs: CNN-10 and WGAN-VGG as ldct-benchmark (ldctbench/methods/{cnn10,wganvgg}/network.py:
CNN-10 `layers.{0,2,4}`, the generator `net.{0,2,...,14}`, the critic `net.{0,2,...,10}`, `fc1`,
`fc2`), VGG as torchvision's `features` (`features.N`); the natural-invariance networks, which
have no PyTorch original, as `convs.N` = Flax's `Conv_N`. All work on NCHW tensors in the units
the JAX side uses (network units for the denoisers). `denoiser`, `critic`, `vgg_to`,
`invariance_generator` and `patch_critic` build a twin holding given Flax params, so that both
sides compute the same function on the same numbers.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ldct_jax import ct
from ldct_jax.models import ldctbench, wgan_vgg
from ldct_jax.models import natural as natural_models
from ldct_jax.models import vgg as vgg_lib

Params = Any


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


class GaussRI(nn.Module):
    """`ldct_jax.models.gauss_ri.GaussRI` (default config): separable Gaussian with symmetric
    padding, the central square zeroed; no params."""

    def __init__(self, sigma: float = 1.0, truncate: float = 4.0, square: int = 30):
        super().__init__()
        from ldct_jax.models.gauss_ri import gaussian_kernel
        self.register_buffer("kernel", torch.from_numpy(gaussian_kernel(sigma, truncate)))
        self.square = square

    def forward(self, x):
        k = self.kernel
        r = (len(k) - 1) // 2
        h, w = x.shape[-2:]
        # numpy's 'symmetric' padding (the edge pixel repeated), which torch's pad lacks.
        x = torch.cat([x[..., :r, :].flip(-2), x, x[..., -r:, :].flip(-2)], dim=-2)
        x = torch.cat([x[..., :r].flip(-1), x, x[..., -r:].flip(-1)], dim=-1)
        x = sum(k[i] * x[..., i:i + h, :] for i in range(len(k)))
        x = sum(k[i] * x[..., i:i + w] for i in range(len(k)))
        top, left = (h - self.square) // 2, (w - self.square) // 2
        keep = torch.ones(h, w, dtype=x.dtype)
        keep[top:top + self.square, left:left + self.square] = 0.0
        return x * keep


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


class TorchVGG(nn.Module):
    """torchvision's VGG16/VGG19 `features` (`make_layers(cfg, batch_norm=False)`): the same
    module order, so state-dict keys `features.N.weight`/`.bias` at the same N, and
    torchvision's init (kaiming normal, fan out, ReLU; zero bias)."""

    def __init__(self, arch: str):
        super().__init__()
        layers, cin = [], 3
        for b, n in enumerate(vgg_lib.BLOCKS[arch]):
            for _ in range(n):
                conv = nn.Conv2d(cin, vgg_lib.CHANNELS[b], kernel_size=3, padding=1)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(conv.bias, 0)
                layers += [conv, nn.ReLU(inplace=False)]
                cin = vgg_lib.CHANNELS[b]
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)

    def taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All taps (`convB_I` before ReLU, `reluB_I` after) of `x` `[B, 3, H, W]`, NCHW."""
        out, block, conv = {}, 1, 0
        for m in self.features:
            x = m(x)
            if isinstance(m, nn.Conv2d):
                conv += 1
                out[f"conv{block}_{conv}"] = x
            elif isinstance(m, nn.ReLU):
                out[f"relu{block}_{conv}"] = x
            else:
                block, conv = block + 1, 0
        return out


class SameConv(nn.Conv2d):
    """A square-kernel Conv2d padded as Flax's default 'SAME': for stride 2 on an even side one
    zero row (column) after the image and none before, which Conv2d's symmetric `padding`
    cannot express."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0)

    def forward(self, x):
        if self.stride[0] == 1:
            return super().forward(x)
        k, s = self.kernel_size[0], self.stride[0]
        pads = []
        for n in reversed(x.shape[-2:]):   # F.pad takes the last axis first
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _lrelu(x):
    return F.leaky_relu(x, 0.2)


class InvarianceGenerator(nn.Module):
    """`ldct_jax.models.natural.InvarianceGenerator`: a U-Net on x and z concatenated; per level
    two 3x3 convs and a 2x2 average pool, two convs at the bottom, and per level up a pixel
    repeat, a conv, the skip concatenated after it and a conv; LeakyReLU 0.2 after every conv
    but the last (3x3 to one channel, times `out_scale` and LDCTBENCH_SCALE: HU). Sides are
    padded to a multiple of 2^levels (x with its edge values, z with zeros) and cropped back.
    `convs.N` is Flax's `Conv_N` (the order in which it creates them)."""

    def __init__(self, features: int = 32, levels: int = 2, noise_channels: int = 4,
                 out_scale: float = 0.1, conditions: int = 1):
        super().__init__()
        self.levels, self.out_scale = levels, out_scale
        convs, cin = [], conditions + noise_channels
        for level in range(levels):
            f = features * 2 ** level
            convs += [SameConv(cin, f, 3), SameConv(f, f, 3)]
            cin = f
        f = features * 2 ** levels
        convs += [SameConv(cin, f, 3), SameConv(f, f, 3)]
        for level in reversed(range(levels)):
            f = features * 2 ** level
            convs += [SameConv(2 * f, f, 3), SameConv(2 * f, f, 3)]
        convs.append(SameConv(features, 1, 3))
        self.convs = nn.ModuleList(convs)

    def forward(self, x, z):
        """`x` `[B, C, H, W]` conditions (x and maybe f(x), `natural.to_units`), `z`
        `[B, noise_channels, H, W]` -> x_inv `[B, H, W]` HU."""
        h, w = x.shape[-2:]
        m = 2 ** self.levels
        pad = (0, -w % m, 0, -h % m)
        if any(pad):
            x, z = F.pad(x, pad, mode="replicate"), F.pad(z, pad)
        a, skips, n = torch.cat([x, z], dim=1), [], 0
        for _ in range(self.levels):
            a = _lrelu(self.convs[n + 1](_lrelu(self.convs[n](a))))
            skips.append(a)
            a, n = F.avg_pool2d(a, 2), n + 2
        a, n = _lrelu(self.convs[n + 1](_lrelu(self.convs[n](a)))), n + 2
        for level in reversed(range(self.levels)):
            a = F.interpolate(a, scale_factor=2, mode="nearest")   # each pixel repeated 2 x 2
            a = torch.cat([_lrelu(self.convs[n](a)), skips[level]], dim=1)
            a, n = _lrelu(self.convs[n + 1](a)), n + 2
        return self.convs[n](a)[:, 0, :h, :w] * self.out_scale * ct.LDCTBENCH_SCALE


class PatchCritic(nn.Module):
    """`ldct_jax.models.natural.PatchCritic`: 3x3 convs of f, 2f (stride 2), 2f, 4f (stride 2)
    features with LeakyReLU 0.2, a 1x1 conv to one score per position, their mean:
    `[B, 1, H, W]` -> `[B]`."""

    def __init__(self, features: int = 32):
        super().__init__()
        f = features
        self.convs = nn.ModuleList([SameConv(1, f, 3), SameConv(f, 2 * f, 3, 2),
                                    SameConv(2 * f, 2 * f, 3), SameConv(2 * f, 4 * f, 3, 2),
                                    SameConv(4 * f, 1, 1)])

    def forward(self, x):
        for conv in self.convs[:-1]:
            x = _lrelu(conv(x))
        return self.convs[-1](x).mean(dim=(1, 2, 3))


# ---------------------------------------------------------------------------------------------
# Twins holding Flax params


def _state_dict(params: Params, layers: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """A PyTorch state dict (OIHW convs, (out, in) linears) of Flax params, by `layers`."""
    out = {}
    for layer, prefix in layers.items():
        kernel = np.asarray(params[layer]["kernel"], np.float32)
        kernel = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
        out[f"{prefix}.weight"] = torch.from_numpy(np.array(kernel, order="C", copy=True))
        out[f"{prefix}.bias"] = torch.from_numpy(np.array(params[layer]["bias"], np.float32))
    return out


def denoiser(name: str, params: Params) -> nn.Module:
    """`name` ('cnn10', 'wgan_vgg' or 'gauss_ri', default configs) on `[B, 1, H, W]` network
    units, holding the JAX `params` (gauss_ri has none)."""
    if name == "gauss_ri":
        return GaussRI()
    model = {"cnn10": CNN10, "wgan_vgg": Generator}[name]()
    model.load_state_dict(_state_dict(params, ldctbench.LAYERS[name]))
    return model


def critic(params: Params, patch: int) -> nn.Module:
    """The WGAN-VGG critic on `[B, 1, p, p]` -> `[B]`, holding the JAX `params`.

    Flax flattens the last feature map as (h, w, c), PyTorch as (c, h, w): fc1's rows are
    permuted once here instead of the activations at every call.
    """
    model = Critic(patch)
    side = wgan_vgg.critic_output_size(patch)
    layers = {**{f"conv{i + 1}": f"net.{2 * i}" for i in range(6)}, "fc1": "fc1", "fc2": "fc2"}
    state = _state_dict(params, layers)
    w1 = state["fc1.weight"].numpy()  # [hidden, (h, w, c)]
    state["fc1.weight"] = torch.from_numpy(np.ascontiguousarray(
        w1.reshape(w1.shape[0], side, side, -1).transpose(0, 3, 1, 2).reshape(w1.shape[0], -1)))
    model.load_state_dict(state)
    return nn.Sequential(model, nn.Flatten(0))


def vgg_to(arch: str, params: Params, tap: str) -> nn.Module:
    """torchvision VGG `.features` on `[B, 3, H, W]` up to conv tap `tap` (before its ReLU),
    holding the JAX VGG `params`."""
    layers = [(name, f"features.{index}") for name, index, _, _ in vgg_lib.conv_layers(arch)]
    if tap not in dict(layers):
        raise ValueError(f"vgg_to: {tap!r} is not a conv tap of {arch}")
    model = TorchVGG(arch)
    model.load_state_dict(_state_dict(params, dict(layers)))
    last = int(dict(layers)[tap].split(".")[1])
    return model.features[:last + 1]


def _convs(params: Params) -> dict[str, str]:
    return {f"Conv_{i}": f"convs.{i}" for i in range(len(params))}


def invariance_generator(module: natural_models.InvarianceGenerator,
                         params: Params) -> nn.Module:
    """The twin of the Flax generator `module` (its features, levels, noise channels and output
    scale; the number of conditions from the params), holding its `params`."""
    conditions = params["Conv_0"]["kernel"].shape[2] - module.noise_channels
    model = InvarianceGenerator(module.features, module.levels, module.noise_channels,
                                module.out_scale, conditions)
    model.load_state_dict(_state_dict(params, _convs(params)))
    return model


def patch_critic(module: natural_models.PatchCritic, params: Params) -> nn.Module:
    """The twin of the Flax critic `module`, holding its `params` (one stage's)."""
    model = PatchCritic(module.features)
    model.load_state_dict(_state_dict(params, _convs(params)))
    return model
