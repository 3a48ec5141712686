"""Denoisers against PyTorch (ldct-benchmark layout), SciPy and known answers; save/load/import."""

import argparse
import functools
import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from ldct_jax import ct, models
from ldct_jax.models import bilateral, gauss_ri, ldctbench, registry, transct, vgg_weights, wgan_vgg
from tests import nets, optional

# transct takes 512 x 512 images only: instead of these per-architecture tests on small
# images it has its own (test_*transct*), sized to its cost.
NAMES = ("cnn10", "wgan_vgg", "gauss_ri", "redcnn", "dugan", "qae", "resnet", "bilateral")
H, W = 40, 44  # >= 30 for gauss_ri's square; not square, to catch H/W mix-ups


def _hu(seed, shape=(2, H, W)):
    """Random HU images spanning air to bone."""
    return np.random.RandomState(seed).uniform(-1024.0, 1500.0, shape).astype(np.float32)


def _random_params(name, seed, **config):
    """He-normal conv kernels, LeCun-normal dense kernels (their inputs: every axis but the last)
    and small random biases in the architecture's shapes (no compile). Q-AE's products of ten
    quadratic layers overflow at that scale: its own init (b_g = 1) with every parameter moved
    by 0.01 noise instead. Bilateral filters: spatial sigmas of 0.6 to 1.8 pixels (windows 5
    to 9), range sigmas of 0.05 to 0.3 (25 to 150 HU)."""
    module = models.architecture(name).module(**config)
    x = registry.init_input(name)
    rng = np.random.default_rng(seed)

    def normal(shape):  # float32 draws: TransCT has 79 M params
        return rng.standard_normal(shape, np.float32)

    if name == "qae":
        params = jax.jit(module.init)(jax.random.key(seed), jnp.zeros(x.shape, x.dtype))
        return jax.tree.map(lambda a: a + jnp.asarray(0.01 * normal(a.shape)), params["params"])
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)

    def draw(path, a):
        if path[-1].key == "color_sigma":
            return np.float32(rng.uniform(0.05, 0.3))
        if path[-1].key.startswith("sigma_"):
            return np.float32(rng.uniform(0.6, 1.8))
        if a.ndim == 4:
            return normal(a.shape) * np.float32(np.sqrt(2.0 / np.prod(a.shape[:3])))
        if path[-1].key == "kernel":
            return normal(a.shape) * np.float32(np.sqrt(1.0 / np.prod(a.shape[:-1])))
        if path[-1].key == "var":  # BatchNorm's running variance
            return np.float32(0.5) + rng.random(a.shape, np.float32)
        return np.float32(0.1) * normal(a.shape)

    return jax.tree_util.tree_map_with_path(lambda p, a: jnp.asarray(draw(p, a)),
                                            shapes.get("params", {}))


@pytest.fixture(scope="module")
def denoisers():
    return {n: models.build(n, _random_params(n, i)) for i, n in enumerate(NAMES)}


@pytest.fixture(scope="module")
def apply_jit(denoisers):
    """The spec's `apply`: one compiled program per architecture, shared by every params."""
    return {n: d.spec.apply for n, d in denoisers.items()}


# ---------------------------------------------------------------------------------------------
# Parity with PyTorch and ldct-benchmark import


def _torch():
    torch = pytest.importorskip("torch")
    from benchmarks import torch_twins
    return torch, torch_twins


def _reference():
    """`benchmarks.ldctbench_reference`, where ldct-benchmark is installed (pip install
    --no-deps ldct-benchmark)."""
    _torch()
    optional.require("ldctbench", "pip install --no-deps ldct-benchmark")
    from benchmarks import ldctbench_reference
    return ldctbench_reference


def _ldctbench(method):
    """The real package's network module (over a stand-in where it needs one)."""
    return _reference().network(method)


def _write_ldctbench_checkpoint(torch, model, path):
    """As ldct-benchmark's BaseTrainer.save_checkpoint writes it (args are a Namespace)."""
    args = argparse.Namespace(lr=1e-4, patchsize=64, devices=0, optimizer="adam")
    torch.save({"args": args, "iteration": 1000, "model_state_dict": model.state_dict()}, path)


def _torch_hu(torch, model, x_hu):
    """ldct-benchmark's pipeline: raw = HU + 1024, normalised, network, back to HU."""
    net = (np.float64(x_hu) + 1024.0 - ct.LDCTBENCH_MEAN_RAW) / ct.LDCTBENCH_SCALE
    with torch.no_grad():
        y = model(torch.from_numpy(net.astype(np.float32))[:, None]).numpy()[:, 0]
    return y * ct.LDCTBENCH_SCALE + ct.LDCTBENCH_MEAN_RAW - 1024.0


@pytest.mark.parametrize("name,cls", [("cnn10", "CNN10"), ("wgan_vgg", "Generator")])
def test_import_ldctbench_matches_pytorch_in_hu(name, cls, denoisers, apply_jit, tmp_path):
    torch, tden = _torch()
    torch.manual_seed(1)
    model = getattr(tden, cls)().eval()
    _write_ldctbench_checkpoint(torch, model, tmp_path / "best_SSIM.pt")
    d = models.import_ldctbench(str(tmp_path / "best_SSIM.pt"), name)
    assert (d.spec.name, d.spec.shift, d.spec.scale) == (name, ct.LDCTBENCH_SHIFT,
                                                         ct.LDCTBENCH_SCALE)
    x = _hu(1)
    ref = _torch_hu(torch, model, x)
    assert np.abs(ref - x).max() > 10.0  # the network does something
    assert d.spec == denoisers[name].spec
    assert np.abs(np.asarray(apply_jit[name](d.params, x)) - ref).max() < 1e-3
    # Exact import: every weight is the PyTorch one, only transposed (OIHW -> HWIO).
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    for layer, prefix in ldctbench.LAYERS[name].items():
        np.testing.assert_array_equal(d.params[layer]["kernel"],
                                      state[prefix + ".weight"].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(d.params[layer]["bias"], state[prefix + ".bias"])


def test_import_ldctbench_critic_scores_match_pytorch(tmp_path):
    torch, tden = _torch()
    torch.manual_seed(2)
    patch = 40  # last feature map 2x2: exercises PyTorch's (C, H, W) flattening order
    model = tden.Critic(patch).eval()
    assert model.output_size == wgan_vgg.critic_output_size(patch) == 2
    torch.save({"model_state_dict": model.state_dict()}, tmp_path / "critic.pt")
    critic, params = models.import_ldctbench_critic(str(tmp_path / "critic.pt"), patch)
    x = np.random.RandomState(3).randn(3, patch, patch).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[:, None]).numpy()[:, 0]
    ours = np.asarray(jax.jit(critic.apply)({"params": params}, x[..., None]))
    assert ours.shape == (3,)
    assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    # Same tree as init_critic gives, so it drops into the WGAN trainer.
    fresh = jax.eval_shape(lambda k: wgan_vgg.init_critic(k, patch)[1], jax.random.key(0))
    assert jax.tree.map(jnp.shape, fresh) == jax.tree.map(jnp.shape, params)


def test_import_ldctbench_errors(tmp_path):
    torch, tden = _torch()
    model = tden.CNN10()
    _write_ldctbench_checkpoint(torch, model, tmp_path / "cnn10.pt")
    with pytest.raises(ValueError, match=r"not an ldct-benchmark wgan_vgg checkpoint: missing "
                       r"keys \['net\.0\.bias'.*unexpected keys \['layers\.0\.bias'.*cnn10"):
        models.import_ldctbench(str(tmp_path / "cnn10.pt"), "wgan_vgg")

    state = model.state_dict()
    del state["layers.2.bias"]
    torch.save({"model_state_dict": state}, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing keys \['layers\.2\.bias'\], unexpected keys "
                       r"\[\]"):
        models.import_ldctbench(str(tmp_path / "missing.pt"), "cnn10")

    state = model.state_dict()
    state["layers.0.weight"] = torch.zeros(32, 1, 9, 9)
    torch.save({"model_state_dict": state}, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"'layers\.0\.weight' \(cnn10 conv1/kernel\) has shape "
                       r"\(32, 1, 9, 9\), expected \(64, 1, 9, 9\)"):
        models.import_ldctbench(str(tmp_path / "shape.pt"), "cnn10")

    # Saved from nn.DataParallel without unwrapping: keys start with 'module.'.
    torch.save({"model_state_dict": {"module." + k: v for k, v in model.state_dict().items()}},
               tmp_path / "parallel.pt")
    d = models.import_ldctbench(str(tmp_path / "parallel.pt"), "cnn10")
    np.testing.assert_array_equal(d.params["conv3"]["bias"], model.layers[4].bias.detach())

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: could not read as a PyTorch checkpoint"):
        models.import_ldctbench(str(tmp_path / "junk.pt"), "cnn10")
    with pytest.raises(ValueError, match="no ldct-benchmark mapping for 'gauss_ri'"):
        models.import_ldctbench(str(tmp_path / "cnn10.pt"), "gauss_ri")
    with pytest.raises(ValueError, match=r"critic \(patch 64\).*fc1\.weight"):
        models.import_ldctbench_critic(str(tmp_path / "shape.pt"), 64)
    with pytest.raises(ValueError, match=r"key 'fc1\.weight' .* has shape \(1024, 256\), "
                       r"expected \(1024, 2304\)"):
        critic = tden.Critic(32)  # 1x1 last map: its fc1 does not fit 40x40 patches
        torch.save(critic.state_dict(), tmp_path / "critic32.pt")
        models.import_ldctbench_critic(str(tmp_path / "critic32.pt"), 48)


@pytest.mark.parametrize("trainer", ["cnn10", "wganvgg"])
def test_ldctbench_cnn10_and_wganvgg_import_by_method_within_0_05_hu(trainer, tmp_path):
    """The two networks ldct-jax also trains, against the real package's classes (the tests
    above use the repository's PyTorch twins)."""
    torch, _ = _torch()
    network = _ldctbench(trainer)
    torch.manual_seed(5)
    model = network.Model(argparse.Namespace()).eval()
    torch.save({"args": argparse.Namespace(trainer=trainer), "iteration": 10,
                "model_state_dict": model.state_dict()}, tmp_path / "best_SSIM.pt")
    d = models.import_ldctbench(str(tmp_path / "best_SSIM.pt"))
    assert d.spec.name == ldctbench.METHODS[trainer]
    x = _hu(6, (1, 64, 64))
    ref = _torch_hu(torch, model, x)
    assert np.abs(ref - x).max() > 10.0
    assert np.abs(np.asarray(d(x)) - ref).max() <= 0.05


@pytest.mark.parametrize("trainer,out_ch", [("redcnn", 96), ("dugan", 32)])
def test_ldctbench_redcnn_imports_by_its_method_name_within_0_05_hu(trainer, out_ch, tmp_path):
    """Against the real package's class (pip install --no-deps ldct-benchmark): RED-CNN and
    DU-GAN's generator (a RED-CNN), saved as ldct-benchmark's trainer saves them, imported
    without naming the method; out_ch is read off the weights."""
    torch, _ = _torch()
    network = _ldctbench("redcnn")
    torch.manual_seed(2)
    model = network.Model(argparse.Namespace(), out_ch=out_ch).eval()
    args = argparse.Namespace(trainer=trainer, lr=1e-4, patchsize=64)
    torch.save({"args": args, "iteration": 10, "model_state_dict": model.state_dict()},
               tmp_path / "best_SSIM.pt")
    d = models.import_ldctbench(str(tmp_path / "best_SSIM.pt"))
    assert d.spec.name == trainer and d.spec.module.features == out_ch
    x = _hu(3, (1, 64, 64))
    ref = _torch_hu(torch, model, x)
    assert np.abs(ref - x).max() > 10.0  # the network does something
    assert np.abs(np.asarray(d(x)) - ref).max() <= 0.05


def test_ldctbench_qae_imports_within_0_05_hu(tmp_path):
    """Q-AE against the real package's class, its zero-initialised W_g, W_b, b_r, b_b made
    non-zero so that every quadratic term counts."""
    torch, _ = _torch()
    model = _reference().model("qae", 3)
    torch.save({"args": argparse.Namespace(trainer="qae"), "iteration": 10,
                "model_state_dict": model.state_dict()}, tmp_path / "best_SSIM.pt")
    d = models.import_ldctbench(str(tmp_path / "best_SSIM.pt"))
    assert d.spec.name == "qae"
    x = _hu(4, (1, 64, 64))
    ref = _torch_hu(torch, model, x)
    assert np.abs(ref - x).max() > 10.0
    assert np.abs(np.asarray(d(x)) - ref).max() <= 0.05


def test_ldctbench_resnet_imports_with_its_batchnorm_statistics_within_0_05_hu(tmp_path):
    """ResNet (128 channels, 10 blocks) against the real package's class, BatchNorm in
    inference mode with random running statistics and affine parameters."""
    torch, _ = _torch()
    model = _reference().model("resnet", 4)
    torch.save({"args": argparse.Namespace(trainer="resnet"), "iteration": 10,
                "model_state_dict": model.state_dict()}, tmp_path / "best_SSIM.pt")
    d = models.import_ldctbench(str(tmp_path / "best_SSIM.pt"))
    assert d.spec.name == "resnet"
    assert (d.spec.module.features, d.spec.module.blocks) == (128, 10)
    x = _hu(5, (1, 64, 64))
    ref = _torch_hu(torch, model, x)
    assert np.abs(ref - x).max() > 10.0
    assert np.abs(np.asarray(d(x)) - ref).max() <= 0.05


@pytest.fixture
def transct_network():
    """ldct-benchmark's `transct` network module, imported over a stand-in for
    `torchvision.transforms.GaussianBlur` where torchvision is missing (it cannot be installed
    beside the PyTorch these tests run with: no CPU build for torch 2.13)."""
    return _ldctbench("transct")


@pytest.mark.slow
def test_ldctbench_transct_imports_by_its_method_name_within_0_05_hu(tmp_path):
    """TransCT against the real package's class (torchvision's Gaussian blur stood in for
    where torchvision is missing, as in `transct_network`) on a 512 x 512 image, its
    biases (the attention's are zero-initialised) moved by noise so that every one counts;
    saved as ldct-benchmark's trainer saves it and imported without naming the method."""
    torch, _ = _torch()
    model = _reference().model("transct", 6)
    torch.save({"args": argparse.Namespace(trainer="transct"), "iteration": 10,
                "model_state_dict": model.state_dict()}, tmp_path / "best_SSIM.pt")
    d = models.import_ldctbench(str(tmp_path / "best_SSIM.pt"))
    assert d.spec.name == "transct"
    x = _hu(7, (1, transct.SIZE, transct.SIZE))
    ref = _torch_hu(torch, model, x)
    assert np.abs(ref - x).max() > 10.0
    assert np.abs(np.asarray(d(x)) - ref).max() <= 0.05


def test_transct_checkpoint_keys(transct_network, tmp_path):
    """The key layout of ldct-benchmark's TransCT (its attention's packed projections among
    them) against ours, and wrong checkpoints named by their keys; built on PyTorch's meta
    device and saved with 3-element tensors (packed projections split in three), since only
    the names matter here."""
    torch, _ = _torch()
    with torch.device("meta"):
        model = transct_network.Model(argparse.Namespace())
    shapes = models.param_shapes(models.spec("transct"))
    assert sum(int(np.prod(s)) for s in shapes.values()) == sum(
        p.numel() for p in model.parameters())
    state = {k: torch.zeros(3) for k in model.state_dict()}
    assert "decoder.0.mha2.q_proj_weight" in state and "memory.0.mha.in_proj_weight" in state
    torch.save({"model_state_dict": state}, tmp_path / "transct.pt")  # no args.trainer to check
    with pytest.raises(ValueError, match=r"not an ldct-benchmark cnn10 checkpoint: missing keys "
                       r"\['layers\.0\.bias'.*unexpected keys \['combine\.block1\.0\.bias'.*"
                       r"its keys are those of an ldct-benchmark transct"):
        models.import_ldctbench(str(tmp_path / "transct.pt"), "cnn10")
    del state["decoder.2.mha2.in_proj_bias"]
    torch.save({"args": argparse.Namespace(trainer="transct"), "model_state_dict": state},
               tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"not an ldct-benchmark transct checkpoint: missing "
                       r"keys \['decoder\.2\.mha2\.k_proj\.bias', 'decoder\.2\.mha2\.q_proj\.bias'"
                       r", 'decoder\.2\.mha2\.v_proj\.bias'\], unexpected keys \[\]"):
        models.import_ldctbench(str(tmp_path / "missing.pt"))


def test_transct_takes_512_x_512_only():
    """Any other size fails while tracing, before anything is computed."""
    s = models.spec("transct")
    assert registry.init_input("transct").shape == (1, 512, 512, 1)
    params = jax.eval_shape(s.module.init, jax.random.key(0), registry.init_input("transct"))
    out = jax.eval_shape(s.apply, params["params"], jax.ShapeDtypeStruct((2, 512, 512),
                                                                         jnp.float32))
    assert out.shape == (2, 512, 512)
    with pytest.raises(ValueError, match=r"transct takes 512 x 512 images only; got 64 x 64 "
                       r"\(network input of shape \(1, 64, 64, 1\)\)"):
        jax.eval_shape(s.apply, params["params"], jax.ShapeDtypeStruct((64, 64), jnp.float32))


@pytest.mark.slow
def test_transct_jvp_equals_vjp_under_jit_and_vmap():
    """TransCT in both modes, per 512 x 512 image under vmap: <u, J v> (jvp) == <J^T u, v>
    (vjp), one program for both (each TransCT program takes seconds to compile)."""
    d = models.build("transct", _random_params("transct", 8))
    rs = np.random.RandomState(13)
    x = jnp.asarray(_hu(14, (1, transct.SIZE, transct.SIZE)))
    v, noise = (jnp.asarray(rs.randn(*x.shape).astype(np.float32)) for _ in range(2))
    f = functools.partial(d.spec.apply, d.params)

    def both(x, v, noise):
        y, jv = jax.jvp(f, (x,), (v,))
        u = jv + noise  # <u, J v> far from 0
        return y, jv, u, jax.vjp(f, x)[1](u)[0]

    y, jv, u, jtu = jax.jit(jax.vmap(both))(x, 100.0 * v, noise)
    assert np.abs(np.asarray(y) - np.asarray(x)).max() > 10.0
    assert np.all(np.isfinite(jtu)) and np.abs(jtu).max() > 0
    lhs = np.vdot(np.float64(u), np.float64(jv))
    rhs = np.vdot(np.float64(jtu), 100.0 * np.float64(v))
    assert lhs > 0 and abs(lhs - rhs) <= 1e-4 * abs(lhs)


def test_ldctbench_bilateral_imports_within_0_05_hu(tmp_path):
    """The real package's `bilateral` network, with a stand-in for `bilateral_filter_layer`
    where it is missing (its `BilateralFilter3d` needs CUDA to build): a plain PyTorch version
    of the package's CPU kernel with the same parameter names
    (`benchmarks.ldctbench_reference`). Sigmas differ per axis and filter, windows 5 to 11,
    range sigmas 25 to 150 HU on an image with edges and noise."""
    torch, tden = _torch()
    model = _reference().model("bilateral")  # BILATERAL_SIGMAS
    torch.save({"args": argparse.Namespace(trainer="bilateral"), "iteration": 10,
                "model_state_dict": model.state_dict()}, tmp_path / "best_SSIM.pt")
    d = models.import_ldctbench(str(tmp_path / "best_SSIM.pt"))
    assert d.spec.name == "bilateral" and d.spec.module.max_radius == 5  # sigma 2.2: 11 px
    rows, cols = np.mgrid[:64, :64]
    x = np.where((rows - 30) ** 2 + (cols - 36) ** 2 < 18 ** 2, 120.0, -40.0)
    x = (x + np.where(cols > 50, 300.0, 0.0)
         + 40.0 * np.random.RandomState(7).randn(64, 64)).astype(np.float32)[None]
    ref = _torch_hu(torch, model, x)
    assert np.abs(ref - x).max() > 10.0
    assert np.abs(np.asarray(d(x)) - ref).max() <= 0.05

    # Wrong checkpoints name their keys, and which method's they are.
    torch.save({"model_state_dict": tden.CNN10().state_dict()}, tmp_path / "cnn10.pt")
    with pytest.raises(ValueError, match=r"not an ldct-benchmark bilateral checkpoint: missing "
                       r"keys \['filters\.0\.color_sigma'.*unexpected keys \['layers\.0\.bias'"):
        models.import_ldctbench(str(tmp_path / "cnn10.pt"), "bilateral")
    torch.save(model.state_dict(), tmp_path / "bare.pt")  # without args.trainer
    with pytest.raises(ValueError, match=r"cnn10 checkpoint: missing keys \['layers\.0\.bias'.*"
                       r"unexpected keys \['filters\.0\.color_sigma'.*ldct-benchmark bilateral\)"):
        models.import_ldctbench(str(tmp_path / "bare.pt"), "cnn10")
    with pytest.raises(ValueError, match=r"best_SSIM\.pt: a checkpoint of ldct-benchmark's "
                       r"'bilateral' \(args\.trainer\), not of 'cnn10'"):
        models.import_ldctbench(str(tmp_path / "best_SSIM.pt"), "cnn10")


def test_import_ldctbench_names_an_unknown_method(tmp_path):
    torch, tden = _torch()
    torch.save({"args": argparse.Namespace(trainer="unet"), "iteration": 1,
                "model_state_dict": tden.CNN10().state_dict()}, tmp_path / "t.pt")
    with pytest.raises(ValueError, match=r"t\.pt: args\.trainer is 'unet'; expected one of "
                       r"\['bilateral', 'cnn10', 'dugan', 'qae', 'redcnn', 'resnet', 'transct', "
                       r"'wganvgg'\]"):
        models.import_ldctbench(str(tmp_path / "t.pt"))
    d = models.import_ldctbench(str(tmp_path / "t.pt"), "cnn10")  # an explicit name still works
    assert d.spec.name == "cnn10"
    torch.save({"args": argparse.Namespace(trainer="wganvgg"), "iteration": 1,
                "model_state_dict": tden.Generator().state_dict()}, tmp_path / "w.pt")
    assert models.import_ldctbench(str(tmp_path / "w.pt")).spec.name == "wgan_vgg"
    torch.save({"args": argparse.Namespace(trainer="cnn10", data_norm="minmax"), "iteration": 1,
                "model_state_dict": tden.CNN10().state_dict()}, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"m\.pt: trained with args\.data_norm='minmax'"):
        models.import_ldctbench(str(tmp_path / "m.pt"))


def test_import_ldctbench_refuses_what_would_load_wrongly(tmp_path):
    torch, tden = _torch()
    state = tden.CNN10().state_dict()

    def save(name, obj):
        torch.save(obj, tmp_path / name)
        return str(tmp_path / name)

    # DU-GAN's generator has RED-CNN's keys: an explicit name must agree with args.trainer.
    dugan = save("dugan.pt", {"args": argparse.Namespace(trainer="dugan"),
                              "model_state_dict": _reference().model("redcnn").state_dict()})
    with pytest.raises(ValueError, match=r"dugan\.pt: a checkpoint of ldct-benchmark's 'dugan' "
                       r"\(args\.trainer\), not of 'redcnn'; import it as 'dugan'"):
        models.import_ldctbench(dugan, "redcnn")
    assert models.import_ldctbench(dugan, "dugan").spec.name == "dugan"
    w = save("w.pt", {"args": argparse.Namespace(trainer="wganvgg"),
                      "model_state_dict": tden.Generator().state_dict()})
    assert models.import_ldctbench(w, "wganvgg").spec.name == "wgan_vgg"

    nan = dict(state, **{"layers.2.bias": state["layers.2.bias"].clone()})
    nan["layers.2.bias"][3] = float("nan")
    with pytest.raises(ValueError, match=r"nan\.pt: non-finite params \(NaN/inf count per key: "
                       r"\{'layers\.2\.bias': 1\}\)"):
        models.import_ldctbench(save("nan.pt", nan), "cnn10")

    # args saved as a dict are read as the Namespace they stand for; anything else is refused.
    as_dict = save("d.pt", {"args": {"trainer": "cnn10", "data_norm": "minmax"},
                            "model_state_dict": state})
    with pytest.raises(ValueError, match=r"d\.pt: trained with args\.data_norm='minmax'"):
        models.import_ldctbench(as_dict)
    with pytest.raises(ValueError, match=r"l\.pt: 'args' is a list; expected ldct-benchmark's "
                       r"argparse\.Namespace"):
        models.import_ldctbench(save("l.pt", {"args": ["cnn10"], "model_state_dict": state}))

    with pytest.raises(ValueError, match=r"s\.pt: expected an ldct-benchmark checkpoint .*, got "
                       r"a dict with keys \['state_dict', 'epoch'\] \('state_dict' holds a state "
                       r"dict of 6 tensors: save it alone or under 'model_state_dict'\)"):
        models.import_ldctbench(save("s.pt", {"state_dict": state, "epoch": 3}), "cnn10")

    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(ValueError, match=r"cut\.safetensors: could not read as a \.safetensors"):
        models.import_ldctbench(str(tmp_path / "cut.safetensors"), "cnn10")

    # ldct-benchmark does not save n_blocks: a gap in the blocks is all that can be caught.
    resnet = {k: v for k, v in _reference().model("resnet", 4).state_dict().items()
              if not k.startswith("blocks.3.")}
    with pytest.raises(ValueError, match=r"r\.pt: ResNet blocks \['0', '1', '2', '4', .*'9'\] "
                       r"are not 0\.\.8: a block's weights are missing"):
        models.import_ldctbench(save("r.pt", resnet), "resnet")


def test_import_ldctbench_without_torch_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match=r"needs PyTorch \(pip install 'ldct-jax\[torch\]'\)"):
        models.import_ldctbench(str(tmp_path / "best_SSIM.pt"), "cnn10")


# ---------------------------------------------------------------------------------------------
# gauss_ri: the denoiser whose invariance is known exactly

TOP, LEFT, SIDE, RADIUS = (H - 30) // 2, (W - 30) // 2, 30, 4


def test_gauss_ri_zero_square_and_scipy_gaussian_outside(denoisers, apply_jit):
    d = denoisers["gauss_ri"]
    x = _hu(4) * 3.0  # any input, even far outside the HU range
    y = np.asarray(apply_jit["gauss_ri"](d.params, x))
    inside = np.zeros((H, W), bool)
    inside[TOP:TOP + SIDE, LEFT:LEFT + SIDE] = True
    assert np.all(y[:, inside] == 0.0)
    ref = nets.scipy_gauss_ri(x)
    assert np.abs(y[:, ~inside] - ref[:, ~inside]).max() < 1e-3


def test_gauss_ri_gradient_exactly_zero_deep_inside_the_square(denoisers):
    d = denoisers["gauss_ri"]
    w = np.random.RandomState(5).uniform(0.5, 1.5, (H, W)).astype(np.float32)
    g = np.asarray(jax.jit(jax.grad(lambda x: jnp.sum(w * d(x))))(jnp.asarray(_hu(6)[0])))
    deep = g[TOP + RADIUS:TOP + SIDE - RADIUS, LEFT + RADIUS:LEFT + SIDE - RADIUS]
    assert deep.shape == (SIDE - 2 * RADIUS, SIDE - 2 * RADIUS) and np.all(deep == 0.0)
    # ... and not deeper than needed: the ring just inside the radius still reaches outside.
    assert np.all(g[TOP + RADIUS - 1, LEFT + RADIUS:LEFT + SIDE - RADIUS] != 0.0)
    assert np.all(g[TOP + RADIUS:TOP + SIDE - RADIUS, LEFT + SIDE - RADIUS] != 0.0)


@pytest.mark.parametrize("jnp_mode, scipy_mode", [("symmetric", "reflect"), ("reflect", "mirror")])
def test_separable_filter_is_scipys_and_its_derivatives_are_its_matrix(jnp_mode, scipy_mode):
    """gauss_ri's and TransCT's blur against SciPy's `correlate1d`: its values, and as a matrix
    A (SciPy's filter of every unit image), forward mode gives A t and reverse mode A^T g."""
    k = gauss_ri.gaussian_kernel(1.0, 4.0)
    h, w = 12, 10
    def scipy_filter(x):
        for axis in (-2, -1):
            x = ndimage.correlate1d(x, np.float64(k), axis=axis, mode=scipy_mode)
        return x
    a = scipy_filter(np.eye(h * w).reshape(h * w, h, w)).reshape(h * w, h * w).T  # y = A x
    rng = np.random.default_rng(0)
    x, t, g = (rng.normal(size=(2, h, w)).astype(np.float32) for _ in range(3))
    filt = jax.jit(lambda x: gauss_ri.separable_filter(x[..., None], k, jnp_mode)[..., 0])
    y, jt = jax.jvp(filt, (x,), (t,))
    gt = jax.jit(lambda x, g: jax.vjp(filt, x)[1](g)[0])(x, g)
    flat = lambda v: np.float64(v).reshape(2, h * w)
    np.testing.assert_allclose(flat(y), flat(x) @ a.T, atol=1e-6)
    np.testing.assert_allclose(flat(jt), flat(t) @ a.T, atol=1e-6)
    np.testing.assert_allclose(flat(gt), flat(g) @ a, atol=1e-6)
    with pytest.raises(ValueError, match="symmetric odd-length kernel, got 4 taps"):
        gauss_ri.separable_filter(x[..., None], np.ones(4, np.float32), jnp_mode)
    with pytest.raises(ValueError, match=r"images of 3x10 px are smaller than the 9-tap"):
        gauss_ri.separable_filter(x[:, :3, :, None], k, jnp_mode)


# ---------------------------------------------------------------------------------------------
# bilateral: known answers without PyTorch


def test_bilateral_window_follows_the_reference_kernel():
    """Side max(ceil(5 sigma) | 1, 5), with 5 sigma in float32 (5 x 2.2f rounds to 11)."""
    sides = {0.1: 5, 0.5: 5, 0.8: 5, 1.0: 5, 1.2: 7, 1.4: 7, 1.6: 9, 2.2: 11, 3.0: 15,
             3.01: 17, -1.0: 5}
    assert {s: 2 * int(bilateral.window_radius(s)) + 1 for s in sides} == sides
    for r in range(2, 40):  # sigma_limit: the sigmas a radius covers end there
        assert int(bilateral.window_radius(bilateral.sigma_limit(r))) == r
        assert int(bilateral.window_radius(1.001 * bilateral.sigma_limit(r))) == r + 1


def test_bilateral_known_answers():
    """A huge range sigma: a Gaussian truncated to the window, renormalised at the borders
    (neighbours outside are left out). A tiny one: an outlier in a flat image stays."""
    x = np.random.RandomState(9).randn(2, 23, 30).astype(np.float32)
    sx, sy = 1.2, 0.8  # windows 7 along H, 5 along W
    y = np.asarray(bilateral.bilateral_filter(jnp.asarray(x), sx, sy, 1e6, max_radius=6))
    gx = np.exp(-np.arange(-3, 4) ** 2 / (2 * sx * sx))
    gy = np.exp(-np.arange(-2, 3) ** 2 / (2 * sy * sy))
    k = np.outer(gx, gy)
    ones = ndimage.correlate(np.ones(x.shape[1:]), k, mode="constant")
    ref = np.stack([ndimage.correlate(np.float64(xi), k, mode="constant") / ones for xi in x])
    assert np.abs(y - ref).max() < 1e-5

    flat = np.full((1, 16, 16), 0.3, np.float32)
    flat[0, 5, 9] = 1.3
    y = np.asarray(bilateral.bilateral_filter(jnp.asarray(flat), 1.5, 1.5, 1e-3, max_radius=4))
    np.testing.assert_allclose(y, flat, rtol=1e-6)
    assert y[0, 5, 9] == np.float32(1.3)


def test_bilateral_gradients_match_finite_differences():
    """Input and sigma gradients of a three-filter model against central differences in
    float64, at sigmas away from a change of window (where the output jumps)."""
    params = {f"filter{i + 1}": {"sigma_x": np.float32(sx), "sigma_y": np.float32(sy),
                                 "sigma_z": np.float32(0.5), "color_sigma": np.float32(r)}
              for i, (sx, sy, r) in enumerate([(0.9, 1.3, 0.4), (1.1, 0.7, 0.8),
                                               (1.3, 1.5, 0.6)])}
    module = bilateral.Bilateral(max_radius=4)
    rs = np.random.RandomState(10)
    x, w = rs.randn(1, 12, 14, 1), rs.randn(1, 12, 14, 1)

    def loss(p, x):
        return jnp.sum(w * module.apply({"params": p}, x))

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(x, jnp.float32))
    assert float(jnp.abs(g_x).max()) > 0
    assert all(np.isfinite(g) for g in jax.tree.leaves(g_p))
    with jax.enable_x64(True):
        p64 = jax.tree.map(np.float64, params)
        f = jax.jit(loss)
        eps = 1e-4
        for layer, kind in (("filter1", "sigma_x"), ("filter2", "sigma_y"),
                            ("filter3", "color_sigma")):
            up, down = (jax.tree.map(np.float64, p64) for _ in range(2))
            up[layer][kind] += eps
            down[layer][kind] -= eps
            fd = (float(f(up, x)) - float(f(down, x))) / (2 * eps)
            assert abs(float(g_p[layer][kind]) - fd) <= 1e-3 * abs(fd) + 1e-4
        v = rs.randn(*x.shape)
        fd = (float(f(p64, x + eps * v)) - float(f(p64, x - eps * v))) / (2 * eps)
        assert abs(float(jnp.vdot(g_x, v)) - fd) <= 1e-3 * abs(fd)
    assert float(g_p["filter2"]["sigma_z"]) == 0.0  # a slice has no depth


# ---------------------------------------------------------------------------------------------
# jit, vmap, grad


@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_and_grads(denoisers, apply_jit, name):
    d = denoisers[name]
    x = jnp.asarray(_hu(7))
    batched = np.asarray(apply_jit[name](d.params, x))
    assert batched.shape == x.shape and batched.dtype == np.float32
    assert np.abs(batched - np.asarray(x)).max() > 1.0
    # vmap runs apply on single [H, W] images: same answer as the [B, H, W] batch.
    vmapped = jax.jit(jax.vmap(d.spec.apply, in_axes=(None, 0)))(d.params, x)
    np.testing.assert_allclose(vmapped, batched, atol=1e-3)

    def loss(params, x):
        return jnp.mean((d.spec.apply(params, x) / ct.LDCTBENCH_SCALE) ** 2)

    gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(d.params, x)
    assert np.all(np.isfinite(gx)) and np.abs(gx).max() > 0
    leaves = jax.tree_util.tree_leaves_with_path(gp)
    count = {"gauss_ri": 0, "cnn10": 6, "wgan_vgg": 16, "redcnn": 20, "dugan": 20, "qae": 60,
             "resnet": 2 * 2 + 10 * (3 * 2 + 2 * 4),  # BatchNorm: 4 each
             "bilateral": 3 * 4}[name]
    assert len(leaves) == count
    for path, leaf in leaves:
        assert np.all(np.isfinite(leaf))
        # BatchNorm's fixed running statistics; a bilateral sigma_z, whose axis a slice lacks.
        if path[-1].key in ("mean", "var", "sigma_z"):
            assert np.all(leaf == 0)
        else:
            assert np.abs(leaf).max() > 0


@pytest.mark.parametrize("name", NAMES)
def test_forward_mode_equals_reverse_mode(denoisers, name):
    """Every model supports both modes: <u, J v> (jvp) == <J^T u, v> (vjp), linearize gives the
    jvp, and both work under jit and vmap."""
    assert set(NAMES) | {"transct"} == set(models.ARCHITECTURES)
    d = denoisers[name]
    f = functools.partial(d.spec.apply, d.params)
    rs = np.random.RandomState(11)
    x = jnp.asarray(_hu(12))
    v = jnp.asarray(rs.randn(*x.shape).astype(np.float32) * 100.0)
    jv = jax.jit(lambda x, v: jax.jvp(f, (x,), (v,))[1])(x, v)
    u = jv + jnp.asarray(rs.randn(*x.shape).astype(np.float32))  # <u, J v> far from 0
    jtu = jax.jit(lambda x, u: jax.vjp(f, x)[1](u)[0])(x, u)
    lhs = np.vdot(np.float64(u), np.float64(jv))
    rhs = np.vdot(np.float64(jtu), np.float64(v))
    assert lhs > 0 and abs(lhs - rhs) <= 1e-4 * abs(lhs)
    # linearize: the same linear map, evaluated once per tangent, and under vmap.
    y, f_lin = jax.linearize(f, x)
    np.testing.assert_allclose(y, f(x), rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(f_lin(v), jv, rtol=1e-4, atol=1e-3 * float(jnp.abs(jv).max()))
    vs = jnp.stack([v, 2.0 * v])
    np.testing.assert_allclose(jax.jit(jax.vmap(f_lin))(vs)[1], 2.0 * jv, rtol=1e-4,
                               atol=1e-3 * float(jnp.abs(jv).max()))
    # Per image under vmap: the jvp of each [H, W] image alone.
    per_image = jax.jit(jax.vmap(lambda x, v: jax.jvp(f, (x,), (v,))[1]))(x, v)
    np.testing.assert_allclose(per_image, jv, rtol=1e-4, atol=1e-3 * float(jnp.abs(jv).max()))


@pytest.mark.slow
def test_critic_forward_mode_equals_reverse_mode():
    critic, params = wgan_vgg.init_critic(jax.random.key(3), 32)
    score = lambda z: critic.apply({"params": params}, z[..., None])  # noqa: E731
    rs = np.random.RandomState(13)
    x, v = (jnp.asarray(rs.randn(3, 32, 32).astype(np.float32)) for _ in range(2))
    jv = jax.jvp(score, (x,), (v,))[1]
    u = jv + 0.1
    lhs = float(jnp.vdot(u, jv))
    rhs = float(jnp.vdot(jax.vjp(score, x)[1](u)[0], v))
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)
    # The full Jacobian both ways, with respect to a 4x4 corner of one patch.
    corner = lambda z: score(x[:1].at[0, :4, :4].set(z))  # noqa: E731
    z = x[0, :4, :4]
    np.testing.assert_allclose(jax.jacfwd(corner)(z), jax.jacrev(corner)(z), rtol=1e-4,
                               atol=1e-6)


def test_spec_is_hashable_and_shared_by_every_params():
    a, b = models.spec("cnn10", features=(8, 4)), models.spec("cnn10", features=(8, 4))
    assert a == b and hash(a) == hash(b) and a != models.spec("cnn10")
    d = models.create("cnn10", jax.random.key(0), features=(8, 4))
    assert d.spec == a and d.spec.config["features"] == (8, 4)
    # A Denoiser is a pytree of its params: jit and tree maps see the params only.
    assert len(jax.tree.leaves(d)) == 6
    doubled = jax.tree.map(lambda p: 2 * p, d)
    assert doubled.spec == d.spec
    np.testing.assert_array_equal(doubled.params["conv1"]["kernel"],
                                  2 * d.params["conv1"]["kernel"])


def test_input_gradient_matches_finite_differences(denoisers):
    """jax.grad of the public float32 d.apply against central differences in float64."""
    d = denoisers["cnn10"]
    rs = np.random.RandomState(8)
    x, v, r = rs.uniform(-1024.0, 1500.0, (H, W)), rs.randn(H, W), rs.randn(H, W)
    g = jax.jit(jax.grad(lambda x: jnp.mean(r * d(x))))(jnp.asarray(x, jnp.float32))
    directional = float(jnp.vdot(g, jnp.asarray(v, jnp.float32)))
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), d.params)
        s = d.spec
        loss = jax.jit(lambda x: jnp.mean(r * s.from_net(s.apply_net(p64, s.to_net(x)))))
        eps = 1e-3  # HU
        fd = (float(loss(x + eps * v)) - float(loss(x - eps * v))) / (2 * eps)
    assert abs(directional - fd) <= 1e-4 * abs(fd)


# ---------------------------------------------------------------------------------------------
# save / load


def _assert_same_params(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip_is_exact(denoisers, apply_jit, name, tmp_path):
    d = denoisers[name]
    path = tmp_path / "runs" / "model"  # parent does not exist yet
    models.save(d, str(path))
    assert sorted(os.listdir(tmp_path / "runs")) == ["model"]  # no temp dirs left behind
    e = models.load(str(path))
    assert (e.spec.name, e.spec.shift, e.spec.scale) == (d.spec.name, d.spec.shift, d.spec.scale)
    assert e.spec.module == d.spec.module
    _assert_same_params(e.params, d.params)
    x = _hu(10)
    np.testing.assert_array_equal(apply_jit[name](e.params, x), apply_jit[name](d.params, x))
    meta = json.loads((path / "model.json").read_text())
    assert meta["format"] == "ldct_jax.denoiser" and meta["name"] == name


def test_save_load_config_sharded_params_and_overwrite(tmp_path):
    d = models.build("cnn10", _random_params("cnn10", 5, features=(16, 8)), features=(16, 8))
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    d = d.replace(params=jax.device_put(d.params, replicated))
    path = str(tmp_path / "model")
    models.save(d, path)
    e = models.load(path)
    assert e.spec.module.features == (16, 8)
    assert e.params["conv1"]["kernel"].shape == (9, 9, 1, 16)
    _assert_same_params(e.params, jax.device_get(d.params))
    with pytest.raises(FileExistsError, match="exists"):
        models.save(d, path)
    models.save(models.create("gauss_ri", jax.random.key(0)), path, overwrite=True)
    assert models.load(path).spec.name == "gauss_ri"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_load_errors(denoisers, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such model directory"):
        models.load(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: not a saved denoiser: no model\.json"):
        models.load(str(tmp_path / "empty"))

    path = tmp_path / "model"
    models.save(denoisers["cnn10"], str(path))
    meta_file = path / "model.json"
    meta = json.loads(meta_file.read_text())

    def load_with(**changes):
        meta_file.write_text(json.dumps({**meta, **changes}))
        return models.load(str(path))

    with pytest.raises(ValueError, match=r"model\.json: format 'something', expected "
                       r"'ldct_jax\.denoiser'"):
        load_with(format="something")
    with pytest.raises(ValueError, match="format version 99; this ldct-jax reads versions 1 "
                       "to 2"):
        load_with(version=99)
    with pytest.raises(ValueError, match=r"unknown architecture 'unet'; expected one of "
                       r"\['bilateral', 'cnn10', 'dugan', 'gauss_ri', 'qae', 'redcnn', 'resnet', "
                       r"'transct', "
                       r"'wgan_vgg'\]"):
        load_with(name="unet")
    with pytest.raises(ValueError, match=r"param shapes differ from the architecture's: "
                       r"'conv1/bias' \(64,\), expected \(16,\); 'conv1/kernel' "
                       r"\(9, 9, 1, 64\), expected \(9, 9, 1, 16\); 'conv2/kernel' "
                       r"\(3, 3, 64, 32\), expected "):
        load_with(config={"features": [16, 32]})
    with pytest.raises(ValueError, match=r"missing keys \['conv4/bias', 'conv4/kernel'.*"
                       r"unexpected keys \[\]"):
        load_with(name="wgan_vgg", config={"features": 64, "depth": 8})
    meta_file.write_text(json.dumps(meta))
    os.rename(path / "params", tmp_path / "moved")
    with pytest.raises(ValueError, match="has params but there is no params/ directory"):
        models.load(str(path))
    (path / "params").mkdir()
    with pytest.raises(ValueError, match=r"model/params: could not restore the cnn10 params "
                       r"\(expected an orbax checkpoint"):
        models.load(str(path))
    meta_file.write_text("{not json")
    with pytest.raises(ValueError, match=r"model\.json: not valid JSON"):
        models.load(str(path))


def test_load_refuses_params_changed_after_saving(denoisers, tmp_path):
    path = tmp_path / "model"
    models.save(denoisers["cnn10"], str(path))
    # 40 bytes flipped in the middle of the largest file of the params (the conv kernels).
    data = max((os.path.join(r, f) for r, _, fs in os.walk(path / "params") for f in fs),
               key=os.path.getsize)
    raw = bytearray(open(data, "rb").read())
    mid = len(raw) // 2
    raw[mid:mid + 40] = bytes(b ^ 0xFF for b in raw[mid:mid + 40])
    open(data, "wb").write(bytes(raw))
    with pytest.raises(ValueError, match=re.escape(str(path)) + r"(/params: could not restore|"
                       r": the params or the model's description do not match the checksum)"):
        models.load(str(path))


@pytest.mark.parametrize("change", ["param", "scale"])
def test_load_refuses_a_changed_value_that_still_reads(denoisers, tmp_path, change):
    """One finite value changed, the files otherwise intact: only the checksum can tell."""
    import orbax.checkpoint as ocp
    d = denoisers["cnn10"]
    path = tmp_path / "model"
    models.save(d, str(path))
    if change == "param":
        params = jax.device_get(d.params)
        params["conv3"]["bias"] = params["conv3"]["bias"] + 1e-3
        import shutil
        shutil.rmtree(path / "params")
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(str(path / "params"), params)
    else:
        meta = json.loads((path / "model.json").read_text())
        meta["scale"] *= 1.001
        (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=re.escape(str(path)) + r": the params or the model's "
                       r"description do not match the checksum in model\.json"):
        models.load(str(path))


def test_non_finite_params_are_neither_saved_nor_loaded(denoisers, tmp_path):
    d = denoisers["cnn10"]
    bad = jax.tree.map(lambda a: a, d.params)
    bad["conv2"]["bias"] = bad["conv2"]["bias"].at[3].set(jnp.nan)
    with pytest.raises(ValueError, match=r"non-finite params \(NaN/inf count per key: "
                       r"\{'conv2/bias': 1\}\)"):
        models.save(d.replace(params=bad), str(tmp_path / "nan"))
    assert not os.path.exists(tmp_path / "nan")
    # A model of format version 1 (no checksum) whose params hold a NaN: refused on loading.
    import orbax.checkpoint as ocp
    path = tmp_path / "v1"
    models.save(d, str(path))
    meta = json.loads((path / "model.json").read_text())
    meta["version"] = 1
    del meta["sha256"]
    (path / "model.json").write_text(json.dumps(meta))
    assert models.load(str(path)).spec == d.spec  # version 1 still reads
    import shutil
    shutil.rmtree(path / "params")
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(str(path / "params"), jax.device_get(bad))
    with pytest.raises(ValueError, match=re.escape(str(path / "params")) + r": non-finite "
                       r"params \(NaN/inf count per key: \{'conv2/bias': 1\}\)"):
        models.load(str(path))


def test_load_says_when_given_vgg_weights(tmp_path):
    (tmp_path / "vgg").mkdir()
    (tmp_path / "vgg" / vgg_weights.META_FILE).write_text("{}")
    with pytest.raises(ValueError, match=r"no model\.json .* holds VGG weights"):
        models.load(str(tmp_path / "vgg"))
