"""What a denoiser ignores at an image, without an optimisation: the ends of its Jacobian's
singular spectrum.

At an image x, J = df/dx (HU -> HU) is an n x n matrix (n = H W pixels). Its right singular
vectors with the smallest singular values are the directions f locally ignores (J v ~= 0); those
with the largest are the directions it passes or amplifies most, the linear counterpart of the
adversarial attacks. `spectrum` finds the k of each end matrix-free: J only ever appears as
products, J v by `jax.jvp` and J^T u by `jax.vjp` (the latter in its XLA:CPU-fast form).

Method: LOBPCG (Knyazev 2001) for the extreme eigenpairs of J^T J, block size k + `extra`,
with the Rayleigh-Ritz step done through J itself: an SVD of J on an orthonormal basis of the
search space. Squaring J would leave float32 unable to tell singular values below about 3e-4
||J|| apart (eigenvalues of J^T J below 1e-7 of the largest); through J they are resolved to
about 1e-7 ||J||, which is what the small end needs. The search directions are kept unless
numerically dependent (dropping the nearly dependent ones, which carry the conjugate-gradient
acceleration, slows the clustered small end tenfold). Every iteration costs 3 (k + extra)
products per image: J^T on the block's image and J on the new orthonormal directions. The
images are vmapped and sharded over the mesh, with one jitted call per iteration on CPU and a
`lax.while_loop` on accelerators (`ldct_jax.fastpath`).

Reported per pair: the singular value s = ||J v|| of the unit vector v, the residual
||J^T J v - s^2 v|| / ||J||^2, and whether it is converged (residual below `tolerance`). The
small end converges slowly where many singular values crowd near 0 (a null space, or strong
smoothing): a pair's s is then an upper bound on how much f keeps of v, reported as measured.

    s = spectrum(d, images_hu, k=16)
    s.smallest_values[i], s.smallest_vectors[i]    # [k], [k, H, W] (unit vectors)
    energy_fraction(s.smallest_vectors[i], x_inv)  # share of a perturbation in their span
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ldct_jax import fastpath, parallel
from ldct_jax.analysis import arrays
from ldct_jax.models.denoiser import Denoiser, DenoiserSpec

ENDS = ("largest", "smallest")


@dataclasses.dataclass(frozen=True)
class SpectrumOptions:
    """How the spectrum is computed.

    Attributes:
      k: singular pairs at each end.
      extra: extra block vectors (LOBPCG converges faster with a block larger than k).
      iterations: LOBPCG iterations at most, per end.
      tolerance: a pair is converged when ||J^T J v - s^2 v|| <= tolerance ||J||^2. An end
        stops iterating when its k residuals are below half of it (the reported ones are
        measured afresh). In float32 the largest end's residuals stop falling near 4e-6.
      smallest_tolerance: the smallest end's tolerance, if not `tolerance`. Its residuals
        reach lower (their rounding scales with s): 2e-6 resolves its values to about 1e-4
        relative where 1e-5 gives about 3e-3, at some 30 % more iterations.
      seed: the random start blocks (one per image, from the seed and the image's id).
    """

    k: int = 16
    extra: int = 8
    iterations: int = 1000
    tolerance: float = 1e-5
    smallest_tolerance: Optional[float] = None
    seed: int = 0

    def __post_init__(self):
        if (self.k < 1 or self.extra < 0 or self.iterations < 1 or not self.tolerance > 0
                or not (self.smallest_tolerance is None or self.smallest_tolerance > 0)):
            raise ValueError(f"spectrum: k ({self.k}) and iterations ({self.iterations}) must be "
                             f"positive, extra ({self.extra}) >= 0 and the tolerances "
                             f"({self.tolerance}, {self.smallest_tolerance}) > 0")

    def tolerance_of(self, end: str) -> float:
        """The tolerance of the "largest" or the "smallest" end."""
        if end == "smallest" and self.smallest_tolerance is not None:
            return self.smallest_tolerance
        return self.tolerance


@dataclasses.dataclass
class Spectrum:
    """Both ends of the singular spectrum of J at each image (numpy).

    Attributes:
      largest_values, smallest_values: `[N, k]` singular values, descending / ascending.
      largest_vectors, smallest_vectors: `[N, k, H, W]` right singular vectors (unit norm).
      residuals: `[N, 2k]` ||J^T J v - s^2 v|| / ||J||^2, the largest end's pairs first.
      converged: `[N, 2k]` residual <= the end's tolerance (`SpectrumOptions.tolerance_of`).
      products: `[N]` products with J and J^T used (both ends).
      iterations: `[N, 2]` LOBPCG iterations of the largest and the smallest end.
      seconds: wall time.
    """

    largest_values: np.ndarray
    largest_vectors: np.ndarray
    smallest_values: np.ndarray
    smallest_vectors: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    products: np.ndarray
    iterations: np.ndarray
    seconds: float = 0.0


class _State(NamedTuple):
    """LOBPCG state of one image (a pytree; batched over images with a leading axis)."""

    x: jax.Array          # [H, W] the image, network units
    mask: jax.Array       # [H, W] where the input directions may live
    norm2: jax.Array      # [] ||J||^2, the scale of the residuals (the small end's from the large)
    X: jax.Array          # [b, H, W] current block, orthonormal
    JX: jax.Array         # [b, H, W] J X
    P: jax.Array          # [b, H, W] previous search directions (0 at the start)
    sigma: jax.Array      # [b] singular value estimates, the wanted end first
    residual: jax.Array   # [b] ||J^T J x - sigma^2 x|| / norm2
    iteration: jax.Array  # []
    done: jax.Array       # [] every one of the k wanted pairs converged


@dataclasses.dataclass(frozen=True)
class _Program:
    """What the compiled iteration depends on besides data (hashable: a static jit argument)."""

    spec: DenoiserSpec
    k: int
    tolerance: float
    mesh: Mesh
    fast: bool
    largest: bool  # which end

    def rows(self, tree):
        return jax.lax.with_sharding_constraint(tree, parallel.batch_sharding(self.mesh))

    def products(self, params, x, mask):
        """`(J, J^T)` at image `x`, each on a block [b, H, W] (masked). In network units: J is
        the same in HU, shift and scale cancelling."""
        f = functools.partial(self.spec.apply_net, params)
        _, f_jvp = jax.linearize(f, x)
        _, f_vjp = jax.vjp(fastpath.convolutions(f, enable=self.fast), x)
        return (lambda V: jax.vmap(f_jvp)(V * mask),
                lambda U: jax.vmap(lambda u: f_vjp(u)[0])(U) * mask)

    def step(self, params, s: _State) -> _State:
        """One LOBPCG iteration: Rayleigh-Ritz on span(X, R, P), done as an SVD of J on an
        orthonormal basis of that span, so that small singular values are resolved to float32
        precision in sigma rather than in sigma^2."""
        b, k = s.X.shape[0], self.k
        J, Jt = self.products(params, s.x, s.mask)
        R = Jt(s.JX) - jnp.square(s.sigma)[:, None, None] * s.X
        residual = _norms(R) / s.norm2
        # J on the new directions, orthonormal to X: fresh products, so that the basis's
        # images carry no error from combinations.
        Q, kept = _complement(jnp.concatenate([R, s.P]), s.X)
        S = jnp.concatenate([s.X, Q])
        JS = jnp.concatenate([s.JX, J(Q)])
        M = _flat(JS).T
        if not self.largest:
            # Dropped (zero) basis columns would have singular value 0 and could mix with
            # true null directions: rows that give them a value above ||J|| keep them last.
            dropped = ~jnp.concatenate([jnp.ones((b,), bool), kept])
            M = jnp.concatenate([M, jnp.diag(dropped * 2.0 * jnp.sqrt(s.norm2))])
        # (At the largest end they have value 0 and sort last.)
        _, sv, Zt = jnp.linalg.svd(M, full_matrices=False)
        order = jnp.argsort(-sv if self.largest else sv)[:b]
        Z = Zt[order].T  # [3b, b] coefficients on the basis
        X = jnp.einsum("ij,jhw->ihw", Z.T, S)
        JX = jnp.einsum("ij,jhw->ihw", Z.T, JS)
        P = jnp.einsum("ij,jhw->ihw", Z[b:].T, Q)  # the part of the new X outside the old
        sigma = sv[order]
        norm2 = jnp.square(sigma[0]) if self.largest else s.norm2
        # Half the tolerance: the residuals reported are measured afresh (J on the unit
        # vectors, s = ||J v||) and differ from these by the rounding that J X's updates
        # accumulate; every reported pair of a finished image must stay within it.
        done = jnp.all(residual[:k] <= 0.5 * self.tolerance)
        return s._replace(X=X, JX=JX, P=P, sigma=sigma, norm2=norm2, residual=residual,
                          iteration=s.iteration + 1, done=done)


def _flat(V: jax.Array) -> jax.Array:
    return V.reshape(V.shape[0], -1)


def _norms(V: jax.Array) -> jax.Array:
    return jnp.linalg.norm(_flat(V), axis=1)


def _complement(Y: jax.Array, X: jax.Array) -> tuple[jax.Array, jax.Array]:
    """An orthonormal basis of span(Y) orthogonal to the orthonormal X, as many columns as Y:
    the directions of Y (nearly) inside span(X) or each other are dropped as zero columns.

    Two passes of projection and Gram eigendecomposition (as CholeskyQR2): one pass leaves
    the basis orthonormal only to eps / (smallest kept Gram eigenvalue). Returns the basis
    and which of its columns are kept.
    """
    # Unit columns: a converged residual's scale would underflow the Gram matrix.
    Y = Y / jnp.maximum(_norms(Y), jnp.finfo(Y.dtype).tiny)[:, None, None]
    threshold = 10 * jnp.finfo(Y.dtype).eps
    for _ in range(2):
        Y = Y - jnp.einsum("in,jn,jhw->ihw", _flat(Y), _flat(X), X)
        d, V = jnp.linalg.eigh(_flat(Y) @ _flat(Y).T)
        kept = d > threshold * jnp.maximum(d[-1], jnp.finfo(Y.dtype).tiny)
        W = V * jnp.where(kept, jax.lax.rsqrt(jnp.where(kept, d, 1.0)), 0.0)
        Y = jnp.einsum("ij,jhw->ihw", W.T, Y)
    return Y, kept


@functools.partial(jax.jit, static_argnums=0)
def _start(program: _Program, params, x, mask, norm2, X0):
    """The orthonormalised start block and its image under J, per image."""
    def one(x, mask, norm2, X0):
        b = X0.shape[0]
        Q, _ = jnp.linalg.qr((X0 * mask).reshape(b, -1).T)
        X = Q.T.reshape(X0.shape) * mask  # Householder leaves rounding noise outside it
        JX = program.products(params, x, mask)[0](X)
        sigma = jnp.linalg.norm(JX.reshape(b, -1), axis=1)
        order = jnp.argsort(-sigma if program.largest else sigma)
        zeros = jnp.zeros_like(X)
        norm2 = jnp.square(sigma[order[0]]) if program.largest else norm2
        return _State(x, mask, norm2, X[order], JX[order], zeros, sigma[order],
                      jnp.full((b,), jnp.inf), jnp.zeros((), jnp.int32), jnp.zeros((), bool))
    return program.rows(jax.vmap(one)(x, mask, norm2, X0))


def _advance(program: _Program, params, s: _State) -> _State:
    new = program.step(params, s)
    # The k pairs converged at the block this step started from: keep that block, whose
    # residuals were measured, not the step's update; and keep it while the batch waits for
    # the other images.
    stop = s.done | new.done
    kept = s._replace(residual=jnp.where(s.done, s.residual, new.residual), done=stop,
                      iteration=jnp.where(s.done, s.iteration, new.iteration))
    return jax.tree.map(lambda a, b: jnp.where(stop, a, b), kept, new)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(2,))
def _iterate(program: _Program, params, state: _State) -> _State:
    """One iteration of every image (CPU: called from Python)."""
    return program.rows(jax.vmap(functools.partial(_advance, program, params))(state))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(2,))
def _iterate_all(program: _Program, params, state: _State, iterations) -> _State:
    """Iterations until every image converged or the limit (accelerators: one program)."""
    step = jax.vmap(functools.partial(_advance, program, params))
    state = jax.lax.while_loop(
        lambda s: jnp.logical_and(jnp.max(s.iteration) < iterations,
                                  ~jnp.all(s.done)), step, state)
    return program.rows(state)


@functools.partial(jax.jit, static_argnums=0)
def _report(program: _Program, params, state: _State):
    """Per image: the k pairs as unit vectors, s = ||J v||, residual ||J^T J v - s^2 v||."""
    k = program.k

    def one(s: _State):
        V = s.X[:k]
        V = V / jnp.linalg.norm(V.reshape(k, -1), axis=1)[:, None, None]
        J, Jt = program.products(params, s.x, s.mask)
        JV = J(V)
        sv = jnp.linalg.norm(JV.reshape(k, -1), axis=1)
        res = jnp.linalg.norm((Jt(JV) - jnp.square(sv)[:, None, None] * V).reshape(k, -1),
                              axis=1)
        return V, sv, res, s.iteration
    return program.rows(jax.vmap(one)(state))


def check_inputs(shape: tuple[int, ...], k: int, extra: int, mask: Any = None) -> None:
    """The block fits the images `[N, H, W]` (LOBPCG needs 5 (k + extra) < the directions)."""
    n = int(np.prod(shape[-2:]))
    if mask is not None:
        n = int(np.min(np.sum(np.asarray(mask).reshape(-1, n) > 0, axis=1)))
    if 5 * (k + extra) >= n:
        where = "pixels in the mask" if mask is not None else "pixels"
        raise ValueError(f"spectrum: k={k} (+ {extra} extra block vectors) is too large for "
                         f"{n} input directions ({where}); expected 5 (k + extra) < {n}")


def spectrum(denoiser: Denoiser, images: Any, k: Optional[int] = None, *, mask: Any = None,
             options: SpectrumOptions = SpectrumOptions(), mesh: Optional[Mesh] = None,
             image_ids: Any = None) -> Spectrum:
    """The k largest and k smallest singular values of J at each image, and their vectors.

    Args:
      denoiser: the network (spec and params).
      images: `[H, W]` or `[N, H, W]` HU.
      k: singular pairs per end (default `options.k`).
      mask: None, `[H, W]` or `[N, H, W]` of 0/1: the input directions are restricted to it
        (J restricted to the masked pixels).
      options: `SpectrumOptions`.
      mesh: device mesh (default: all devices).
      image_ids: `[N]` the images' indices that seed their start block with `options.seed`
        (default 0..N-1): computing a data set in parts, pass each image's index in it, so
        that an image's result does not depend on the part it came in.

    Returns:
      A `Spectrum`.

    Raises:
      ValueError: before any computation, for bad images, a mask of another shape, or k too
        large for the images.
    """
    if k is not None:
        options = dataclasses.replace(options, k=k)
    x = arrays.check_images(images)
    m = arrays.check_mask(mask, x.shape)
    check_inputs(x.shape, options.k, options.extra, m)
    mesh = parallel.make_mesh() if mesh is None else mesh
    spec = denoiser.spec
    n, h, w = x.shape
    b = options.k + options.extra
    size = parallel.padded_size(n, mesh)
    ids = arrays.broadcast("image_ids", np.arange(n) if image_ids is None else image_ids, n,
                           np.int64)
    host = dict(x=np.asarray(spec.to_net(x), np.float32),
                mask=np.ones_like(x) if m is None else m,
                X0=np.stack([np.random.default_rng([options.seed, int(i)]).standard_normal(
                    (b, h, w), np.float32) for i in ids]))
    dev = parallel.shard_rows(parallel.pad_rows(host, size), mesh)
    params = parallel.replicate(denoiser.params, mesh)
    fast = fastpath.enabled(mesh)
    start = time.perf_counter()
    out = {}
    norm2 = jnp.ones((size,), jnp.float32)
    # Full float32 products and factorisations: TF32 (GPUs) or bfloat16 (TPUs) passes would
    # cap the small end near 1e-3 ||J||.
    with jax.default_matmul_precision("float32"):
        for end in ENDS:
            program = _Program(spec, options.k, options.tolerance_of(end), mesh, fast,
                               end == "largest")
            state = _start(program, params, dev["x"], dev["mask"], norm2, dev["X0"])
            if fastpath.python_loop(mesh):
                for _ in range(options.iterations):
                    state = _iterate(program, params, state)
                    if bool(jnp.all(state.done)):
                        break
            else:
                state = _iterate_all(program, params, state, options.iterations)
            out[end] = _report(program, params, state)
            norm2 = state.norm2  # the largest end's ||J||^2 scales the smallest end's
    (Vl, sl, rl, il), (Vs, ss, rs, is_) = parallel.gather_rows(
        (out["largest"], out["smallest"]), n)
    # Ordered by the measured s = ||J v|| (the last Ritz values may order them slightly
    # differently): descending at the largest end, ascending at the smallest.
    Vl, sl, rl = _sorted_by(-sl, Vl, sl, rl)
    Vs, ss, rs = _sorted_by(ss, Vs, ss, rs)
    norm2 = np.square(sl[:, :1])
    residuals = np.concatenate([rl, rs], axis=1) / norm2
    return Spectrum(
        largest_values=sl, largest_vectors=Vl, smallest_values=ss, smallest_vectors=Vs,
        residuals=residuals,
        converged=residuals <= np.repeat([options.tolerance_of(e) for e in ENDS], options.k),
        # Per end: J on the start block (b), 3 b products per iteration, and J and J^T on
        # the k reported pairs.
        products=b * (3 * (np.asarray(il) + np.asarray(is_)) + 2) + 4 * options.k,
        iterations=np.stack([il, is_], axis=1), seconds=time.perf_counter() - start)


def _sorted_by(key: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
    """`arrays` (`[N, k, ...]`) reordered along axis 1 by ascending `key` `[N, k]`."""
    order = np.argsort(key, axis=1)
    return [np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)
            for a in arrays]


def energy_fraction(vectors: Any, perturbation: Any) -> float:
    """The share of `perturbation`'s energy (`[H, W]`) in the span of `vectors` (`[k, H, W]`,
    orthonormal): ||V^T p||^2 / ||p||^2, in [0, 1]."""
    V = np.asarray(vectors, np.float64).reshape(len(vectors), -1)
    p = np.asarray(perturbation, np.float64).ravel()
    total = float(p @ p)
    if total == 0.0:
        raise ValueError("energy_fraction: the perturbation is zero")
    return float(np.sum(np.square(V @ p)) / total)
