"""gauss_ri's Gaussian (and TransCT's blur): the written-out adjoint against autodiff's.

    python -m benchmarks.bench_blur                   # 3 images of 512 x 512
    python -m benchmarks.bench_blur --size=128 --batch=8

`models.gauss_ri.separable_filter` is a sum of shifted slices whose transpose it gives
explicitly (`lax.custom_linear_solve`). The reference, in the same run, is the same slices
differentiated by JAX, whose transpose is one zero-padded array per tap. Timed under `jit`:
the filter, `value_and_grad` of its squared sum (what the search's step does), and `jvp`
(what the Jacobian spectrum does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import common
from ldct_jax.models import gauss_ri

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags (defined only when run as a script)."""
    flags.DEFINE_integer("size", 512, "image side, pixels")
    flags.DEFINE_integer("batch", 3, "images")
    flags.DEFINE_integer("repeats", 20, "timed calls per cell (the best is shown)")


def autodiff_filter(k, mode: str):
    """The library's slices without their written-out adjoint."""
    kj = jnp.asarray(k)
    return lambda x: gauss_ri._filter_axis(gauss_ri._filter_axis(x, kj, 1, mode), kj, 2, mode)


def main(_) -> None:
    k = gauss_ri.gaussian_kernel(1.0, 4.0)
    x = jax.random.normal(jax.random.key(0), (FLAGS.batch, FLAGS.size, FLAGS.size, 1))
    t = jax.random.normal(jax.random.key(1), x.shape)
    forms = {"autodiff": autodiff_filter(k, "symmetric"),
             "adjoint": lambda x: gauss_ri.separable_filter(x, k, "symmetric")}
    ops = {"filter": lambda f: jax.jit(f),
           "value_and_grad": lambda f: jax.jit(jax.value_and_grad(lambda x: jnp.sum(f(x) ** 2))),
           "jvp": lambda f: jax.jit(lambda x: jax.jvp(f, (x,), (t,)))}
    print(f"{FLAGS.batch} x {FLAGS.size} x {FLAGS.size}, sigma 1, truncate 4 (9 taps), ms")
    print(f"{'op':<16}{'autodiff':>10}{'adjoint':>10}{'speed-up':>10}")
    for op, make in ops.items():
        ms = {}
        for name, f in forms.items():
            fn = make(f)
            ms[name] = 1e3 * common.best_time(lambda: jax.block_until_ready(fn(x)),
                                              FLAGS.repeats)
        print(f"{op:<16}{ms['autodiff']:>10.2f}{ms['adjoint']:>10.2f}"
              f"{ms['autodiff'] / ms['adjoint']:>9.1f}x")


if __name__ == "__main__":
    define_flags()
    app.run(main)
