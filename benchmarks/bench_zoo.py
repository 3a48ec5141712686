"""Invariance-search throughput for every ldct-benchmark architecture, against the package's own
PyTorch networks.

    python -m benchmarks.bench_zoo                                  # all eight, 512x512
    python -m benchmarks.bench_zoo --repeats=3                      # best of 3 (shared machines)
    python -m benchmarks.bench_zoo --size=128 --models=cnn10,redcnn --iters=2

For each ldct-benchmark method (cnn10, redcnn, wganvgg = our wgan_vgg, resnet, qae, dugan,
transct, bilateral) the package's `ldctbench.methods.<method>.network.Model` at its default
sizes (RED-CNN and DU-GAN's generator 96 channels, ResNet 128 channels x 10 blocks, ...),
PyTorch's init made non-trivial (`benchmarks.ldctbench_reference.model`), is imported into
ldct-jax with `models.import_ldctbench`, and one image is searched both ways with the same
weights, the same objective and the same start (`benchmarks.search_loops`: D_out - lambda
min(MSE, 1), Adam with learning rate 1e-2, the clip to the HU range):

  ldct-jax  the library's `Searcher` (fast paths as set: on by default on CPUs), the best chunk
            of `--iters` iterations after a first one that compiles;
  PyTorch   the package's module in a plain Adam loop, the best chunk after a warm-up one.

The image is a synthetic abdomen phantom slice (no CT simulation) plus white noise of 30 HU.
Both sides run (1 + repeats) x iters iterations from the same start, so their losses should
agree iteration by iteration: the table shows L at the start (the objective alone: a wrong
import or objective shows here) and how far PyTorch's L is from ldct-jax's there and at the
last iterate, relative to D_out + lambda d_in (L's two terms can cancel). The last one is
looser: float32 rounding can turn a step's sign in a few pixels, Adam's first steps being
about the learning rate times the gradient's sign.

TransCT takes 512 x 512 images only (skipped at other sizes). TransCT's and the bilateral
filters' references run over stand-ins where torchvision or `bilateral_filter_layer` is missing
(`benchmarks.ldctbench_reference`, marked in the table): their PyTorch times are those of the
stand-ins (for the bilateral filters a loop over the window's offsets, not the package's
kernel).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from absl import app, flags

from benchmarks import common, search_loops

FLAGS = flags.FLAGS
# ldct-benchmark's method names.
METHODS = ("cnn10", "redcnn", "wganvgg", "resnet", "qae", "dugan", "transct", "bilateral")
NOISE_HU = 30.0
AGREE = 1e-3  # relative difference of the first losses that counts as agreeing


def define_flags() -> None:
    """The command-line flags (defined only when run as a script)."""
    flags.DEFINE_list("models", list(METHODS), "ldct-benchmark methods (wgan_vgg for wganvgg "
                      "works too)")
    flags.DEFINE_integer("size", 512, "image side, pixels (transct: 512 only)")
    flags.DEFINE_integer("iters", 1, "iterations per timed chunk", lower_bound=1)
    flags.DEFINE_integer("repeats", 1, "timed chunks per side after the warm-up one (the best "
                         "one counts)", lower_bound=1)
    flags.DEFINE_float("lam", 1e-2, "lambda")
    flags.DEFINE_integer("threads", 0, "PyTorch threads (0: the cores this process may use)")


def method_of(name: str) -> str:
    """The ldct-benchmark method of `name` (a method, or our name of one)."""
    from ldct_jax.models import ldctbench
    ours = {v: k for k, v in ldctbench.METHODS.items()}
    if name in METHODS:
        return name
    if name in ours:
        return ours[name]
    raise ValueError(f"bench_zoo: unknown model {name!r}; expected one of {list(METHODS)}")


def image(size: int) -> np.ndarray:
    """`[1, size, size]` HU: an abdomen phantom slice plus white noise of `NOISE_HU`, clipped
    to the valid HU range."""
    from ldct_jax import ct
    from ldct_jax.data.synthetic import phantoms
    z = phantoms.slice_positions("abdomen", 0, 0, 1, 1.0)[0]
    hu = phantoms.phantom("abdomen", 0, 0, z, size)[0]
    hu = hu + np.random.default_rng(0).normal(0.0, NOISE_HU, hu.shape)
    return np.clip(hu, ct.HU_MIN, ct.HU_MAX).astype(np.float32)[None]


def loss_diff(torch_loss: np.ndarray, curves: dict, lam: float, k: int) -> float:
    """Largest |L_torch - L_jax| over the images at iteration `k`, relative to the size of L's
    terms there, D_out + lambda d_in (L itself can be near 0 where they cancel)."""
    scale = np.float64(curves["d_out"][:, k]) + lam * np.float64(curves["d_in"][:, k])
    diff = np.abs(np.float64(torch_loss[:, k]) - np.float64(curves["loss"][:, k]))
    return float(np.max(diff / np.maximum(scale, 1e-30)))


def measure(method: str, images: np.ndarray, iters: int, repeats: int, lam: float,
            seed: int = 0) -> dict:
    """One table row: the search of `images` with `method`'s reference network and its import.

    Returns:
      A dict: model, method, reference (what the PyTorch side is), params, jax_rate and
      torch_rate (image-iterations/s), loss0 (ldct-jax's L at the start, per image),
      first_diff and last_diff (`loss_diff` of PyTorch's L at the start and at the last
      iterate), iterations (how many each side ran).
    """
    from benchmarks import ldctbench_reference as reference
    net = reference.model(method, seed)
    d = reference.to_jax(net, method)
    n = len(images)
    jax_s, result = search_loops.jax_search(d, images, lam, iters, repeats)
    iteration = search_loops.torch_search(net, d.spec, images, [lam] * n)
    losses = []

    def chunk():
        for _ in range(iters):
            losses.append(iteration())

    torch_s = common.best_time(chunk, repeats, warmup=1)
    jax_loss = result.curves["loss"]  # [B, iterations]: L before each step
    torch_loss = np.stack(losses, axis=1)
    stand_in = (f" + {reference.STAND_INS[method][1]}" if reference.uses_stand_in(method)
                else "")
    return dict(model=d.spec.name, method=method, reference=f"ldctbench {method}{stand_in}",
                params=sum(p.numel() for p in net.parameters()),
                jax_rate=n * iters / jax_s, torch_rate=n * iters / torch_s,
                loss0=jax_loss[:, 0], first_diff=loss_diff(torch_loss, result.curves, lam, 0),
                last_diff=loss_diff(torch_loss, result.curves, lam, -1),
                iterations=jax_loss.shape[1])


def run(models: Sequence[str], size: int, iters: int = 1, repeats: int = 1, lam: float = 1e-2,
        report=print) -> list[dict]:
    """`measure` of every model of `models` (ldct-benchmark methods or our names) on one
    `image(size)`; transct is skipped (with a line to `report`) unless size is 512."""
    from ldct_jax import models as models_lib
    if iters < 1 or repeats < 1:
        raise ValueError(f"bench_zoo: iters ({iters}) and repeats ({repeats}) must be >= 1")
    methods = [method_of(m) for m in models]
    images = image(size)
    rows = []
    for method in methods:
        arch = models_lib.architecture(method)
        if arch.fixed_size and size != arch.init_size:
            report(f"{method}: skipped (takes {arch.init_size} x {arch.init_size} images only)")
            continue
        rows.append(measure(method, images, iters, repeats, lam))
        report(format_row(rows[-1]))
    return rows


HEAD = ("| model | PyTorch reference | params | ldct-jax image-it/s | PyTorch image-it/s | "
        "ldct-jax vs PyTorch | L at the start | PyTorch's L off by: at the start | "
        "at the last iterate |")


def format_row(r: dict) -> str:
    """One row of the table (`HEAD`)."""
    agree = "" if r["first_diff"] <= AGREE else " DIFFERS"
    return (f"| {r['model']} | {r['reference']} | {r['params'] / 1e6:.2f} M | "
            f"{common.fmt_rate(r['jax_rate'])} | {common.fmt_rate(r['torch_rate'])} | "
            f"{r['jax_rate'] / r['torch_rate']:.2f}x | {float(np.mean(r['loss0'])):.3e} | "
            f"{r['first_diff']:.1e}{agree} | {r['last_diff']:.1e} |")


def table(rows: Sequence[dict]) -> str:
    """The markdown table of `rows`."""
    return "\n".join([HEAD, "|" + "---|" * (HEAD.count("|") - 1)]
                     + [format_row(r) for r in rows])


def main(_):
    import jax
    import torch

    threads = FLAGS.threads or common.cpu_threads()
    common.set_torch_threads(threads)
    dev = jax.devices()[0]
    print(f"JAX {jax.__version__} on {jax.device_count()} x {dev.device_kind} ({dev.platform}); "
          f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads; {threads} cores",
          flush=True)
    try:
        for name in FLAGS.models:
            method_of(name)
    except ValueError as e:
        raise app.UsageError(f"--models: {e}") from e
    rows = run(FLAGS.models, FLAGS.size, FLAGS.iters, FLAGS.repeats, FLAGS.lam,
               report=lambda line: print("  " + line, flush=True))
    iterations = (1 + FLAGS.repeats) * FLAGS.iters
    print(f"\nsize {FLAGS.size}x{FLAGS.size}, batch 1, lambda {FLAGS.lam:g}, chunks of "
          f"{FLAGS.iters} iteration(s), best of {FLAGS.repeats} after a warm-up chunk; "
          f"PyTorch's L against ldct-jax's relative to D_out + lambda d_in, at the start and "
          f"at iterate {iterations - 1} (after {iterations - 1} Adam steps); DIFFERS: more "
          f"than {AGREE:g} apart at the start")
    print(table(rows))


if __name__ == "__main__":
    define_flags()
    app.run(main)
