"""The denoisers ldct-jax studies, used in HU: a hashable spec plus params.

    d = ldct_jax.models.create("cnn10", jax.random.key(0))   # Denoiser(spec, params)
    y = d(x)                                # x: [H, W] or [B, H, W] HU -> same shape, HU
    y = d.spec.apply(d.params, x)           # pure form: one compiled program per spec
    ldct_jax.models.save(d, "runs/cnn10/model"); d = ldct_jax.models.load("runs/cnn10/model")
    d = ldct_jax.models.import_ldctbench("best_SSIM.pt")   # ldct-benchmark weights, any method
                                                            # it names that ldct-jax has
"""

from ldct_jax.models.denoiser import Denoiser, DenoiserSpec, denoise
from ldct_jax.models.ldctbench import import_ldctbench, import_ldctbench_critic
from ldct_jax.models.registry import (ALIASES, ARCHITECTURES, Architecture, architecture, build,
                                      canonical, check_input_size, create, param_shapes, spec)
from ldct_jax.models.saved import load, save

__all__ = ["ALIASES", "ARCHITECTURES", "Architecture", "Denoiser", "DenoiserSpec", "architecture",
           "build", "canonical", "check_input_size", "create", "denoise", "import_ldctbench",
           "import_ldctbench_critic", "load", "param_shapes", "save", "spec"]
