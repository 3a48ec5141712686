"""The benchmarks measure the right thing: FLOP formulas against XLA's cost analysis and a brute
count, PyTorch twins against the JAX networks, the PyTorch search objective and train steps
(supervised, WGAN-VGG, natural invariances) against the library's, the proposed faster WGAN
step against the library's results, and the search losses of every ldct-benchmark network
against the package's own PyTorch modules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

torch = pytest.importorskip("torch")

from benchmarks import (bench_natural, bench_search, bench_train, common,  # noqa: E402
                        search_loops, torch_twins)
from configs import natural as natural_config  # noqa: E402
from ldct_jax import ct, gan_losses, metrics, models, parallel  # noqa: E402
from ldct_jax.analysis import search as search_lib  # noqa: E402
from ldct_jax.models import natural as natural_models  # noqa: E402
from ldct_jax.models import vgg_weights, wgan_vgg  # noqa: E402
from tests import optional  # noqa: E402


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


@pytest.mark.parametrize("n,k", [(64, 9), (512, 9), (33, 3), (17, 5)])
def test_same_taps_brute_force(n, k):
    count = signal.convolve2d(np.ones((n, 1)), np.ones((k, 1)), mode="same").sum()
    assert common.same_taps(n, k) == count


def test_conv_flops_by_hand():
    # CNN-10 on 512^2: (9*9*64 + 3*3*64*32 + 5*5*32) multiply-adds per pixel, 2 FLOPs each.
    assert common.forward_flops("cnn10", 512, 512) == 2 * 512 * 512 * (5184 + 18432 + 800)
    assert common.search_iteration_flops("wgan_vgg", 8, 8) == 2 * 2 * 64 * 9 * (32 + 6 * 32 * 32
                                                                                 + 32)


@pytest.mark.parametrize("name", ["cnn10", "wgan_vgg"])
def test_search_flops_match_xla(name):
    size = 512  # the benchmark's size (cost analysis compiles, it does not run)
    d = models.create(name, jax.random.key(0))
    xla = bench_search.xla_step_flops(d, size)
    exact = common.search_iteration_flops(name, size, size, exact=True)
    # XLA counts the taps inside the image, elementwise work (about 0.5 %) and, for cnn10,
    # col2im_conv's matmul over conv1's padded border (0.3 %): nothing missing, little extra.
    assert 1.0 <= xla / exact < 1.015
    assert exact < common.search_iteration_flops(name, size, size)


def test_train_flops_match_xla():
    size = 40
    d = models.create("cnn10", jax.random.key(0))
    x = jnp.zeros((2, size, size), jnp.float32)
    grad = jax.jit(jax.grad(lambda p, x: metrics.mse(d.spec.apply_net(p, x), x)))
    cost = grad.lower(d.params, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    exact = 2 * common.train_step_flops("cnn10", size, size, exact=True)
    assert abs(cost["flops"] - exact) / exact < 0.02


@pytest.mark.parametrize("name", ["cnn10", "wgan_vgg"])
def test_torch_denoiser_matches_jax(name):
    d = models.create(name, jax.random.key(1))
    x = np.random.default_rng(0).normal(0, 1, (2, 24, 20)).astype(np.float32)
    want = np.asarray(d.spec.apply_net(d.params, x))
    with torch.no_grad():
        got = torch_twins.denoiser(name, d.params)(torch.from_numpy(x)[:, None])[:, 0].numpy()
    assert rel(got, want) < 1e-4


@pytest.mark.slow
def test_torch_critic_matches_jax():
    critic, cparams = wgan_vgg.init_critic(jax.random.key(2), 32)
    x = np.random.default_rng(1).normal(0, 1, (3, 32, 32)).astype(np.float32)
    want = np.asarray(critic.apply({"params": cparams}, x[..., None]))
    with torch.no_grad():
        got = torch_twins.critic(cparams, 32)(torch.from_numpy(x)[:, None]).numpy()
    assert got.shape == (3,) and rel(got, want) < 1e-4


@pytest.mark.slow
def test_torch_vgg19_matches_jax():
    x = np.random.default_rng(1).normal(0, 1, (3, 32, 32)).astype(np.float32)
    vgg = vgg_weights.random_init("vgg19", jax.random.key(3), imagenet_norm=False)
    want = np.asarray(vgg.features(vgg.params, x, "conv5_4")["conv5_4"])  # [B, h, w, C]
    with torch.no_grad():
        got = torch_twins.vgg_to("vgg19", vgg.params, "conv5_4")(
            torch.from_numpy(x)[:, None].expand(-1, 3, -1, -1)).numpy()
    assert rel(got.transpose(0, 2, 3, 1), want) < 1e-4


@pytest.mark.parametrize("shape", [(2, 16, 16), (2, 13, 21)])
def test_torch_natural_networks_match_jax(shape):
    # 13 x 21: the generator pads to multiples of 4 (x by its edge, z by zeros) and crops back;
    # the critic's stride-2 convs pad odd and even sides differently.
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, shape + (1,)).astype(np.float32)
    z = rng.normal(0, 1, shape + (3,)).astype(np.float32)
    g = natural_models.InvarianceGenerator(features=4, levels=2, noise_channels=3)
    gparams = g.init(jax.random.key(0), x, z)["params"]
    critic = natural_models.PatchCritic(features=4)
    cparams = critic.init(jax.random.key(1), x)["params"]
    nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
    with torch.no_grad():
        got_g = torch_twins.invariance_generator(g, gparams)(nchw(x), nchw(z)).numpy()
        got_c = torch_twins.patch_critic(critic, cparams)(nchw(x)).numpy()
    want_g = np.asarray(g.apply({"params": gparams}, x, z))
    assert got_g.shape == shape and rel(got_g, want_g) < 1e-5
    assert got_c.shape == shape[:1]
    assert rel(got_c, critic.apply({"params": cparams}, x)) < 1e-5


@pytest.mark.slow
def test_torch_natural_step_matches_library(capsys):
    c = natural_config.get_config("cnn10")
    c.generator.update(features=4, levels=1)
    c.critic.update(features=4, scales=2)
    c.patch_size, c.batch_size = 16, 4
    batch = bench_natural.random_batch(np.random.default_rng(6), c)
    rows, jax_step, torch_step = bench_natural.first_step(c, batch)
    names = {r["metric"] for r in rows}
    assert {"loss", "d_out", "d_in", "realism", "diversity", "grad_norm", "critic_loss",
            "wasserstein_distance_1", "gradient_penalty_1"} <= names
    worst = {r["metric"]: r["rel"] for r in rows if r["rel"] > 1e-4}
    assert not worst
    # Timing continues both steps with their own draws.
    tbatch = {k: torch.from_numpy(v) for k, v in batch.items()}
    seconds = common.interleaved_best({"jax": jax_step, "torch": lambda: torch_step(tbatch)}, 1)
    assert int(jax_step.state.step) == 2
    row = bench_natural.table_row("cnn10", c, seconds, rows)
    bench_natural.print_table([row])
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:4] == ["cnn10", "16", "4", "1"]
    assert float(cells[4]) == pytest.approx(1e3 * seconds["jax"], abs=0.5)
    assert float(cells[7].replace(",", "")) == pytest.approx(4 / seconds["torch"], rel=1e-2)
    assert cells[8] == f"{seconds['torch'] / seconds['jax']:.2f}x"
    assert cells[9].startswith("agree")
    out = capsys.readouterr().out
    assert out.splitlines()[0] == bench_natural.TABLE_HEAD
    bad = [dict(r, rel=2 * bench_natural.RTOL) if r["metric"] == "loss" else r for r in rows]
    assert "DIFFER" in bench_natural.table_row("cnn10", c, seconds, bad)


def _search(d, x, iterations):
    options = search_lib.SearchOptions(method="adam", iterations=iterations, chunk=1)
    rows = search_lib.make_rows(len(x), len(x), lambdas=[1e-2, 0.5], distances="mse",
                                seeds=[0, 1])
    return search_lib.Searcher(d.spec, ["mse"], options).run(d.params, x, rows)


@pytest.mark.slow
def test_torch_search_objective_matches_library():
    d = models.create("cnn10", jax.random.key(4))
    x = np.random.default_rng(2).normal(40, 300, (2, 24, 24)).astype(np.float32)
    two = _search(d, x, 2)
    three = _search(d, x, 3)
    # The curves hold L at the iterate before each update: three's entry 2 is L(two's result).
    delta = torch.from_numpy(two.perturbation / d.spec.scale)
    xn = torch.from_numpy(np.asarray(d.spec.to_net(x), np.float32))
    net = torch_twins.denoiser("cnn10", d.params)
    with torch.no_grad():
        loss, d_out, d_in = search_loops.torch_objective(net, xn, net(xn[:, None])[:, 0],
                                                         delta, torch.tensor([1e-2, 0.5]))
    np.testing.assert_allclose(loss.numpy(), three.curves["loss"][:, 2], rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(d_out.numpy(), three.curves["d_out"][:, 2], rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(d_in.numpy(), three.curves["d_in"][:, 2], rtol=1e-3, atol=1e-9)


@pytest.mark.slow
def test_torch_cnn10_step_matches_library():
    rng = np.random.default_rng(3)
    batch = bench_train.random_patches(rng, (4, 24, 24))
    d, step, state, extra, mesh, _ = bench_train.jax_setup("cnn10", 24, 4, 1)
    t = bench_train.TorchCNN10Step(d)  # before the step, which donates (deletes) d.params
    _, metrics = step(state, parallel.global_batch(batch, mesh), *extra)
    out = t({k: torch.from_numpy(v) for k, v in batch.items()})
    grad_norm = torch.sqrt(sum(torch.sum(p.grad ** 2) for p in t.net.parameters()))
    np.testing.assert_allclose(float(out["loss"]), float(metrics["loss"]), rtol=1e-4)
    np.testing.assert_allclose(float(grad_norm), float(metrics["grad_norm"]), rtol=1e-3)


@pytest.mark.slow
def test_torch_wgan_step_matches_library():
    patch, n = 32, 4
    rng = np.random.default_rng(4)
    batch = bench_train.random_patches(rng, (n, 1, patch, patch))
    d, step, state, extra, mesh, parts = bench_train.jax_setup("wgan_vgg", patch, n, 1)
    gbatch = parallel.global_batch(batch, mesh)
    t = bench_train.TorchWGANStep(d, parts["critic"], parts["vgg"], patch)  # before donation
    new, metrics = step(state, gbatch, *extra)
    x = torch.from_numpy(np.asarray(d.spec.to_net(batch["low"][:, 0]), np.float32))[:, None]
    y = torch.from_numpy(np.asarray(d.spec.to_net(batch["full"][:, 0]), np.float32))[:, None]
    with torch.no_grad():
        fake = t.g(x)
        w = t.c(fake).mean() - t.c(y).mean()  # the critic before its update
    np.testing.assert_allclose(float(w), -float(metrics["wasserstein_distance"]), rtol=1e-3,
                               atol=1e-6)
    # The generator loss is taken with the updated critic and the generator before its update.
    t.c = torch_twins.critic(jax.device_get(new.critic_params), patch)
    g_loss, adv, perc = (v.detach() for v in t.generator_loss(x, y))
    np.testing.assert_allclose(float(adv), float(metrics["adversarial"]), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(float(perc), float(metrics["perceptual"]), rtol=1e-3)
    np.testing.assert_allclose(float(g_loss), float(metrics["loss"]), rtol=1e-3, atol=1e-6)
    # The penalty against the library's, at the same interpolates.
    alpha = torch.rand((n, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    gp = t.critic_loss(y, fake, alpha)[2].detach()
    x_hat = (alpha * y + (1 - alpha) * fake)[:, 0].numpy()
    cparams = jax.device_get(new.critic_params)
    want = gan_losses.gradient_norm_penalty(
        lambda z: wgan_vgg.Critic().apply({"params": cparams}, z[..., None]), x_hat)
    np.testing.assert_allclose(float(gp), float(want), rtol=1e-3, atol=1e-7)


def test_converge_benchmark_smoke(capsys):
    from benchmarks import bench_converge
    d, kind = bench_converge.load_denoiser("gauss_ri")
    x = np.random.default_rng(0).normal(40, 300, (1, 32, 32)).clip(ct.HU_MIN, ct.HU_MAX)
    x = x.astype(np.float32)
    xn = np.asarray(d.spec.to_net(x), np.float32)
    twin = torch_twins.denoiser("gauss_ri", d.params)(torch.from_numpy(xn)[:, None])[:, 0]
    assert rel(twin.numpy(), d.spec.apply_net(d.params, xn)) < 1e-6
    lambdas = [1e-3, 1e-1]
    adam, adam_stamps = bench_converge.timed_search(
        d, x, lambdas, search_lib.SearchOptions(method="adam", iterations=40, chunk=10))
    default, stamps = bench_converge.timed_search(
        d, x, lambdas, search_lib.SearchOptions(iterations=40, chunk=10, lambda_steps=10,
                                                window=10))
    seconds = bench_converge.torch_adam_seconds(d, x, lambdas, 2)
    rows = bench_converge.case_rows("gauss_ri", kind, 32, lambdas, adam, adam_stamps, default,
                                    stamps, seconds)
    bench_converge.print_table(rows)
    assert [r["lam"] for r in rows] == pytest.approx(lambdas)
    assert [s for s, _ in adam_stamps] == [10, 20, 30, 40]
    assert all(r["adam_s"] > 0 and r["torch_s"] > 0 for r in rows)
    assert "gauss_ri (exact)" in capsys.readouterr().out


def _reference():
    optional.require("ldctbench", "pip install --no-deps ldct-benchmark")
    from benchmarks import ldctbench_reference
    return ldctbench_reference


@pytest.mark.parametrize("methods", [
    ("cnn10", "bilateral", "transct"),
    pytest.param(("wgan_vgg", "redcnn", "resnet", "qae", "dugan"), marks=pytest.mark.slow)])
def test_zoo_benchmark_rows_and_losses_agree_with_ldctbench(methods):
    """bench_zoo at 64 x 64 (transct, 512 x 512 only, is skipped and says so): a row per
    model in order, and the library's search losses equal to those of the package's own
    PyTorch networks on the same path, before the first step and after one."""
    reference = _reference()
    from benchmarks import bench_zoo
    lines = []
    rows = bench_zoo.run(methods, 64, iters=1, repeats=1, report=lines.append)
    ran = [m for m in methods if m != "transct"]
    assert [r["model"] for r in rows] == [models.canonical(m) for m in ran]
    if "transct" in methods:
        assert lines[-1] == "transct: skipped (takes 512 x 512 images only)"
    for r, line in zip(rows, lines):
        assert line == bench_zoo.format_row(r)
        assert r["iterations"] == 2 and r["jax_rate"] > 0 and r["torch_rate"] > 0
        assert np.all(np.isfinite(r["loss0"])) and np.all(r["loss0"] != 0)
        assert r["first_diff"] <= bench_zoo.AGREE and r["last_diff"] <= 1e-2, r
        stand_in = reference.uses_stand_in(bench_zoo.method_of(r["model"]))
        assert r["reference"].endswith("stand-in") == stand_in
    table = bench_zoo.table(rows).splitlines()
    assert table[0] == bench_zoo.HEAD and len(table) == 2 + len(rows)
    assert [t.split(" | ")[0] for t in table[2:]] == [f"| {r['model']}" for r in rows]
    assert "DIFFERS" not in "".join(table)


def test_ldctbench_reference_leaves_sys_modules_as_they_were():
    """The network imported over a stand-in is not left registered, nor the stand-in."""
    import sys
    reference = _reference()
    if not reference.uses_stand_in("transct"):
        pytest.skip("torchvision is installed: transct needs no stand-in")
    before = {n: sys.modules.get(n) for n in ("torchvision", "torchvision.transforms",
                                              "ldctbench.methods.transct.network")}
    network = reference.network("transct")
    assert network.Model.__name__ == "Model"
    assert {n: sys.modules.get(n) for n in before} == before


def test_ldctbench_reference_weights_come_from_the_seed_alone():
    """Q-AE draws from numpy's global generator: the same seed gives the same weights, a
    different one others, and the caller's numpy state is left as it was."""
    reference = _reference()
    np.random.seed(5)
    a = reference.model("qae", 1).state_dict()
    after = np.random.rand()
    np.random.seed(6)
    b = reference.model("qae", 1).state_dict()
    c = reference.model("qae", 2).state_dict()
    np.random.seed(5)
    assert np.random.rand() == after
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.0.W_r"], c["encoder.0.W_r"])
