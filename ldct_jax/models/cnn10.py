"""CNN-10 (Chen et al. 2017): three convolutions with biases, SAME padding, ReLU between."""

import flax.linen as nn


class CNN10(nn.Module):
    """`[B, H, W, 1]` -> `[B, H, W, 1]` in network units."""

    features: tuple[int, int] = (64, 32)

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.features[0], (9, 9), padding="SAME", name="conv1")(x))
        x = nn.relu(nn.Conv(self.features[1], (3, 3), padding="SAME", name="conv2")(x))
        return nn.Conv(1, (5, 5), padding="SAME", name="conv3")(x)
