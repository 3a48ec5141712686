"""CNN-10 (Chen et al. 2017): three convolutions with biases, SAME padding, ReLU between."""

import flax.linen as nn

from ldct_jax.models import col2im_conv


class CNN10(nn.Module):
    """`[B, H, W, 1]` -> `[B, H, W, 1]` in network units.

    conv1 is `col2im_conv.Conv` (the same params and values as `nn.Conv`): its input gradient,
    a 64 -> 1 channel convolution that XLA:CPU runs slowly, is a matmul there instead.
    """

    features: tuple[int, int] = (64, 32)

    @nn.compact
    def __call__(self, x):
        x = nn.relu(col2im_conv.Conv(self.features[0], (9, 9), padding="SAME", name="conv1")(x))
        x = nn.relu(nn.Conv(self.features[1], (3, 3), padding="SAME", name="conv2")(x))
        return nn.Conv(1, (5, 5), padding="SAME", name="conv3")(x)
