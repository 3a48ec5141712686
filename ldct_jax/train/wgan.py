"""WGAN-VGG training (Yang et al. 2018): WGAN-GP critic updates, then one generator update.

One step is `n_critic` critic updates followed by one generator update. The step's batch holds
`n_critic` sub-batches, `{'low', 'full'}` of shape `[B, n_critic, p, p]` HU (batch axis first so
it shards like any batch): critic update i sees sub-batch i, and the generator update sees the
last one, as ldct-benchmark's trainer does with its single critic step. Sub-batch i of step s is
the data sampler's batch number `s * n_critic + i`, so the data order depends on the step only.

Losses, in network units:
  critic:    mean C(G(x)) - mean C(y) + gp_weight * GP    (GP at random interpolates)
  generator: perceptual_weight * L1(VGG19 conv5_4 of G(x), of y) - mean C(G(x))
             [+ mse_weight * MSE(G(x), y), only when mse_weight > 0; not in the paper]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ldct_jax import fastpath, gan_losses, metrics
from ldct_jax.data import sampling
from ldct_jax.models import Denoiser, DenoiserSpec
from ldct_jax.train import state as state_lib
from ldct_jax.train.state import TrainState

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class WGANSettings:
    n_critic: int = 4
    gp_weight: float = 10.0
    perceptual_weight: float = 0.1
    tap: str = "conv5_4"
    # Weight of an extra pixel MSE term in the generator loss; 0 (the paper's loss) by default.
    mse_weight: float = 0.0


def init_state(generator: Denoiser, critic_params, g_optimizer: optax.GradientTransformation,
               c_optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    """Step 0 from the generator's and the critic's initial params."""
    return state_lib.create(generator.params, g_optimizer, seed, critic_params=critic_params,
                            critic_optimizer=c_optimizer)


def make_step(generator: DenoiserSpec, critic: nn.Module, vgg, g_optimizer, c_optimizer,
              settings: WGANSettings) -> Callable[..., tuple[TrainState, Metrics]]:
    """`step(state, batch, vgg_params) -> (state, metrics)`.

    `vgg_params` is an argument (not closed over) so jit does not embed the VGG as constants;
    `functools.partial(jitted, vgg_params=vgg.params)` gives the `step(state, batch)` form.
    The losses run with `fastpath.convolutions` (the critic's penalty in its second-order form).
    """

    def critic_fn(cparams):
        return lambda z: critic.apply({"params": cparams}, z[..., None])

    @functools.partial(fastpath.convolutions, second_order=True)
    def critic_loss_fn(cparams, real, fake, key):
        score = critic_fn(cparams)
        wasserstein = gan_losses.critic_loss(score(real), score(fake))
        gp = gan_losses.gradient_penalty(score, real, fake, key)
        return wasserstein + settings.gp_weight * gp, (wasserstein, gp)

    @fastpath.convolutions
    def generator_loss_fn(params, cparams, vgg_params, x, y):
        fake = generator.apply_net(params, x)
        adversarial = gan_losses.generator_adversarial_loss(critic_fn(cparams)(fake))
        perceptual = gan_losses.perceptual_l1(vgg, fake, y, settings.tap, params=vgg_params)
        mse = metrics.mse(fake, y)
        loss = settings.perceptual_weight * perceptual + adversarial
        if settings.mse_weight:
            loss = loss + settings.mse_weight * mse
        return loss, (adversarial, perceptual, mse)

    def step(state: TrainState, batch: Batch, vgg_params) -> tuple[TrainState, Metrics]:
        x = jnp.swapaxes(generator.to_net(batch["low"]), 0, 1)   # [n_critic, B, p, p]
        y = jnp.swapaxes(generator.to_net(batch["full"]), 0, 1)
        if x.shape[0] != settings.n_critic:
            raise ValueError(f"WGAN step: batch has {x.shape[0]} sub-batches, expected "
                             f"n_critic={settings.n_critic}")
        keys = jax.random.split(state_lib.step_key(state), settings.n_critic)

        def critic_update(cparams, copt, xi, yi, key):
            fake = jax.lax.stop_gradient(generator.apply_net(state.params, xi))
            (loss, (w, gp)), grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
                cparams, yi, fake, key)
            updates, copt = c_optimizer.update(grads, copt, cparams)
            return optax.apply_updates(cparams, updates), copt, (loss, w, gp,
                                                                 optax.tree.norm(grads))

        # A Python loop, not lax.scan: XLA:CPU runs convolutions inside a loop body (even a
        # scan of length 1) with a slow generic kernel (jax#12868), and n_critic is small.
        cparams, copt, stats = state.critic_params, state.critic_opt_state, []
        for i in range(settings.n_critic):
            cparams, copt, s = critic_update(cparams, copt, x[i], y[i], keys[i])
            stats.append(s)
        c_loss, w, gp, c_grad_norm = (jnp.stack(v) for v in zip(*stats))

        (g_loss, (adv, perc, mse)), grads = jax.value_and_grad(generator_loss_fn, has_aux=True)(
            state.params, cparams, vgg_params, x[-1], y[-1])
        updates, opt_state = g_optimizer.update(grads, state.opt_state, state.params)
        new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state, critic_params=cparams, critic_opt_state=copt)
        metrics = {"loss": g_loss, "perceptual": perc, "adversarial": adv, "mse": mse,
                   "critic_loss": c_loss[-1], "wasserstein_distance": -w[-1],
                   "gradient_penalty": gp[-1], "grad_norm": optax.tree.norm(grads),
                   # The mean over the critic updates, so a non-finite one shows.
                   "critic_grad_norm": jnp.mean(c_grad_norm)}
        return new, metrics

    return step


def local_batch(scans, step: int, *, batch_size: int, patch_size: int, seed: int,
                n_critic: int, process_index: int = 0, process_count: int = 1) -> Batch:
    """This process's rows of step `step`'s batch: `{'low', 'full'}` `[b, n_critic, p, p]` HU."""
    subs = [sampling.sample_batch(scans, step * n_critic + i, global_batch=batch_size,
                                  patch_size=patch_size, seed=seed,
                                  process_index=process_index, process_count=process_count)
            for i in range(n_critic)]
    return {k: np.stack([np.asarray(s[k], np.float32) for s in subs], axis=1)
            for k in ("low", "full")}
