"""The invariance search's optimisers and its stopping rule (pure functions of the options).

Two methods minimise L(x_inv) = D_out - lambda * d_in (see `ldct_jax.analysis.search`):

- `adam`: the talk's recipe, Adam with a constant learning rate for a fixed number of
  iterations (3000 at 1e-2).
- `anneal` (the default): Adam with a larger step that decays (cosine, to `final_lr_fraction`
  of it) and lambda continuation: a row with lambda below `lambda_start` starts at
  `lambda_start` and lambda falls geometrically to its own value over `lambda_steps`
  iterations (a third of them unless given). A large lambda grows x_inv quickly along the
  directions f ignores (at small lambda that growth is slow: Adam's step there is set by
  D_out's gradient); lowering it then removes what f does pass, which is fast. At most 300
  iterations; rows stop earlier when they converge.

Stopping: a row has converged when its loss changed by at most `tolerance` (relative to the
loss) over the last `window` iterations, checked after every chunk once the lambda schedule is
over; a converged row keeps its x_inv from then on, and the loop ends when every row has.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

METHODS = ("anneal", "adam")


class Settings(NamedTuple):
    """The options with the method's defaults filled in."""

    method: str
    iterations: int
    learning_rate: float
    b2: float
    lambda_start: float   # 0: no lambda continuation
    lambda_steps: int
    final_lr_fraction: float
    tolerance: float      # 0: no stopping before `iterations`
    window: int


# What 0 (or a negative tolerance) in a SearchOptions field stands for, per method.
DEFAULTS = {
    "adam": Settings("adam", iterations=3000, learning_rate=1e-2, b2=0.999, lambda_start=0.0,
                     lambda_steps=0, final_lr_fraction=1.0, tolerance=0.0, window=100),
    "anneal": Settings("anneal", iterations=300, learning_rate=0.1, b2=0.9, lambda_start=1e-2,
                       lambda_steps=100, final_lr_fraction=1e-2, tolerance=1e-3, window=50),
}


def settings(method: str, iterations: int = 0, learning_rate: float = 0.0, b2: float = 0.0,
             lambda_start: float = -1.0, lambda_steps: int = 0, final_lr_fraction: float = 0.0,
             tolerance: float = -1.0, window: int = 0) -> Settings:
    """`Settings` of `method`, each value given replacing the method's default.

    Defaults stand for "the method's": 0 for counts and rates, a negative number for
    lambda_start and tolerance (whose 0 means "off"). The method's lambda_steps is a share of
    the iterations (anneal: a third, 100 of 300).
    """
    if method not in DEFAULTS:
        raise ValueError(f"search: unknown method {method!r}; expected one of {METHODS}")
    if method == "adam":
        # The talk's recipe has no schedule: a value given for one would be silently ignored.
        given = dict(lambda_start=lambda_start > 0, lambda_steps=lambda_steps > 0,
                     final_lr_fraction=final_lr_fraction not in (0.0, 1.0))
        if any(given.values()):
            raise ValueError(f"search: {[k for k, v in given.items() if v]} apply to method "
                             "'anneal' only; method 'adam' keeps lambda and the step constant")
    d = DEFAULTS[method]
    iterations = iterations or d.iterations
    if not lambda_steps and d.lambda_steps:
        # The default schedule takes the same share of the iterations however many there are,
        # so that a short run still ends at its lambdas.
        lambda_steps = max(1, round(d.lambda_steps * iterations / d.iterations))
    return Settings(
        method,
        iterations=iterations,
        learning_rate=learning_rate or d.learning_rate,
        b2=b2 or d.b2,
        lambda_start=d.lambda_start if lambda_start < 0 else lambda_start,
        lambda_steps=lambda_steps,
        final_lr_fraction=final_lr_fraction or d.final_lr_fraction,
        tolerance=d.tolerance if tolerance < 0 else tolerance,
        window=window or d.window)


def optimizer(s: Settings, b1: float, eps: float) -> optax.GradientTransformation:
    """Adam with the method's step: constant (`adam`) or cosine-decayed (`anneal`)."""
    if s.method == "adam":
        return optax.adam(s.learning_rate, b1=b1, b2=s.b2, eps=eps)
    schedule = optax.cosine_decay_schedule(s.learning_rate, s.iterations, s.final_lr_fraction)
    return optax.adam(schedule, b1=b1, b2=s.b2, eps=eps)


def effective_lambda(s: Settings, lam: jax.Array, t: jax.Array) -> jax.Array:
    """Lambda at iteration `t` (per row): from max(lam, lambda_start) down to lam,
    geometrically over `lambda_steps` iterations (lam itself when continuation is off)."""
    if s.method == "adam" or s.lambda_start <= 0:
        return lam
    left = jnp.clip(1.0 - t / s.lambda_steps, 0.0, 1.0)
    high = jnp.maximum(lam, s.lambda_start)
    geometric = jnp.exp(left * jnp.log(high) + (1.0 - left) * jnp.log(jnp.maximum(lam, 1e-30)))
    return jnp.where(lam > 0, geometric, high * left)


def check_schedule(s: Settings, lambdas: Any) -> None:
    """A ValueError unless every row reaches its own lambda within the iterations: with lambda
    continuation, a row whose lambda is below `lambda_start` gets there after `lambda_steps`."""
    # In float32, as the rows hold lambda: 0.01 given is not below a lambda_start of 0.01.
    low = [float(v) for v in np.atleast_1d(np.asarray(lambdas, np.float32))
           if v < np.float32(s.lambda_start)]
    if low and s.method != "adam" and s.iterations < s.lambda_steps:
        raise ValueError(
            f"search: iterations ({s.iterations}) end before lambda_steps ({s.lambda_steps}): "
            f"rows with lambda below lambda_start ({s.lambda_start:g}), here {min(low):g}, would "
            "stop before reaching their lambda; raise iterations, lower lambda_steps or set "
            "lambda_start=0")


def schedule_end(s: Settings) -> int:
    """The first iteration at which every row optimises its own lambda."""
    return s.lambda_steps if s.method != "adam" and s.lambda_start > 0 else 0


def converged(loss: np.ndarray, done: int, s: Settings) -> np.ndarray:
    """Rows whose loss moved by at most `tolerance` of itself over the last `window` iterations.

    Args:
      loss: `[B, done]` the loss curves so far (host).
      done: iterations run.
      s: the settings.

    Returns:
      `[B]` bool; all False while stopping is off or too few iterations ran at the final lambda.
    """
    if s.tolerance <= 0 or done - schedule_end(s) < s.window:
        return np.zeros(loss.shape[0], bool)
    now, then = loss[:, done - 1], loss[:, done - 1 - s.window]
    scale = np.maximum(np.abs(now), np.finfo(np.float32).tiny)
    return np.abs(now - then) <= s.tolerance * scale
