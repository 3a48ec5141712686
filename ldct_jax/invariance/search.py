"""Image-domain invariance search: many perturbations at once, one vmapped optax step.

For a denoiser f and an image x (network units), each perturbation x_inv minimises

    L(x_inv) = D_out(f(x + x_inv), f(x)) - lambda * d_in(x + x_inv, x)

with Adam: D_out is the mean squared output difference in network units, d_in a bounded input
distance of `ldct_jax.losses` ('mse' capped at 1, 'dssim', 'vgg16'). Small lambda asks for an
output that does not change at all; larger lambda trades output change for a larger input change.
With `sensitivity=True` the sign of L is turned: small input change, large output change.

One perturbation is one (image, lambda, distance, seed) row. A batch of rows runs as one
`vmap`ped step inside a `lax.scan` over `chunk` iterations, jitted once per `Searcher` (the
denoiser and VGG params are arguments), with the batch sharded over all devices. On CPU the
iterations of a chunk are instead separate calls of one jitted step: XLA:CPU runs convolutions
inside a loop body ~9x slower than outside one (jax-ml/jax#12868; measured on cnn10), and a
call costs well under a millisecond next to a step's hundreds (see `SearchOptions.loop`).

    result = search(d, images_hu, lambdas=[1e-4, 1e-2], distances="mse", seeds=0)
    result.perturbation   # [B, H, W] HU;  result.metrics["input_rms_hu"]  # [B]

Rows broadcast: `images` `[N, H, W]` with `image_index` picking one per row (default: row i
uses image i, or image 0 when N is 1); lambdas, distances and seeds are scalars or one per row.
`grid(...)` builds the rows of a full grid.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ldct_jax import ct, losses, parallel
from ldct_jax.invariance import batching
from ldct_jax.models.denoiser import Denoiser

METRICS = ("input_rms_hu", "input_max_hu", "input_ssim", "d_in", "output_rms_hu",
           "output_max_hu", "ratio")
CURVES = ("loss", "d_out", "d_in")


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """How the search optimises.

    Attributes:
      iterations: Adam steps per perturbation.
      chunk: steps between progress updates: one compiled `lax.scan` call (iterations need not
        be a multiple; the remainder runs as a second compiled program).
      loop: 'scan' (a chunk is one `lax.scan`), 'python' (a chunk is `chunk` calls of one
        jitted step; no loop inside the program) or 'auto': 'python' on CPU, where
        convolutions inside a loop body are slow, 'scan' on accelerators.
      learning_rate: Adam step size, in network units of the denoiser (about scale HU per unit).
      b1, b2, eps: Adam's moments and epsilon. Adam is fed the gradient of H * W * L (the
        per-pixel sum rather than the mean; Adam is invariant to that scale except through eps),
        so the lambda term's gradient is ~2 lambda |x_inv| per pixel, whatever the image size,
        and eps only stalls lambda below about eps / |x_inv| (~1e-8 in network units).
      init_scale_hu: standard deviation of the Gaussian start, HU (zero is a fixed point of L).
      clip: keep x + x_inv inside [HU_MIN, HU_MAX] (projection after every step).
      sensitivity: turn the sign of L (the adversarial direction).
    """

    iterations: int = 3000
    chunk: int = 100
    loop: str = "auto"
    learning_rate: float = 1e-2
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    init_scale_hu: float = 1.0
    clip: bool = True
    sensitivity: bool = False

    def __post_init__(self):
        if self.iterations < 1 or self.chunk < 1:
            raise ValueError(f"search: iterations ({self.iterations}) and chunk ({self.chunk}) "
                             "must be positive")
        if self.loop not in ("auto", "scan", "python"):
            raise ValueError(f"search: loop must be 'auto', 'scan' or 'python', got {self.loop!r}")
        if not self.learning_rate > 0 or self.init_scale_hu < 0:
            raise ValueError(f"search: learning_rate must be > 0 and init_scale_hu >= 0, got "
                             f"{self.learning_rate} and {self.init_scale_hu}")


class Rows(NamedTuple):
    """One row per perturbation (host numpy)."""

    image_index: np.ndarray  # [B] int
    lam: np.ndarray          # [B] float
    distance: np.ndarray     # [B] str
    seed: np.ndarray         # [B] int


class State(NamedTuple):
    """Per-row optimisation state (network units), a pytree sharded along the batch."""

    x: jax.Array        # [B, H, W] image
    y0: jax.Array       # [B, H, W] f(x)
    delta: jax.Array    # [B, H, W] x_inv
    mask: jax.Array     # [B, H, W] where x_inv may live
    lam: jax.Array      # [B]
    weight: jax.Array   # [B, K] one-hot over the searcher's distances
    opt: Any            # Adam state, per row


@dataclasses.dataclass
class SearchResult:
    """Perturbations in HU and what they did, one row per perturbation."""

    perturbation: np.ndarray           # [B, H, W] HU
    metrics: dict[str, np.ndarray]     # METRICS -> [B]
    curves: dict[str, np.ndarray]      # CURVES -> [B, iterations]
    rows: Rows
    seconds: float = 0.0


def grid(num_images: int, lambdas: Sequence[float], distances: Sequence[str] = ("mse",),
         seeds: Sequence[int] = (0,)) -> Rows:
    """Rows of the full grid distances x lambdas x images x seeds (in that nesting order)."""
    combos = list(itertools.product(batching.as_list(distances), batching.as_list(lambdas),
                                    range(num_images), batching.as_list(seeds)))
    return Rows(image_index=np.array([c[2] for c in combos], np.int32),
                lam=np.array([c[1] for c in combos], np.float32),
                distance=np.array([c[0] for c in combos], dtype=object),
                seed=np.array([c[3] for c in combos], np.int64))


def check_distances(names: Sequence[str], vgg=None) -> tuple[str, ...]:
    """The distinct distances asked for, in the order of `losses.INPUT_DISTANCES`."""
    unknown = sorted({str(n) for n in names} - set(losses.INPUT_DISTANCES))
    if unknown:
        raise ValueError(f"unknown input distance(s) {unknown}; expected "
                         f"{', '.join(losses.INPUT_DISTANCES)}")
    if "vgg16" in names and vgg is None:
        raise ValueError("distance 'vgg16' needs a VGG16: pass vgg=ldct_jax.models.vgg."
                         "from_config(path, 'vgg16', key) (config.vgg16_weights in sweeps)")
    return tuple(n for n in losses.INPUT_DISTANCES if n in set(names))


def net_range(d: Denoiser) -> tuple[float, float]:
    return float(d.to_net(ct.HU_MIN)), float(d.to_net(ct.HU_MAX))


class Searcher:
    """The compiled search for one denoiser architecture, a set of distances and options.

    Build once and call `run` for every batch: batches of the same size reuse one program.
    """

    def __init__(self, denoiser: Denoiser, distances: Sequence[str], options: SearchOptions,
                 vgg=None, mesh=None):
        self.denoiser = denoiser
        self.distances = check_distances(distances, vgg)
        self.options = options
        self.vgg = vgg
        self.mesh = mesh if mesh is not None else parallel.make_mesh()
        self.lo, self.hi = net_range(denoiser)
        self._fns = [losses.input_distance(n, vgg, net_range=(self.lo, self.hi))
                     for n in self.distances]
        self.optimizer = optax.adam(options.learning_rate, b1=options.b1, b2=options.b2,
                                    eps=options.eps)
        # Every output is per row: pin it to the batch sharding, so that the state fed back
        # into the next chunk has the sharding the program was compiled for.
        rows = parallel.batch_sharding(self.mesh)
        self._init = jax.jit(self._init_impl, out_shardings=rows)
        self._chunk = jax.jit(self._chunk_impl, static_argnums=(3, 4), donate_argnums=(2,),
                              out_shardings=rows)
        loop = options.loop
        if loop == "auto":
            loop = "python" if self.mesh.devices.flat[0].platform == "cpu" else "scan"
        self.loop = loop
        self._metrics = jax.jit(self._metrics_impl, static_argnums=(3,), out_shardings=rows)

    # -- per-row pieces (unbatched: x is [H, W] in network units) --------------------------

    def _d_in(self, vgg_params, a, b, weight, present):
        # Only the distances some row of the batch uses (`present`, static): a batch of 'mse'
        # rows does not pay for VGG16 features with weight 0.
        return sum(weight[k] * self._fns[k](a, b, vgg_params) for k in present)

    def _objective(self, delta, params, vgg_params, x, y0, lam, weight, present):
        xp = x + delta
        d_out = jnp.mean(jnp.square(self.denoiser.apply_net(params, xp) - y0))
        d_in = self._d_in(vgg_params, xp, x, weight, present)
        loss = d_out - lam * d_in
        if self.options.sensitivity:
            loss = -loss
        return loss, (d_out, d_in)

    def _project(self, delta, x, mask):
        if self.options.clip:
            delta = jnp.clip(x + delta, self.lo, self.hi) - x
        return delta * mask

    def _step(self, present, params, vgg_params, delta, opt, x, y0, mask, lam, weight):
        (loss, (d_out, d_in)), g = jax.value_and_grad(self._objective, has_aux=True)(
            delta, params, vgg_params, x, y0, lam, weight, present)
        # The gradient of the per-pixel sum (see SearchOptions.eps).
        g = g * (mask * (x.shape[-2] * x.shape[-1]))
        updates, opt = self.optimizer.update(g, opt, delta)
        delta = self._project(optax.apply_updates(delta, updates), x, mask)
        return delta, opt, jnp.stack([loss, d_out, d_in])

    # -- batched, jitted ------------------------------------------------------------------

    def _init_impl(self, params, x, mask, lam, weight, keys):
        y0 = self.denoiser.apply_net(params, x)
        noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys)
        delta = jax.vmap(self._project)(noise * (self.options.init_scale_hu / self.denoiser.scale),
                                        x, mask)
        return State(x, y0, delta, mask, lam, weight, jax.vmap(self.optimizer.init)(delta))

    def _chunk_impl(self, params, vgg_params, state: State, length: int,
                    present: tuple[int, ...]):
        """`length` steps: a `lax.scan`, or with length 1 a single step and no loop."""
        step = jax.vmap(functools.partial(self._step, present),
                        in_axes=(None, None, 0, 0, 0, 0, 0, 0, 0))

        def body(carry, _):
            delta, opt = carry
            delta, opt, curves = step(params, vgg_params, delta, opt, state.x, state.y0,
                                      state.mask, state.lam, state.weight)
            return (delta, opt), curves

        if length == 1:
            (delta, opt), curves = body((state.delta, state.opt), None)
            return state._replace(delta=delta, opt=opt), curves[:, None]  # [B, 1, 3]
        (delta, opt), curves = jax.lax.scan(body, (state.delta, state.opt), length=length)
        return state._replace(delta=delta, opt=opt), jnp.moveaxis(curves, 0, 1)  # [B, T, 3]

    def _metrics_impl(self, params, vgg_params, state: State, present: tuple[int, ...]):
        d, s = self.denoiser, self.denoiser.scale
        y = d.apply_net(params, state.x + state.delta)
        dx, dy = state.delta * s, (y - state.y0) * s
        x_hu = d.from_net(state.x)
        in_rms = jnp.sqrt(jnp.mean(jnp.square(dx), axis=(-2, -1)))
        out_rms = jnp.sqrt(jnp.mean(jnp.square(dy), axis=(-2, -1)))
        return dict(
            input_rms_hu=in_rms,
            input_max_hu=jnp.max(jnp.abs(dx), axis=(-2, -1)),
            input_ssim=losses.ssim(x_hu, x_hu + dx, ct.HU_MAX - ct.HU_MIN),
            d_in=jax.vmap(self._d_in, in_axes=(None, 0, 0, 0, None))(
                vgg_params, state.x + state.delta, state.x, state.weight, present),
            output_rms_hu=out_rms,
            output_max_hu=jnp.max(jnp.abs(dy), axis=(-2, -1)),
            ratio=in_rms / out_rms,  # inf where the output did not change at all
        ), dx

    # -- public -------------------------------------------------------------------------

    def run(self, params, images: Any, rows: Rows, mask: Any = None, vgg_params=None,
            progress: Optional[Callable[[int], None]] = None, batch_size: Optional[int] = None
            ) -> SearchResult:
        """Optimises one perturbation per row.

        Args:
          params: the denoiser's params (e.g. `denoiser.params`).
          images: `[H, W]` or `[N, H, W]` HU.
          rows: `Rows` (see `grid` and `make_rows`); distances must be among this searcher's.
          mask: None, `[H, W]` or `[N, H, W]` of 0/1: where x_inv may be non-zero.
          vgg_params: the VGG's params (default `vgg.params`) when 'vgg16' is used.
          progress: called with the number of iterations done after every chunk.
          batch_size: pad the batch to this many rows (a fixed size reuses one program).

        Returns:
          A `SearchResult` with one row per row of `rows`.
        """
        x = batching.check_images(images)
        m = batching.check_mask(mask, x.shape)
        n = len(rows.lam)
        idx = np.asarray(rows.image_index)
        if n == 0:
            raise ValueError("search: no perturbations asked for")
        if idx.min() < 0 or idx.max() >= len(x):
            raise ValueError(f"search: image_index out of range [0, {len(x)}): {idx}")
        names = [str(v) for v in rows.distance]
        missing = sorted(set(names) - set(self.distances))
        if missing:
            check_distances(missing, self.vgg)
            raise ValueError(f"search: distance(s) {missing} not in this searcher's "
                             f"{self.distances}; build a Searcher with them")
        lam = np.asarray(rows.lam, np.float32)
        if not np.all(np.isfinite(lam)) or lam.min() < 0:
            raise ValueError(f"search: lambdas must be finite and >= 0, got {lam}")
        weight = np.stack([np.array([nm == k for k in self.distances], np.float32)
                           for nm in names])
        present = tuple(k for k, name in enumerate(self.distances) if name in set(names))
        keys = np.stack([np.asarray(jax.random.key_data(jax.random.key(int(s))))
                         for s in rows.seed])
        size = max(batching.padded_size(n, self.mesh),
                   batching.padded_size(batch_size or 0, self.mesh))
        host = dict(x=np.asarray(self.denoiser.to_net(x[idx]), np.float32),
                    mask=np.ones_like(x[idx]) if m is None else m[idx],
                    lam=lam, weight=weight, keys=keys)
        dev = batching.shard(batching.pad_rows(host, size), self.mesh)
        params = parallel.replicate(params, self.mesh)
        if vgg_params is None and self.vgg is not None:
            vgg_params = self.vgg.params
        vgg_params = parallel.replicate(vgg_params, self.mesh)

        start = time.perf_counter()
        state = self._init(params, dev["x"], dev["mask"], dev["lam"], dev["weight"],
                           jax.random.wrap_key_data(dev["keys"]))
        curves, done, total = [], 0, self.options.iterations
        while done < total:
            length = min(self.options.chunk, total - done)
            if self.loop == "scan":
                state, c = self._chunk(params, vgg_params, state, length, present)
            else:
                parts = []
                for _ in range(length):
                    state, c = self._chunk(params, vgg_params, state, 1, present)
                    parts.append(c)
                c = jnp.concatenate(parts, axis=1)
            curves.append(c)
            done += length
            if progress is not None:
                jax.block_until_ready(c)
                progress(done)
        metrics, dx = self._metrics(params, vgg_params, state, present)
        metrics, dx, curves = batching.gather((metrics, dx, curves), n)
        seconds = time.perf_counter() - start
        curves = np.concatenate(curves, axis=1)
        return SearchResult(
            perturbation=dx, metrics=metrics,
            curves={k: curves[..., i] for i, k in enumerate(CURVES)},
            rows=Rows(idx, lam, np.array(names, dtype=object), np.asarray(rows.seed)),
            seconds=seconds)


def make_rows(num_images: int, n: Optional[int] = None, lambdas: Any = 1e-2,
              distances: Any = "mse", seeds: Any = 0, image_index: Any = None) -> Rows:
    """Rows from per-row values or scalars (broadcast to `n` rows)."""
    lengths = [len(v) for v in (lambdas, distances, seeds, image_index)
               if isinstance(v, (list, tuple, np.ndarray))]
    if n is None:
        n = max(lengths + [num_images])
    if image_index is None:
        if num_images not in (1, n):
            raise ValueError(f"search: {num_images} images but {n} perturbations; pass "
                             "image_index (one per perturbation) or build the rows with grid()")
        image_index = np.arange(n) if num_images == n else 0
    return Rows(image_index=batching.broadcast("image_index", image_index, n, np.int32),
                lam=batching.broadcast("lambdas", lambdas, n, np.float32),
                distance=batching.broadcast("distances", np.asarray(distances, dtype=object), n),
                seed=batching.broadcast("seeds", seeds, n, np.int64))


def search(denoiser: Denoiser, images: Any, lambdas: Any = 1e-2, distances: Any = "mse",
           seeds: Any = 0, *, image_index: Any = None, mask: Any = None,
           options: SearchOptions = SearchOptions(), vgg=None, params=None, mesh=None,
           progress: Optional[Callable[[int], None]] = None, **option_overrides) -> SearchResult:
    """Finds one perturbation per (image, lambda, distance, seed) row; see the module docstring.

    Args:
      denoiser: the network under study.
      images: `[H, W]` or `[N, H, W]` HU.
      lambdas, distances, seeds, image_index: scalars or one value per row.
      mask: None, `[H, W]` or `[N, H, W]`: where x_inv may live.
      options: `SearchOptions`; keyword overrides (e.g. `iterations=200`) replace fields.
      vgg: a VGG16 (`ldct_jax.models.vgg`) when a distance is 'vgg16'.
      params: the denoiser's params (default `denoiser.params`).
      mesh: device mesh (default: all devices).
      progress: called with the iterations done after every chunk.
    """
    options = dataclasses.replace(options, **option_overrides)
    x = batching.check_images(images)
    rows = make_rows(len(x), None, lambdas, distances, seeds, image_index)
    searcher = Searcher(denoiser, [str(v) for v in rows.distance], options, vgg, mesh)
    return searcher.run(denoiser.params if params is None else params, x, rows, mask=mask,
                        progress=progress)


def sensitivity_search(denoiser: Denoiser, images: Any, lambdas: Any = 1.0, distances: Any = "mse",
                       seeds: Any = 0, **kwargs) -> SearchResult:
    """The search with the sign of L turned: small input change, large output change."""
    options = dataclasses.replace(kwargs.pop("options", SearchOptions()), sensitivity=True)
    return search(denoiser, images, lambdas, distances, seeds, options=options, **kwargs)


def result_table(result: SearchResult) -> list[Mapping[str, Any]]:
    """One dict per row: the row's settings and its metrics (plain Python types)."""
    out = []
    for i in range(len(result.rows.lam)):
        row = dict(image_index=int(result.rows.image_index[i]), lam=float(result.rows.lam[i]),
                   distance=str(result.rows.distance[i]), seed=int(result.rows.seed[i]))
        row.update({k: float(result.metrics[k][i]) for k in METRICS})
        row["final_loss"] = float(result.curves["loss"][i, -1])
        out.append(row)
    return out
