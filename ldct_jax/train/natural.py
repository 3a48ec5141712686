"""Training a generator of natural invariances against a multi-scale Wasserstein critic.

The generator g(x, z) -> x_inv (`ldct_jax.models.natural`) learns, for a frozen denoiser f and
low-dose patches x, perturbations that f ignores and that look like low-dose CT. Its loss, for
two noise draws z1, z2 per patch (x_k = clip(x + g(x, z_k)) to the valid HU range):

    L_g = mean_k [ D_out(f(x_k), f(x)) - lambda * d_in(x_k, x) - alpha * sum_i C_i(down_i(x_k)) ]
          - beta * d_in(x_1, x_2)

- D_out, the invariance: the mean squared output change in the denoiser's network units, as in
  the image-domain search (`ldct_jax.analysis.search`); f is frozen.
- lambda * d_in, the reward for a large change: one of the search's bounded input distances
  (`ldct_jax.distances`), so the reward saturates instead of growing without end.
- alpha * sum_i C_i, realism: critic i scores x_k averaged over 2^i x 2^i blocks
  (`models.natural.downsample`), so that both the noise texture (stage 0) and coarser structure
  (later stages) must pass for a real low-dose patch.
- beta * d_in(x_1, x_2), diversity: a mode-seeking term (after Mao et al. 2019, MSGAN).
  Without it a conditional generator learns to ignore z (one x_inv per x). It rewards the
  distance between the two samples in the units of the change reward: split x_inv into a part
  that z does not move and one that it does, and d_in rewards both, this term the second only.
  (MSGAN's ratio |z1 - z2| / |g(z1) - g(z2)| grows without bound as samples coincide, and
  its scale has nothing to do with the other terms'.)

Each critic i is trained as a WGAN-GP critic (Gulrajani et al. 2017) on down_i of real
low-dose patches (other patches of the same data, not x itself) against down_i of x_k.

One step is `n_critic` critic updates, then one generator update. The batch is
`{'low': [B, n_critic, p, p], 'real': [B, n_critic, p, p]}` HU: critic update i makes its fakes
from `low[:, i]` and takes `real[:, i]` as real; the generator update uses `low[:, -1]`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ldct_jax import ct, distances, fastpath, gan_losses
from ldct_jax.data import sampling
from ldct_jax.models import natural as natural_models
from ldct_jax.models.denoiser import DenoiserSpec
from ldct_jax.train import state as state_lib
from ldct_jax.train.state import TrainState

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class NaturalSettings:
    """The loss weights (see the module docstring) and the critics' training.

    Attributes:
      lam: lambda, the weight of the input-change reward d_in.
      lam_start, lam_steps: lambda continuation (0: off): lambda falls geometrically from
        lam_start to lam over the first lam_steps steps. The reward's gradient vanishes at
        x_inv = 0, so a small lambda alone lets the output term shrink x_inv everywhere before
        the generator has found where it is free; a large one first grows x_inv, then the
        falling lambda lets the output term remove it where the denoiser sees it (the search's
        'anneal' method does the same per perturbation).
      distance: d_in, a name of `distances.INPUT_DISTANCES` ('vgg16' is not supported here).
      alpha: the weight of the critics' realism term.
      beta: the weight of the mode-seeking diversity term (0: off).
      scales: K, the number of critics (stages 0..K-1).
      n_critic: critic updates per generator update.
      gp_weight: the gradient-penalty weight of every critic.
    """

    lam: float = 1e-2
    lam_start: float = 0.0
    lam_steps: int = 0
    distance: str = "mse"
    alpha: float = 1e-3
    beta: float = 1e-3
    scales: int = 3
    n_critic: int = 1
    gp_weight: float = 10.0


def init_state(generator_params, critic_params, g_optimizer: optax.GradientTransformation,
               c_optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    """Step 0: the generator's params and `{'stage<i>': params}` of the K critics."""
    return state_lib.create(generator_params, g_optimizer, seed, critic_params=critic_params,
                            critic_optimizer=c_optimizer)


def draw_noise(key: jax.Array, shape: tuple[int, ...], channels: int) -> jax.Array:
    """The generator's noise z: `shape + (channels,)` standard normal."""
    return jax.random.normal(key, tuple(shape) + (channels,), jnp.float32)


def conditions(generator: natural_models.InvarianceGenerator, x_hu, y_hu=None) -> jax.Array:
    """The generator's conditions `[B, H, W, C]`: x and, if it is conditioned on it, f(x)
    (`y_hu`, required then), in the generator's units."""
    parts = [x_hu]
    if generator.condition_on_output:
        if y_hu is None:
            raise ValueError("this generator is conditioned on the denoiser's output f(x): "
                             "pass the denoiser")
        parts.append(y_hu)
    return natural_models.to_units(jnp.stack(parts, axis=-1))


def perturb(generator: natural_models.InvarianceGenerator, params, x_hu, z,
            y_hu=None) -> tuple:
    """`(x_inv, x + x_inv)` in HU for images `x_hu` `[B, H, W]` (with f(x), `y_hu`, for a
    generator conditioned on it) and noise `z`, with `x + x_inv` kept inside [HU_MIN, HU_MAX]
    (and x_inv with it)."""
    raw = generator.apply({"params": params}, conditions(generator, x_hu, y_hu), z)
    perturbed = jnp.clip(x_hu + raw, ct.HU_MIN, ct.HU_MAX)
    return perturbed - x_hu, perturbed


def make_step(spec: DenoiserSpec, generator: natural_models.InvarianceGenerator,
              critic: natural_models.PatchCritic, g_optimizer, c_optimizer,
              settings: NaturalSettings) -> Callable[..., tuple[TrainState, Metrics]]:
    """`step(state, batch, denoiser_params) -> (state, metrics)`; the denoiser's params are an
    argument so that jit does not embed them as constants. Pure: jit it
    (`parallel.data_parallel_step(step, mesh, extra_args=1)`). The losses run with
    `fastpath.convolutions`, as the WGAN-VGG step's do."""
    if settings.distance not in ("mse", "dssim"):
        raise ValueError(f"natural invariances: input distance {settings.distance!r}; expected "
                         "'mse' or 'dssim'")
    lo, hi = float(spec.to_net(ct.HU_MIN)), float(spec.to_net(ct.HU_MAX))
    d_in = distances.input_distance(settings.distance, net_range=(lo, hi))
    channels = generator.noise_channels
    lam_at = lambda_schedule(settings)

    def scores(cparams, hu):
        return natural_models.critic_scores(critic, cparams, natural_models.to_units(hu))

    @functools.partial(fastpath.convolutions, second_order=True)
    def critic_loss_fn(cparams, real_hu, fake_hu, key):
        total, wasserstein, penalty = 0.0, [], []
        keys = jax.random.split(key, settings.scales)
        for i in range(settings.scales):
            real = natural_models.downsample(natural_models.to_units(real_hu), i)
            fake = natural_models.downsample(natural_models.to_units(fake_hu), i)
            fn = lambda u, i=i: critic.apply({"params": cparams[f"stage{i}"]},  # noqa: E731
                                             u[..., None])
            w = gan_losses.critic_loss(fn(real), fn(fake))
            gp = gan_losses.gradient_penalty(fn, real, fake, keys[i])
            total = total + w + settings.gp_weight * gp
            wasserstein.append(-w)
            penalty.append(gp)
        return total, (jnp.stack(wasserstein), jnp.stack(penalty))

    @fastpath.convolutions
    def generator_loss_fn(params, cparams, fparams, x_hu, y0, key, lam):
        k1, k2 = jax.random.split(key)
        z1, z2 = (draw_noise(k, x_hu.shape, channels) for k in (k1, k2))
        x_net = spec.to_net(x_hu)
        y_hu = spec.from_net(y0)
        (inv1, p1), (inv2, p2) = (perturb(generator, params, x_hu, z, y_hu) for z in (z1, z2))
        both = jnp.stack([p1, p2])                                # [2, B, H, W] HU
        d_out = jnp.mean(jnp.square(spec.apply_net(fparams, spec.to_net(both)) - y0))
        change = jnp.mean(d_in(spec.to_net(both), jnp.broadcast_to(x_net, both.shape)))
        realism = jnp.mean(jnp.sum(scores(cparams, both.reshape((-1,) + x_hu.shape[1:])),
                                   axis=-1))
        diversity = jnp.mean(d_in(spec.to_net(p1), spec.to_net(p2)))
        loss = (d_out - lam * change - settings.alpha * realism
                - settings.beta * diversity)
        stats = {"d_out": d_out, "d_in": change, "realism": realism, "diversity": diversity,
                 "x_inv_rms_hu": jnp.sqrt(jnp.mean(jnp.square(jnp.stack([inv1, inv2])))),
                 "output_rms_hu": jnp.sqrt(d_out) * spec.scale, "lam": lam}
        return loss, stats

    def step(state: TrainState, batch: Batch, fparams) -> tuple[TrainState, Metrics]:
        low = jnp.swapaxes(batch["low"], 0, 1)     # [n_critic, B, p, p]
        real = jnp.swapaxes(batch["real"], 0, 1)
        if low.shape[0] != settings.n_critic:
            raise ValueError(f"natural step: batch has {low.shape[0]} sub-batches, expected "
                             f"n_critic={settings.n_critic}")
        keys = jax.random.split(state_lib.step_key(state), settings.n_critic + 1)
        # f(x), network units, once per sub-batch the step conditions on (every one, or only the
        # generator's last): the critics' fakes and the generator's output change use it.
        y_net = jax.lax.stop_gradient(spec.apply_net(
            fparams, spec.to_net(low if generator.condition_on_output else low[-1:])))
        cparams, copt = state.critic_params, state.critic_opt_state
        # A Python loop, as in the WGAN-VGG step: XLA:CPU slows convolutions inside loops.
        for i in range(settings.n_critic):
            kz, kgp = jax.random.split(keys[i])
            z = draw_noise(kz, low[i].shape, channels)
            y_hu = spec.from_net(y_net[i]) if generator.condition_on_output else None
            fake = jax.lax.stop_gradient(perturb(generator, state.params, low[i], z, y_hu)[1])
            (c_loss, (w, gp)), grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
                cparams, real[i], fake, kgp)
            updates, copt = c_optimizer.update(grads, copt, cparams)
            cparams = optax.apply_updates(cparams, updates)
        (g_loss, stats), grads = jax.value_and_grad(generator_loss_fn, has_aux=True)(
            state.params, cparams, fparams, low[-1], y_net[-1], keys[-1], lam_at(state.step))
        updates, opt_state = g_optimizer.update(grads, state.opt_state, state.params)
        new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state, critic_params=cparams, critic_opt_state=copt)
        metrics = {"loss": g_loss, **stats, "critic_loss": c_loss,
                   "grad_norm": optax.tree.norm(grads)}
        metrics.update({f"wasserstein_distance_{i}": w[i] for i in range(settings.scales)})
        metrics.update({f"gradient_penalty_{i}": gp[i] for i in range(settings.scales)})
        return new, metrics

    return step


def lambda_schedule(settings: NaturalSettings) -> optax.Schedule:
    """Lambda at a step: the continuation from lam_start to lam, or lam throughout."""
    if settings.lam_start <= 0 or settings.lam_steps <= 0 or settings.lam <= 0:
        return optax.constant_schedule(settings.lam)
    return optax.exponential_decay(settings.lam_start, settings.lam_steps,
                                   settings.lam / settings.lam_start, end_value=settings.lam)


def local_batch(scans, step: int, *, batch_size: int, patch_size: int, seed: int,
                n_critic: int, process_index: int = 0, process_count: int = 1) -> Batch:
    """This process's rows of step `step`'s batch: `{'low', 'real'}` `[b, n_critic, p, p]` HU.

    Sub-batch i of step s is the sampler's batch `2 (s n_critic + i)` (the patches x) and the
    next one (the real patches the critics see), so x and the real patches are drawn apart and
    the data order depends on the step only.
    """
    def low(index):
        return np.asarray(sampling.sample_batch(
            scans, index, global_batch=batch_size, patch_size=patch_size, seed=seed,
            process_index=process_index, process_count=process_count)["low"], np.float32)

    first = 2 * step * n_critic
    return {"low": np.stack([low(first + 2 * i) for i in range(n_critic)], axis=1),
            "real": np.stack([low(first + 2 * i + 1) for i in range(n_critic)], axis=1)}
