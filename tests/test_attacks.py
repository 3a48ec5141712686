"""Adversarial attacks: FGSM against an independent jax.grad, BIM == FGSM, budgets, HU range."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common
from ldct_jax import ct, fastpath
from ldct_jax.analysis import attacks
from tests.nets import small_cnn10

EPS = [0.0, 2.0, 8.0, 32.0]
H = 24


@pytest.fixture(scope="module")
def setup():
    d = small_cnn10()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :H]
    body = np.where((yy - 12) ** 2 + (xx - 11) ** 2 < 81, 40.0, -1000.0)
    x = np.stack([body + rng.normal(0, 20, (H, H)), body[::-1] + rng.normal(0, 20, (H, H))])
    # Pixels on and next to both ends of the HU range, so that the range clip is exercised.
    x[0, :3, :3], x[0, -3:, -3:], x[1, 5, :] = ct.HU_MAX, ct.HU_MIN, ct.HU_MAX - 1.5
    x = np.clip(x, ct.HU_MIN, ct.HU_MAX).astype(np.float32)
    # Target: the output of x with a 20 HU lesion (present in x) removed.
    lesion = np.where((yy - 14) ** 2 + (xx - 9) ** 2 < 9, 20.0, 0.0).astype(np.float32)
    target = np.asarray(d(x - lesion))
    return d, x + lesion, target.astype(np.float32)


@pytest.fixture(scope="module")
def results(setup):
    d, x, target = setup
    out = {}
    for method in attacks.METHODS:
        for targeted in (False, True):
            kw = dict(target=target if targeted else None)
            if method != "fgsm":
                # Signed steps leave an error of about one step size in every pixel: small
                # steps for the targeted attack, the default 2.5 eps / steps for the other.
                kw.update(steps=20, step_size_hu=1.0 if targeted else None)
            out[method, targeted] = attacks.attack(method, d, x, EPS, **kw)
    return out


def reference_gradient(d, at_hu, ref_net):
    """d/dx mean((f_net(x) - ref)^2) in HU, written out again here with jax.grad."""
    s = d.spec

    def loss(z, ref_net):
        return jnp.mean(jnp.square(s.apply_net(d.params, s.to_net(z)) - ref_net))
    return np.asarray(jax.jit(jax.vmap(jax.grad(loss)))(jnp.asarray(at_hu), jnp.asarray(ref_net)))


def expected_fgsm(x, g, eps, sign):
    return np.clip(np.float32(eps) * np.sign(g) * sign, ct.HU_MIN - x, ct.HU_MAX - x)


@pytest.mark.slow  # (the shared results: one compile)
def test_fgsm_targeted_is_epsilon_times_sign_of_gradient(setup, results):
    d, x, target = setup
    r = results["fgsm", True]
    g = reference_gradient(d, x, np.asarray(d.spec.to_net(target)))
    assert (g != 0).mean() > 0.9
    for row, (i, eps) in enumerate(zip(r.image_index, r.epsilon_hu)):
        np.testing.assert_array_equal(r.perturbation[row], expected_fgsm(x[i], g[i], eps, -1.0))


@pytest.mark.slow  # (the shared results: one compile)
def test_fgsm_untargeted_follows_gradient_at_probe(setup, results):
    d, x, _ = setup
    r = results["fgsm", False]
    y0 = np.asarray(jax.jit(d.spec.apply_net)(d.params, d.spec.to_net(x)))
    at = x + np.stack([np.asarray(attacks.probe(0, i, (H, H), 1.0)) for i in range(len(x))])
    g = reference_gradient(d, at, y0)
    for row, (i, eps) in enumerate(zip(r.image_index, r.epsilon_hu)):
        np.testing.assert_array_equal(r.perturbation[row], expected_fgsm(x[i], g[i], eps, 1.0))


@pytest.mark.slow  # (the shared results: one compile)
def test_one_bim_step_of_size_epsilon_is_fgsm(setup, results):
    d, x, target = setup
    for targeted in (False, True):
        b = attacks.bim(d, x, EPS, steps=1, step_size_hu=EPS[-1], keep_best=False,
                        target=target if targeted else None)
        f = results["fgsm", targeted]
        last = np.asarray(f.epsilon_hu) == EPS[-1]
        np.testing.assert_array_equal(b.perturbation[last], f.perturbation[last])
        np.testing.assert_array_equal(b.adversarial[last], f.adversarial[last])


@pytest.mark.slow
@pytest.mark.parametrize("method", attacks.METHODS)
@pytest.mark.parametrize("targeted", [False, True])
def test_budget_and_hu_range_hold_exactly(setup, results, method, targeted):
    _, x, _ = setup
    r = results[method, targeted]
    assert r.method == method and r.targeted == targeted
    np.testing.assert_array_equal(r.image_index, np.repeat([0, 1], len(EPS)))
    np.testing.assert_array_equal(r.epsilon_hu, np.tile(EPS, 2))
    eps = r.epsilon_hu[:, None, None]
    assert np.all(np.abs(r.perturbation) <= eps)
    assert r.adversarial.min() >= ct.HU_MIN and r.adversarial.max() <= ct.HU_MAX
    np.testing.assert_allclose(r.adversarial, x[r.image_index] + r.perturbation, rtol=0, atol=1e-3)
    np.testing.assert_allclose(r.metrics["input_max_hu"], np.abs(r.perturbation).max((1, 2)))
    # The clip bites: the pixels at HU_MAX are never pushed above it.
    assert np.all(r.adversarial[r.image_index == 0][:, :3, :3] <= ct.HU_MAX)
    if not targeted:  # the budget is used
        big = r.epsilon_hu == EPS[-1]
        assert np.all(r.metrics["input_max_hu"][big] == EPS[-1])


@pytest.mark.slow
@pytest.mark.parametrize("method", attacks.METHODS)
def test_output_change_grows_with_budget(results, method):
    out = results[method, False].metrics["output_rms_hu"].reshape(2, len(EPS))
    assert np.all(out[:, 0] < 1e-3)
    assert np.all(np.diff(out, axis=1) > 0), out


@pytest.mark.slow
@pytest.mark.parametrize("method", attacks.METHODS)
def test_targeted_attack_approaches_target(results, method):
    m = results[method, True].metrics
    before, after = m["target_rms_hu_clean"], m["target_rms_hu"]
    eps = results[method, True].epsilon_hu
    np.testing.assert_allclose(after[eps == 0], before[eps == 0], rtol=1e-4)
    if method == "fgsm":  # one signed step of a large budget overshoots
        assert np.all(after[eps == EPS[1]] < before[eps == EPS[1]])
    else:
        assert np.all(after[eps > 0] < before[eps > 0])
    if method == "bim":  # (pgd's random start grows with the budget, too)
        assert np.all(after[eps == EPS[-1]] < after[eps == EPS[1]])


@pytest.mark.slow  # (the shared results: one compile)
def test_iterative_attacks_beat_fgsm(results):
    f = results["fgsm", False].metrics["output_rms_hu"]
    for method in ("bim", "pgd"):
        it = results[method, False].metrics["output_rms_hu"]
        assert np.all(it[1:] >= 0.9 * f[1:])


@pytest.mark.slow  # (the shared results: one compile)
def test_result_table(results):
    rows = attacks.result_table(results["pgd", True])
    assert len(rows) == 2 * len(EPS)
    assert rows[1]["epsilon_hu"] == EPS[1] and rows[len(EPS)]["image_index"] == 1
    assert set(attacks.METRICS + attacks.TARGET_METRICS) <= set(rows[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(images=np.zeros((1, 1, 8, 8))), "expected an image"),
    (dict(images=np.full((8, 8), np.nan)), "NaN"),
    (dict(epsilons_hu=[1.0, -1.0]), "finite and >= 0"),
    (dict(epsilons_hu=[np.inf]), "finite and >= 0"),
    (dict(method="cw"), "unknown attack method 'cw'"),
    (dict(target=np.zeros((8, 9))), "target: shape"),
    (dict(target=np.zeros((3, 8, 8))), "target: shape"),
    (dict(target=np.full((8, 8), np.nan)), "target: .*NaN"),
    (dict(steps=0), "steps must be a positive integer"),
    (dict(step_size_hu=-1.0), "step_size_hu"),
    (dict(probe_hu=-1.0), "probe_hu must be >= 0"),
    (dict(images=np.full((2, 8, 8), -2048.0)), r"128 pixel\(s\) outside the valid HU range"),
    (dict(image_ids=[0, 1, 2]), r"image_ids: expected a scalar or 2 values"),
])
def test_bad_inputs_fail_at_start(setup, kwargs, message):
    d = setup[0]
    args = dict(method="bim", images=np.zeros((2, 8, 8)), epsilons_hu=[1.0])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        attacks.attack(args.pop("method"), d, args.pop("images"), args.pop("epsilons_hu"), **args)


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_an_image_attacked_alone_with_its_id_gets_what_it_got_in_the_batch(setup, results, method):
    """The probe (FGSM) and the random start (PGD) are drawn per image id, not per position,
    so that a job that attacks its images in chunks gets what one batch would."""
    d, x, _ = setup
    alone = attacks.attack(method, d, x[1:], EPS, image_ids=[1],
                           **({} if method == "fgsm" else dict(steps=20)))
    ref = results[method, False]
    np.testing.assert_allclose(alone.perturbation, ref.perturbation[len(EPS):], atol=1e-4)
    shifted = attacks.attack(method, d, x[1:], EPS, **({} if method == "fgsm" else dict(steps=20)))
    assert not np.allclose(shifted.perturbation, ref.perturbation[len(EPS):], atol=1e-4)


@pytest.mark.slow
def test_one_program_equals_step_by_step(setup, results, monkeypatch):
    """The fast paths off (the accelerator path: one program, a fori_loop, plain convolutions)
    == on (CPU: step by step), and that program serves other images of the same size."""
    d, x, target = setup
    monkeypatch.setenv(fastpath.ENV, "0")
    with common.count_compiles() as first:
        r = attacks.bim(d, x, EPS, steps=20, step_size_hu=1.0, target=target)
    ref = results["bim", True]
    np.testing.assert_allclose(r.perturbation, ref.perturbation, atol=1e-4)
    for k, v in ref.metrics.items():
        np.testing.assert_allclose(r.metrics[k], v, rtol=1e-4, atol=1e-5)
    assert first["jit(_whole)"] == 1, dict(first)
    with common.count_compiles() as again:
        attacks.bim(d, np.clip(x[::-1] + 10.0, ct.HU_MIN, ct.HU_MAX), EPS, steps=20,
                    step_size_hu=1.0, target=target[::-1])
    assert not again, dict(again)
