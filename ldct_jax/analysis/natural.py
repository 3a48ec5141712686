"""Natural invariances from a trained generator: new x_inv for new z, no optimisation.

    gen = natural.load("runs/natural_cnn10/generator")
    x_inv = natural.sample(gen.module, gen.params, images_hu, jax.random.key(0), 8,
                           gen.denoiser)
    x_inv.shape          # [N, 8, H, W] HU; x + x_inv stays in the valid HU range

`sample` is a pure function of (params, x, key) (and of the denoiser's params, for a generator
conditioned on f(x)), vmapped over the samples; `sample_sharded` runs the same rows over a
device mesh in fixed-size batches. Sample s of image n draws its
noise from `fold_in(fold_in(key, n), s)`, so a sample does not depend on how many others are
drawn, on the batch it runs in or on the number of devices. The training is in
`ldct_jax.train.natural`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ldct_jax import files, models, parallel
from ldct_jax.analysis import arrays
from ldct_jax.models import saved
from ldct_jax.models.denoiser import Denoiser, DenoiserSpec
from ldct_jax.models.natural import InvarianceGenerator
from ldct_jax.train.natural import draw_noise, perturb

Params = Any


@dataclasses.dataclass(frozen=True)
class Generator:
    """A trained generator: its module (hashable, the program), its params (data) and the
    denoiser it was trained for (whose output it is conditioned on, if it is)."""

    module: InvarianceGenerator
    params: Params
    denoiser: Optional[Denoiser] = None


def _perturb_one(module, params, spec: Optional[DenoiserSpec], dparams, x, z):
    y = spec.from_net(spec.apply_net(dparams, spec.to_net(x[None]))) if spec else None
    return perturb(module, params, x[None], z, y)[0][0]


def _check_denoiser(module: InvarianceGenerator, denoiser: Optional[Denoiser]) -> None:
    if module.condition_on_output and denoiser is None:
        raise ValueError("this generator is conditioned on the denoiser's output f(x): pass "
                         "the denoiser it was trained for (natural.load gives it)")


def _row_noise(module: InvarianceGenerator, key: jax.Array, image: jax.Array, sample: jax.Array,
               shape: tuple[int, int]) -> jax.Array:
    k = jax.random.fold_in(jax.random.fold_in(key, image), sample)
    return draw_noise(k, (1,) + tuple(shape), module.noise_channels)


def sample(module: InvarianceGenerator, params: Params, x: Any, key: jax.Array,
           num_samples: int, denoiser: Optional[Denoiser] = None) -> jax.Array:
    """`num_samples` invariances per image.

    Args:
      module: the generator.
      params: its params.
      x: `[H, W]` or `[N, H, W]` HU.
      key: the PRNG key the noise comes from.
      num_samples: S.
      denoiser: the denoiser f the generator was trained for; required when it is conditioned
        on f(x) (`module.condition_on_output`).

    Returns:
      x_inv, `[N, S, H, W]` HU (N = 1 for a single image).
    """
    _check_denoiser(module, denoiser)
    spec, dparams = (denoiser.spec, denoiser.params) if module.condition_on_output else (None,
                                                                                         None)
    x = jnp.asarray(x, jnp.float32)
    x = x[None] if x.ndim == 2 else x

    def one(n, xn):
        def draw(s):
            z = _row_noise(module, key, n, s, xn.shape)
            return _perturb_one(module, params, spec, dparams, xn, z)
        return jax.vmap(draw)(jnp.arange(num_samples))

    return jax.vmap(one)(jnp.arange(x.shape[0]), x)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _rows(module: InvarianceGenerator, params: Params, spec: Optional[DenoiserSpec], dparams,
          x: jax.Array, image: jax.Array, sample_index: jax.Array, key: jax.Array) -> jax.Array:
    def one(xi, n, s):
        z = _row_noise(module, key, n, s, xi.shape)
        return _perturb_one(module, params, spec, dparams, xi, z)
    return jax.vmap(one)(x, image, sample_index)


def sample_sharded(generator: Generator, images: Any, key: jax.Array, num_samples: int, *,
                   mesh: Optional[Mesh] = None, batch_size: int = 8) -> np.ndarray:
    """`sample` over a device mesh: the N x S rows in batches of `batch_size` (rounded up to a
    multiple of the mesh size; one compiled program for all), each batch sharded over `mesh`
    (default: every device). Returns x_inv `[N, S, H, W]` HU as numpy, the same numbers as
    `sample` up to float rounding."""
    _check_denoiser(generator.module, generator.denoiser)
    mesh = mesh or parallel.make_mesh()
    d = generator.denoiser if generator.module.condition_on_output else None
    spec, dparams = (d.spec, parallel.replicate(d.params, mesh)) if d else (None, None)
    x = arrays.check_images(images)
    n, size = len(x), parallel.padded_size(max(1, batch_size), mesh)
    image = np.repeat(np.arange(n, dtype=np.int32), num_samples)
    index = np.tile(np.arange(num_samples, dtype=np.int32), n)
    params = parallel.replicate(generator.params, mesh)
    out = []
    for lo in range(0, len(image), size):
        rows = parallel.pad_rows({"x": x[image[lo:lo + size]], "n": image[lo:lo + size],
                                  "s": index[lo:lo + size]}, size)
        rows = parallel.shard_rows(rows, mesh)
        y = _rows(generator.module, params, spec, dparams, rows["x"], rows["n"], rows["s"], key)
        out.append(parallel.gather_rows(y, min(size, len(image) - lo)))
    return np.concatenate(out).reshape((n, num_samples) + x.shape[1:])


CONFIG_FILE = "generator.json"
PARAMS_FILE = "params.npz"
DENOISER_DIR = "denoiser"


def save(generator: Generator, path: str, *, overwrite: bool = False) -> None:
    """Writes the generator to the directory `path` (atomically: a reader sees the old one or
    the new one, never a mix): its module config (JSON), params (npz) and its denoiser
    (`denoiser/`, `ldct_jax.models.save`), so that `load` gives all that sampling needs."""
    config = {f.name: getattr(generator.module, f.name)
              for f in dataclasses.fields(generator.module)
              if f.init and f.name not in ("parent", "name")}
    flat = {k: np.asarray(v) for k, v in saved.flat(parallel.to_host(generator.params)).items()}
    with files.atomic_dir(path, overwrite=overwrite) as tmp:
        files.write_json(os.path.join(tmp, CONFIG_FILE), {"module": config})
        np.savez(os.path.join(tmp, PARAMS_FILE), **flat)
        if generator.denoiser is not None:
            models.save(generator.denoiser, os.path.join(tmp, DENOISER_DIR))


def load(path: str) -> Generator:
    """The generator `save` wrote to `path`; a missing or foreign directory is an error naming
    it."""
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path!r} holds no generator of natural invariances (no "
                                f"{CONFIG_FILE}); train one with configs/natural.py")
    module = InvarianceGenerator(**files.read_json(config_path)["module"])
    with np.load(os.path.join(path, PARAMS_FILE)) as f:
        params = saved.unflat({k: jnp.asarray(f[k]) for k in f.files})
    denoiser_dir = os.path.join(path, DENOISER_DIR)
    denoiser = models.load(denoiser_dir) if os.path.isdir(denoiser_dir) else None
    return Generator(module, params, denoiser)
