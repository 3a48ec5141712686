"""The quadratic autoencoder (Q-AE, Fan et al. 2019) as ldct-benchmark builds it: five
quadratic convolutions and five quadratic transposed convolutions (3x3, 15 channels), two
residual adds inside and the input added to the output, ReLU between."""

import flax.linen as nn


class QuadConv(nn.Module):
    """(W_r * x + b_r)(W_g * x + b_g) + W_b * x^2 + b_b, 3x3, stride 1.

    `padding` is 'same' or 'valid' as in ldct-benchmark. A transposed one (its `QuadDeconv`)
    is the same correlation on the input padded by 2 - its padding, with PyTorch's
    `[in, out, kh, kw]` weights flipped in both spatial axes (`ldct_jax.models.ldctbench`).
    Initialised as ldct-benchmark does: W_r truncated normal (0.1), W_g = W_b = 0, b_g = 1.
    """

    features: int
    padding: str = "same"
    transposed: bool = False

    @nn.compact
    def __call__(self, x):
        pad = 1 if self.padding == "same" else 0
        if self.transposed:
            pad = 2 - pad

        def conv(name, kernel_init, bias_init):
            return nn.Conv(self.features, (3, 3), padding=((pad, pad), (pad, pad)),
                           kernel_init=kernel_init, bias_init=bias_init, name=name)

        zeros, ones = nn.initializers.zeros, nn.initializers.ones
        r = conv("r", nn.initializers.truncated_normal(0.1), zeros)(x)
        g = conv("g", zeros, ones)(x)
        return r * g + conv("b", zeros, zeros)(x * x)


class QAE(nn.Module):
    """`[B, H, W, 1]` -> `[B, H, W, 1]` in network units (H, W >= 3)."""

    features: int = 15

    @nn.compact
    def __call__(self, x):
        f = self.features
        pads = ("same", "same", "same", "same", "valid")
        enc = [QuadConv(f, p, name=f"enc{i + 1}") for i, p in enumerate(pads)]
        dec = [QuadConv(f if i < 4 else 1, p, transposed=True, name=f"dec{i + 1}")
               for i, p in enumerate(pads[::-1])]
        x1 = nn.relu(enc[0](x))
        x2 = nn.relu(enc[1](x1))
        x3 = nn.relu(enc[2](x2))
        x4 = nn.relu(enc[3](x3))
        x5 = nn.relu(enc[4](x4))
        x6 = nn.relu(dec[0](x5) + x4)
        x7 = nn.relu(dec[1](x6))
        x8 = nn.relu(dec[2](x7) + x2)
        x9 = nn.relu(dec[3](x8))
        return dec[4](x9) + x
