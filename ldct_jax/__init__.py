"""ldct-jax: finds what low-dose CT denoising networks are blind to."""

__version__ = "0.1.0"
