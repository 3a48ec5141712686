"""Shared pieces of the side-by-side benchmarks: timing, FLOP counts, ceilings, PyTorch twins.

The PyTorch networks here are the project's denoisers and critic written out in plain
`torch.nn` (NCHW), with weights copied from the JAX params, so that both sides of a benchmark
compute the same function on the same numbers (tests/test_benchmarks.py checks this).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

Params = Any

# (kernel size, in channels, out channels) of every conv, in order; SAME padding, stride 1.
CONVS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "cnn10": ((9, 1, 64), (3, 64, 32), (5, 32, 1)),
    "wgan_vgg": ((3, 1, 32),) + ((3, 32, 32),) * 6 + ((3, 32, 1),),
}


# ---------------------------------------------------------------------------------------------
# Timing


def best_time(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Smallest wall time of `repeats` calls of `fn` (which must block), after `warmup` calls.

    The minimum, not the mean: on a shared machine the noise only ever adds time.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def set_torch_threads(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def cpu_threads() -> int:
    """Cores this process may run on (what XLA's CPU thread pool uses too)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# FLOPs


def same_taps(n: int, k: int) -> int:
    """Multiply-adds of a 1-D SAME convolution of length `n` with an odd kernel `k` that touch
    real (not padding) input: `n k - p (p + 1)`, p = (k - 1) / 2."""
    p = (k - 1) // 2
    return n * k - p * (p + 1)


def conv_flops(h: int, w: int, k: int, cin: int, cout: int, exact: bool = False) -> float:
    """FLOPs (2 per multiply-add) of one SAME, stride-1 convolution on an `h` x `w` image.

    `exact=False`: the usual `2 h w k^2 cin cout`. `exact=True`: only the taps that fall on the
    image, as XLA's cost analysis counts them.
    """
    if exact:
        return 2.0 * same_taps(h, k) * same_taps(w, k) * cin * cout
    return 2.0 * h * w * k * k * cin * cout


def forward_flops(model: str, h: int, w: int, exact: bool = False) -> float:
    """Conv FLOPs of one forward pass of the denoiser `model` on one `h` x `w` image."""
    return sum(conv_flops(h, w, k, ci, co, exact) for k, ci, co in CONVS[model])


def search_iteration_flops(model: str, h: int, w: int, exact: bool = False) -> float:
    """Conv FLOPs of one search iteration on one image.

    The iteration is the forward pass on `x + x_inv` and its gradient with respect to the input
    only: every conv's input gradient is a transposed convolution with the same multiply-adds as
    the forward one, and no weight gradient is needed. `f(x)` is computed once, before the loop.
    So 2 x forward (elementwise work, Adam and the bounded MSE, is below 1 % and not counted).
    """
    return 2.0 * forward_flops(model, h, w, exact)


def train_step_flops(model: str, h: int, w: int, exact: bool = False) -> float:
    """Conv FLOPs of one supervised train step on one patch: forward, every weight gradient,
    and the input gradients of all convs but the first (nothing needs d loss / d input)."""
    convs = CONVS[model]
    fwd = [conv_flops(h, w, k, ci, co, exact) for k, ci, co in convs]
    return sum(fwd) + sum(fwd) + sum(fwd[1:])


# ---------------------------------------------------------------------------------------------
# Ceilings


def jax_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 `n x n @ n x n` rate of the default JAX device, GFLOP/s."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(lambda a, b: jnp.dot(a, b, precision="highest"))
    t = best_time(lambda: mm(a, b).block_until_ready(), repeats)
    return 2.0 * n ** 3 / t / 1e9


def torch_matmul_gflops(n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best float32 `n x n @ n x n` rate of PyTorch on `device`, GFLOP/s."""
    import torch
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)

    def run():
        torch.mm(a, b)
        if device != "cpu":
            torch.cuda.synchronize()

    t = best_time(run, repeats)
    return 2.0 * n ** 3 / t / 1e9


def jax_conv_gflops(size: int = 512, channels: int = 32, batch: int = 8,
                    repeats: int = 3) -> float:
    """Best rate of one 3x3 SAME conv `channels -> channels` on `batch` images, GFLOP/s.

    WGAN-VGG's generator is seven of these: the conv ceiling of the search's main workload.
    """
    import jax
    import jax.numpy as jnp
    x = jax.random.normal(jax.random.key(0), (batch, size, size, channels), jnp.float32)
    k = jax.random.normal(jax.random.key(1), (3, 3, channels, channels), jnp.float32)
    conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    t = best_time(lambda: conv(x, k).block_until_ready(), repeats)
    return batch * conv_flops(size, size, 3, channels, channels) / t / 1e9


# ---------------------------------------------------------------------------------------------
# PyTorch twins of the JAX networks (weights copied from Flax params)


def tensor(a) -> "torch.Tensor":  # noqa: F821
    """A float32 torch tensor holding a copy of `a` (JAX arrays are read-only to numpy)."""
    import torch
    return torch.from_numpy(np.array(a, dtype=np.float32, order="C", copy=True))


def load_conv(conv, p: Mapping[str, Any]) -> None:
    """Copies a Flax conv's `{'kernel': HWIO, 'bias'}` into a `torch.nn.Conv2d` (OIHW)."""
    import torch
    with torch.no_grad():
        conv.weight.copy_(tensor(np.asarray(p["kernel"]).transpose(3, 2, 0, 1)))
        conv.bias.copy_(tensor(p["bias"]))


def torch_denoiser(name: str, params: Params) -> "torch.nn.Module":  # noqa: F821
    """`name` ('cnn10' or 'wgan_vgg') as a `torch.nn.Sequential` on `[B, 1, H, W]` network
    units, with the JAX `params`."""
    from torch import nn
    layers: list = []
    convs = CONVS[name]
    for i, (k, ci, co) in enumerate(convs):
        conv = nn.Conv2d(ci, co, k, padding=k // 2)
        load_conv(conv, params[f"conv{i + 1}"])
        layers.append(conv)
        if i < len(convs) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def torch_critic(params: Params, patch: int,
                 features: Sequence[int] = (64, 64, 128, 128, 256, 256),
                 strides: Sequence[int] = (1, 2, 1, 2, 1, 2),
                 slope: float = 0.01) -> "torch.nn.Module":  # noqa: F821
    """The WGAN-VGG critic on `[B, 1, p, p]` -> `[B]`, with the JAX `params`.

    Flax flattens the last feature map as (h, w, c), PyTorch as (c, h, w): fc1's rows are
    permuted once here instead of the activations at every call.
    """
    import torch
    from torch import nn
    from ldct_jax.models.wgan_vgg import critic_output_size

    layers: list = []
    cin = 1
    for i, (f, s) in enumerate(zip(features, strides)):
        conv = nn.Conv2d(cin, f, 3, stride=s)
        load_conv(conv, params[f"conv{i + 1}"])
        layers += [conv, nn.LeakyReLU(slope)]
        cin = f
    side = critic_output_size(patch, tuple(strides))
    k1 = np.asarray(params["fc1"]["kernel"])  # [(h, w, c), hidden]
    hidden = k1.shape[1]
    fc1, fc2 = nn.Linear(k1.shape[0], hidden), nn.Linear(hidden, 1)
    with torch.no_grad():
        w1 = k1.reshape(side, side, cin, hidden).transpose(3, 2, 0, 1).reshape(hidden, -1)
        fc1.weight.copy_(tensor(w1))
        fc1.bias.copy_(tensor(params["fc1"]["bias"]))
        fc2.weight.copy_(tensor(np.asarray(params["fc2"]["kernel"]).T))
        fc2.bias.copy_(tensor(params["fc2"]["bias"]))
    layers += [nn.Flatten(), fc1, nn.LeakyReLU(slope), fc2, nn.Flatten(0)]
    return nn.Sequential(*layers)


# torchvision cfg "E" (VGG19) up to conv5_4; cfg "D" (VGG16).
VGG_CFGS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512],
}


def torch_vgg_to(arch: str, params: Params, tap: str) -> "torch.nn.Module":  # noqa: F821
    """torchvision VGG `.features` on `[B, 3, H, W]` up to conv tap `tap` (before its ReLU),
    with the JAX VGG `params`."""
    from torch import nn
    if not tap.startswith("conv"):
        raise ValueError(f"torch_vgg_to: only conv taps are supported, got {tap!r}")
    layers: list = []
    cin, block, index = 3, 1, 0
    for v in VGG_CFGS[arch]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            block, index = block + 1, 0
            continue
        index += 1
        conv = nn.Conv2d(cin, v, 3, padding=1)
        name = f"conv{block}_{index}"
        load_conv(conv, params[name])
        layers.append(conv)
        if name == tap:
            return nn.Sequential(*layers)
        layers.append(nn.ReLU())
        cin = v
    raise ValueError(f"torch_vgg_to: tap {tap!r} is not in {arch}")


def fmt_rate(x: float) -> str:
    return f"{x:,.2f}" if x < 100 else f"{x:,.0f}"
