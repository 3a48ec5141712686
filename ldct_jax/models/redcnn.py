"""RED-CNN (Chen et al. 2017), as ldct-benchmark builds it (its `redcnn` and DU-GAN's
generator): five 5x5 VALID convolutions, five 5x5 transposed convolutions, three residual
adds, ReLU between and a linear output (the paper's last ReLU dropped for zero-mean inputs)."""

import flax.linen as nn


class REDCNN(nn.Module):
    """`[B, H, W, 1]` -> `[B, H, W, 1]` in network units; `features` is ldct-benchmark's
    `out_ch`.

    The transposed convolutions are stride-1 full convolutions: PyTorch's `ConvTranspose2d`
    weight `[in, out, kh, kw]` is this kernel `[kh, kw, in, out]` flipped in both spatial axes
    (`ldct_jax.models.ldctbench` converts it).
    """

    features: int = 96

    @nn.compact
    def __call__(self, x):
        f = self.features

        def conv(i, v):
            return nn.relu(nn.Conv(f, (5, 5), padding="VALID", name=f"conv{i}")(v))

        def tconv(i, v, out=f):
            return nn.ConvTranspose(out, (5, 5), padding="VALID", name=f"tconv{i}")(v)

        residual_1 = x
        out = conv(2, conv(1, x))
        residual_2 = out
        out = conv(4, conv(3, out))
        residual_3 = out
        out = conv(5, out)
        out = tconv(1, out) + residual_3
        out = tconv(3, nn.relu(tconv(2, nn.relu(out)))) + residual_2
        out = tconv(5, nn.relu(tconv(4, nn.relu(out))), out=1) + residual_1
        return out
