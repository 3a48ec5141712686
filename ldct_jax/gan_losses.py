"""The GAN losses of WGAN-VGG: the Wasserstein critic and generator losses, the WGAN-GP
gradient penalty and the VGG perceptual L1."""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from ldct_jax.metrics import check_same_shape

Array = jax.Array


def perceptual_l1(vgg, a: Array, b: Array, tap: str = "conv5_4",
                  params: Optional[Any] = None) -> Array:
    """Mean absolute difference of VGG features at `tap` (WGAN-VGG: VGG19 conv5_4, pre-ReLU).

    `a`, `b` are `[..., H, W]` in the VGG's input units (ldct-benchmark: network units with
    `imagenet_norm=False`). Pass `params` under jit (defaults to `vgg.params`, closed over).
    `b` is the target: no gradient flows to it (its features are computed apart, which makes
    the backward pass through `a` alone cheaper).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    check_same_shape(a, b, "perceptual_l1")
    params = vgg.params if params is None else params
    # The target's features apart and without gradient: the backward pass then carries only
    # `a`'s VGG pass (no gradient flows to `b` either way when it is a constant target).
    fa = vgg.features(params, a, tap)[tap]
    fb = jax.lax.stop_gradient(vgg.features(params, b, tap)[tap])
    return jnp.mean(jnp.abs(fa - fb))


def critic_loss(real_scores: Array, fake_scores: Array) -> Array:
    """WGAN critic loss `mean(fake) - mean(real)` (minimised by the critic)."""
    return jnp.mean(fake_scores) - jnp.mean(real_scores)


def generator_adversarial_loss(fake_scores: Array) -> Array:
    """WGAN generator loss `-mean(fake)`."""
    return -jnp.mean(fake_scores)


def gradient_norm_penalty(critic_fn: Callable[[Array], Array], x: Array) -> Array:
    """`mean_i (||grad_x critic(x)_i||_2 - 1)^2` with the norm per sample over all other axes.

    `critic_fn` maps `[B, ...]` to scores `[B]`, each depending on its own sample only (no
    batch norm), so the gradient of the summed scores is the per-sample gradient.
    """
    grads = jax.grad(lambda y: jnp.sum(critic_fn(y)))(x)
    sq = jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=1)
    return jnp.mean(jnp.square(jnp.sqrt(sq + 1e-12) - 1.0))  # +1e-12: finite 2nd derivative at 0


def gradient_penalty(critic_fn: Callable[[Array], Array], real: Array, fake: Array,
                     key: Array) -> Array:
    """WGAN-GP penalty (Gulrajani et al. 2017) at random interpolates, without the lambda.

    Each sample gets its own `alpha ~ U[0, 1)`; `x_hat = alpha real + (1 - alpha) fake`.

    Args:
      critic_fn: `[B, ...] -> [B]`, e.g. `lambda x: critic.apply({'params': p}, x)`.
      real, fake: `[B, ...]`, same shape.
      key: PRNG key for alpha.

    Returns:
      `gradient_norm_penalty(critic_fn, x_hat)`; multiply by lambda_gp (10) yourself.
    """
    real, fake = jnp.asarray(real), jnp.asarray(fake)
    check_same_shape(real, fake, "gradient_penalty")
    alpha = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
    return gradient_norm_penalty(critic_fn, alpha * real + (1.0 - alpha) * fake)
