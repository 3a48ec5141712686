"""The invariance-search iteration both ways, for the benchmarks that time one against the other.

One iteration per image is the forward pass of the denoiser on x + x_inv and the gradient of
L = D_out(f(x + x_inv), f(x)) - lambda min(MSE(x + x_inv, x), 1) with respect to x_inv, then
Adam (learning rate `LR`) and the projection to the valid HU range:

  `jax_search`    the library's `Searcher` (`SearchOptions(method="adam")`), timed between its
                  progress callbacks after a first, compiling chunk;
  `torch_search`  a plain PyTorch loop: `torch.optim.Adam` on x_inv `[B, H, W]` fed the
                  gradient of H W sum_i L_i (as the library feeds its Adam), the same clip, from
                  the library's own random start (`start`), so that both sides follow the same
                  path and their losses can be compared iteration by iteration.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, Sequence
from unittest import mock

import numpy as np

from benchmarks import common

LR = 1e-2


def jax_search(denoiser, images: np.ndarray, lam: float, chunk: int, repeats: int,
               fast_paths: Optional[bool] = None, seeds: Optional[Sequence[int]] = None
               ) -> tuple[float, Any]:
    """The library's search of one row per image, `1 + repeats` chunks of `chunk` iterations.

    Args:
      denoiser: an `ldct_jax.models.Denoiser`.
      images: `[B, H, W]` HU.
      lam: every row's lambda (d_in = 'mse').
      chunk: iterations per chunk (on CPU: one jitted step per iteration, no loop).
      repeats: timed chunks after the first (compiling) one.
      fast_paths: `ldct_jax.fastpath` on or off (`LDCT_JAX_FAST_PATHS`); None: as set.
      seeds: the rows' seeds (default: row i has seed i).

    Returns:
      (the best seconds of a timed chunk, the `SearchResult`, whose curves hold every
      iteration's loss).

    Raises:
      RuntimeError: a program was compiled after the first chunk (the timed chunks must reuse
        the first one's programs; on accelerators this checks that the scan compiles once).
    """
    from ldct_jax import fastpath
    from ldct_jax.analysis import search as search_lib
    n = len(images)
    seeds = list(range(n)) if seeds is None else list(seeds)
    options = search_lib.SearchOptions(method="adam", iterations=(1 + repeats) * chunk,
                                       chunk=chunk, learning_rate=LR)
    switch = {} if fast_paths is None else {fastpath.ENV: "1" if fast_paths else "0"}
    with mock.patch.dict(os.environ, switch):
        searcher = search_lib.Searcher(denoiser.spec, ["mse"], options)
        rows = search_lib.make_rows(n, n, lambdas=lam, distances="mse", seeds=seeds)
        stamps, compiles = [], []

        def progress(done: int) -> None:
            stamps.append(time.perf_counter())
            compiles.append(sum(compiled.values()))

        with common.count_compiles() as compiled:
            result = searcher.run(denoiser.params, images, rows, progress=progress)
    if compiles[-1] != compiles[0]:
        raise RuntimeError(f"jax_search: {compiles[-1] - compiles[0]} program(s) compiled after "
                           f"the first chunk ({dict(compiled)} in all); the timed chunks would "
                           "include compiling")
    return float(np.min(np.diff(stamps))), result


def start(spec, seeds: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """The library's random start of rows with `seeds` on `[H, W]` images, network units, before
    the clip: a standard normal draw from `jax.random.key(seed)`, scaled to
    `SearchOptions.init_scale_hu` HU. `[B, H, W]` float32."""
    import jax

    from ldct_jax.analysis import search as search_lib
    hu = search_lib.SearchOptions().init_scale_hu
    noise = [jax.random.normal(jax.random.key(int(s)), tuple(shape)) for s in seeds]
    return np.stack([np.asarray(v, np.float32) for v in noise]) * np.float32(hu / spec.scale)


def torch_objective(net, x, y0, delta, lam):
    """Per-image `(L, D_out, d_in)` of the search in PyTorch; all `[B, H, W]` network units;
    `net` maps `[B, 1, H, W]` to the same."""
    import torch
    xp = x + delta
    d_out = torch.mean(torch.square(net(xp[:, None])[:, 0] - y0), dim=(1, 2))
    d_in = torch.clamp(torch.mean(torch.square(xp - x), dim=(1, 2)), max=1.0)
    return d_out - lam * d_in, d_out, d_in


def torch_search(net, spec, images: np.ndarray, lams: Sequence[float],
                 seeds: Optional[Sequence[int]] = None) -> Callable[[], np.ndarray]:
    """A plain PyTorch Adam loop on the search objective, one row per image.

    Args:
      net: the denoiser as a PyTorch module on `[B, 1, H, W]` network units (no weight needs
        a gradient: they are switched off here).
      spec: its `ldct_jax` spec (normalisation).
      images: `[B, H, W]` HU.
      lams: the rows' lambdas.
      seeds: the rows' seeds, for the library's start (default: row i has seed i).

    Returns:
      A function that runs one iteration and returns each row's loss `[B]` before it.
    """
    import torch

    from ldct_jax.analysis import search_program
    for p in net.parameters():
        p.requires_grad_(False)
    seeds = list(range(len(images))) if seeds is None else list(seeds)
    lo, hi = search_program.net_range(spec)
    x = torch.from_numpy(np.asarray(spec.to_net(images), np.float32))
    with torch.no_grad():
        y0 = net(x[:, None])[:, 0]
    noise = torch.from_numpy(start(spec, seeds, x.shape[1:]))
    delta = (torch.clamp(x + noise, lo, hi) - x).requires_grad_(True)
    mask = torch.ones_like(x)
    lam = torch.tensor([float(v) for v in lams])
    pixels = float(x.shape[-2] * x.shape[-1])
    opt = torch.optim.Adam([delta], lr=LR, betas=(0.9, 0.999), eps=1e-8)

    def iteration() -> np.ndarray:
        opt.zero_grad(set_to_none=True)
        loss = torch_objective(net, x, y0, delta, lam)[0]
        # The images are independent: the gradient of the sum is each image's own gradient;
        # H W: the per-pixel sum, as the library feeds Adam.
        (torch.sum(loss) * pixels).backward()
        delta.grad.mul_(mask)
        opt.step()
        with torch.no_grad():
            delta.copy_((torch.clamp(x + delta, lo, hi) - x) * mask)
        return loss.detach().numpy()

    return iteration
