"""The invariance search's compiled programs: one row's objective and optimiser step, and the
jitted `init`, `chunk` and `final_metrics` over a batch of rows sharded along the batch.

`ldct_jax.analysis.search` builds the rows and drives these programs; everything here is a pure
function of a static `Program` (what the compilation depends on besides data) and arrays.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from ldct_jax import ct, distances as distances_lib, fastpath, metrics as metrics_lib, parallel
from ldct_jax.analysis import optimizers
from ldct_jax.models.denoiser import DenoiserSpec

if TYPE_CHECKING:
    from ldct_jax.analysis.search import SearchOptions

CURVES = ("loss", "d_out", "d_in")   # what `chunk` records per row and iteration, in order


class State(NamedTuple):
    """Per-row optimisation state (network units), a pytree sharded along the batch."""

    x: jax.Array        # [B, H, W] image
    y0: jax.Array       # [B, H, W] f(x)
    delta: jax.Array    # [B, H, W] x_inv
    mask: jax.Array     # [B, H, W] where x_inv may live
    lam: jax.Array      # [B]
    weight: jax.Array   # [B, K] one-hot over the searcher's distances
    opt: Any            # Adam state, per row
    t: jax.Array        # [B] int32 iterations run (lambda continuation's clock)
    active: jax.Array   # [B] bool: not converged yet (a converged row's x_inv stays put)


def net_range(spec: DenoiserSpec) -> tuple[float, float]:
    """The valid HU range [HU_MIN, HU_MAX] in `spec`'s network units: where x + x_inv is
    clipped, and the range the bounded input distances are scaled by."""
    return float(spec.to_net(ct.HU_MIN)), float(spec.to_net(ct.HU_MAX))


@dataclasses.dataclass(frozen=True)
class Program:
    """What the compiled search depends on besides data (hashable: a static jit argument)."""

    spec: DenoiserSpec
    distances: tuple[str, ...]
    present: tuple[int, ...]  # the distances some row of the batch uses
    options: SearchOptions
    mesh: Mesh
    fast: bool                # fastpath.enabled(mesh) when the searcher was built

    @property
    def optimizer(self) -> optax.GradientTransformation:
        return optimizers.optimizer(self.options.settings, self.options.b1, self.options.eps)

    def rows(self, tree):
        """Pins every (per-row) output to the batch sharding, so that the state fed back into
        the next chunk has the sharding its program was compiled for."""
        return jax.lax.with_sharding_constraint(tree, parallel.batch_sharding(self.mesh))

    def net(self, params, x):
        """The denoiser in the options' compute dtype, its output in `x`'s dtype."""
        dtype = jnp.dtype(self.options.compute_dtype)
        if dtype == x.dtype:
            return self.spec.apply_net(params, x)
        params = jax.tree.map(
            lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)
        return self.spec.apply_net(params, x.astype(dtype)).astype(x.dtype)

    # -- per row (x is [H, W] in network units) ----------------------------------------------

    def d_in(self, vgg, a, b, weight):
        # Only the distances some row of the batch uses: a batch of 'mse' rows does not pay
        # for VGG16 features with weight 0.
        lo, hi = net_range(self.spec)
        return sum(weight[k] * distances_lib.input_distance(
            self.distances[k], vgg, net_range=(lo, hi))(a, b) for k in self.present)

    def objective(self, delta, params, vgg, x, y0, lam, weight):
        xp = x + delta
        d_out = jnp.mean(jnp.square(self.net(params, xp) - y0))
        d_in = self.d_in(vgg, xp, x, weight)
        loss = d_out - lam * d_in
        if self.options.sensitivity:
            loss = -loss
        return loss, (d_out, d_in)

    def project(self, delta, x, mask):
        if self.options.clip:
            lo, hi = net_range(self.spec)
            delta = jnp.clip(x + delta, lo, hi) - x
        return delta * mask

    def step(self, params, vgg, delta, opt, t, active, x, y0, mask, lam, weight):
        """One optimiser step of one row; a row that is not `active` keeps its state.

        Returns:
          (delta, opt, t, [loss, d_out, d_in] at the incoming delta and the row's own lambda).
        """
        settings = self.options.settings
        # The denoiser's and the VGG's convolutions in their XLA:CPU-fast forms (on CPU).
        objective = fastpath.convolutions(self.objective, enable=self.fast)
        (loss, (d_out, d_in)), g = jax.value_and_grad(objective, has_aux=True)(
            delta, params, vgg, x, y0, optimizers.effective_lambda(settings, lam, t), weight)
        if optimizers.schedule_end(settings):
            loss = d_out - lam * d_in if not self.options.sensitivity else lam * d_in - d_out
        # The gradient of the per-pixel sum (see SearchOptions.eps).
        g = g * (mask * (x.shape[-2] * x.shape[-1]))
        updates, new_opt = self.optimizer.update(g, opt, delta)
        new_delta = self.project(optax.apply_updates(delta, updates), x, mask)
        if settings.tolerance > 0:  # else every row runs every iteration
            new_delta, new_opt = jax.tree.map(lambda a, b: jnp.where(active, a, b),
                                              (new_delta, new_opt), (delta, opt))
        return new_delta, new_opt, t + active, jnp.stack([loss, d_out, d_in])


@functools.partial(jax.jit, static_argnums=0)
def init(program: Program, params, x, mask, lam, weight, keys) -> State:
    spec, options = program.spec, program.options
    y0 = program.net(params, x)  # the compute dtype's: x_inv = 0 changes nothing
    noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)
    delta = jax.vmap(program.project)(noise * (options.init_scale_hu / spec.scale), x, mask)
    return program.rows(State(x, y0, delta, mask, lam, weight,
                              jax.vmap(program.optimizer.init)(delta),
                              jnp.zeros(lam.shape, jnp.int32), jnp.ones(lam.shape, bool)))


@functools.partial(jax.jit, static_argnums=(0, 4), donate_argnums=(3,))
def chunk(program: Program, params, vgg, state: State, length: int):
    """`length` steps: a `lax.scan`, or with length 1 a single step and no loop."""
    step = jax.vmap(program.step, in_axes=(None, None) + (0,) * 9)

    def body(carry, _):
        delta, opt, t = carry
        delta, opt, t, curves = step(params, vgg, delta, opt, t, state.active, state.x,
                                     state.y0, state.mask, state.lam, state.weight)
        return (delta, opt, t), curves

    carry = (state.delta, state.opt, state.t)
    if length == 1:
        (delta, opt, t), curves = body(carry, None)
        curves = curves[:, None]  # [B, 1, 3]
    else:
        (delta, opt, t), curves = jax.lax.scan(body, carry, length=length)
        curves = jnp.moveaxis(curves, 0, 1)  # [B, T, 3]
    return program.rows((state._replace(delta=delta, opt=opt, t=t), curves))


@functools.partial(jax.jit, static_argnums=0)
def final_metrics(program: Program, params, vgg, state: State):
    spec, s = program.spec, program.spec.scale
    y = spec.apply_net(params, state.x + state.delta)
    y0 = state.y0 if program.options.compute_dtype == "float32" else spec.apply_net(params, state.x)
    dx, dy = state.delta * s, (y - y0) * s
    x_hu = spec.from_net(state.x)
    in_rms = jnp.sqrt(jnp.mean(jnp.square(dx), axis=(-2, -1)))
    out_rms = jnp.sqrt(jnp.mean(jnp.square(dy), axis=(-2, -1)))
    d_in = jax.vmap(fastpath.convolutions(program.d_in, enable=program.fast),
                    in_axes=(None, 0, 0, 0))(vgg, state.x + state.delta, state.x, state.weight)
    # L of the returned x_inv (the curves hold L before each step).
    loss = jnp.mean(jnp.square(y - y0), axis=(-2, -1)) - state.lam * d_in
    return program.rows((dict(
        input_rms_hu=in_rms,
        input_max_hu=jnp.max(jnp.abs(dx), axis=(-2, -1)),
        input_ssim=metrics_lib.ssim(x_hu, x_hu + dx, ct.HU_MAX - ct.HU_MIN),
        d_in=d_in,
        output_rms_hu=out_rms,
        output_max_hu=jnp.max(jnp.abs(dy), axis=(-2, -1)),
        ratio=in_rms / out_rms,  # inf where the output did not change at all
        final_loss=-loss if program.options.sensitivity else loss,
    ), dx))
