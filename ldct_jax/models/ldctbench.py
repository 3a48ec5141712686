"""Importing ldct-benchmark (PyTorch) checkpoints.

ldct-benchmark (github.com/eeulig/ldct-benchmark) saves `torch.save({"args": Namespace,
"iteration": int, "model_state_dict": state_dict}, "best_SSIM.pt")`; its CNN-10 keys are
`layers.{0,2,4}.{weight,bias}`, its WGAN-VGG generator's `net.{0,2,...,14}.*` and its critic's
`net.{0,2,...,10}.*`, `fc1.*`, `fc2.*`; RED-CNN's (also DU-GAN's generator) `conv{1..5}.*` and
`tconv{1..5}.*`; Q-AE's `encoder.{0..4}.{W,b}_{r,g,b}` and `decoder.*`; the bilateral
filters' `filters.{0,1,2}.{sigma_x,sigma_y,sigma_z,color_sigma}` (scalars); TransCT's
`conv_encoder_lf.{base_encoder.{0,2},lc1.0,lc2.0,transformer_endoder.{0,2,4}}.*`,
`conv_encoder_hf.{0,2,4}.*`, `memory.{0,1,2}.{mha,ff.0,ff.2}.*`,
`decoder.{0,1,2}.{mha1,mha2,ff.0,ff.2}.*` and `combine.block{1,2}.{0,2}.*`. Conv weights are
OIHW, transposed-conv weights IOHW, Linear weights `[out, in]`. `nn.MultiheadAttention` packs
its query, key and value projections into `in_proj_weight` and `in_proj_bias` (or, where the
keys' width differs from the queries', `{q,k,v}_proj_weight` beside the packed bias), with
`out_proj.{weight,bias}`; they are read as the three Linears `{q,k,v}_proj.{weight,bias}`,
the names errors use. Its inputs are normalised as `ct.LDCTBENCH_SHIFT/SCALE`, which is what
every imported architecture uses.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ldct_jax.models import bilateral, torch_state, wgan_vgg
from ldct_jax.models.denoiser import Denoiser, Params
from ldct_jax.models.registry import build, param_shapes, spec
from ldct_jax.models.saved import flat, unflat

def _resnet_layers(blocks: int) -> dict[str, str]:
    out = {"in_conv": "in_conv", "out_conv": "out_conv"}
    for i in range(blocks):  # ResBlock.layers: conv, BN, ReLU, grouped conv, BN, ReLU, conv
        out.update({f"block{i}/{ours}": f"blocks.{i}.layers.{j}" for ours, j in (
            ("conv1", 0), ("bn1", 1), ("conv2", 3), ("bn2", 4), ("conv3", 6))})
    return out


def _transct_layers() -> dict[str, str]:
    out = {"lf_base1": "conv_encoder_lf.base_encoder.0",
           "lf_base2": "conv_encoder_lf.base_encoder.2",
           "lf_c1": "conv_encoder_lf.lc1.0", "lf_c2": "conv_encoder_lf.lc2.0"}
    for i in range(3):  # Sequentials of conv, LeakyReLU: the convs are at 0, 2, 4
        out[f"lf_att{i + 1}"] = f"conv_encoder_lf.transformer_endoder.{2 * i}"
        out[f"hf{i + 1}"] = f"conv_encoder_hf.{2 * i}"
    for b in (1, 2):
        out.update({f"combine{b}_{j + 1}": f"combine.block{b}.{2 * j}" for j in range(2)})
    for stack, attentions in (("memory", ("mha",)), ("decoder", ("mha1", "mha2"))):
        for i in range(3):
            out[f"{stack}{i}/ff/fc1"] = f"{stack}.{i}.ff.0"
            out[f"{stack}{i}/ff/fc2"] = f"{stack}.{i}.ff.2"
            for mha in attentions:
                out.update({f"{stack}{i}/{mha}/{ours}": f"{stack}.{i}.{mha}.{theirs}"
                            for ours, theirs in (("query", "q_proj"), ("key", "k_proj"),
                                                 ("value", "v_proj"), ("out", "out_proj"))})
    return out


_REDCNN = {f"{kind}{i}": f"{kind}{i}" for kind in ("conv", "tconv") for i in range(1, 6)}
# ldct-benchmark state-dict prefix of each of our layers, per architecture.
LAYERS: dict[str, dict[str, str]] = {
    "cnn10": {"conv1": "layers.0", "conv2": "layers.2", "conv3": "layers.4"},
    "wgan_vgg": {f"conv{i + 1}": f"net.{2 * i}" for i in range(8)},
    "redcnn": _REDCNN,
    "dugan": _REDCNN,  # DU-GAN's generator is a RED-CNN
    "qae": {f"{ours}{i + 1}/{c}": f"{theirs}.{i}.{{}}_{c}" for i in range(5) for c in "rgb"
            for ours, theirs in (("enc", "encoder"), ("dec", "decoder"))},
    "resnet": _resnet_layers(10),  # n_blocks is read off a checkpoint (`_layers`)
    "transct": _transct_layers(),
    "bilateral": {f"filter{i + 1}": f"filters.{i}" for i in range(3)},
}
# ldct-benchmark's method names (`args.trainer`) -> ours.
METHODS = {"cnn10": "cnn10", "wganvgg": "wgan_vgg", "redcnn": "redcnn", "dugan": "dugan",
           "qae": "qae", "resnet": "resnet", "transct": "transct", "bilateral": "bilateral"}


def _module_config(name: str, state: Mapping[str, np.ndarray], path: str) -> dict:
    """Constructor arguments for a checkpoint: those ldct-benchmark lets vary, read off the
    weights' shapes, and the bilateral filters' `max_radius`, read off their sigmas."""
    if name in ("redcnn", "dugan") and "conv1.weight" in state:
        return {"features": int(state["conv1.weight"].shape[0])}  # out_ch
    if name == "resnet" and "in_conv.weight" in state:
        blocks = {k.split(".")[1] for k in state if k.startswith("blocks.")}
        # Blocks 0..n-1 (a gap would drop the blocks after it); n_blocks is not saved, so a
        # file missing its last blocks reads as a shallower network.
        n = len(blocks)
        if blocks != {str(i) for i in range(n)}:
            raise ValueError(f"{path}: ResNet blocks {sorted(blocks, key=lambda b: (len(b), b))}"
                             f" are not 0..{n - 1}: a block's weights are missing")
        return {"features": int(state["in_conv.weight"].shape[0]),  # n_channels
                "blocks": n}  # n_blocks
    if name == "bilateral":
        spatial = [state.get(f"{prefix}.{s}") for prefix in LAYERS["bilateral"].values()
                   for s in ("sigma_x", "sigma_y")]
        if all(s is not None and s.size == 1 for s in spatial):
            # The smallest static window that holds every filter's: exact, and no larger.
            return {"max_radius": max(int(bilateral.window_radius(s.reshape(())))
                                      for s in spatial)}
    return {}


def _layers(name: str, config: Mapping) -> Mapping[str, str]:
    return _resnet_layers(config["blocks"]) if name == "resnet" and config else LAYERS[name]
_CRITIC_LAYERS = {**{f"conv{i + 1}": f"net.{2 * i}" for i in range(6)}, "fc1": "fc1",
                  "fc2": "fc2"}


def _transposed(flax_key: str) -> bool:
    """A transposed convolution (weight `[in, out, kh, kw]`): our modules name them tconv<i>
    (RED-CNN) or dec<i> (Q-AE)."""
    return re.fullmatch(r"(tconv|dec)\d+", flax_key.split("/")[0]) is not None


def _torch_shape(flax_key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if flax_key.endswith("kernel") and len(shape) == 4 and _transposed(flax_key):
        return (shape[2], shape[3], shape[0], shape[1])  # HWIO -> IOHW
    if flax_key.endswith("kernel") and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
    if flax_key.endswith("kernel") and len(shape) == 2:
        return (shape[1], shape[0])  # Dense (in, out) -> Linear (out, in)
    # nn.MultiHeadDotProductAttention's projections split the width into heads.
    if flax_key.endswith("/out/kernel") and len(shape) == 3:
        return (shape[2], shape[0] * shape[1])  # (heads, head_dim, out)
    if flax_key.endswith("kernel") and len(shape) == 3:
        return (shape[1] * shape[2], shape[0])  # (in, heads, head_dim)
    if flax_key.endswith("bias") and len(shape) == 2:
        return (shape[0] * shape[1],)  # (heads, head_dim)
    return shape


# Flax parameter -> PyTorch's (BatchNorm's statistics are buffers in its state dict; the
# bilateral filters' sigmas keep their names).
_KINDS = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
          "var": "running_var", **{s: s for s in bilateral.SIGMAS}}


def _kinds(layer: str) -> tuple[str, ...]:
    """The Flax parameters of one of our layers, by its name."""
    if "/bn" in layer:
        return ("scale", "bias", "mean", "var")
    return bilateral.SIGMAS if layer.startswith("filter") else ("kernel", "bias")


def _torch_key(layers: Mapping[str, str], flax_key: str) -> str:
    layer, kind = flax_key.rsplit("/", 1)
    if "{}" in layers[layer]:  # Q-AE's parameters: W_r, b_r, ...
        return layers[layer].format("W" if kind == "kernel" else "b")
    return f"{layers[layer]}.{_KINDS[kind]}"


def _unpacked(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state dict without BatchNorm's step counters (bookkeeping of training, nothing
    inference uses), each attention's query, key and value projections as Linears of their
    own: `P.in_proj_weight` -> `P.{q,k,v}_proj.weight`, `P.q_proj_weight` ->
    `P.q_proj.weight`, `P.in_proj_bias` -> `P.{q,k,v}_proj.bias`."""
    out = {}
    for key, value in state.items():
        prefix, _, kind = key.rpartition(".")
        if kind == "num_batches_tracked":
            continue
        if kind in ("in_proj_weight", "in_proj_bias") and value.ndim and value.shape[0] % 3 == 0:
            for part, piece in zip("qkv", np.split(value, 3)):
                out[f"{prefix}.{part}_proj.{kind[len('in_proj_'):]}"] = piece
        elif kind in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            out[f"{prefix}.{kind[0]}_proj.weight"] = value
        else:
            out[key] = value
    return out


def _convert(state: Mapping[str, np.ndarray], layers: Mapping[str, str],
             expected: Mapping[str, tuple[int, ...]], what: str, path: str,
             hint: str = "") -> dict[str, np.ndarray]:
    """Flat Flax params from a torch state dict, checking keys and shapes."""
    state = _unpacked(state)
    want = {_torch_key(layers, k): (k, _torch_shape(k, s)) for k, s in expected.items()}
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        raise ValueError(f"{path}: not an ldct-benchmark {what} checkpoint: missing keys "
                         f"{missing}, unexpected keys {unexpected}{hint}")
    out = {}
    for tkey, (fkey, shape) in want.items():
        value = state[tkey]
        if value.shape != shape:
            raise ValueError(f"{path}: key {tkey!r} ({what} {fkey}) has shape "
                             f"{tuple(value.shape)}, expected {shape}")
        if value.ndim == 4 and _transposed(fkey):
            # A stride-1 transposed convolution is a full convolution: the kernel flipped.
            value = value.transpose(2, 3, 0, 1)[::-1, ::-1]
        elif value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        elif value.ndim == 2:
            value = value.T
        # Attention's projections: heads split off the width (a no-op for other layers).
        value = value.reshape(expected[fkey])
        out[fkey] = np.array(value, dtype=np.float32, order="C")  # keeps 0-d arrays 0-d
    return out


def _which_architecture(state: Mapping[str, np.ndarray]) -> str:
    state = set(_unpacked(state))
    for name, layers in LAYERS.items():
        keys = {_torch_key(layers, f"{layer}/{kind}") for layer in layers
                for kind in _kinds(layer)}
        if keys == set(state):
            return f" (its keys are those of an ldct-benchmark {name})"
    return ""


def import_ldctbench(path: str, name: Optional[str] = None) -> Denoiser:
    """A denoiser from an ldct-benchmark checkpoint (`.pt` with `model_state_dict`).

    Args:
      path: the `.pt` file (read with `torch.load(..., weights_only=True)`; needs PyTorch).
      name: the architecture: one of `LAYERS` or an ldct-benchmark method name (`wganvgg`);
        by default the method the checkpoint's `args.trainer` names. Constructor arguments
        (RED-CNN's `out_ch`) are read off the weights' shapes; the bilateral filters'
        `max_radius` off their sigmas.

    Returns:
      The denoiser, with ldct-benchmark's normalisation (`ct.LDCTBENCH_SHIFT/SCALE`), giving the
      same HU output as the PyTorch model.

    Raises:
      ValueError naming the missing/unexpected keys, or a key and both shapes, when the
      checkpoint is for another architecture; naming `args.trainer` when no name is given
      and the checkpoint does not say a method this module imports, or when it names another
      method than `name` (DU-GAN's generator has RED-CNN's keys); or naming
      `args.data_norm` when it is not 'meanstd' (its outputs would be off).
    """
    path = os.fspath(path)
    state, args = torch_state.read_with_args(path, "an ldct-benchmark checkpoint")
    norm = getattr(args, "data_norm", "meanstd")
    if norm != "meanstd":
        raise ValueError(f"{path}: trained with args.data_norm={norm!r}; ldct-jax imports "
                         "networks trained on ldct-benchmark's 'meanstd' normalisation only")
    trainer = getattr(args, "trainer", None)
    if name is None:
        if trainer not in METHODS:
            raise ValueError(f"{path}: args.trainer is {trainer!r}; expected one of "
                             f"{sorted(METHODS)} (or pass the architecture's name)")
        name = METHODS[trainer]
    name = METHODS.get(name, name)
    if name not in LAYERS:
        raise ValueError(f"import_ldctbench: no ldct-benchmark mapping for {name!r}; expected "
                         f"one of {sorted(LAYERS)}")
    # DU-GAN's generator has RED-CNN's keys: only args.trainer tells the two apart.
    if trainer in METHODS and METHODS[trainer] != name:
        raise ValueError(f"{path}: a checkpoint of ldct-benchmark's {trainer!r} (args.trainer), "
                         f"not of {name!r}; import it as {METHODS[trainer]!r}")
    config = _module_config(name, state, path)
    if config:
        logging.info("%s: %s with %s (read off the weights)", path, name, config)
    arrays = _convert(state, _layers(name, config), param_shapes(spec(name, **config)), name,
                      path, _which_architecture(state))
    return build(name, unflat(arrays), **config)


def import_ldctbench_critic(path: str, patch_size: int) -> tuple[wgan_vgg.Critic, Params]:
    """The WGAN-VGG critic of an ldct-benchmark `Discriminator(input_size=patch_size)`.

    Args:
      path: a `.pt` holding the critic's state dict (bare, or under `model_state_dict`).
      patch_size: the side of the square patches it was built for (fixes fc1's size).

    Returns:
      `(critic, params)` as `wgan_vgg.init_critic` gives them; scores match PyTorch's.
    """
    path = os.fspath(path)
    critic = wgan_vgg.Critic()
    size = wgan_vgg.critic_output_size(patch_size, critic.strides)
    shapes = jax.eval_shape(critic.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, patch_size, patch_size, 1), jnp.float32))
    expected = {k: tuple(v.shape) for k, v in flat(shapes["params"]).items()}
    state = dict(torch_state.read(path, "an ldct-benchmark critic checkpoint"))
    if "fc1.weight" in state and state["fc1.weight"].ndim == 2:
        # PyTorch flattens C, H, W; Flax flattens H, W, C.
        w = state["fc1.weight"]
        c = critic.features[-1]
        if w.shape[1] == c * size * size:
            state["fc1.weight"] = w.reshape(w.shape[0], c, size, size).transpose(
                0, 2, 3, 1).reshape(w.shape[0], -1)
    arrays = _convert(state, _CRITIC_LAYERS, expected, f"WGAN-VGG critic (patch {patch_size})",
                      path)
    return critic, unflat(arrays)
