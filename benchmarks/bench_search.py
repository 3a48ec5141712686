"""Invariance-search throughput (image-iterations/s) of ldct_jax against a PyTorch Adam loop.

    python -m benchmarks.bench_search                          # 512x512, batch 1 and 8
    python -m benchmarks.bench_search --repeats=3              # best of 3 (shared machines)
    python -m benchmarks.bench_search --size=256 --batches=1,2,4 --models=cnn10
    python -m benchmarks.bench_search --impls=scan,python,torch --size=256 --batches=1

One iteration per image is the forward pass of the denoiser on x + x_inv and the gradient of
L = D_out(f(x + x_inv), f(x)) - lambda min(MSE(x + x_inv, x), 1) with respect to x_inv, then
Adam and the projection to the valid HU range. Implementations, timed in the same run on the
same random-init weights:

  scan     `ldct_jax.analysis.search.Searcher` with the fast paths off
           (`LDCT_JAX_FAST_PATHS=0`): a vmapped step inside a `lax.scan` over each chunk and
           plain convolutions (the accelerator path).
  python   the same with the fast paths on, as on CPU by default: one jitted vmapped step per
           iteration, no loop in the program, CNN-10's conv1 gradient as a matmul.
  torch    plain PyTorch: the same network in NCHW with the weights copied, `torch.optim.Adam`
           on x_inv `[B, H, W]` fed the gradient of H W sum_i L_i (as the library's Adam), the
           same clip, from the same start.

Both loops are `benchmarks.search_loops` (bench_zoo times them too).

The JAX implementations are timed between the search's progress callbacks, after the first
(compiling) chunk; PyTorch after one warm-up chunk. The best chunk counts. A JAX run that
compiles anything after its first chunk stops with an error: on an accelerator, 'scan' is the
path the search takes, and this checks that its chunk program is built once.

FLOPs are the conv FLOPs `2 H W k^2 Cin Cout` of the forward pass, twice (forward + input
gradient; no weight gradient; f(x) is computed before the loop); XLA's cost analysis of the
step is printed next to the formula. The ceiling is the best float32 2048^3 matmul of JAX and
PyTorch in this run (the larger); a 3x3 32->32 conv rate is shown for reference.

Why two JAX paths: XLA:CPU (jaxlib 0.10) runs the gradient convolutions that JAX's conv
transpose rules emit (kernel `rev` + swapped dimension numbers) with a slow generic kernel when
they sit inside a while loop; outside a loop they get YNNPACK kernels (jax#12868). See
`ldct_jax.fastpath`.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags

from benchmarks import common, search_loops, torch_twins

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags (defined only when run as a script, so that tests can
    import every benchmark into one process)."""
    flags.DEFINE_integer("size", 512, "image side, pixels")
    flags.DEFINE_list("batches", ["1", "8"], "perturbations per step")
    flags.DEFINE_list("models", ["cnn10", "wgan_vgg"], "denoisers")
    flags.DEFINE_list("impls", ["python", "torch"], f"implementations to time, of {IMPLS} "
                      "('scan' is ~10x slower on CPU: add it to see how much)")
    flags.DEFINE_integer("chunk", 1, "iterations per timed chunk (one compiled call of `scan`)")
    flags.DEFINE_integer("repeats", 1, "timed chunks per implementation after the warm-up one "
                         "(the best one counts)")
    flags.DEFINE_float("lam", 1e-2, "lambda of every perturbation")
    flags.DEFINE_integer("threads", 0, "PyTorch threads (0: the cores this process may use)")
    flags.DEFINE_integer("matmul_n", 2048, "side of the ceiling matmul")
    flags.DEFINE_float("max_seconds", 120.0, "skip an implementation at a larger batch when its "
                       "smaller-batch time predicts more than this many seconds per chunk")


IMPLS = ("scan", "python", "torch")


def chunk_of(impl: str) -> int:
    # The library runs a chunk of 1 as a single step without a loop: 'scan' needs 2.
    return max(FLAGS.chunk, 2) if impl == "scan" else FLAGS.chunk


def jax_seconds(impl: str, denoiser, images: np.ndarray) -> float:
    """Best seconds per chunk of the library's search (`impl` 'python': fast paths as set, on
    by default; 'scan': off), after one compiling chunk."""
    fast = False if impl == "scan" else None
    return search_loops.jax_search(denoiser, images, FLAGS.lam, chunk_of(impl), FLAGS.repeats,
                                   fast_paths=fast)[0]


def torch_seconds(denoiser, images: np.ndarray) -> float:
    """Best seconds per chunk of a plain PyTorch Adam loop on the same objective."""
    net = torch_twins.denoiser(denoiser.spec.name, denoiser.params)
    iteration = search_loops.torch_search(net, denoiser.spec, images, [FLAGS.lam] * len(images))

    def chunk():
        for _ in range(FLAGS.chunk):
            iteration()

    return common.best_time(chunk, FLAGS.repeats, warmup=1)


def xla_step_flops(denoiser, size: int) -> float:
    """XLA's FLOP count of one search step's value-and-gradient on one image (fast paths on)."""
    import jax
    import jax.numpy as jnp

    from ldct_jax import distances, fastpath

    apply_net = fastpath.convolutions(denoiser.spec.apply_net)

    def objective(delta, params, x, y0, lam):
        xp = x + delta
        d_out = jnp.mean(jnp.square(apply_net(params, xp) - y0))
        return d_out - lam * distances.bounded_mse(xp, x)

    x = jnp.zeros((size, size), jnp.float32)
    fn = jax.jit(jax.value_and_grad(objective))
    cost = fn.lower(x, denoiser.params, x, x, 0.01).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def main(_):
    import jax
    import torch

    from ldct_jax import models

    threads = FLAGS.threads or common.cpu_threads()
    common.set_torch_threads(threads)
    impls = [i for i in IMPLS if i in FLAGS.impls]
    unknown = sorted(set(FLAGS.impls) - set(impls))
    if unknown:
        raise app.UsageError(f"--impls: unknown {unknown}; expected some of {IMPLS}")
    dev = jax.devices()[0]
    print(f"JAX {jax.__version__} on {jax.device_count()} x {dev.device_kind} ({dev.platform}); "
          f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads; {threads} cores")
    jmm = common.jax_matmul_gflops(FLAGS.matmul_n)
    tmm = common.torch_matmul_gflops(FLAGS.matmul_n)
    ceiling = max(jmm, tmm)
    conv = common.jax_conv_gflops(FLAGS.size // 2, 32, 2)
    print(f"ceiling: float32 {FLAGS.matmul_n}^3 matmul JAX {jmm:.1f} GFLOP/s, PyTorch "
          f"{tmm:.1f} GFLOP/s -> {ceiling:.1f}; JAX 3x3 conv 32->32: {conv:.1f} GFLOP/s")

    s = FLAGS.size
    rng = np.random.default_rng(0)
    head = ("| model | batch | impl | image-it/s | s/iteration | GFLOP/s | of ceiling | "
            "vs PyTorch |")
    rows_out = []
    for name in FLAGS.models:
        d = models.create(name, jax.random.key(0))
        flops = common.search_iteration_flops(name, s, s)
        exact = common.search_iteration_flops(name, s, s, exact=True)
        print(f"{name} {s}x{s}: {flops / 1e9:.2f} GFLOP per image-iteration (2 x forward convs; "
              f"{exact / 1e9:.2f} counting only taps inside the image); XLA cost analysis of the "
              f"step: {xla_step_flops(d, s) / 1e9:.2f}", flush=True)
        per_image = {}  # impl -> seconds per image-iteration at the last batch
        for b in (int(v) for v in FLAGS.batches):
            images = rng.normal(40.0, 300.0, (b, s, s)).astype(np.float32)
            result = {}
            for impl in impls:
                guess = per_image.get(impl, 0.0) * b * chunk_of(impl)
                if guess > FLAGS.max_seconds:
                    print(f"  {name} batch {b} {impl}: skipped (about {guess:.0f} s per chunk "
                          f"predicted; raise --max_seconds)", flush=True)
                    continue
                if impl == "torch":
                    sec = torch_seconds(d, images)
                else:
                    sec = jax_seconds(impl, d, images)
                result[impl] = sec / chunk_of(impl)  # seconds per iteration
                per_image[impl] = result[impl] / b
            for impl, sec in result.items():
                rate = b / sec
                gflops = rate * flops / 1e9
                vs = (f"{result['torch'] / sec:.2f}x" if "torch" in result and impl != "torch"
                      else "")
                row = (f"| {name} | {b} | {impl} | {common.fmt_rate(rate)} | {sec:.2f} | "
                       f"{gflops:.1f} | {gflops / ceiling:.0%} | {vs} |")
                rows_out.append(row)
                print("  " + row, flush=True)
    print(f"\nsize {s}x{s}, chunk {FLAGS.chunk}, best of {FLAGS.repeats}; ceiling "
          f"{ceiling:.1f} GFLOP/s (float32 matmul)")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    print("\n".join(rows_out))


if __name__ == "__main__":
    define_flags()
    app.run(main)
