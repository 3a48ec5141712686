"""The residual network of ldct-benchmark's `resnet` method: a 9x9 input convolution, residual
blocks (conv 3x3, BatchNorm, ReLU, grouped conv 3x3 in 8 groups, BatchNorm, ReLU, conv 1x1,
plus the identity) and a 3x3 output convolution whose result is subtracted from the input
(the network estimates the noise)."""

import flax.linen as nn
import jax


class FrozenBatchNorm(nn.Module):
    """BatchNorm in inference mode: (x - mean) / sqrt(var + eps) * scale + bias per channel.

    The running statistics are fixed (an imported network's, or 0 and 1 at init) and carry no
    gradient, so that a denoiser is one pure function of its params; training adapts the
    affine part only.
    """

    epsilon: float = 1e-5  # PyTorch's default

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = jax.lax.stop_gradient(self.param("mean", nn.initializers.zeros, (c,)))
        var = jax.lax.stop_gradient(self.param("var", nn.initializers.ones, (c,)))
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias


class ResBlock(nn.Module):
    features: int
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        f = self.features
        y = nn.Conv(f, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x)
        y = nn.relu(FrozenBatchNorm(name="bn1")(y))
        y = nn.Conv(f, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=self.groups,
                    name="conv2")(y)
        y = nn.relu(FrozenBatchNorm(name="bn2")(y))
        return nn.Conv(f, (1, 1), name="conv3")(y) + x


class ResNet(nn.Module):
    """`[B, H, W, 1]` -> `[B, H, W, 1]` in network units; ldct-benchmark's `n_channels` and
    `n_blocks` are `features` and `blocks`."""

    features: int = 128
    blocks: int = 10

    @nn.compact
    def __call__(self, x):
        y = nn.Conv(self.features, (9, 9), padding=((4, 4), (4, 4)), name="in_conv")(x)
        for i in range(self.blocks):
            y = ResBlock(self.features, name=f"block{i}")(y)
        return x - nn.Conv(1, (3, 3), padding=((1, 1), (1, 1)), name="out_conv")(y)
