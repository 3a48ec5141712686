"""VGG16/VGG19 features against a hand-written torchvision-layout PyTorch VGG, and weight import."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.torch_twins import TorchVGG  # noqa: E402
from ldct_jax import fastpath  # noqa: E402
from ldct_jax.models import vgg as vgg_lib  # noqa: E402
from ldct_jax.models import vgg_weights  # noqa: E402


@pytest.fixture(scope="module", params=["vgg16", "vgg19"])
def torch_vgg(request):
    torch.manual_seed({"vgg16": 0, "vgg19": 1}[request.param])
    return request.param, TorchVGG(request.param).eval()


def _state_dict(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _torch_taps(model, x, imagenet_norm):
    xt = torch.from_numpy(np.asarray(x))[:, None].repeat(1, 3, 1, 1)
    if imagenet_norm:
        mean = torch.tensor(vgg_lib.IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(vgg_lib.IMAGENET_STD)[:, None, None]
        xt = (xt - mean) / std
    with torch.no_grad():
        return {k: v.numpy().transpose(0, 2, 3, 1) for k, v in model.taps(xt).items()}


def _max_rel_err(ours, ref):
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("imagenet_norm", [True, False])
def test_every_tap_matches_pytorch(torch_vgg, imagenet_norm):
    arch, model = torch_vgg
    vgg = vgg_lib.VGG(arch, vgg_weights.params_from_state_dict(_state_dict(model), arch),
                      imagenet_norm=imagenet_norm)
    x = np.random.RandomState(0).rand(2, 32, 32).astype(np.float32)
    ref = _torch_taps(model, x, imagenet_norm)
    ours = vgg.features(vgg.params, x, vgg_lib.tap_names(arch))
    assert set(ours) == set(ref) == set(vgg_lib.tap_names(arch))
    for tap in ref:
        assert ours[tap].shape == ref[tap].shape, tap
        assert _max_rel_err(ours[tap], ref[tap]) < 1e-4, tap


def test_load_pth_and_safetensors_give_the_torch_weights(torch_vgg, tmp_path):
    from safetensors.numpy import save_file

    arch, model = torch_vgg
    state = _state_dict(model)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    save_file(state, str(tmp_path / "w.safetensors"))
    x = np.random.RandomState(1).rand(1, 32, 32).astype(np.float32)
    ref = _torch_taps(model, x, True)
    last = vgg_lib.tap_names(arch)[-2]  # conv5_3 / conv5_4
    for name in ("w.pth", "w.safetensors"):
        vgg = vgg_weights.load(str(tmp_path / name), arch)
        assert vgg.pretrained and vgg.arch == arch and vgg.source.endswith(name)
        np.testing.assert_array_equal(np.asarray(vgg.params["conv1_1"]["kernel"]),
                                      state["features.0.weight"].transpose(2, 3, 1, 0))
        assert _max_rel_err(vgg.features(vgg.params, x, last)[last], ref[last]) < 1e-4


def test_converted_format_round_trips_exactly(tmp_path):
    from safetensors.numpy import save_file

    torch.manual_seed(2)
    state = _state_dict(TorchVGG("vgg16"))
    state["classifier.0.weight"] = np.zeros((4, 4), np.float32)  # ignored
    save_file(state, str(tmp_path / "w.safetensors"))
    converted = vgg_weights.convert(str(tmp_path / "w.safetensors"), str(tmp_path / "vgg16"),
                                    "vgg16")
    meta = json.loads((tmp_path / "vgg16" / "vgg.json").read_text())
    assert meta["arch"] == "vgg16" and meta["source"].endswith("w.safetensors")
    loaded = vgg_weights.load(str(tmp_path / "vgg16"), imagenet_norm=False)
    assert (loaded.arch, loaded.pretrained, loaded.source, loaded.imagenet_norm) == (
        "vgg16", True, converted.source, False)
    for a, b in zip(jax.tree.leaves(converted.params), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(converted.params) == jax.tree.structure(loaded.params)
    with pytest.raises(ValueError, match="holds vgg16 weights, but vgg19"):
        vgg_weights.load(str(tmp_path / "vgg16"), "vgg19")
    with pytest.raises(FileExistsError, match="not overwriting"):
        vgg_weights.save(loaded, str(tmp_path / "vgg16"))


@pytest.fixture(scope="module")
def vgg16_state():
    torch.manual_seed(3)
    return _state_dict(TorchVGG("vgg16"))


def test_unreadable_or_non_finite_weights_are_named(vgg16_state, tmp_path):
    from safetensors.numpy import save_file

    state = dict(vgg16_state)
    state["features.2.weight"] = state["features.2.weight"].copy()
    state["features.2.weight"][0, 0, 1, 1] = np.inf
    save_file(state, str(tmp_path / "inf.safetensors"))
    with pytest.raises(ValueError, match=r"inf\.safetensors: non-finite params \(NaN/inf count "
                       r"per key: \{'features\.2\.weight': 1\}\)"):
        vgg_weights.load(str(tmp_path / "inf.safetensors"), "vgg16")

    save_file(vgg16_state, str(tmp_path / "w.safetensors"))
    vgg_weights.convert(str(tmp_path / "w.safetensors"), str(tmp_path / "vgg16"), "vgg16")
    npz = tmp_path / "vgg16" / "params.npz"
    npz.write_bytes(npz.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(ValueError, match=r"vgg16/params\.npz: could not read the VGG weights"):
        vgg_weights.load(str(tmp_path / "vgg16"))
    npz.unlink()
    with pytest.raises(ValueError, match=r"vgg16/params\.npz: could not read the VGG weights"):
        vgg_weights.load(str(tmp_path / "vgg16"))


def test_missing_key_is_named(vgg16_state):
    state = dict(vgg16_state)
    del state["features.12.bias"]
    with pytest.raises(ValueError, match=r"missing key 'features\.12\.bias'.*conv3_2.*\(256,\)"):
        vgg_weights.params_from_state_dict(state, "vgg16", "my.pth")


def test_wrong_shape_names_key_and_both_shapes(vgg16_state):
    state = dict(vgg16_state)
    state["features.0.weight"] = np.zeros((64, 1, 3, 3), np.float32)
    with pytest.raises(ValueError) as err:
        vgg_weights.params_from_state_dict(state, "vgg16", "my.pth")
    msg = str(err.value)
    assert "my.pth" in msg and "'features.0.weight'" in msg
    assert "(64, 1, 3, 3)" in msg and "(64, 3, 3, 3)" in msg


def test_unexpected_features_key_is_an_error(vgg16_state):
    # A VGG19 state dict read as VGG16 has convs at indices VGG16 does not.
    torch.manual_seed(4)
    with pytest.raises(ValueError, match=r"unexpected keys for VGG16: \['features\.16\.bias'"):
        vgg_weights.params_from_state_dict(_state_dict(TorchVGG("vgg19")), "vgg16")
    state = dict(vgg16_state, **{"features.1.running_mean": np.zeros(64, np.float32)})
    with pytest.raises(ValueError, match="features.1.running_mean"):
        vgg_weights.params_from_state_dict(state, "vgg16")


def test_stops_at_the_deepest_tap():
    vgg = vgg_weights.random_init("vgg16", jax.random.key(0))
    shallow = {k: v for k, v in vgg.params.items() if k[4] in "123"}  # no block 4/5 params
    x = jnp.ones((1, 32, 32))
    feats = vgg.features(shallow, x, ("relu1_2", "relu3_3"))
    assert set(feats) == {"relu1_2", "relu3_3"} and feats["relu3_3"].shape == (1, 8, 8, 256)
    jaxpr = str(jax.make_jaxpr(lambda p: vgg.features(p, x, "conv1_1"))(vgg.params))
    assert jaxpr.count("conv_general_dilated") == 1


def test_unknown_tap_and_arch_are_clear():
    vgg = vgg_weights.random_init("vgg16", jax.random.key(0))
    with pytest.raises(ValueError, match="unknown taps.*conv5_4.*valid taps are.*relu5_3"):
        vgg.features(vgg.params, jnp.ones((1, 32, 32)), "conv5_4")
    with pytest.raises(ValueError, match="unknown VGG architecture 'vgg11'"):
        vgg_weights.random_init("vgg11", jax.random.key(0))


def test_random_init_says_so(caplog):
    vgg = vgg_weights.random_init("vgg19", jax.random.key(0))
    assert not vgg.pretrained
    assert vgg.describe() == ("VGG19 features, RANDOM INIT (no ImageNet weights: perceptual "
                              "results are not meaningful)")
    with caplog.at_level(logging.WARNING):
        resolved = vgg_weights.from_config("", "vgg19", jax.random.key(0))
    assert not resolved.pretrained and "RANDOM INIT" in caplog.text
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        vgg_weights.from_config("/nowhere.pth", "vgg19", jax.random.key(0))


def test_features_jit_vmap_grad_and_pytree():
    vgg = vgg_weights.random_init("vgg16", jax.random.key(1))
    x = jax.random.uniform(jax.random.key(2), (3, 16, 16))

    @jax.jit
    def run(v, x):  # the VGG passes through jit as an argument: params are its leaves
        feats = lambda y: v.features(v.params, y, "relu2_2")["relu2_2"]
        grad = jax.grad(lambda y: jnp.sum(feats(y)))(x)
        return jax.vmap(feats)(x), feats(x), grad

    batched, leading, grad = run(vgg, x)
    np.testing.assert_allclose(batched, leading, rtol=1e-5, atol=1e-5)
    assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))
    assert float(jnp.abs(grad).max()) > 0
    assert len(jax.tree.leaves(vgg)) == 2 * 13


@pytest.mark.slow
def test_fast_features_equal_plain_features_on_maps_smaller_than_the_kernel():
    """At 32x32, VGG19's block 5 works on 2x2 maps: there the fast path is a matmul."""
    vgg = vgg_weights.random_init("vgg19", jax.random.key(4), imagenet_norm=False)
    x = jax.random.normal(jax.random.key(5), (2, 32, 32))
    fast = fastpath.convolutions(vgg.features, enable=True)
    plain, ours = (f(vgg.params, x, "conv5_4")["conv5_4"] for f in (vgg.features, fast))
    assert plain.shape == (2, 2, 2, 512)
    np.testing.assert_allclose(ours, plain, rtol=1e-4, atol=1e-4 * float(jnp.abs(plain).max()))
    grads = [jax.grad(lambda u, f=f: jnp.sum(jnp.sin(f(vgg.params, u, "conv5_4")["conv5_4"])))(x)
             for f in (vgg.features, fast)]
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-4,
                               atol=1e-4 * float(jnp.abs(grads[0]).max()))
