"""Jacobian spectrum cost: seconds and products with J per LOBPCG iteration, next to one search
iteration, and the largest end against SciPy's ARPACK on the same products.

    python -m benchmarks.bench_jacobian                        # CNN-10, 512x512, k=16
    python -m benchmarks.bench_jacobian --size=128 --iterations=300

For a random-init CNN-10 on one random image:

  search     one iteration of the invariance search (`ldct_jax.analysis.search`, batch 1):
             the reference cost of a forward pass and an input gradient.
  lobpcg     `ldct_jax.analysis.jacobian.spectrum` with k pairs per end, `--iterations` at most:
             seconds per iteration of each end, products with J and J^T, and the residuals
             ||J^T J v - s^2 v|| / ||J||^2 reached.
  arpack     `scipy.sparse.linalg.svds` (ARPACK) for the k largest singular values, on a
             LinearOperator whose products are the same jitted jvp and vjp, one vector at a
             time: seconds, products, and the largest relative difference of its values to
             lobpcg's.
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from benchmarks import common

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags (defined only when run as a script)."""
    flags.DEFINE_integer("size", 512, "image side, pixels")
    flags.DEFINE_integer("k", 16, "singular pairs per end")
    flags.DEFINE_integer("iterations", 25, "LOBPCG iterations at most, per end")
    flags.DEFINE_bool("arpack", True, "time SciPy's ARPACK on the largest end too")


def search_seconds(d, x) -> float:
    """Best seconds of one search iteration on `x` (after a compiling one)."""
    from ldct_jax.analysis import search
    options = search.SearchOptions(iterations=4, chunk=1, learning_rate=1e-2)
    stamps = []
    search.Searcher(d.spec, ["mse"], options).run(
        d.params, x, search.make_rows(1, 1), progress=lambda _: stamps.append(time.perf_counter()))
    return float(np.min(np.diff(stamps)))


def arpack(d, x, k: int):
    """ARPACK's k largest singular values of J at `x`: (values, seconds, products)."""
    import jax
    import jax.numpy as jnp
    from scipy.sparse.linalg import LinearOperator, svds

    shape = x.shape
    xn = jnp.asarray(d.spec.to_net(x))
    # params and x are arguments, not constants: XLA would fold the convolutions otherwise.
    jvp = jax.jit(lambda p, x, v: jax.jvp(lambda y: d.spec.apply_net(p, y), (x,), (v,))[1])
    vjp = jax.jit(lambda p, x, u: jax.vjp(lambda y: d.spec.apply_net(p, y), x)[1](u)[0])
    count = [0]

    def matvec(v):
        count[0] += 1
        return np.asarray(jvp(d.params, xn, jnp.asarray(v.reshape(shape), jnp.float32))).ravel()

    def rmatvec(u):
        count[0] += 1
        return np.asarray(vjp(d.params, xn, jnp.asarray(u.reshape(shape), jnp.float32))).ravel()

    n = int(np.prod(shape))
    op = LinearOperator((n, n), matvec=matvec, rmatvec=rmatvec, dtype=np.float32)
    matvec(np.zeros(n, np.float32)), rmatvec(np.zeros(n, np.float32))  # compile
    count[0] = 0
    start = time.perf_counter()
    values = svds(op, k=k, which="LM", tol=1e-4, return_singular_vectors=False,
                  random_state=0)
    return np.sort(values)[::-1], time.perf_counter() - start, count[0]


def main(_):
    import jax

    from ldct_jax import models, parallel
    from ldct_jax.analysis import jacobian

    d = models.create("cnn10", jax.random.key(0))
    x = np.random.default_rng(0).normal(40.0, 300.0, (FLAGS.size, FLAGS.size)).astype(np.float32)
    mesh = parallel.make_mesh(1)
    dev = jax.devices()[0]
    print(f"JAX {jax.__version__} on {dev.device_kind} ({dev.platform}); {common.cpu_threads()} "
          f"cores; CNN-10 (random init) at {FLAGS.size}x{FLAGS.size}, k={FLAGS.k}")
    search_s = search_seconds(d, x)
    options = jacobian.SpectrumOptions(k=FLAGS.k, iterations=FLAGS.iterations)
    # Compiles every program (the iteration limit is not part of them).
    jacobian.spectrum(d, x, mesh=mesh, options=jacobian.SpectrumOptions(k=FLAGS.k, iterations=1))
    s = jacobian.spectrum(d, x, mesh=mesh, options=options)
    its = int(s.iterations[0].sum())
    per_iteration = s.seconds / max(its, 1)
    b = FLAGS.k + options.extra
    rows = [("search", "one iteration", f"{search_s:.2f}", "1 forward + 1 gradient", "", ""),
            ("lobpcg", f"{its} iterations (both ends)", f"{s.seconds:.1f}",
             f"{int(s.products[0])} ({3 * b} per iteration)",
             f"{per_iteration:.2f} s/iteration = {per_iteration / search_s:.1f} search "
             "iterations", f"largest {s.residuals[0, :FLAGS.k].max():.1e}, smallest "
             f"{s.residuals[0, FLAGS.k:].max():.1e}")]
    if FLAGS.arpack:
        values, seconds, products = arpack(d, x, FLAGS.k)
        diff = np.max(np.abs(values - s.largest_values[0]) / values)
        rows.append(("arpack", "largest end", f"{seconds:.1f}", f"{products}",
                     f"values vs lobpcg: {diff:.1e} relative", ""))
    head = "| method | run | seconds | products with J, J^T | note | residuals |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    define_flags()
    app.run(main)
