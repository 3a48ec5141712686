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


def assert_is_nn_conv(ours, ref, x, rtol: float = 1e-6):
    """`ours` has `ref`'s (an `nn.Conv`) param tree and init, its values (with a nonzero bias)
    and its dtype promotion (bfloat16 input, float32 params -> float32). Returns the params."""
    import jax
    import jax.numpy as jnp

    p, q = ours.init(jax.random.key(2), x), ref.init(jax.random.key(2), x)
    jax.tree.map(np.testing.assert_array_equal, p, q)   # same tree, same init
    q = jax.tree.map(lambda a: a + 0.1, q)              # a nonzero bias too
    np.testing.assert_allclose(ours.apply(q, x), ref.apply(q, x), rtol=rtol, atol=rtol)
    low = x.astype(jnp.bfloat16)
    assert ours.apply(q, low).dtype == ref.apply(q, low).dtype == jnp.float32
    return q
