"""Adversarial attacks on denoisers: FGSM, BIM and PGD under an L-infinity budget in HU.

The opposite of the invariance search: small input changes with a large output change.

    result = attack("pgd", d, images_hu, epsilons_hu=[1, 2, 5, 10], steps=10)
    result.adversarial          # [B, H, W] HU, rows = images x epsilons (image-major)
    result.metrics["output_rms_hu"]

Objective, in network units of the denoiser (the sign of a gradient does not depend on units,
and the gradient is taken with respect to the HU input, so `sign` acts per HU pixel):

- untargeted: maximise `mean((f(x + delta) - f(x))^2)`;
- targeted: minimise `mean((f(x + delta) - target)^2)`, `target` an output image in HU (e.g. x
  with a lesion removed, or its denoised version).

Every step keeps `|delta| <= epsilon` and `x + delta` inside `[ct.HU_MIN, ct.HU_MAX]`:
`delta <- clip(clip(delta + step, -eps, eps), HU_MIN - x, HU_MAX - x)`, and `adversarial` is
`clip(x + delta, HU_MIN, HU_MAX)`, so both bounds hold exactly in float32 (the images must lie
inside the HU range: both cannot hold for a pixel outside it).

Zero gradient at the start. The untargeted objective has a minimum at delta = 0, so its gradient
there is exactly zero and FGSM (and BIM's first step) would do nothing. They therefore take their
first gradient at `x + probe`, a small Gaussian probe (`probe_hu`, default 1 HU; see `probe`),
which is one step of power iteration towards the input direction the network amplifies most.
The probe only decides the direction; delta still starts at 0. Targeted attacks use no probe by
default. PGD starts from a uniform random point of the budget (Madry et al. 2018), so needs none.

Step size of BIM and PGD: `2.5 * epsilon / steps` by default (Madry et al.), so that the walk can
cross the budget from one face to the other; `step_size_hu` overrides it (one value for all
budgets, in HU). BIM and PGD return the best iterate by their objective (`keep_best`, default
True; signed steps of fixed size oscillate around an optimum). With `keep_best=False`, one BIM
step with step size epsilon is FGSM.

All rows (images x budgets) run as one vmapped batch sharded over the devices of `mesh`, in one
jitted program for every method, direction and step count (the steps in a `fori_loop`), or, on
CPU, as that program's three loop-free pieces (start, step, finish) called from Python
(`ldct_jax.fastpath`). Programs are compiled once per denoiser spec, mesh and batch shape.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ldct_jax import ct, fastpath, parallel
from ldct_jax.analysis import arrays
from ldct_jax.models.denoiser import Denoiser, DenoiserSpec

METHODS = ("fgsm", "bim", "pgd")
METRICS = ("input_max_hu", "input_rms_hu", "output_rms_hu", "output_max_hu")
TARGET_METRICS = ("target_rms_hu", "target_rms_hu_clean")


@dataclasses.dataclass
class AttackResult:
    """Adversarial images and what they did, one row per (image, epsilon), image-major."""

    adversarial: np.ndarray         # [B, H, W] HU, clip(x + delta)
    perturbation: np.ndarray        # [B, H, W] HU, delta
    metrics: dict[str, np.ndarray]  # METRICS (+ TARGET_METRICS when targeted) -> [B]
    image_index: np.ndarray         # [B]
    epsilon_hu: np.ndarray          # [B]
    method: str
    targeted: bool


def probe(seed: int, image_index: int, shape: tuple[int, int], probe_hu: float) -> jax.Array:
    """The probe offset at which an untargeted FGSM/BIM takes its first gradient (HU)."""
    key = jax.random.fold_in(jax.random.key(seed), image_index)
    return probe_hu * jax.random.normal(key, shape, jnp.float32)


def pgd_start(seed: int, image_index: int, shape: tuple[int, int]) -> jax.Array:
    """PGD's random start in units of epsilon, uniform in [-1, 1] (same for every budget)."""
    key = jax.random.fold_in(jax.random.key(seed), image_index)
    return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Checks


def _check_epsilons(epsilons_hu: Any) -> np.ndarray:
    eps = np.atleast_1d(np.asarray(epsilons_hu, dtype=np.float32))
    if eps.ndim != 1 or eps.size == 0:
        raise ValueError(f"epsilons_hu: expected a scalar or a list of budgets in HU, got shape "
                         f"{eps.shape}")
    if not np.all(np.isfinite(eps)) or eps.min() < 0:
        raise ValueError(f"epsilons_hu: budgets must be finite and >= 0 HU, got {eps.tolist()}")
    return eps


def _check_target(target: Any, shape: tuple[int, int, int]) -> np.ndarray:
    t = arrays.check_images(target, "target")
    n, h, w = shape
    if t.shape[1:] != (h, w) or t.shape[0] not in (1, n):
        raise ValueError(f"target: shape {t.shape} does not fit the images {shape}; expected "
                         f"[H, W] = {(h, w)} or [N, H, W] = {shape} (output images in HU)")
    return np.ascontiguousarray(np.broadcast_to(t, shape))


# ---------------------------------------------------------------------------------------------
# The compiled programs


@dataclasses.dataclass(frozen=True)
class _Program:
    """What the compiled attack depends on besides data (hashable: a static jit argument).

    One program serves every method, direction and number of steps (all of them data). The
    state of a row is (delta, best delta, best score, reference output in network units).
    """

    spec: DenoiserSpec
    mesh: Mesh
    fast: bool  # fastpath.enabled(mesh) when the attack started

    def rows(self, tree):
        """Pins per-row outputs to the batch sharding the next call was compiled for."""
        return jax.lax.with_sharding_constraint(tree, parallel.batch_sharding(self.mesh))

    # Per row (x is [H, W] HU). direction: +1 ascends away from f(x) (untargeted), -1 descends
    # to a target; the score direction * loss is what the attack maximises.

    def loss(self, params, x_adv, ref_net):
        return jnp.mean(jnp.square(self.spec.apply_net(params, self.spec.to_net(x_adv))
                                   - ref_net))

    def value_and_grad(self, params, x_adv, ref_net):
        loss = fastpath.convolutions(self.loss, enable=self.fast)
        return jax.value_and_grad(loss, argnums=1)(params, x_adv, ref_net)

    @staticmethod
    def project(delta, x, eps):
        return jnp.clip(jnp.clip(delta, -eps, eps), ct.HU_MIN - x, ct.HU_MAX - x)

    @staticmethod
    def better(best_delta, best_score, delta, value, direction):
        score = direction * value
        return (jnp.where(score > best_score, delta, best_delta),
                jnp.where(score > best_score, score, best_score))

    def begin_one(self, params, x, ref_net, eps, alpha, start, probe_, direction):
        delta = self.project(start, x, eps)
        best = (delta, direction * self.loss(params, x + delta, ref_net))
        _, g = self.value_and_grad(params, x + delta + probe_, ref_net)
        return (self.project(delta + direction * alpha * jnp.sign(g), x, eps),) + best + (
            ref_net,)

    def step_one(self, params, state, x, eps, alpha, direction):
        delta, best_delta, best_score, ref_net = state
        value, g = self.value_and_grad(params, x + delta, ref_net)
        best = self.better(best_delta, best_score, delta, value, direction)
        return (self.project(delta + direction * alpha * jnp.sign(g), x, eps),) + best + (
            ref_net,)

    def final_one(self, params, state, keep_best, x, direction):
        delta, best_delta, best_score, ref_net = state
        best_delta, _ = self.better(best_delta, best_score, delta,
                                    self.loss(params, x + delta, ref_net), direction)
        return jnp.where(keep_best, best_delta, delta)

    # Batched: rows along the leading axis.

    def begin(self, params, x, target, eps, alpha, start, probe_, direction):
        y0_net = self.spec.apply_net(params, self.spec.to_net(x))
        ref_net = jnp.where((direction < 0)[:, None, None], self.spec.to_net(target), y0_net)
        return jax.vmap(self.begin_one, in_axes=(None,) + (0,) * 7)(
            params, x, ref_net, eps, alpha, start, probe_, direction)

    def step(self, params, state, x, eps, alpha, direction):
        return jax.vmap(self.step_one, in_axes=(None,) + (0,) * 5)(
            params, state, x, eps, alpha, direction)

    def finish(self, params, state, keep_best, x, target, direction):
        delta = jax.vmap(self.final_one, in_axes=(None, 0, None, 0, 0))(
            params, state, keep_best, x, direction)
        adv = jnp.clip(x + delta, ct.HU_MIN, ct.HU_MAX)
        y0 = self.spec.from_net(self.spec.apply_net(params, self.spec.to_net(x)))
        y = self.spec.from_net(self.spec.apply_net(params, self.spec.to_net(adv)))
        rms = lambda a: jnp.sqrt(jnp.mean(jnp.square(a), axis=(-2, -1)))  # noqa: E731
        metrics = dict(input_max_hu=jnp.max(jnp.abs(delta), axis=(-2, -1)),
                       input_rms_hu=rms(delta), output_rms_hu=rms(y - y0),
                       output_max_hu=jnp.max(jnp.abs(y - y0), axis=(-2, -1)),
                       target_rms_hu=rms(y - target), target_rms_hu_clean=rms(y0 - target))
        return adv, delta, metrics


@functools.partial(jax.jit, static_argnums=0)
def _begin(program: _Program, params, x, target, eps, alpha, start, probe_, direction):
    return program.rows(program.begin(params, x, target, eps, alpha, start, probe_, direction))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(2,))
def _step(program: _Program, params, state, x, eps, alpha, direction):
    return program.rows(program.step(params, state, x, eps, alpha, direction))


@functools.partial(jax.jit, static_argnums=0)
def _finish(program: _Program, params, state, keep_best, x, target, direction):
    return program.rows(program.finish(params, state, keep_best, x, target, direction))


@functools.partial(jax.jit, static_argnums=0)
def _whole(program: _Program, params, steps, keep_best, x, target, eps, alpha, start, probe_,
           direction):
    """The attack as one program, the steps in a `fori_loop` (accelerators)."""
    state = program.begin(params, x, target, eps, alpha, start, probe_, direction)
    state = jax.lax.fori_loop(1, steps, lambda _, st: program.step(params, st, x, eps, alpha,
                                                                   direction), state)
    return program.rows(program.finish(params, state, keep_best, x, target, direction))


# ---------------------------------------------------------------------------------------------
# Public


def _attack(method: str, denoiser: Denoiser, images: Any, epsilons_hu: Any, *, steps: int,
            step_size_hu: Optional[float], seed: int, target: Any, mesh: Any,
            probe_hu: Optional[float], keep_best: bool = True, image_ids: Any = None
            ) -> AttackResult:
    if method not in METHODS:
        raise ValueError(f"unknown attack method {method!r}; expected one of {', '.join(METHODS)}")
    x = arrays.check_images(images)
    arrays.check_hu_range(x)
    ids = arrays.broadcast("image_ids", np.arange(len(x)) if image_ids is None else image_ids,
                           len(x), np.int64)
    eps = _check_epsilons(epsilons_hu)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"{method}: steps must be a positive integer, got {steps}")
    if step_size_hu is not None and not (np.isfinite(step_size_hu) and step_size_hu > 0):
        raise ValueError(f"{method}: step_size_hu must be a positive number of HU, got "
                         f"{step_size_hu}")
    targeted = target is not None
    t = _check_target(target, x.shape) if targeted else None
    if probe_hu is None:
        probe_hu = 0.0 if targeted else 1.0
    if not (np.isfinite(probe_hu) and probe_hu >= 0):
        raise ValueError(f"{method}: probe_hu must be >= 0 HU, got {probe_hu}")
    mesh = mesh if mesh is not None else parallel.make_mesh()

    n, h, w = x.shape
    image_index = np.repeat(np.arange(n, dtype=np.int32), len(eps))
    row_eps = np.tile(eps, n)
    if method == "fgsm":
        alpha = row_eps
    elif step_size_hu is None:
        alpha = 2.5 * row_eps / steps
    else:
        alpha = np.full_like(row_eps, step_size_hu)
    zeros = np.zeros_like(x)
    if method == "pgd":
        unit = np.stack([np.asarray(pgd_start(seed, int(i), (h, w))) for i in ids])
        start, probes = unit[image_index] * row_eps[:, None, None], zeros[image_index]
    else:
        probes = (np.stack([np.asarray(probe(seed, int(i), (h, w), probe_hu)) for i in ids])
                  if probe_hu > 0 else zeros)
        start, probes = zeros[image_index], probes[image_index]
    b = len(row_eps)
    host = dict(x=x[image_index],
                target=(t if targeted else x)[image_index], eps=row_eps,
                alpha=alpha.astype(np.float32), start=start.astype(np.float32), probe=probes,
                direction=np.full((b,), -1.0 if targeted else 1.0, np.float32))
    dev = parallel.shard_rows(parallel.pad_rows(host, parallel.padded_size(b, mesh)), mesh)
    program = _Program(denoiser.spec, mesh, fastpath.enabled(mesh))
    params = parallel.replicate(denoiser.params, mesh)
    steps = 1 if method == "fgsm" else int(steps)
    keep_best = np.bool_(keep_best and method != "fgsm")
    args = (dev["x"], dev["target"], dev["eps"], dev["alpha"], dev["start"], dev["probe"],
            dev["direction"])
    if fastpath.python_loop(mesh):
        state = _begin(program, params, *args)
        for _ in range(steps - 1):
            state = _step(program, params, state, dev["x"], dev["eps"], dev["alpha"],
                          dev["direction"])
        adv, delta, metrics = _finish(program, params, state, keep_best, dev["x"],
                                      dev["target"], dev["direction"])
    else:
        adv, delta, metrics = _whole(program, params, np.int32(steps), keep_best, *args)
    adv, delta, metrics = parallel.gather_rows((adv, delta, metrics), b)
    if not targeted:
        metrics = {k: v for k, v in metrics.items() if k in METRICS}
    return AttackResult(adversarial=adv, perturbation=delta, metrics=metrics,
                        image_index=image_index, epsilon_hu=row_eps, method=method,
                        targeted=targeted)


def fgsm(denoiser: Denoiser, images: Any, epsilons_hu: Any, *, target: Any = None,
         mesh: Any = None, seed: int = 0, probe_hu: Optional[float] = None,
         image_ids: Any = None) -> AttackResult:
    """Fast gradient sign method: `delta = epsilon * sign(grad)`, clipped to the HU range.

    Args:
      denoiser: the network attacked.
      images: `[H, W]` or `[N, H, W]` HU.
      epsilons_hu: a budget or a list of budgets (L-infinity, HU); rows are images x budgets.
      target: None (untargeted) or output images `[H, W]` / `[N, H, W]` HU to move towards.
      mesh: device mesh (default: all devices).
      seed, probe_hu: the probe of an untargeted attack (module docstring; `probe`).
      image_ids: `[N]` the images' indices that seed their probe or PGD start (default 0..N-1):
        attacking a data set in parts, pass each image's index in it, so that an image's result
        does not depend on the part it came in.
    """
    return _attack("fgsm", denoiser, images, epsilons_hu, steps=1, step_size_hu=None, seed=seed,
                   target=target, mesh=mesh, probe_hu=probe_hu, image_ids=image_ids)


def bim(denoiser: Denoiser, images: Any, epsilons_hu: Any, *, steps: int = 10,
        step_size_hu: Optional[float] = None, target: Any = None, mesh: Any = None,
        seed: int = 0, probe_hu: Optional[float] = None, keep_best: bool = True,
        image_ids: Any = None) -> AttackResult:
    """Basic iterative method: `steps` FGSM steps of `step_size_hu` (default 2.5 eps / steps),
    each projected onto the budget and the HU range; starts at delta = 0.

    `keep_best` returns the best iterate (start included) by the attack's objective rather than
    the last one: signed steps of a fixed size oscillate, and a targeted attack's last iterate
    can end farther from the target than it started. `keep_best=False` is the textbook BIM
    (one step of size epsilon is then FGSM). Other arguments as `fgsm`."""
    return _attack("bim", denoiser, images, epsilons_hu, steps=steps, step_size_hu=step_size_hu,
                   seed=seed, target=target, mesh=mesh, probe_hu=probe_hu,
                   keep_best=keep_best, image_ids=image_ids)


def pgd(denoiser: Denoiser, images: Any, epsilons_hu: Any, *, steps: int = 10,
        step_size_hu: Optional[float] = None, seed: int = 0, target: Any = None,
        mesh: Any = None, keep_best: bool = True, image_ids: Any = None) -> AttackResult:
    """Projected gradient descent: BIM from a uniform random start in the budget (`pgd_start`,
    drawn from `seed`, the same direction for every budget of an image). Arguments as `bim`."""
    return _attack("pgd", denoiser, images, epsilons_hu, steps=steps, step_size_hu=step_size_hu,
                   seed=seed, target=target, mesh=mesh, probe_hu=0.0,
                   keep_best=keep_best, image_ids=image_ids)


def attack(method: str, denoiser: Denoiser, images: Any, epsilons_hu: Any,
           **kwargs) -> AttackResult:
    """`fgsm`, `bim` or `pgd` by name, with their keyword options."""
    if method not in METHODS:
        raise ValueError(f"unknown attack method {method!r}; expected one of {', '.join(METHODS)}")
    return {"fgsm": fgsm, "bim": bim, "pgd": pgd}[method](denoiser, images, epsilons_hu, **kwargs)


def result_table(result: AttackResult) -> list[dict[str, Any]]:
    """One dict per row: image_index, epsilon_hu, method, targeted and the metrics."""
    out = []
    for i in range(len(result.epsilon_hu)):
        row = dict(image_index=int(result.image_index[i]), epsilon_hu=float(result.epsilon_hu[i]),
                   method=result.method, targeted=result.targeted)
        row.update({k: float(v[i]) for k, v in result.metrics.items()})
        out.append(row)
    return out
