"""The denoisers ldct-jax studies, used in HU.

    d = ldct_jax.models.create("cnn10", jax.random.key(0))
    y = d(x)                      # x: [H, W] or [B, H, W] HU -> same shape, HU
    y = d.apply(d.params, x)      # pure form for jit / vmap / grad
    ldct_jax.models.save(d, "runs/cnn10/model"); d = ldct_jax.models.load("runs/cnn10/model")
    d = ldct_jax.models.import_ldctbench("best_SSIM.pt", "cnn10")   # ldct-benchmark weights
"""

from ldct_jax.models.denoiser import Denoiser
from ldct_jax.models.io import import_ldctbench, import_ldctbench_critic, load, save
from ldct_jax.models.registry import ARCHITECTURES, Architecture, architecture, build, create

__all__ = ["ARCHITECTURES", "Architecture", "Denoiser", "architecture", "build", "create",
           "import_ldctbench", "import_ldctbench_critic", "load", "save"]
