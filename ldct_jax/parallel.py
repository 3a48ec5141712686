"""Device mesh, shardings and multi-host start for data parallelism.

One mesh axis, `batch`: batches are sharded along it, params and optimiser state replicated, and
the compiler inserts the gradient reduction. The same code runs on 1 CPU, N GPUs and a TPU slice.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ldct_jax import fastpath

BATCH_AXIS = "batch"

# Environment variables by which a cluster launcher asks for a multi-host start.
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_JOB_ID",
                    "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed(mode: str = "auto") -> bool:
    """Calls `jax.distributed.initialize()` when asked to.

    Args:
      mode: 'on' (always), 'off' (never) or 'auto' (when the environment names a coordinator,
        a SLURM job or a multi-worker TPU). Must run before anything touches a device.

    Returns:
      Whether it initialised.
    """
    if mode not in ("on", "off", "auto"):
        raise ValueError(f"distributed mode must be 'on', 'off' or 'auto', got {mode!r}")
    wanted = mode == "on" or (mode == "auto" and any(v in os.environ for v in _DISTRIBUTED_ENV))
    if wanted and not jax.distributed.is_initialized():
        jax.distributed.initialize()
        logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    return wanted


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (all by default) with axis `batch`."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"num_devices={n}, but {len(devices)} devices are available")
    return jax.make_mesh((n,), (BATCH_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices[:n])


def local_mesh() -> Mesh:
    """A 1-D mesh over this process's devices only, for work one process does alone (figures
    of process 0)."""
    devices = jax.local_devices()
    return jax.make_mesh((len(devices),), (BATCH_AXIS,),
                         axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def _spans_processes(mesh: Mesh) -> bool:
    return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    """Raises a ValueError unless `batch_size` splits evenly over the mesh and the hosts."""
    n = mesh.size
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} is not divisible by the number of devices "
                         f"({n}); use a multiple of {n}")
    if batch_size % jax.process_count():
        raise ValueError(f"batch size {batch_size} is not divisible by the number of processes "
                         f"({jax.process_count()})")


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of `tree` on all devices of `mesh`."""
    return jax.device_put(tree, replicated(mesh))


def global_batch(local: Any, mesh: Mesh) -> Any:
    """Assembles each process's share of a batch into global arrays sharded along `batch`.

    Args:
      local: pytree of numpy arrays, this process's rows of the global batch.
      mesh: the mesh from `make_mesh`.

    Returns:
      The same pytree of global `jax.Array`s with leading size `local * process_count`.
    """
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def to_host(tree: Any) -> Any:
    """Numpy copies of the leaves of a replicated (or process-local) pytree, on any process."""
    def copy(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.sharding.is_fully_replicated:
                raise ValueError("to_host: expected replicated arrays (each process holds all of "
                                 f"them), got a sharded array of shape {x.shape}")
            x = x.addressable_data(0)
        return np.asarray(jax.device_get(x))
    return jax.tree.map(copy, tree)


def padded_size(n: int, mesh: Mesh) -> int:
    """`n` rounded up to a multiple of the mesh size."""
    return -(-n // mesh.size) * mesh.size


def pad_rows(tree: Any, size: int) -> Any:
    """Pads every leaf (numpy, leading axis) to `size` rows by repeating its last row, so that
    batches of any length run in one compiled program of batch `size`."""
    def pad(a):
        a = np.asarray(a)
        if a.shape[0] == size:
            return a
        return np.concatenate([a, np.repeat(a[-1:], size - a.shape[0], axis=0)])
    return jax.tree.map(pad, tree)


def shard_rows(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree of numpy arrays along `batch`; on a mesh over several processes every
    process holds the whole batch and contributes its own rows."""
    if not _spans_processes(mesh):
        return jax.device_put(tree, batch_sharding(mesh))
    n = jax.tree.leaves(tree)[0].shape[0]
    per = n // jax.process_count()
    lo = jax.process_index() * per
    return global_batch(jax.tree.map(lambda a: a[lo:lo + per], tree), mesh)


def gather_rows(tree: Any, rows: int) -> Any:
    """A sharded pytree back as numpy on every process: the first `rows` rows of each leaf."""
    if not all(getattr(a, "is_fully_addressable", True) for a in jax.tree.leaves(tree)):
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(lambda a: np.asarray(a)[:rows], tree)


def data_parallel_step(step_fn: Callable[..., Any], mesh: Mesh, *, extra_args: int = 0,
                       donate: bool = True) -> Callable[..., Any]:
    """Jits `step_fn(state, batch, *extra) -> (state, metrics)` for data parallelism on `mesh`.

    The state (donated), the metrics and the `extra_args` trailing arguments (e.g. frozen VGG
    params) are replicated; every leaf of the batch is split along its leading axis. Gradients
    of a loss averaged over the batch are then reduced across devices by the compiler. It
    compiles with `fastpath.compiler_options(mesh)`.
    """
    rep, batch = replicated(mesh), batch_sharding(mesh)
    return jax.jit(step_fn, in_shardings=(rep, batch) + (rep,) * extra_args,
                   out_shardings=(rep, rep), donate_argnums=(0,) if donate else (),
                   compiler_options=fastpath.compiler_options(mesh))
