"""Patches per second of the patch sampler, next to what a train step consumes.

    python -m benchmarks.bench_sampling                       # synthetic set in /tmp, built once
    python -m benchmarks.bench_sampling --root=DIR            # a synthetic set built at DIR
    python -m benchmarks.bench_sampling --source=memmap       # random 512x512 memmaps (no build)
    python -m benchmarks.bench_sampling --mayo=ROOT           # cached Mayo data

The sampler reads from the cached memory maps (page cache warm after the first pass, as in a
training run whose data set fits in RAM). The train-step column times the trainer's CNN-10 step
(`ldct_jax.train.supervised`, Adam on the MSE in network units) at the same batch and patch size
on the default JAX backend, data-parallel over all local devices; `--train_step_ms=X` uses a
given number instead.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time

import numpy as np
from absl import app, flags

from ldct_jax.data import Scan, sampling

FLAGS = flags.FLAGS
flags.DEFINE_enum("source", "synthetic", ["synthetic", "memmap"], "data when --mayo is unset")
flags.DEFINE_string("root", "", "synthetic data set root ('' -> a folder in the temp dir)")
flags.DEFINE_string("mayo", "", "Mayo/TCIA root; overrides --source")
flags.DEFINE_string("cache_dir", "", "DICOM cache for --mayo ('' -> the default)")
flags.DEFINE_integer("patients_per_anatomy", 2, "synthetic/memmap size")
flags.DEFINE_integer("slices", 8, "synthetic/memmap slices per patient")
flags.DEFINE_float("seconds", 2.0, "time spent per configuration")
flags.DEFINE_float("train_step_ms", -1.0, "train step time to compare with; < 0: time CNN-10")
flags.DEFINE_integer("prefetch", 0, "also time sampling.prefetch with this many batches ahead")
flags.DEFINE_integer("workers", 1, "threads preparing prefetched batches")

CONFIGS = ((64, 128), (64, 16), (80, 128), (80, 16))  # (patch, global batch)


def memmap_scans(root: str, patients: int, slices: int, size: int = 512) -> list[Scan]:
    """Random HU volumes written as .npy and memory-mapped, like the DICOM cache."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    scans = []
    for p in range(patients):
        vols = []
        for dose in ("low", "full"):
            path = os.path.join(root, f"p{p}-{dose}.npy")
            if not os.path.exists(path):
                np.save(path, rng.normal(0, 300, (slices, size, size)).astype(np.float32))
            vols.append(np.load(path, mmap_mode="r"))
        scans.append(Scan(f"p{p}", "abdomen", *vols))
    return scans


def load(tmp: str) -> tuple[str, list[Scan]]:
    if FLAGS.mayo:
        from ldct_jax.data import dicom
        return "mayo", dicom.load_mayo(FLAGS.mayo, cache_dir=FLAGS.cache_dir or None)
    n = 3 * FLAGS.patients_per_anatomy
    if FLAGS.source == "memmap":
        return "memmap 512", memmap_scans(os.path.join(tmp, "memmap"), n, FLAGS.slices)
    from ldct_jax.data import synthetic
    root = FLAGS.root or os.path.join(tmp, "synthetic")
    synthetic.build(root, patients_per_anatomy=FLAGS.patients_per_anatomy, slices=FLAGS.slices)
    return f"synthetic {root}", synthetic.load(root)


def rate(fn, batch: int) -> float:
    """Patches per second of fn(step), timed for about FLAGS.seconds after a warm-up pass."""
    fn(0)
    step, start = 1, time.perf_counter()
    while time.perf_counter() - start < FLAGS.seconds:
        fn(step)
        step += 1
    return batch * (step - 1) / (time.perf_counter() - start)


def cnn10_step_rate(patch: int, batch: int) -> float:
    """Patches per second of the trainer's jitted, data-parallel CNN-10 Adam step."""
    import jax

    from ldct_jax import models, parallel
    from ldct_jax.train import supervised
    d = models.create("cnn10", jax.random.key(0))
    opt = supervised.adam(1e-4, 0.9, 0.999)
    mesh = parallel.make_mesh()
    step = parallel.data_parallel_step(supervised.make_step(d.spec, opt), mesh)
    state = [parallel.replicate(supervised.init_state(d, opt, 0), mesh)]
    x = np.random.default_rng(0).normal(0, 300, (batch, patch, patch)).astype(np.float32)
    data = parallel.global_batch({"low": x, "full": x}, mesh)

    def one(_):
        state[0], metrics = step(state[0], data)
        jax.block_until_ready(metrics)

    return rate(one, batch)


def main(_):
    import jax
    with tempfile.TemporaryDirectory() as tmp:
        name, scans = load(tmp)
        print(f"data: {name}: {len(scans)} patients, {sum(s.num_slices for s in scans)} slices "
              f"of {scans[0].full.shape[1]}x{scans[0].full.shape[2]}; train step on "
              f"{jax.device_count()} x {jax.devices()[0].device_kind}")
        head = "| patch | batch | sampler patches/s | ms/batch |"
        if FLAGS.prefetch:
            head += f" prefetch {FLAGS.prefetch}, {FLAGS.workers} threads: patches/s |"
        head += " CNN-10 step patches/s | step ms | sampler / step |"
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for patch, batch in CONFIGS:
            kw = dict(global_batch=batch, patch_size=patch, seed=0)
            r = rate(lambda step: sampling.sample_batch(scans, step, **kw), batch)
            row = f"| {patch} | {batch} | {r:,.0f} | {1e3 * batch / r:.2f} |"
            if FLAGS.prefetch:
                it = sampling.prefetch(lambda step: sampling.sample_batch(scans, step, **kw),
                                       itertools.count(), FLAGS.prefetch, FLAGS.workers)
                row += f" {rate(lambda _: next(it), batch):,.0f} |"
            t = (cnn10_step_rate(patch, batch) if FLAGS.train_step_ms < 0
                 else 1e3 * batch / FLAGS.train_step_ms)
            row += f" {t:,.0f} | {1e3 * batch / t:.2f} | {r / t:.1f}x |"
            print(row, flush=True)


if __name__ == "__main__":
    app.run(main)
