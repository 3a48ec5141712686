"""Small denoisers for tests, built from numpy weights (no Flax init: quick to build)."""

import numpy as np

from ldct_jax import models


def small_cnn10(seed: int = 1, features: tuple[int, int] = (8, 8)):
    """A random cnn10 with He-initialised numpy weights."""
    rng = np.random.default_rng(seed)
    shapes = {"conv1": (9, 9, 1, features[0]), "conv2": (3, 3, features[0], features[1]),
              "conv3": (5, 5, features[1], 1)}
    params = {k: {"kernel": (rng.normal(size=s) * np.sqrt(2.0 / np.prod(s[:3]))).astype("f4"),
                  "bias": (0.01 * rng.normal(size=s[-1])).astype("f4")} for k, s in shapes.items()}
    return models.build("cnn10", params, features=features)
