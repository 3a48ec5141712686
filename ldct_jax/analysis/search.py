"""Image-domain invariance search: many perturbations at once, one vmapped optax step.

For a denoiser f and an image x (network units), each perturbation x_inv minimises

    L(x_inv) = D_out(f(x + x_inv), f(x)) - lambda * d_in(x + x_inv, x)

with Adam: D_out is the mean squared output difference in network units, d_in a bounded input
distance of `ldct_jax.distances` ('mse' capped at 1, 'dssim', 'vgg16'). Small lambda asks for an
output that does not change at all; larger lambda trades output change for a larger input change.
With `sensitivity=True` the sign of L is turned: small input change, large output change.

One perturbation is one (image, lambda, distance, seed) row. A batch of rows runs as one
`vmap`ped step inside a `lax.scan` over `chunk` iterations, with the batch sharded over all
devices. The programs (`ldct_jax.analysis.search_program`) are jitted once per denoiser spec,
distances, options and mesh (the denoiser and VGG params are arguments), whichever `Searcher`
asks for them. On CPU the iterations of a chunk are separate calls of one jitted step instead,
and CNN-10's first convolution takes its fast form (`ldct_jax.fastpath`).

    result = search(d, images_hu, lambdas=[1e-4, 1e-2], distances="mse", seeds=0)
    result.perturbation   # [B, H, W] HU;  result.metrics["input_rms_hu"]  # [B]

Rows broadcast: `images` `[N, H, W]` with `image_index` picking one per row (default: row i
uses image i, or image 0 when N is 1); lambdas, distances and seeds are scalars or one per row.
`grid(...)` builds the rows of a full grid.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ldct_jax import distances as distances_lib, fastpath, metrics as metrics_lib, parallel
from ldct_jax.analysis import arrays, optimizers, search_program as compiled
from ldct_jax.analysis.search_program import CURVES, State
from ldct_jax.models.denoiser import Denoiser, DenoiserSpec

METRICS = ("input_rms_hu", "input_max_hu", "input_ssim", "d_in", "output_rms_hu",
           "output_max_hu", "ratio", "final_loss")
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """How the search optimises (see `ldct_jax.analysis.optimizers` for the methods).

    Fields left at 0 (or at -1: lambda_start, tolerance) take the method's value
    (`optimizers.DEFAULTS`): `SearchOptions(method="adam")` is the talk's recipe.

    Attributes:
      method: 'anneal' (the default: decaying step, lambda continuation, stops on convergence)
        or 'adam' (Adam, constant learning rate, fixed iterations: the talk's).
      iterations: steps per perturbation, at most (adam 3000, anneal 300).
      chunk: steps between progress updates and convergence checks: one compiled `lax.scan`
        call on accelerators (iterations need not be a multiple; the remainder runs as a second
        compiled program).
      learning_rate: Adam step size (anneal: its start), in network units of the denoiser
        (about scale HU per unit); adam 1e-2, anneal 0.1.
      b1, b2, eps: Adam's moments (b2: adam 0.999, anneal 0.9) and epsilon. Adam is fed the
        gradient of H * W * L (the per-pixel sum rather than the mean; Adam is invariant to that
        scale except through eps), so the lambda term's gradient is ~2 lambda |x_inv| per pixel,
        whatever the image size, and eps only stalls lambda below about eps / |x_inv| (~1e-8 in
        network units).
      lambda_start, lambda_steps: anneal's continuation: rows start at lambda_start (1e-2; 0:
        off) and reach their own lambda after lambda_steps iterations (a third of the
        iterations: 100 of 300); an explicit lambda_steps above the iterations is an error.
      final_lr_fraction: anneal's step at the last iteration, as a fraction of the first (1e-2).
      tolerance, window: a row stops once its loss moved by at most `tolerance` of itself over
        `window` iterations (anneal 1e-3 over 50; adam 0: never).
      init_scale_hu: standard deviation of the Gaussian start, HU (zero is a fixed point of L).
      clip: keep x + x_inv inside [HU_MIN, HU_MAX] (projection after every step; the images
        must lie inside it).
      sensitivity: turn the sign of L (the adversarial direction).
      compute_dtype: the denoiser's dtype inside the search, 'float32' or 'bfloat16' (for
        accelerators; XLA:CPU runs bfloat16 slower). x_inv, the optimiser's state, the
        distances and the reported metrics stay float32, and the metrics use the float32
        denoiser.
    """

    method: str = "anneal"
    iterations: int = 0
    chunk: int = 25
    learning_rate: float = 0.0
    b1: float = 0.9
    b2: float = 0.0
    eps: float = 1e-8
    lambda_start: float = -1.0
    lambda_steps: int = 0
    final_lr_fraction: float = 0.0
    tolerance: float = -1.0
    window: int = 0
    init_scale_hu: float = 1.0
    clip: bool = True
    sensitivity: bool = False
    compute_dtype: str = "float32"

    def __post_init__(self):
        expected = dict(  # field -> (holds, what was expected)
            iterations=(self.iterations >= 0, ">= 0 (0: the method's)"),
            chunk=(self.chunk >= 1, ">= 1"),
            learning_rate=(self.learning_rate >= 0, "> 0 (0: the method's)"),
            b1=(0 <= self.b1 < 1, "in [0, 1)"),
            b2=(0 <= self.b2 < 1, "in (0, 1) (0: the method's)"),
            eps=(self.eps > 0, "> 0"),
            lambda_steps=(self.lambda_steps >= 0, ">= 0 (0: the method's)"),
            final_lr_fraction=(0 <= self.final_lr_fraction <= 1, "in (0, 1] (0: the method's)"),
            window=(self.window >= 0, ">= 0 (0: the method's)"),
            init_scale_hu=(self.init_scale_hu > 0, "> 0 HU (zero is a fixed point of L)"))
        for name, (holds, what) in expected.items():
            if not holds:
                raise ValueError(f"search: {name} must be {what}, got {getattr(self, name)}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"search: compute_dtype must be one of {COMPUTE_DTYPES}, got "
                             f"{self.compute_dtype!r}")
        self.settings  # an unknown method fails here, not at the first run

    @property
    def settings(self) -> optimizers.Settings:
        """The options with the method's defaults filled in."""
        return optimizers.settings(
            self.method, self.iterations, self.learning_rate, self.b2, self.lambda_start,
            self.lambda_steps, self.final_lr_fraction, self.tolerance, self.window)


class Rows(NamedTuple):
    """One row per perturbation (host numpy)."""

    image_index: np.ndarray  # [B] int
    lam: np.ndarray          # [B] float
    distance: np.ndarray     # [B] str
    seed: np.ndarray         # [B] int


@dataclasses.dataclass
class SearchResult:
    """Perturbations in HU and what they did, one row per perturbation."""

    perturbation: np.ndarray           # [B, H, W] HU
    metrics: dict[str, np.ndarray]     # METRICS -> [B]
    curves: dict[str, np.ndarray]      # CURVES -> [B, iterations]; after a row stopped, its
                                       # last values repeat
    rows: Rows
    stopped: np.ndarray                # [B] int: the iteration at which each row stopped
    converged: np.ndarray              # [B] bool: met the tolerance (else ran out of iterations)
    seconds: float = 0.0


def grid(num_images: int, lambdas: Sequence[float], distances: Sequence[str] = ("mse",),
         seeds: Sequence[int] = (0,)) -> Rows:
    """Rows of the full grid distances x lambdas x images x seeds (in that nesting order)."""
    combos = list(itertools.product(arrays.as_list(distances), arrays.as_list(lambdas),
                                    range(num_images), arrays.as_list(seeds)))
    return Rows(image_index=np.array([c[2] for c in combos], np.int32),
                lam=np.array([c[1] for c in combos], np.float32),
                distance=np.array([c[0] for c in combos], dtype=object),
                seed=np.array([c[3] for c in combos], np.int64))


def check_distances(names: Sequence[str], vgg=None) -> tuple[str, ...]:
    """The distinct distances asked for, in the order of `distances.INPUT_DISTANCES`."""
    known = distances_lib.INPUT_DISTANCES
    unknown = sorted({str(n) for n in names} - set(known))
    if unknown:
        raise ValueError(f"unknown input distance(s) {unknown}; expected {', '.join(known)}")
    if "vgg16" in names and vgg is None:
        raise ValueError("distance 'vgg16' needs a VGG16: pass vgg=ldct_jax.models.vgg_weights."
                         "from_config(path, 'vgg16', key)")
    return tuple(n for n in known if n in set(names))


def check_image_size(shape: Sequence[int], distances: Sequence[str]) -> None:
    """Images of `shape` (`[..., H, W]`) are large enough for the metrics (SSIM's window) and
    for the distances asked for (VGG16 pools four times); a ValueError otherwise."""
    need = {"SSIM (the input_ssim metric)": metrics_lib.SSIM_FILTER_SIZE}
    if "vgg16" in distances:
        need["the vgg16 distance"] = distances_lib.VGG16_MIN_SIZE
    h, w = shape[-2:]
    for what, size in need.items():
        if min(h, w) < size:
            raise ValueError(f"search: images of {h}x{w} px are smaller than {what} needs "
                             f"({size}x{size} px)")


class Searcher:
    """The search for one denoiser architecture, a set of distances and options.

    Build it once and call `run` for every batch: batches of the same size reuse one program
    (and so do other searchers with the same spec, distances, options and mesh).
    """

    def __init__(self, spec: DenoiserSpec, distances: Sequence[str], options: SearchOptions,
                 vgg=None, mesh: Optional[Mesh] = None):
        self.spec = spec
        self.distances = check_distances(distances, vgg)
        self.options = options
        self.vgg = vgg
        self.mesh = mesh if mesh is not None else parallel.make_mesh()
        self.fast = fastpath.enabled(self.mesh)
        self.loop = "python" if fastpath.python_loop(self.mesh) else "scan"

    def run(self, params, images: Any, rows: Rows, mask: Any = None,
            progress: Optional[Callable[[int], None]] = None, batch_size: Optional[int] = None
            ) -> SearchResult:
        """Optimises one perturbation per row.

        Args:
          params: the denoiser's params.
          images: `[H, W]` or `[N, H, W]` HU.
          rows: `Rows` (see `grid` and `make_rows`); distances must be among this searcher's.
          mask: None, `[H, W]` or `[N, H, W]` of 0/1: where x_inv may be non-zero.
          progress: called with the number of iterations done after every chunk.
          batch_size: pad the batch to this many rows (a fixed size reuses one program).

        Returns:
          A `SearchResult` with one row per row of `rows`.
        """
        x = arrays.check_images(images)
        check_image_size(x.shape, self.distances)
        if self.options.clip:
            arrays.check_hu_range(x)
        m = arrays.check_mask(mask, x.shape)
        n = len(rows.lam)
        idx = np.asarray(rows.image_index)
        if n == 0:
            raise ValueError("search: no perturbations asked for")
        lengths = {k: len(v) for k, v in rows._asdict().items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"search: the rows' fields differ in length {lengths}; expected one "
                             "value per perturbation in each (see make_rows and grid)")
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
        optimizers.check_schedule(self.options.settings, lam)
        weight = np.stack([np.array([nm == k for k in self.distances], np.float32)
                           for nm in names])
        program = compiled.Program(
            self.spec, self.distances,
            tuple(k for k, name in enumerate(self.distances) if name in names),
            self.options, self.mesh, self.fast)
        keys = np.stack([np.asarray(jax.random.key_data(jax.random.key(int(s))))
                         for s in rows.seed])
        size = max(parallel.padded_size(n, self.mesh),
                   parallel.padded_size(batch_size or 0, self.mesh))
        host = dict(x=np.asarray(self.spec.to_net(x[idx]), np.float32),
                    mask=np.ones_like(x[idx]) if m is None else m[idx],
                    lam=lam, weight=weight, keys=keys)
        dev = parallel.shard_rows(parallel.pad_rows(host, size), self.mesh)
        params = parallel.replicate(params, self.mesh)
        vgg = parallel.replicate(self.vgg, self.mesh)

        start = time.perf_counter()
        state = compiled.init(program, params, dev["x"], dev["mask"], dev["lam"], dev["weight"],
                              jax.random.wrap_key_data(dev["keys"]))
        state, curves = self._optimise(program, params, vgg, state, n, progress)
        (metrics, dx), (stopped, active) = parallel.gather_rows(
            (compiled.final_metrics(program, params, vgg, state), (state.t, state.active)), n)
        seconds = time.perf_counter() - start
        return SearchResult(
            perturbation=dx, metrics=metrics,
            curves={k: curves[..., i] for i, k in enumerate(CURVES)},
            rows=Rows(idx, lam, np.array(names, dtype=object), np.asarray(rows.seed)),
            stopped=stopped.astype(np.int64), converged=~active, seconds=seconds)

    def _optimise(self, program: compiled.Program, params, vgg, state: State, n: int,
                  progress: Optional[Callable[[int], None]]) -> tuple[State, np.ndarray]:
        """Runs chunks until every one of the first `n` rows converged or the iterations ran out.

        Returns:
          (the final state, curves `[n, iterations, 3]` host numpy).
        """
        settings = self.options.settings
        curves, done, total = [], 0, settings.iterations
        while done < total:
            length = min(self.options.chunk, total - done)
            if self.loop == "scan":
                state, c = compiled.chunk(program, params, vgg, state, length)
            else:
                parts = []
                for _ in range(length):
                    state, c = compiled.chunk(program, params, vgg, state, 1)
                    parts.append(c)
                c = jnp.concatenate(parts, axis=1)
            curves.append(parallel.gather_rows(c, n) if settings.tolerance > 0 else c)
            done += length
            if progress is not None:
                jax.block_until_ready(c)
                progress(done)
            if settings.tolerance > 0:
                state, finished = _stop_converged(state, np.concatenate(curves, 1)[..., 0],
                                                  done, settings)
                if finished:
                    break
        curves = np.concatenate(parallel.gather_rows(curves, n), axis=1)
        # Rows that stopped keep their last values (the loop ended when all had stopped).
        return state, np.pad(curves, ((0, 0), (0, total - done), (0, 0)), mode="edge")


def _stop_converged(state: State, loss: np.ndarray, done: int,
                    settings: optimizers.Settings) -> tuple[State, bool]:
    """Marks the rows whose loss `[n, done]` has converged as inactive.

    Returns:
      (the state, whether all of the first n rows have stopped).
    """
    active = np.array(parallel.gather_rows(state.active, len(state.active)))
    n = len(loss)
    active[:n] &= ~optimizers.converged(loss, done, settings)
    return state._replace(active=jax.make_array_from_callback(
        active.shape, state.active.sharding, lambda index: active[index])), not active[:n].any()


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
    return Rows(image_index=arrays.broadcast("image_index", image_index, n, np.int32),
                lam=arrays.broadcast("lambdas", lambdas, n, np.float32),
                distance=arrays.broadcast("distances", np.asarray(distances, dtype=object), n),
                seed=arrays.broadcast("seeds", seeds, n, np.int64))


def search(denoiser: Denoiser, images: Any, lambdas: Any = 1e-2, distances: Any = "mse",
           seeds: Any = 0, *, image_index: Any = None, mask: Any = None,
           options: SearchOptions = SearchOptions(), vgg=None, mesh=None,
           progress: Optional[Callable[[int], None]] = None, **option_overrides) -> SearchResult:
    """Finds one perturbation per (image, lambda, distance, seed) row; see the module docstring.

    Args:
      denoiser: the network under study (spec and params).
      images: `[H, W]` or `[N, H, W]` HU.
      lambdas, distances, seeds, image_index: scalars or one value per row.
      mask: None, `[H, W]` or `[N, H, W]`: where x_inv may live.
      options: `SearchOptions`; keyword overrides (e.g. `iterations=200`) replace fields.
      vgg: a VGG16 (`ldct_jax.models.vgg_weights`) when a distance is 'vgg16'.
      mesh: device mesh (default: all devices).
      progress: called with the iterations done after every chunk.
    """
    options = dataclasses.replace(options, **option_overrides)
    x = arrays.check_images(images)
    rows = make_rows(len(x), None, lambdas, distances, seeds, image_index)
    searcher = Searcher(denoiser.spec, [str(v) for v in rows.distance], options, vgg, mesh)
    return searcher.run(denoiser.params, x, rows, mask=mask, progress=progress)


def sensitivity_search(denoiser: Denoiser, images: Any, lambdas: Any = 1.0, distances: Any = "mse",
                       seeds: Any = 0, **kwargs) -> SearchResult:
    """The search with the sign of L turned: small input change, large output change."""
    options = dataclasses.replace(kwargs.pop("options", SearchOptions()), sensitivity=True)
    return search(denoiser, images, lambdas, distances, seeds, options=options, **kwargs)


def lam_as_written(lam: float) -> float:
    """A float32 lambda as the number it was written as (0.01, not 0.009999999776)."""
    return float(str(np.float32(lam)))


def result_table(result: SearchResult) -> list[Mapping[str, Any]]:
    """One dict per row: the row's settings and its metrics (plain Python types)."""
    out = []
    for i in range(len(result.rows.lam)):
        # So that tables filter on lam == 0.01.
        row = dict(image_index=int(result.rows.image_index[i]),
                   lam=lam_as_written(result.rows.lam[i]),
                   distance=str(result.rows.distance[i]), seed=int(result.rows.seed[i]))
        row.update({k: float(result.metrics[k][i]) for k in METRICS})
        row["iterations"] = int(result.stopped[i])
        row["converged"] = bool(result.converged[i])
        out.append(row)
    return out
