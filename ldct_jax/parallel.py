"""Device mesh, shardings and multi-host start for data parallelism.

One mesh axis, `batch`: batches are sharded along it, params and optimiser state replicated, and
the compiler inserts the gradient reduction. The same code runs on 1 CPU, N GPUs and a TPU slice.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_divisible(batch_size: int, mesh: Mesh, key: str = "batch_size") -> None:
    """Raises a ValueError naming `key` unless `batch_size` splits evenly over the mesh and hosts."""
    n = mesh.size
    if batch_size % n:
        raise ValueError(f"config.{key}={batch_size} is not divisible by the number of devices "
                         f"({n}); use a multiple of {n}")
    if batch_size % jax.process_count():
        raise ValueError(f"config.{key}={batch_size} is not divisible by the number of processes "
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


# XLA:CPU compiler options for training steps: of XLA's default YNNPACK fusion types (individual
# dots, individual convolutions, reductions) only the dots. Eigen then runs the convolutions,
# their weight gradients above all, faster, and small VGG feature maps are not fused into one
# slow YNNPACK region. On 2 cores (`python benchmarks/bench_train.py`): CNN-10 at patch 64,
# batch 8, 0.175 -> 0.12 s/step; WGAN-VGG 4.7 -> 4.0 s; WGAN-VGG at patch 32, batch 4, one
# critic update 0.95 -> 0.84 s. The invariance search's 512x512 input gradients gain nothing
# from it, so the search keeps the default.
CPU_TRAIN_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                              "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def supported_cpu_options(options: dict[str, str]) -> dict[str, str]:
    """`options` if this jaxlib's CPU compiler accepts them, else `{}` (and a logged warning).

    XLA's debug options come and go between jaxlib versions; an unknown one would make every
    compile fail.
    """
    return _supported_cpu_options(tuple(sorted(options.items())))


@functools.cache
def _supported_cpu_options(items: tuple[tuple[str, str], ...]) -> dict[str, str]:
    options = dict(items)
    try:
        with jax.default_device(jax.devices("cpu")[0]):
            jax.jit(lambda x: x + 1, compiler_options=options).lower(np.float32(0)).compile()
    except jax.errors.JaxRuntimeError as e:
        logging.warning("XLA:CPU does not accept compiler options %s (%s); compiling without "
                        "them", options, str(e).splitlines()[0])
        return {}
    return options


def data_parallel_step(step_fn: Callable[..., Any], mesh: Mesh, *, extra_args: int = 0,
                       donate: bool = True) -> Callable[..., Any]:
    """Jits `step_fn(state, batch, *extra) -> (state, metrics)` for data parallelism on `mesh`.

    The state (donated), the metrics and the `extra_args` trailing arguments (e.g. frozen VGG
    params) are replicated; every leaf of the batch is split along its leading axis. Gradients
    of a loss averaged over the batch are then reduced across devices by the compiler. On CPU
    meshes the step compiles with `CPU_TRAIN_COMPILER_OPTIONS` (where supported).
    """
    rep, batch = replicated(mesh), batch_sharding(mesh)
    cpu = all(d.platform == "cpu" for d in mesh.devices.flat)
    return jax.jit(step_fn, in_shardings=(rep, batch) + (rep,) * extra_args,
                   out_shardings=(rep, rep), donate_argnums=(0,) if donate else (),
                   compiler_options=supported_cpu_options(CPU_TRAIN_COMPILER_OPTIONS) if cpu
                   else None)
