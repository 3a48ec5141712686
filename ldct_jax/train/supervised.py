"""Supervised training of a denoiser: MSE against routine dose in network units."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np
import optax

from ldct_jax import metrics
from ldct_jax.data import sampling
from ldct_jax.models import Denoiser, DenoiserSpec
from ldct_jax.train import state as state_lib
from ldct_jax.train.state import TrainState

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]
StepFn = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]


SCHEDULES = ("constant", "cosine")


def adam(lr: float, b1: float, b2: float, *, schedule: str = "constant",
         num_steps: int = 0, final_fraction: float = 0.05) -> optax.GradientTransformation:
    """Adam with a constant learning rate, or one that decays along a half cosine from `lr` to
    `final_fraction * lr` over `num_steps` updates (short runs converge further with it)."""
    if schedule == "constant":
        return optax.adam(lr, b1=b1, b2=b2)
    if schedule == "cosine":
        return optax.adam(optax.cosine_decay_schedule(lr, max(num_steps, 1), final_fraction),
                          b1=b1, b2=b2)
    raise ValueError(f"optimizer schedule {schedule!r}; expected one of {SCHEDULES}")


def adam_groups(lrs: Mapping[str, float], groups: Callable[[Any], Any], b1: float, b2: float,
                *, schedule: str = "constant", num_steps: int = 0) -> optax.GradientTransformation:
    """Adam with a learning rate per group of params (PyTorch's Adam with param groups).

    Args:
      lrs: the learning rate of each group name.
      groups: `groups(params)` -> the tree of params with each leaf replaced by its group name
        (e.g. `models.bilateral.param_groups`).
      b1, b2, schedule, num_steps: as in `adam`, the same for every group.
    """
    return optax.partition({name: adam(lr, b1, b2, schedule=schedule, num_steps=num_steps)
                            for name, lr in lrs.items()}, groups)


def init_state(denoiser: Denoiser, optimizer: optax.GradientTransformation,
               seed: int) -> TrainState:
    """Step 0 from the denoiser's initial params."""
    return state_lib.create(denoiser.params, optimizer, seed)


def make_step(spec: DenoiserSpec, optimizer: optax.GradientTransformation) -> StepFn:
    """`step(state, batch) -> (state, metrics)`, one Adam update on the MSE.

    `batch` is `{'low': [B, p, p], 'full': [B, p, p]}` in HU; the loss is the MSE in the
    denoiser's network units. Pure: jit it (see `parallel.data_parallel_step`).
    """

    def loss_fn(params, x, y):
        return metrics.mse(spec.apply_net(params, x), y)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        x, y = spec.to_net(batch["low"]), spec.to_net(batch["full"])
        loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return step


def local_batch(scans, step: int, *, batch_size: int, patch_size: int, seed: int,
                process_index: int = 0, process_count: int = 1) -> Batch:
    """This process's rows of the global batch of `step`: `{'low', 'full'}` `[b, p, p]` HU."""
    b = sampling.sample_batch(scans, step, global_batch=batch_size, patch_size=patch_size,
                              seed=seed, process_index=process_index,
                              process_count=process_count)
    return {"low": np.asarray(b["low"], np.float32), "full": np.asarray(b["full"], np.float32)}
