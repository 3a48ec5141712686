"""The params of `nn.Conv`, for modules that compute the same convolution another way.

`gp_conv.Conv`, `col2im_conv.Conv` and `vgg.Conv3x3` replace `nn.Conv` only in how XLA:CPU runs
it; checkpoints, weight import and init stay `nn.Conv`'s through this one declaration.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

NHWC = ("NHWC", "HWIO", "NHWC")  # lax dimension numbers of every convolution here


def declare(module: nn.Module, x: jax.Array, features: int, kernel_size: tuple[int, int],
            kernel_init: Any = nn.initializers.lecun_normal()
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Declares `kernel` (HWIO) and `bias` in `module` as `nn.Conv` does (names, shapes, init).

    Call it from the module's compact `__call__`. Returns `(x, kernel, bias)` promoted to one
    dtype, as `nn.Conv` promotes them.
    """
    kernel = module.param("kernel", kernel_init, (*kernel_size, x.shape[-1], features))
    bias = module.param("bias", nn.initializers.zeros_init(), (features,))
    return nn.dtypes.promote_dtype(x, kernel, bias)
