"""TransCT (Zhang et al. 2021) as ldct-benchmark builds it (its `transct` method).

A Gaussian blur splits the image into a low- and a high-frequency part. Convolutions encode
the low part into feature maps at 1/8 and 1/16 of the size and, at 1/32, the memory of three
transformer encoder layers. The high part, folded into 256 channels at 1/16 of the size
(space-to-depth by 16) and convolved, passes three decoder layers that attend to themselves
and to that memory. Convolutions and depth-to-space (by 2, then 8) combine the decoded maps
with the low-frequency features into the output; it is not added to the input.

The transformers attend over channels: a `[C, H, W]` map is read as C tokens of H * W
features (the pixels in row-major order), 256 tokens of 256 features in the encoder and 256
tokens of 32 * 32 = 1024 features in the decoder. Those widths fix the input to 512 x 512.
"""

import flax.linen as nn
import numpy as np

from ldct_jax.models.gauss_ri import separable_filter

SIZE = 512
HEADS = 8
BLUR_SIZE, BLUR_SIGMA = 11, 1.5
_SLOPE = 0.2  # every LeakyReLU's negative slope


def blur_kernel(size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """torchvision's `_get_gaussian_kernel1d(size, sigma)`: exp(-t^2 / (2 sigma^2)) at
    t = linspace(-(size - 1) / 2, (size - 1) / 2, size), divided by its sum; float32."""
    t = np.linspace(-(size - 1) / 2, (size - 1) / 2, size)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(x):
    """torchvision's `GaussianBlur(kernel_size=11, sigma=1.5)` on `[B, H, W, C]`.

    torchvision's `gaussian_blur` convolves every channel with the outer product of
    `blur_kernel()` with itself, after padding 5 pixels with `torch.nn.functional.pad`'s
    'reflect' mode (the edge pixel is not repeated: `jnp.pad`'s 'reflect'). `GaussianBlur`
    draws sigma uniformly from `[sigma_min, sigma_max]` at every call; one sigma makes both
    1.5, so the blur is fixed. The 2-D kernel being an outer product, the blur is separable:
    the same result up to float rounding.
    """
    return separable_filter(x, blur_kernel(), "reflect")


def space_to_depth(x, block: int):
    """`[B, H, W, C]` -> `[B, H / block, W / block, block * block * C]`, channel
    `(i * block + j) * C + c` holding pixel `(i, j)` of each block: ldct-benchmark's
    `SpaceToDepth` (TensorFlow's `space_to_depth`)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // block, block, w // block, block, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block, block * block * c)


def depth_to_space(x, block: int):
    """The inverse of `space_to_depth`: ldct-benchmark's `DepthToSpace`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, block, block, c // (block * block))
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * block, w * block, c // (block * block))


def _tokens(x):
    """`[B, H, W, C]` -> `[B, C, H * W]`: PyTorch's `[B, C, H, W].flatten(-2)`."""
    b, h, w, c = x.shape
    return x.reshape(b, h * w, c).transpose(0, 2, 1)


def _maps(t, h: int, w: int):
    """`[B, C, H * W]` -> `[B, H, W, C]`: the inverse of `_tokens`."""
    return t.transpose(0, 2, 1).reshape(t.shape[0], h, w, t.shape[1])


def _conv(x, features: int, kernel: int, stride: int, name: str):
    """Conv2d(kernel, stride, padding kernel // 2) and LeakyReLU, as every one of TransCT's."""
    pad = (kernel // 2, kernel // 2)
    y = nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=(pad, pad),
                name=name)(x)
    return nn.leaky_relu(y, _SLOPE)


class FeedForward(nn.Module):
    """Linear to 8 times the width, LeakyReLU, Linear back, LeakyReLU."""

    @nn.compact
    def __call__(self, x):
        n = x.shape[-1]
        x = nn.leaky_relu(nn.Dense(8 * n, name="fc1")(x), _SLOPE)
        return nn.leaky_relu(nn.Dense(n, name="fc2")(x), _SLOPE)


class EncodeLayer(nn.Module):
    """Self-attention (8 heads) and feed-forward, each added to its input; no normalisation.

    `nn.MultiHeadDotProductAttention` computes what PyTorch's `nn.MultiheadAttention` does:
    per-head projections (query, key, value: `[in, heads, head_dim]`), softmax of
    q k^T / sqrt(head_dim), and the output projection of the concatenated heads.
    """

    @nn.compact
    def __call__(self, x):
        x = x + nn.MultiHeadDotProductAttention(HEADS, name="mha")(x)
        return x + FeedForward(name="ff")(x)


class DecodeLayer(nn.Module):
    """Self-attention, attention to the encoder's memory (its keys and values projected from
    the memory's 256 features to the decoder's width) and feed-forward, each added."""

    @nn.compact
    def __call__(self, x, memory):
        x = x + nn.MultiHeadDotProductAttention(HEADS, name="mha1")(x)
        x = x + nn.MultiHeadDotProductAttention(HEADS, name="mha2")(x, memory)
        return x + FeedForward(name="ff")(x)


class TransCT(nn.Module):
    """`[B, 512, 512, 1]` -> `[B, 512, 512, 1]` in network units.

    Layer names follow ldct-benchmark's modules: `lf_base{1,2}`, `lf_c{1,2}`, `lf_att{1,2,3}`
    (its `conv_encoder_lf`), `hf{1,2,3}` (`conv_encoder_hf`), `memory{0,1,2}`,
    `decoder{0,1,2}` and `combine{1,2}_{1,2}` (`combine.block{1,2}`).
    """

    @nn.compact
    def __call__(self, x):
        if x.shape[1:3] != (SIZE, SIZE):
            raise ValueError(f"transct takes {SIZE} x {SIZE} images only; got "
                             f"{x.shape[1]} x {x.shape[2]} (network input of shape {x.shape})")
        low = gaussian_blur(x)
        high = x - low

        base = _conv(_conv(low, 16, 5, 2, "lf_base1"), 32, 5, 2, "lf_base2")  # 1/4
        low_c1 = _conv(base, 64, 5, 2, "lf_c1")  # 1/8
        low_c2 = _conv(low_c1, 256, 5, 2, "lf_c2")  # 1/16
        att = base
        for i, features in enumerate((64, 128, 256)):
            att = _conv(att, features, 5, 2, f"lf_att{i + 1}")  # 1/32 at the end
        memory = _tokens(att)
        for i in range(3):
            memory = EncodeLayer(name=f"memory{i}")(memory)

        y = space_to_depth(high, 16)
        for i in range(3):
            y = _conv(y, 256, 3, 1, f"hf{i + 1}")
        h, w = y.shape[1:3]
        t = _tokens(y)
        for i in range(3):
            t = DecodeLayer(name=f"decoder{i}")(t, memory)
        y = _maps(t, h, w) + low_c2

        y = y + _conv(_conv(y, 256, 3, 1, "combine1_1"), 256, 3, 1, "combine1_2")
        y = depth_to_space(y, 2) + low_c1
        y = y + _conv(_conv(y, 64, 3, 1, "combine2_1"), 64, 3, 1, "combine2_2")
        return depth_to_space(y, 8)
