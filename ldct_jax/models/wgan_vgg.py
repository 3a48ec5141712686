"""WGAN-VGG (Yang et al. 2018): an 8-layer generator and a WGAN critic, as in ldct-benchmark."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class Generator(nn.Module):
    """8 convolutions 3x3 SAME (7 x `features` channels, then 1), ReLU between, linear output."""

    features: int = 32
    depth: int = 8

    @nn.compact
    def __call__(self, x):
        for i in range(self.depth - 1):
            x = nn.relu(nn.Conv(self.features, (3, 3), padding="SAME", name=f"conv{i + 1}")(x))
        return nn.Conv(1, (3, 3), padding="SAME", name=f"conv{self.depth}")(x)


class Critic(nn.Module):
    """6 convolutions 3x3 VALID with LeakyReLU, then dense 1024, LeakyReLU, dense 1.

    `[B, H, W, 1]` (network units) -> `[B]` scores. The dense layer's size follows from the
    patch size fixed at init.
    """

    features: tuple[int, ...] = (64, 64, 128, 128, 256, 256)
    strides: tuple[int, ...] = (1, 2, 1, 2, 1, 2)
    negative_slope: float = 0.01
    hidden: int = 1024

    @nn.compact
    def __call__(self, x):
        for i, (f, s) in enumerate(zip(self.features, self.strides)):
            x = nn.Conv(f, (3, 3), strides=(s, s), padding="VALID", name=f"conv{i + 1}")(x)
            x = nn.leaky_relu(x, self.negative_slope)
        x = x.reshape((x.shape[0], -1))
        x = nn.leaky_relu(nn.Dense(self.hidden, name="fc1")(x), self.negative_slope)
        return nn.Dense(1, name="fc2")(x)[:, 0]


def critic_output_size(patch_size: int, strides=Critic.strides) -> int:
    """Spatial size of the critic's last feature map for a square patch (as in PyTorch)."""
    size = patch_size
    for s in strides:
        size = (size - 3) // s + 1
    if size < 1:
        raise ValueError(f"patch size {patch_size} is too small for the WGAN-VGG critic")
    return size


def init_critic(key, patch_size: int, **config):
    """Returns `(critic_module, params)` for `patch_size` x `patch_size` patches."""
    critic = Critic(**config)
    critic_output_size(patch_size, critic.strides)
    # Jitted: Flax's eager init runs every initialiser op by op (seconds on a CPU).
    x = jnp.zeros((1, patch_size, patch_size, 1), jnp.float32)
    params = jax.jit(critic.init)(key, x)["params"]
    return critic, params
