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
`clip(x + delta, HU_MIN, HU_MAX)`, so both bounds hold exactly in float32.

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
jitted program for every method, direction and step count (`loop='scan'`, the default on
accelerators), or, on CPU, as that program's three loop-free pieces (start, step, finish) called
from Python, because XLA:CPU runs convolutions inside a loop body several times slower
(jax-ml/jax#12868). Programs are cached per architecture and mesh, compiled per batch shape.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ldct_jax import ct, parallel
from ldct_jax.invariance import batching
from ldct_jax.models.denoiser import Denoiser

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
    t = batching.check_images(target, "target")
    n, h, w = shape
    if t.shape[1:] != (h, w) or t.shape[0] not in (1, n):
        raise ValueError(f"target: shape {t.shape} does not fit the images {shape}; expected "
                         f"[H, W] = {(h, w)} or [N, H, W] = {shape} (output images in HU)")
    return np.ascontiguousarray(np.broadcast_to(t, shape))


# ---------------------------------------------------------------------------------------------
# The compiled program


class _Program(NamedTuple):
    begin: Callable   # (params, x, target, eps, alpha, start, probe, direction) -> state
    step: Callable    # (params, state, x, eps, alpha, direction) -> state
    finish: Callable  # (params, state, keep_best, x, target, direction) -> adv, delta, metrics
    whole: Callable   # (params, steps, keep_best, x, target, eps, alpha, start, probe, dir.)


@functools.lru_cache(maxsize=32)
def _program(name: str, module: Any, shift: float, scale: float, mesh) -> _Program:
    """The jitted attack for every method, direction and number of steps (all data).

    `whole` is one program with the steps in a `fori_loop`; `begin`, `step`, `finish` are the
    same computation as three programs with no loop inside, for CPU, where XLA runs
    convolutions inside a loop body several times slower (jax-ml/jax#12868).
    """
    d = Denoiser(name=name, module=module, params=None, shift=shift, scale=scale)
    lo, hi = ct.HU_MIN, ct.HU_MAX

    def loss(params, x_adv, ref_net):
        return jnp.mean(jnp.square(d.apply_net(params, d.to_net(x_adv)) - ref_net))

    value_and_grad = jax.value_and_grad(loss, argnums=1)

    def project(delta, x, eps):
        return jnp.clip(jnp.clip(delta, -eps, eps), lo - x, hi - x)

    # Per row (x is [H, W]). direction: +1 ascends away from f(x) (untargeted), -1 descends
    # to a target; the score direction * loss is what the attack maximises. The state is
    # (delta, best delta, best score, reference output in network units).

    def better(best_delta, best_score, delta, value, direction):
        score = direction * value
        return (jnp.where(score > best_score, delta, best_delta),
                jnp.where(score > best_score, score, best_score))

    def begin_one(params, x, ref_net, eps, alpha, start, probe_, direction):
        delta = project(start, x, eps)
        best = (delta, direction * loss(params, x + delta, ref_net))
        _, g = value_and_grad(params, x + delta + probe_, ref_net)
        return (project(delta + direction * alpha * jnp.sign(g), x, eps),) + best + (ref_net,)

    def step_one(params, state, x, eps, alpha, direction):
        delta, best_delta, best_score, ref_net = state
        value, g = value_and_grad(params, x + delta, ref_net)
        best = better(best_delta, best_score, delta, value, direction)
        return (project(delta + direction * alpha * jnp.sign(g), x, eps),) + best + (ref_net,)

    def final_one(params, state, keep_best, x, direction):
        delta, best_delta, best_score, ref_net = state
        best_delta, _ = better(best_delta, best_score, delta, loss(params, x + delta, ref_net),
                               direction)
        return jnp.where(keep_best, best_delta, delta)

    rows = (0,)
    vm = lambda f, in_axes: jax.vmap(f, in_axes=in_axes)

    def begin(params, x, target, eps, alpha, start, probe_, direction):
        y0_net = d.apply_net(params, d.to_net(x))
        ref_net = jnp.where((direction < 0)[:, None, None], d.to_net(target), y0_net)
        return vm(begin_one, (None,) + rows * 7)(params, x, ref_net, eps, alpha, start, probe_,
                                                 direction)

    def step(params, state, x, eps, alpha, direction):
        return vm(step_one, (None,) + rows * 5)(params, state, x, eps, alpha, direction)

    def finish(params, state, keep_best, x, target, direction):
        delta = vm(final_one, (None, 0, None, 0, 0))(params, state, keep_best, x, direction)
        adv = jnp.clip(x + delta, lo, hi)
        y0 = d.from_net(d.apply_net(params, d.to_net(x)))
        y = d.from_net(d.apply_net(params, d.to_net(adv)))
        rms = lambda a: jnp.sqrt(jnp.mean(jnp.square(a), axis=(-2, -1)))
        metrics = dict(input_max_hu=jnp.max(jnp.abs(delta), axis=(-2, -1)),
                       input_rms_hu=rms(delta), output_rms_hu=rms(y - y0),
                       output_max_hu=jnp.max(jnp.abs(y - y0), axis=(-2, -1)),
                       target_rms_hu=rms(y - target), target_rms_hu_clean=rms(y0 - target))
        return adv, delta, metrics

    def whole(params, steps, keep_best, x, target, eps, alpha, start, probe_, direction):
        state = begin(params, x, target, eps, alpha, start, probe_, direction)
        state = jax.lax.fori_loop(1, steps, lambda _, s: step(params, s, x, eps, alpha,
                                                              direction), state)
        return finish(params, state, keep_best, x, target, direction)

    sharded = parallel.batch_sharding(mesh)
    return _Program(begin=jax.jit(begin, out_shardings=sharded),
                    step=jax.jit(step, out_shardings=sharded, donate_argnums=(1,)),
                    finish=jax.jit(finish, out_shardings=sharded),
                    whole=jax.jit(whole, out_shardings=sharded))


# ---------------------------------------------------------------------------------------------
# Public


def _attack(method: str, denoiser: Denoiser, images: Any, epsilons_hu: Any, *, steps: int,
            step_size_hu: Optional[float], seed: int, target: Any, params: Any, mesh: Any,
            probe_hu: Optional[float], keep_best: bool = True, loop: str = "auto"
            ) -> AttackResult:
    if method not in METHODS:
        raise ValueError(f"unknown attack method {method!r}; expected one of {', '.join(METHODS)}")
    if loop not in ("auto", "scan", "python"):
        raise ValueError(f"{method}: loop must be 'auto', 'scan' or 'python', got {loop!r}")
    x = batching.check_images(images)
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
    params = denoiser.params if params is None else params
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
        unit = np.stack([np.asarray(pgd_start(seed, i, (h, w))) for i in range(n)])
        start, probes = unit[image_index] * row_eps[:, None, None], zeros[image_index]
    else:
        probes = (np.stack([np.asarray(probe(seed, i, (h, w), probe_hu)) for i in range(n)])
                  if probe_hu > 0 else zeros)
        start, probes = zeros[image_index], probes[image_index]
    b = len(row_eps)
    host = dict(x=x[image_index],
                target=(t if targeted else x)[image_index], eps=row_eps,
                alpha=alpha.astype(np.float32), start=start.astype(np.float32), probe=probes,
                direction=np.full((b,), -1.0 if targeted else 1.0, np.float32))
    dev = batching.shard(batching.pad_rows(host, batching.padded_size(b, mesh)), mesh)
    program = _program(denoiser.name, denoiser.module, float(denoiser.shift),
                       float(denoiser.scale), mesh)
    params = parallel.replicate(params, mesh)
    steps = 1 if method == "fgsm" else int(steps)
    keep_best = np.bool_(keep_best and method != "fgsm")
    args = (dev["x"], dev["target"], dev["eps"], dev["alpha"], dev["start"], dev["probe"],
            dev["direction"])
    if loop == "auto":
        loop = "python" if mesh.devices.flat[0].platform == "cpu" else "scan"
    if loop == "scan":
        adv, delta, metrics = program.whole(params, np.int32(steps), keep_best, *args)
    else:
        state = program.begin(params, *args)
        for _ in range(steps - 1):
            state = program.step(params, state, dev["x"], dev["eps"], dev["alpha"],
                                 dev["direction"])
        adv, delta, metrics = program.finish(params, state, keep_best, dev["x"], dev["target"],
                                             dev["direction"])
    adv, delta, metrics = batching.gather((adv, delta, metrics), b)
    if not targeted:
        metrics = {k: v for k, v in metrics.items() if k in METRICS}
    return AttackResult(adversarial=adv, perturbation=delta, metrics=metrics,
                        image_index=image_index, epsilon_hu=row_eps, method=method,
                        targeted=targeted)


def fgsm(denoiser: Denoiser, images: Any, epsilons_hu: Any, *, target: Any = None,
         params: Any = None, mesh: Any = None, seed: int = 0,
         probe_hu: Optional[float] = None, loop: str = "auto") -> AttackResult:
    """Fast gradient sign method: `delta = epsilon * sign(grad)`, clipped to the HU range.

    Args:
      denoiser: the network attacked.
      images: `[H, W]` or `[N, H, W]` HU.
      epsilons_hu: a budget or a list of budgets (L-infinity, HU); rows are images x budgets.
      target: None (untargeted) or output images `[H, W]` / `[N, H, W]` HU to move towards.
      params: the denoiser's params (default `denoiser.params`).
      mesh: device mesh (default: all devices).
      seed, probe_hu: the probe of an untargeted attack (module docstring; `probe`).
      loop: 'scan' (one program, steps in a `fori_loop`), 'python' (one jitted call per step)
        or 'auto' ('python' on CPU, where convolutions inside a loop body are slow).
    """
    return _attack("fgsm", denoiser, images, epsilons_hu, steps=1, step_size_hu=None, seed=seed,
                   target=target, params=params, mesh=mesh, probe_hu=probe_hu, loop=loop)


def bim(denoiser: Denoiser, images: Any, epsilons_hu: Any, *, steps: int = 10,
        step_size_hu: Optional[float] = None, target: Any = None, params: Any = None,
        mesh: Any = None, seed: int = 0, probe_hu: Optional[float] = None,
        keep_best: bool = True, loop: str = "auto") -> AttackResult:
    """Basic iterative method: `steps` FGSM steps of `step_size_hu` (default 2.5 eps / steps),
    each projected onto the budget and the HU range; starts at delta = 0.

    `keep_best` returns the best iterate (start included) by the attack's objective rather than
    the last one: signed steps of a fixed size oscillate, and a targeted attack's last iterate
    can end farther from the target than it started. `keep_best=False` is the textbook BIM
    (one step of size epsilon is then FGSM). Other arguments as `fgsm`."""
    return _attack("bim", denoiser, images, epsilons_hu, steps=steps, step_size_hu=step_size_hu,
                   seed=seed, target=target, params=params, mesh=mesh, probe_hu=probe_hu,
                   keep_best=keep_best, loop=loop)


def pgd(denoiser: Denoiser, images: Any, epsilons_hu: Any, *, steps: int = 10,
        step_size_hu: Optional[float] = None, seed: int = 0, target: Any = None,
        params: Any = None, mesh: Any = None, keep_best: bool = True,
        loop: str = "auto") -> AttackResult:
    """Projected gradient descent: BIM from a uniform random start in the budget (`pgd_start`,
    drawn from `seed`, the same direction for every budget of an image). Arguments as `bim`."""
    return _attack("pgd", denoiser, images, epsilons_hu, steps=steps, step_size_hu=step_size_hu,
                   seed=seed, target=target, params=params, mesh=mesh, probe_hu=0.0,
                   keep_best=keep_best, loop=loop)


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
