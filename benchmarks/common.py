"""Shared pieces of the side-by-side benchmarks: timing, FLOP counts, ceilings.

The PyTorch side of the benchmarks is `benchmarks.torch_twins` (networks holding the JAX
params) or, in bench_zoo, ldct-benchmark's own networks (`benchmarks.ldctbench_reference`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from typing import Any, Callable, Iterator

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


def interleaved_best(runners: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best seconds per call of each runner, the runners taking turns (A B C A B C ...), so
    that a burst of load from other processes hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}


def set_torch_threads(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def cpu_threads() -> int:
    """Cores this process may run on (what XLA's CPU thread pool uses too)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


# JAX records this event (jax._src.dispatch.BACKEND_COMPILE_EVENT) for every program it has
# XLA build or read from the persistent cache; a call that jit's in-memory cache serves has none.
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles() -> Iterator[collections.Counter]:
    """Counts the programs compiled inside the block, by jitted function name.

        with count_compiles() as compiled:
            searcher.run(...)
        compiled["jit(chunk)"]   # programs of the search's chunk that the run built
    """
    import jax
    compiled: collections.Counter = collections.Counter()

    def listener(event: str, duration: float, fun_name: str = "", **kwargs) -> None:
        if event == _COMPILE_EVENT:
            compiled[fun_name] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


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


def fmt_rate(x: float) -> str:
    """Two decimals from 1 to 100, none above, three significant digits below 1."""
    if x < 1:
        return f"{x:.3g}"
    return f"{x:,.2f}" if x < 100 else f"{x:,.0f}"


def device_header(threads: int) -> str:
    """Sets PyTorch's threads, prints where JAX and PyTorch run, returns PyTorch's device
    ('cuda' where JAX runs on a GPU and PyTorch has one, else 'cpu')."""
    import jax
    import torch
    set_torch_threads(threads)
    dev = jax.devices()[0]
    gpu = dev.platform == "gpu" and torch.cuda.is_available()
    tdev = "cuda" if gpu else "cpu"
    print(f"JAX {jax.__version__} on {jax.device_count()} x {dev.device_kind}; PyTorch "
          f"{torch.__version__} on {tdev}" + ("" if gpu else f", {torch.get_num_threads()} "
                                                         "threads"))
    return tdev
