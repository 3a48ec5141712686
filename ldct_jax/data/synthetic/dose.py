"""Low- and routine-dose CT from a phantom, simulated the way real low-dose data is made.

HU -> attenuation (mu = mu_water (1 + HU / 1000)) -> parallel-beam line integrals -> photon
counts: Poisson at I0 x dose x exp(-line integral) plus Gaussian electronic noise -> log (counts
at or below zero clamped to `MIN_COUNTS`) -> filtered back-projection (ramp) -> HU. Every dose
gets its own independent noise, so the routine-dose image is noisy too, as real routine-dose
scans are.

Noise calibration: `ROUTINE_I0` is the incident photon count per detector bin and view of a
routine scan at `REFERENCE_SIZE` pixels and `REFERENCE_VIEWS` views, for a patient whose central
rays attenuate like `AEC_REFERENCE_MM` of water; it is chosen so that the routine-dose noise in
uniform soft tissue is about 12 HU (10-15 HU at 512 x 512 for all three anatomies). Automatic
exposure control, as on clinical scanners, scales each slice's I0 by the mean over views of
exp(central line integral) relative to that reference, so larger patients and denser slices get
more photons and the noise level stays about the same. The count per bin is scaled by
(size / REFERENCE_SIZE)^2 x REFERENCE_VIEWS / num_angles, which keeps the HU noise level of the
data set the same at every image size and number of views (FBP noise std ~ 1 / (pixel
sqrt(counts x views))). At these counts (a detector bin here is a whole pixel wide) photon noise
dominates; the electronic noise and exact Poisson draws matter only on photon-starved rays.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ldct_jax import ct
from ldct_jax.data.synthetic import projector

MU_WATER = 0.02          # 1/mm, water at ~70 keV effective energy
MIN_COUNTS = 1.0         # counts clamp before the log (photon starvation)
REFERENCE_SIZE = 512
REFERENCE_VIEWS = 720
NUM_ANGLES = 360        # default views over 180 degrees (view aliasing stays below the noise)
ROUTINE_I0 = {"chest": 4.7e6, "abdomen": 5.0e6, "head": 6.5e6}
AEC_REFERENCE_MM = 300.0
AEC_RANGE = (0.2, 5.0)   # limits of the tube current modulation
ELECTRONIC_NOISE = 5.0   # std of the electronic noise in counts, at the reference counts
DOSE_FRACTION = {"chest": 0.10, "abdomen": 0.25, "head": 0.25}
_EXACT_BELOW = 20.0      # Poisson drawn exactly below this mean; Gaussian (variance = mean) above
_EXACT_TERMS = 56        # inverse-CDF terms for the exact draws (P(miss) < 1e-10 at mean 20)


def mu_from_hu(hu):
    """Linear attenuation in 1/mm (>= 0)."""
    return jnp.maximum(MU_WATER * (1.0 + hu / 1000.0), 0.0)


def hu_from_mu(mu):
    return 1000.0 * (mu / MU_WATER - 1.0)


def aec_factor(line: jax.Array) -> jax.Array:
    """Automatic exposure control: `[B]` I0 factors from `[B, N, A]` line integrals.

    The noise variance at the centre is proportional to the mean over views of
    exp(central line integral) / I0; the factor makes it that of the reference water cylinder.
    """
    central = line[:, line.shape[1] // 2, :]
    reference = MU_WATER * AEC_REFERENCE_MM
    return jnp.clip(jnp.mean(jnp.exp(central - reference), axis=-1), *AEC_RANGE)


def counts_scale(size: int, num_angles: int) -> float:
    """Factor on `ROUTINE_I0` that keeps the HU noise independent of size and views."""
    return (size / REFERENCE_SIZE) ** 2 * REFERENCE_VIEWS / num_angles


def poisson(keys: jax.Array, mean: jax.Array) -> jax.Array:
    """Poisson draws (float32), one key per leading index of `mean`: exact below a mean of 20,
    normal with variance = mean (rounded) above.

    `jax.random.poisson` is slow on CPU for the millions of draws of a sinogram; at the means of
    almost every ray (hundreds to thousands) the normal approximation is exact to well under
    1 %, and the photon-starved rays, where the shape matters, get exact inverse-CDF draws (only
    computed when there are any).
    """
    split = jax.vmap(jax.random.split)(keys)                     # [M, 2]
    shape = mean.shape[1:]
    normal = jax.vmap(lambda k: jax.random.normal(k, shape))(split[:, 1])
    draws = jnp.maximum(jnp.round(mean + jnp.sqrt(mean) * normal), 0.0)
    small = mean < _EXACT_BELOW

    def exact(draws):
        lam = jnp.where(small, mean, 0.0)
        u = jax.vmap(lambda k: jax.random.uniform(k, shape))(split[:, 0])

        def term(k, carry):
            p, cdf, n = carry
            n = n + (u > cdf)
            p = p * lam / k
            return p, cdf + p, n

        p0 = jnp.exp(-lam)
        _, _, n = lax.fori_loop(1, _EXACT_TERMS, term, (p0, p0, jnp.zeros_like(lam)), unroll=4)
        return jnp.where(small, n, draws)

    return lax.cond(jnp.any(small), exact, lambda d: d, draws)


@functools.partial(jax.jit, static_argnames=("num_angles",))
def simulate(phantom_hu: jax.Array, keys: jax.Array, doses: jax.Array, *, pixel_mm: float,
             i0: float, electronic_noise: float = ELECTRONIC_NOISE, num_angles: int = NUM_ANGLES
             ) -> jax.Array:
    """Reconstructed slices at several doses, each with its own noise.

    Args:
      phantom_hu: `[B, N, N]` phantom slices in HU (only the reconstruction circle is scanned).
      keys: `[B]` PRNG keys, one per slice (e.g. from seed, patient and slice).
      doses: `[D]` dose of each output as a fraction of routine dose (1.0 = routine).
      pixel_mm: pixel size in mm.
      i0: routine incident photons per detector bin and view for the AEC reference patient
        (already scaled, see `counts_scale`); a slice gets i0 x `aec_factor`, a dose d of it
        d times that.
      electronic_noise: std of the Gaussian electronic noise in counts.
      num_angles: views over 180 degrees.

    Returns:
      `[D, B, N, N]` float32 HU, clipped to [HU_MIN, HU_MAX]; HU_MIN outside the circle.
    """
    size = phantom_hu.shape[-1]
    angles = jnp.asarray(projector.scanner_angles(num_angles), jnp.float32)
    mask = jnp.asarray(projector.circle_mask(size))
    mu_pixel = jnp.where(mask, mu_from_hu(phantom_hu) * pixel_mm, 0.0)
    line = projector.radon(mu_pixel, angles)                       # [B, N, A]
    i0 = i0 * aec_factor(line)[:, None, None]                      # [B, 1, 1]

    num_doses, batch = doses.shape[0], line.shape[0]
    # One key per (dose, slice); a slice's noise does not depend on what else is in the batch.
    dose_keys = jax.vmap(lambda k: jax.random.split(k, 2 * num_doses))(keys)   # [B, 2D]
    dose_keys = jnp.swapaxes(dose_keys.reshape((batch, num_doses, 2) + dose_keys.shape[2:]), 0, 1)
    incident = i0[None] * doses.reshape(-1, 1, 1, 1)               # [D, B, 1, 1]
    mean = incident * jnp.exp(-line)[None]                         # [D, B, N, A]
    flat = (num_doses * batch,) + line.shape[1:]
    counts = poisson(dose_keys[:, :, 0].reshape((-1,) + dose_keys.shape[3:]), mean.reshape(flat))
    electronic = jax.vmap(lambda k: jax.random.normal(k, line.shape[1:]))(
        dose_keys[:, :, 1].reshape((-1,) + dose_keys.shape[3:]))
    counts = (counts + electronic_noise * electronic).reshape(mean.shape)
    sinograms = jnp.log(incident / jnp.maximum(counts, MIN_COUNTS))
    recon = projector.fbp(sinograms, angles) / pixel_mm
    hu = jnp.clip(hu_from_mu(recon), ct.HU_MIN, ct.HU_MAX)
    return jnp.where(mask, hu, ct.HU_MIN).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("num_angles",))
def noiseless(phantom_hu: jax.Array, *, pixel_mm: float, num_angles: int = NUM_ANGLES
              ) -> jax.Array:
    """FBP of the exact line integrals (no noise), `[B, N, N]` HU, not clipped."""
    size = phantom_hu.shape[-1]
    angles = jnp.asarray(projector.scanner_angles(num_angles), jnp.float32)
    mask = jnp.asarray(projector.circle_mask(size))
    mu_pixel = jnp.where(mask, mu_from_hu(phantom_hu) * pixel_mm, 0.0)
    recon = projector.fbp(projector.radon(mu_pixel, angles), angles) / pixel_mm
    return jnp.where(mask, hu_from_mu(recon), ct.HU_MIN)


def slice_key(seed: int, anatomy_index: int, patient: int, index: int) -> jax.Array:
    """The noise key of one slice, from (seed, anatomy, patient, slice)."""
    key = jax.random.PRNGKey(seed)
    for part in (anatomy_index, patient, index):
        key = jax.random.fold_in(key, part)
    return key


def slice_keys(seed: int, anatomy_index: int, patient: int, count: int) -> jax.Array:
    return jnp.stack([slice_key(seed, anatomy_index, patient, i) for i in range(count)])


def as_numpy(x) -> np.ndarray:
    return np.asarray(jax.device_get(x))
