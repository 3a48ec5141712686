"""The train state: everything a step changes, as one pytree, so it can be donated and saved."""

from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

Params = Any


@flax.struct.dataclass
class TrainState:
    """State of a training run after `step` updates.

    Attributes:
      step: int32 scalar, the number of updates done.
      params: the denoiser's (for WGAN-VGG: the generator's) params.
      opt_state: its optax state.
      rng: a raw `uint32[2]` PRNG key; each step folds in `step`, so a resumed run draws the
        same numbers as an uninterrupted one.
      critic_params, critic_opt_state: the WGAN critic and its optax state (None otherwise).
    """

    step: jax.Array
    params: Params
    opt_state: optax.OptState
    rng: jax.Array
    critic_params: Optional[Params] = None
    critic_opt_state: Optional[optax.OptState] = None


def create(params: Params, optimizer: optax.GradientTransformation, seed: int, *,
           critic_params: Optional[Params] = None,
           critic_optimizer: Optional[optax.GradientTransformation] = None) -> TrainState:
    """A state at step 0 with fresh optimiser states and the run's RNG drawn from `seed`."""
    critic_opt_state = None
    if critic_params is not None:
        if critic_optimizer is None:
            raise ValueError("critic_params given without a critic_optimizer")
        critic_opt_state = critic_optimizer.init(critic_params)
    # A raw key (not a typed key array) so that orbax stores it as a plain uint32 array.
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), 0x7EA1)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), rng=rng, critic_params=critic_params,
                      critic_opt_state=critic_opt_state)


def step_key(state: TrainState) -> jax.Array:
    """This step's PRNG key: the run's key with the step folded in."""
    return jax.random.fold_in(state.rng, state.step)
