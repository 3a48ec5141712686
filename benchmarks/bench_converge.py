"""Time to a converged invariance: the default search against the talk's 3000 Adam steps.

    python -m benchmarks.bench_converge                               # 128x128, all models
    python -m benchmarks.bench_converge --sizes=128,512 --models=cnn10 --lambdas=1e-4
    python -m benchmarks.bench_converge --torch_iterations=300        # extrapolate PyTorch

For every model and size, one batch of rows (one per lambda, d_in = mse, seed 0) on one
synthetic low-dose slice (the invariance sweep's default: a 512x512 slice, centre-cropped to
the size) is searched three ways in the same run:

  adam     `SearchOptions(method="adam")`: Adam, learning rate 1e-2, 3000 iterations.
  default  `SearchOptions()`: the library's default method, stopping on convergence.
  torch    a plain PyTorch Adam loop on the same objective (`benchmarks.torch_twins`), 3000
           iterations (or `--torch_iterations`, scaled to 3000).

The objective to reach, per row: the loss that the adam run ends at, within 1 % of that run's
loss range, i.e. L_target = L_adam(3000) + 0.01 (L_adam(0) - L_adam(3000)), L = D_out -
lambda d_in at the row's lambda. The default's time to it is the wall time from the start of
its run to the end of the first chunk (25 iterations) in which its loss reaches L_target; its
iterations are the first iteration at or below it. JAX times leave compiling out (a first
call, stopped after one chunk, compiles; a sweep compiles once for all its batches). A row
that never reaches L_target is marked 'never', and the default's stop (iteration, converged
or not) is shown next to it. The speed-up is the adam run's wall time over the default's time
to the objective.

Models: gauss_ri (no params), cnn10 and wgan_vgg from `runs/cnn10/model` and `runs/wgan/model`
when trained there (`python launch/main.py --config=configs/cnn10.py`, `configs/wgan.py`), or
random-init weights otherwise (marked 'random' in the table).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks import common, search_loops, torch_twins

FLAGS = flags.FLAGS
CHECKPOINTS = {"cnn10": "runs/cnn10/model", "wgan_vgg": "runs/wgan/model"}
ADAM_ITERATIONS = 3000


def define_flags() -> None:
    """The command-line flags (defined only when run as a script)."""
    flags.DEFINE_list("sizes", ["128"], "image sides, pixels")
    flags.DEFINE_list("models", ["gauss_ri", "cnn10", "wgan_vgg"], "denoisers")
    flags.DEFINE_list("lambdas", ["1e-4", "1e-3", "1e-2"], "lambdas (one row each)")
    flags.DEFINE_integer("torch_iterations", ADAM_ITERATIONS, "PyTorch Adam iterations timed "
                         "(the time is scaled to 3000; 0: no PyTorch run)")
    flags.DEFINE_string("compute_dtype", "float32", "the default's denoiser dtype, float32 or "
                        "bfloat16 (SearchOptions.compute_dtype); the adam and torch runs stay "
                        "float32")
    flags.DEFINE_integer("threads", 0, "PyTorch threads (0: the cores this process may use)")
    flags.DEFINE_string("data", "", "synthetic data folder (built there if missing; '': "
                        "runs/cnn10/data when present, else a temporary folder)")


def load_denoiser(name: str):
    """(denoiser, 'trained' | 'random' | 'exact')."""
    import jax

    from ldct_jax import models
    if name == "gauss_ri":
        return models.build("gauss_ri", {}), "exact"
    path = CHECKPOINTS.get(name, "")
    if path and os.path.isdir(path):
        return models.load(path), "trained"
    return models.create(name, jax.random.key(0)), "random"


def load_image(size: int, root: str = "") -> np.ndarray:
    """One synthetic low-dose slice (512x512), centre-cropped to `size`, HU `[1, size, size]`."""
    from ldct_jax.data import synthetic
    from ldct_jax.data.sampling import sample_slices
    from ldct_jax.jobs import inputs
    root = root or ("runs/cnn10/data" if os.path.isdir("runs/cnn10/data")
                    else os.path.join(tempfile.gettempdir(), "ldct_jax_bench_data"))
    synthetic.build(root, progress=False)
    picked = sample_slices(synthetic.load(root), 1, 0)["low"]
    return inputs.clip_to_hu_range(inputs.crop(picked, size))


class _Compiled(Exception):
    pass


def _stop(done: int) -> None:
    raise _Compiled


def timed_search(denoiser, image: np.ndarray, lambdas, options):
    """The search of one row per lambda, timed after compiling its programs (a first call
    stopped after one chunk); (result, [(iterations done, seconds since start)]).

    Raises:
      RuntimeError: the timed run compiled its chunk program again.
    """
    from ldct_jax.analysis import search as search_lib
    rows = search_lib.make_rows(1, len(lambdas), lambdas=list(lambdas), seeds=0,
                                image_index=[0] * len(lambdas))
    searcher = search_lib.Searcher(denoiser.spec, ["mse"], options)
    try:
        searcher.run(denoiser.params, image, rows, progress=_stop)
    except _Compiled:
        pass
    stamps = []
    with common.count_compiles() as compiled:
        start = time.perf_counter()
        result = searcher.run(denoiser.params, image, rows,
                              progress=lambda done: stamps.append(
                                  (done, time.perf_counter() - start)))
    if compiled["jit(chunk)"]:  # the loop's program must be the first call's
        raise RuntimeError(f"timed_search: the timed run compiled {dict(compiled)}")
    return result, stamps


def targets(loss: np.ndarray) -> np.ndarray:
    """`[B]` the objective to reach from the reference curves `[B, T]`: 1 % of the range."""
    return loss[:, -1] + 0.01 * (loss[:, 0] - loss[:, -1])


def time_to(loss: np.ndarray, target: float, stamps) -> tuple[int, float]:
    """(first iteration with loss <= target, seconds at the end of its chunk); (0, nan) if none.
    """
    hit = np.nonzero(loss <= target)[0]
    if not len(hit):
        return 0, float("nan")
    iteration = int(hit[0]) + 1
    return iteration, next(s for done, s in stamps if done >= iteration)


def torch_adam_seconds(denoiser, image: np.ndarray, lambdas, iterations: int) -> float:
    """Seconds of `iterations` plain PyTorch Adam steps (lr 1e-2) on the rows' objective."""
    net = torch_twins.denoiser(denoiser.spec.name, denoiser.params)
    iteration = search_loops.torch_search(net, denoiser.spec,
                                          np.repeat(image, len(lambdas), 0), lambdas,
                                          seeds=[0] * len(lambdas))
    start = time.perf_counter()
    for _ in range(iterations):
        iteration()
    return time.perf_counter() - start


def case_rows(name: str, kind: str, size: int, lambdas, adam, adam_stamps, default,
              default_stamps, torch_seconds: float) -> list[dict]:
    """The table's rows of one (model, size)."""
    goal = targets(adam.curves["loss"])
    adam_seconds = adam_stamps[-1][1]
    out = []
    for i, lam in enumerate(lambdas):
        iteration, seconds = time_to(default.curves["loss"][i], goal[i], default_stamps)
        out.append(dict(
            model=f"{name} ({kind})", lam=float(lam), size=size, adam_s=adam_seconds,
            default_iterations=iteration, default_s=seconds,
            stop=int(default.stopped[i]), converged=bool(default.converged[i]),
            torch_s=torch_seconds, speedup=adam_seconds / seconds))
    return out


def print_table(rows: list[dict]) -> None:
    print(f"{'model':20s} {'lambda':>7s} {'size':>5s} {'adam3000 s':>10s} "
          f"{'default it':>10s} {'default s':>9s} {'stop':>9s} {'torch3000 s':>11s} "
          f"{'speed-up':>8s}")
    for r in rows:
        reached = r["default_iterations"] > 0
        it = f"{r['default_iterations']}" if reached else "never"
        sec = f"{r['default_s']:.1f}" if reached else "-"
        stop = f"{r['stop']}{'' if r['converged'] else '*'}"
        speed = f"{r['speedup']:.1f}x" if reached else "-"
        torch_s = f"{r['torch_s']:.1f}" if np.isfinite(r["torch_s"]) else "-"
        print(f"{r['model']:20s} {r['lam']:7.0e} {r['size']:5d} {r['adam_s']:10.1f} {it:>10s} "
              f"{sec:>9s} {stop:>9s} {torch_s:>11s} {speed:>8s}")
    print("stop: the iteration at which the default stopped (* ran out of iterations, not "
          "converged)")


def main(_):
    from ldct_jax.analysis import search as search_lib
    common.set_torch_threads(FLAGS.threads or common.cpu_threads())
    lambdas = [float(v) for v in FLAGS.lambdas]
    default_options = search_lib.SearchOptions(compute_dtype=FLAGS.compute_dtype)
    rows = []
    for size in (int(s) for s in FLAGS.sizes):
        image = load_image(size, FLAGS.data)
        for name in FLAGS.models:
            denoiser, kind = load_denoiser(name)
            adam, adam_stamps = timed_search(denoiser, image, lambdas,
                                             search_lib.SearchOptions(method="adam"))
            default, default_stamps = timed_search(denoiser, image, lambdas, default_options)
            torch_seconds = float("nan")
            if FLAGS.torch_iterations:
                torch_seconds = torch_adam_seconds(denoiser, image, lambdas,
                                                   FLAGS.torch_iterations)
                torch_seconds *= ADAM_ITERATIONS / FLAGS.torch_iterations
            rows += case_rows(name, kind, size, lambdas, adam, adam_stamps, default,
                              default_stamps, torch_seconds)
            print_table(rows[-len(lambdas):])
    print()
    print_table(rows)


if __name__ == "__main__":
    define_flags()
    app.run(main)
