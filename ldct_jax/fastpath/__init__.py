"""XLA:CPU fast paths: every backend-specific workaround of ldct-jax, behind one switch.

The models are plain Flax (`nn.Conv` everywhere), with forward- and reverse-mode derivatives.
Three things XLA:CPU runs slowly are rewritten here, and only inside the programs that need
the speed (the search and attack steps, the training steps), never in the models themselves:

- **Convolutions** (`convolutions`): inside a function wrapped by it, every `nn.Conv` takes
  the fastest form of the same convolution:
  * a single-channel input under a large kernel (CNN-10's conv1, 9x9): `col2im_conv`, whose
    input gradient is one matmul (a search step at 512x512 is 16 % faster);
  * a map smaller than the kernel (VGG's block 5 on small patches): `small_map_conv`, one
    matmul instead of a window-reversed convolution (a WGAN-VGG step at patch 32 is 2.5x
    faster);
  * with `second_order=True` (the WGAN-GP critic): `gp_conv`, whose second derivatives avoid
    window reversal (the penalty's weight gradient is 5x faster).
  `col2im_conv` and `gp_conv` have custom VJPs: reverse mode only, which is all those steps
  use. The values and derivatives are the plain convolution's (tests/test_fastpath.py).
- **Loops** (`python_loop`): XLA:CPU runs convolutions inside a loop body (`lax.scan`,
  `fori_loop`) several times slower (jax-ml/jax#12868), so on CPU the iterative analyses call
  one jitted step per iteration from Python; on accelerators the iterations are one program.
- **Compiler options** (`compiler_options`): on CPU, training steps compile with YNNPACK
  convolutions off, which Eigen runs faster (a CNN-10 step at patch 64, batch 8, 0.175 ->
  0.12 s; WGAN-VGG 4.7 -> 4.0 s on 2 cores).

They apply on CPUs only: accelerators get the plain programs. The switch: the environment
variable `LDCT_JAX_FAST_PATHS=0` turns all of them off on CPUs too (plain convolutions,
programs with their loops inside, default compiler options: what accelerators run), for
reference runs and debugging. It is read when a program is built (`enabled()`), and the
programs' cache keys include it, so that changing it never reuses a program built the other
way.
"""

from __future__ import annotations

import contextvars
import functools
import os
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
from absl import logging
from jax import lax
from jax.sharding import Mesh

from ldct_jax.fastpath import col2im_conv, gp_conv, small_map_conv

ENV = "LDCT_JAX_FAST_PATHS"

# True while a function wrapped by `convolutions` is being traced.
_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("ldct_jax_fastpath", default=False)

# CNN-10's conv1 (1 -> 64, 9x9) gains from col2im_conv; small kernels (WGAN-VGG's 3x3 conv1)
# do not, since their input gradient is cheap either way.
_COL2IM_MIN_TAPS = 25

# XLA:CPU options for training steps: of XLA's default YNNPACK fusion types (individual dots,
# individual convolutions, reductions) only the dots. Eigen then runs the convolutions, their
# weight gradients above all, faster. The search's 512x512 input gradients gain nothing from it.
_CPU_TRAIN_COMPILER_OPTIONS = (("xla_cpu_experimental_ynn_fusion_type",
                                "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"),)


def enabled(mesh: Optional[Mesh] = None) -> bool:
    """Whether the fast paths apply: the switch is on (`LDCT_JAX_FAST_PATHS` is not '0',
    'false', 'off' or 'no') and the computation runs on CPUs (the devices of `mesh`, by default
    the default backend). Accelerators always get the plain programs."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return False
    if mesh is None:
        return jax.default_backend() == "cpu"
    return all(d.platform == "cpu" for d in mesh.devices.flat)


def python_loop(mesh: Mesh) -> bool:
    """Whether iterations on `mesh` run as one jitted call each (CPU) rather than one loop."""
    return enabled(mesh)


def active() -> bool:
    """Whether the caller runs inside a function wrapped by `convolutions` (at trace time);
    `DenoiserSpec.apply` keys its compiled program on it."""
    return _ACTIVE.get()


def compiler_options(mesh: Mesh) -> Optional[dict[str, str]]:
    """The compiler options of training steps on `mesh` (None: XLA's defaults)."""
    if not enabled(mesh):
        return None
    return supported_cpu_options(dict(_CPU_TRAIN_COMPILER_OPTIONS))


def supported_cpu_options(options: dict[str, str]) -> dict[str, str]:
    """`options` if this jaxlib's CPU compiler accepts them, else `{}` (logged): XLA's debug
    options come and go between versions, and an unknown one fails every compile."""
    return _supported_cpu_options(tuple(sorted(options.items())))


@functools.cache
def _supported_cpu_options(items: tuple[tuple[str, str], ...]) -> dict[str, str]:
    options = dict(items)
    try:
        with jax.default_device(jax.devices("cpu")[0]):
            jax.jit(lambda x: x + 1, compiler_options=options).lower(0.0).compile()
    except jax.errors.JaxRuntimeError as e:
        logging.warning("XLA:CPU does not accept compiler options %s (%s); compiling without "
                        "them", options, str(e).splitlines()[0])
        return {}
    return options


def convolutions(fn: Callable[..., Any], *, second_order: bool = False,
                 enable: Optional[bool] = None) -> Callable[..., Any]:
    """`fn` with every `nn.Conv` it applies computed in its XLA:CPU-fast form.

    Args:
      fn: a function that applies Flax modules (e.g. a denoiser's `apply_net`); not jitted on
        its own (see the module docstring).
      second_order: use `gp_conv` for every convolution (a WGAN-GP critic).
      enable: whether to (default `enabled()`); the analyses pass `enabled(mesh)` as they
        computed it for their program's cache key.

    Returns:
      `fn` itself when not enabled, else a function with the same values and reverse-mode
      derivatives.
    """
    if not (enabled() if enable is None else enable):
        return fn
    interceptor = functools.partial(_intercept, second_order=second_order)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        token = _ACTIVE.set(True)
        try:
            with nn.intercept_methods(interceptor):
                return fn(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)

    return wrapped


def _explicit_pads(padding: Any, spatial: tuple[int, int], kernel: tuple[int, int],
                   strides: tuple[int, int]) -> Optional[tuple[tuple[int, int], ...]]:
    padding = nn.linear.canonicalize_padding(padding, 2)
    if padding in ("SAME", "VALID"):
        return tuple(lax.padtype_to_pads(spatial, kernel, strides, padding))
    if isinstance(padding, str):  # CIRCULAR, REFLECT, CAUSAL: left to nn.Conv
        return None
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _intercept(next_fun, args, kwargs, context, *, second_order: bool):
    """A Flax method interceptor: `nn.Conv.__call__` of a plain 2-D convolution in a fast form."""
    module = context.module
    if (context.method_name != "__call__" or type(module) is not nn.Conv or kwargs
            or len(args) != 1 or not module.has_variable("params", "kernel")):
        return next_fun(*args, **kwargs)
    (x,) = args
    # An int kernel_size is a 1-D convolution in Flax: left to nn.Conv like every other case
    # that is not a plain 2-D one.
    kernel_size = (module.kernel_size,) if isinstance(module.kernel_size, int) \
        else tuple(module.kernel_size)
    one = lambda v: v is None or v == 1 or tuple(v) == (1, 1)  # noqa: E731
    if (x.ndim != 4 or len(kernel_size) != 2 or module.mask is not None
            or module.feature_group_count != 1 or not one(module.input_dilation)
            or not one(module.kernel_dilation) or module.conv_general_dilated is not None
            or module.conv_general_dilated_cls is not None):
        return next_fun(*args, **kwargs)
    strides = (module.strides,) * 2 if isinstance(module.strides, int) else \
        tuple(module.strides or (1, 1))
    pads = _explicit_pads(module.padding, x.shape[1:3], kernel_size, strides)
    if pads is None or min(min(p) for p in pads) < 0:
        return next_fun(*args, **kwargs)

    padded = [n + lo + hi for n, (lo, hi) in zip(x.shape[1:3], pads)]
    if min(p - k for p, k in zip(padded, kernel_size)) < 0:  # nn.Conv raises its own error
        return next_fun(*args, **kwargs)
    kernel = nn.meta.unbox(module.get_variable("params", "kernel"))
    bias = nn.meta.unbox(module.get_variable("params", "bias")) if module.use_bias else None
    if kernel.shape[:2] != kernel_size:  # an unshared (local) kernel
        return next_fun(*args, **kwargs)
    x, kernel, bias = module.promote_dtype(x, kernel, bias, dtype=module.dtype)
    if second_order and module.precision is None:
        y = gp_conv.conv(x, kernel, strides, pads)
    elif second_order or strides != (1, 1):
        return next_fun(*args, **kwargs)
    elif small_map_conv.applies(x.shape[1], x.shape[2], kernel_size):
        y = small_map_conv.conv(x, kernel, pads, module.precision)
    elif (x.shape[-1] == 1 and kernel_size[0] * kernel_size[1] >= _COL2IM_MIN_TAPS
          and module.precision is None):
        y = col2im_conv.conv(x, kernel, pads)
    else:
        return next_fun(*args, **kwargs)
    return y if bias is None else y + bias
