"""Small denoisers for tests, built from numpy weights (no Flax init: quick to build), and
SciPy's gauss_ri, the independent reference of the known-answer denoiser."""

import numpy as np
from scipy import ndimage

from ldct_jax import models


def scipy_gauss_ri(x: np.ndarray, square: int = 30) -> np.ndarray:
    """gauss_ri's output in float64 for images `[..., H, W]`: SciPy's Gaussian (sigma 1,
    truncate 4; its mode='reflect' is jnp.pad's 'symmetric'), the central `square` zeroed."""
    y = ndimage.gaussian_filter(np.asarray(x, np.float64), sigma=1.0, mode="reflect",
                                truncate=4.0, axes=(-2, -1))
    top, left = (y.shape[-2] - square) // 2, (y.shape[-1] - square) // 2
    y[..., top:top + square, left:left + square] = 0.0
    return y


def small_cnn10(seed: int = 1, features: tuple[int, int] = (8, 8)):
    """A random cnn10 with He-initialised numpy weights."""
    rng = np.random.default_rng(seed)
    shapes = {"conv1": (9, 9, 1, features[0]), "conv2": (3, 3, features[0], features[1]),
              "conv3": (5, 5, features[1], 1)}
    params = {k: {"kernel": (rng.normal(size=s) * np.sqrt(2.0 / np.prod(s[:3]))).astype("f4"),
                  "bias": (0.01 * rng.normal(size=s[-1])).astype("f4")} for k, s in shapes.items()}
    return models.build("cnn10", params, features=features)
