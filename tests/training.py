"""What the training tests share: tiny in-memory scans, exact-resume and compile checks, a
per-module compilation cache (import the fixture to use it)."""

import contextlib
import os
import signal

import jax
import numpy as np
import pytest

from ldct_jax.data.scan import Scan


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """A fresh persistent compilation cache for this module: the runs of one test compile the
    same steps, and on a 2-core CPU compiling dominates these tests."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    before = {n: getattr(jax.config, n) for n in names}
    jax.config.update(names[0], str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update(names[1], 0.0)
    jax.config.update(names[2], 0)
    yield
    for n, v in before.items():
        jax.config.update(n, v)


def phantom_scans(size=32, slices=3, patients=2, anatomies=("abdomen", "head"), noise=60.0,
                  seed=0):
    """Per anatomy `patients` scans: ellipses in HU; low = full + Gaussian noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    scans = []
    for anatomy in anatomies:
        for p in range(patients):
            full = np.full((slices, size, size), -1000.0, np.float32)
            for s in range(slices):
                img = np.where((yy - .5) ** 2 / .16 + (xx - .5) ** 2 / .12 < 1, 40.0, -1000.0)
                for _ in range(3):
                    cy, cx, r = rng.uniform(.35, .65, 2).tolist() + [rng.uniform(.04, .1)]
                    img = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r,
                                   rng.uniform(-100, 300), img)
                full[s] = img
            low = full + rng.normal(0, noise, full.shape).astype(np.float32)
            scans.append(Scan(f"{anatomy}-{p}", anatomy, low, full, 0.25))
    return scans


@contextlib.contextmanager
def sigterm_at_checkpoint(k):
    """SIGTERM to this process when the k-th checkpoint inside the block is written: orbax
    reports each finished save (a jax.monitoring event) in the training loop's thread, so the
    run stops right after that step, as if a scheduler had preempted it there."""
    saves = [0]

    def on_event(event, **kwargs):
        if event == "/jax/orbax/write/success":
            saves[0] += 1
            if saves[0] == k:
                os.kill(os.getpid(), signal.SIGTERM)

    jax.monitoring.register_event_listener(on_event)
    try:
        yield
    finally:
        jax.monitoring.unregister_event_listener(on_event)


def assert_trees_close(a, b, tol=1e-5):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0
    for (path, x), y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol,
                                   err_msg=jax.tree_util.keystr(path))


class Lowerings:
    """Counts the programs JAX lowers (traces to MLIR) inside the `with` block."""

    EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"

    def __enter__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)
        return self

    def _on_event(self, event, duration, **kwargs):
        self.count += event == self.EVENT

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._on_event)


def run_steps(trainer, mesh, steps):
    """`steps` steps of a `jobs.trainers.Trainer` on `mesh`, checking that the step compiles
    once (the state donated every step) and that every metric of the last one is finite.

    Returns:
      (initial params, final (params, critic params)) as numpy, and the final state.
    """
    from ldct_jax import parallel
    state = trainer.init_state
    init = jax.device_get(state.params)
    batches = [parallel.global_batch(trainer.local_batch(s), mesh) for s in range(steps)]
    with Lowerings() as first:
        state, metrics = trainer.step(state, batches[0])
    with Lowerings() as later:
        for batch in batches[1:]:
            state, metrics = trainer.step(state, batch)
    assert first.count == 1 and later.count == 0, (first.count, later.count)
    assert all(np.isfinite(float(v)) for v in jax.device_get(metrics).values()), metrics
    return init, jax.device_get((state.params, state.critic_params)), state
