"""Train-step throughput (patches/s) of the natural-invariance generator against PyTorch.

    python -m benchmarks.bench_natural                      # configs/natural.py's default sizes
    python -m benchmarks.bench_natural --models=cnn10 --batch=16 --repeats=5

The step (`ldct_jax.train.natural`): `n_critic` WGAN-GP updates of the K patch critics, critic i
on 2^i x 2^i block means of real patches against x + g(x, z), then one generator update whose
loss runs the frozen denoiser f on two perturbed copies of every patch. Sizes, loss weights and
optimisers are those of `configs/natural.py:<model>` (synthetic default: patch 80, or 64 for
gauss_ri; batch 8; generator 16 features, 2 levels; critics 16 features, 3 scales; 1 critic
update), the denoiser random-init (gauss_ri has no params). Implementations, timed in the same
run on the same random weights and random HU patches:

  jax        the library's step as the job builds it (`ldct_jax.jobs.natural.build`: jitted by
             `parallel.data_parallel_step`, state donated, batch sharded over all local devices).
  torch      the same step in plain PyTorch (NCHW; `torch_twins` holding the JAX params; Adam
             with the same settings; double-backward gradient penalties).

Before timing, both take their first step from the same params on the same batch with the same
noise z and penalty interpolation weights (the library's own draws, reproduced from its state's
key), and their metrics are printed side by side: a twin that computes something else shows
there, and the table says whether the first step agreed. The timed steps then draw their own
noise. A step consumes batch x n_critic patches x (as `Trainer.patches_per_step`), which is what
patches/s counts. On a GPU (JAX's default device a GPU and `torch.cuda.is_available()`),
PyTorch runs on CUDA too. On a CPU shared with other jobs, set OMP_WAIT_POLICY=PASSIVE: PyTorch's
OpenMP threads otherwise spin while waiting for one another, and a step can take 10x longer
whenever one of them is descheduled.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
from absl import app, flags

from benchmarks import common, torch_twins

FLAGS = flags.FLAGS

MODELS = ("cnn10", "gauss_ri")
# Largest relative difference of a first-step metric between JAX and PyTorch that passes.
RTOL = 1e-3


def define_flags() -> None:
    """The command-line flags (defined only when run as a script, so that tests can
    import every benchmark into one process)."""
    flags.DEFINE_list("models", list(MODELS), f"frozen denoisers f, of {MODELS}")
    flags.DEFINE_integer("patch", 0, "patch side (0: the config's, 80; 64 for gauss_ri)")
    flags.DEFINE_integer("batch", 0, "patches per sub-batch (0: the config's, 8)")
    flags.DEFINE_integer("n_critic", 0, "critic updates per step (0: the config's, 1)")
    flags.DEFINE_integer("repeats", 2, "timed steps per implementation after the first step, "
                         "taken in turns (the best one counts)")
    flags.DEFINE_integer("threads", 0, "PyTorch CPU threads (0: the cores this process may use)")


def make_config(model: str, patch: int = 0, batch: int = 0, n_critic: int = 0):
    """`configs/natural.py:<model>` with the sizes that are not 0 replaced; checked as the job
    checks it."""
    from configs import natural as natural_config
    from ldct_jax.jobs import natural as job

    if model not in MODELS:
        raise ValueError(f"--models: unknown {model!r}; expected some of {MODELS}")
    config = natural_config.get_config(model)
    if patch:
        config.patch_size = patch
    if batch:
        config.batch_size = batch
    if n_critic:
        config.critic.n_critic = n_critic
    job.check_config(config)
    if config.loss.distance != "mse":
        raise ValueError(f"config.loss.distance={config.loss.distance!r}: the PyTorch twin "
                         "has 'mse' only")
    return config


def random_batch(rng: np.random.Generator, config) -> dict[str, np.ndarray]:
    """`{'low', 'real'}` `[B, n_critic, p, p]` random HU inside the valid range."""
    from ldct_jax import ct
    p = config.patch_size
    shape = (config.batch_size, config.critic.n_critic, p, p)
    return {k: np.clip(rng.normal(40.0, 300.0, shape), ct.HU_MIN, ct.HU_MAX).astype(np.float32)
            for k in ("low", "real")}


# ---------------------------------------------------------------------------------------------
# JAX


class JaxStep:
    """The library's step as `jobs.natural.build` makes it, on a fixed batch; each call takes
    one step and blocks until its metrics are ready.

    Attributes:
      trainer: the job's `Trainer` (denoiser, initial state, jitted step).
      initial: host copies of the initial state (the step donates the device state).
      draws: the noise and interpolation weights the first step draws (`library_draws`).
    """

    def __init__(self, config, batch_np: dict[str, np.ndarray], seed: int = 0):
        import jax

        from ldct_jax import models, parallel
        from ldct_jax.jobs import natural as job

        mesh = parallel.make_mesh()
        parallel.check_batch_divisible(config.batch_size, mesh)
        denoiser = models.create(config.model, jax.random.key(seed),
                                 **dict(config.model_config))
        self.trainer = job.build(config, mesh, [], denoiser)
        self.state = self.trainer.init_state
        self.initial = parallel.to_host(self.state)
        self.draws = library_draws(self.state, config)
        self.batch = parallel.global_batch(batch_np, mesh)

    def __call__(self) -> dict:
        import jax
        self.state, metrics = self.trainer.step(self.state, self.batch)
        return jax.block_until_ready(metrics)


def library_draws(state, config) -> dict[str, np.ndarray]:
    """The random numbers `train.natural.make_step` draws at `state`'s step, drawn the same way:
    `z` `[n_critic, B, p, p, C]` (critic update i's fakes), `alpha` `[n_critic, K, B, 1, 1]`
    (critic i's penalty interpolates in update i) and `z_gen` `[2, B, p, p, C]` (the generator
    update's two samples)."""
    import jax

    from ldct_jax.train import natural as natural_train
    from ldct_jax.train import state as state_lib

    n, scales = config.critic.n_critic, config.critic.scales
    shape = (config.batch_size,) + (config.patch_size,) * 2
    channels = config.generator.noise_channels
    keys = jax.random.split(state_lib.step_key(state), n + 1)
    z, alpha = [], []
    for i in range(n):
        kz, kgp = jax.random.split(keys[i])
        z.append(natural_train.draw_noise(kz, shape, channels))
        # gan_losses.gradient_penalty: one alpha per sample, critic i with key i of kgp.
        alpha.append([jax.random.uniform(k, (shape[0], 1, 1))
                      for k in jax.random.split(kgp, scales)])
    z_gen = [natural_train.draw_noise(k, shape, channels) for k in jax.random.split(keys[-1])]
    return {k: np.asarray(jax.device_get(v), np.float32) for k, v in
            {"z": z, "alpha": alpha, "z_gen": z_gen}.items()}


# ---------------------------------------------------------------------------------------------
# PyTorch


def bounded_mse(a, b):
    """`distances.bounded_mse`: min(MSE over the last two axes, 1)."""
    import torch
    return torch.clamp(torch.mean(torch.square(a - b), dim=(-2, -1)), max=1.0)


def downsample(x, stage: int):
    """`models.natural.downsample` of `[B, H, W]`: means over 2^stage x 2^stage blocks."""
    import torch.nn.functional as F
    f = 2 ** stage
    return x if f == 1 else F.avg_pool2d(x[:, None], f)[:, 0]


class TorchNaturalStep:
    """`n_critic` WGAN-GP updates of the K critics, then the generator update, as
    `train.natural.make_step`, on the initial params of a `JaxStep` (`initial`)."""

    def __init__(self, config, denoiser, initial, device: str = "cpu", seed: int = 0):
        import torch

        from ldct_jax.jobs import natural as job

        self.settings = job.settings_from(config)
        self.spec, self.device = denoiser.spec, device
        gmodule, cmodule = job.modules(config)
        self.critic_module = cmodule
        self.g = torch_twins.invariance_generator(gmodule, initial.params).to(device)
        self.critics = torch.nn.ModuleList([
            torch_twins.patch_critic(cmodule, initial.critic_params[f"stage{i}"])
            for i in range(self.settings.scales)]).to(device)
        self.f = torch_twins.denoiser(denoiser.name, denoiser.params).to(device)
        for p in self.f.parameters():
            p.requires_grad_(False)
        self.channels = gmodule.noise_channels
        self.condition_on_output = gmodule.condition_on_output
        if self.settings.lam_start > 0 and self.settings.lam_steps > 0:
            raise ValueError("config.loss.lam_start: the PyTorch twin has a constant lambda only "
                             "(set it to 0)")
        opt, copt = config.optimizer, config.critic_optimizer
        for key, o in (("optimizer", opt), ("critic_optimizer", copt)):
            if o.get("schedule", "constant") != "constant":
                raise ValueError(f"config.{key}.schedule={o.schedule!r}: the PyTorch twin has "
                                 "the constant learning rate only")
        self.g_opt = torch.optim.Adam(self.g.parameters(), lr=opt.lr, betas=(opt.b1, opt.b2))
        self.c_opt = torch.optim.Adam(self.critics.parameters(), lr=copt.lr,
                                      betas=(copt.b1, copt.b2))
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def perturb(self, x_hu, z):
        """`(x_inv, x + x_inv)` HU `[B, H, W]`, x + x_inv clipped to the valid range; the
        generator's conditions are x and, if it is conditioned on it, f(x)."""
        import torch

        from ldct_jax import ct
        from ldct_jax.models import natural as natural_models
        parts = [x_hu]
        if self.condition_on_output:
            with torch.no_grad():
                parts.append(self.spec.from_net(self.f(self.spec.to_net(x_hu)[:, None])[:, 0]))
        raw = self.g(natural_models.to_units(torch.stack(parts, dim=1)), z)
        perturbed = torch.clamp(x_hu + raw, ct.HU_MIN, ct.HU_MAX)
        return perturbed - x_hu, perturbed

    def scores(self, units):
        """`[N, H, W]` -> `[N, K]`: critic i on `downsample(units, i)`."""
        import torch
        return torch.stack([c(downsample(units, i)[:, None])
                            for i, c in enumerate(self.critics)], dim=-1)

    def critic_loss(self, real_hu, fake_hu, alpha):
        """Sum over stages of the Wasserstein term and the weighted penalty at
        `alpha[i] real + (1 - alpha[i]) fake`; `alpha` `[K, B, 1, 1]`."""
        import torch

        from ldct_jax.models import natural as natural_models
        total, wasserstein, penalty = 0.0, [], []
        for i, c in enumerate(self.critics):
            real = downsample(natural_models.to_units(real_hu), i)
            fake = downsample(natural_models.to_units(fake_hu), i)
            w = c(fake[:, None]).mean() - c(real[:, None]).mean()
            x_hat = (alpha[i] * real + (1 - alpha[i]) * fake).requires_grad_(True)
            (grad,) = torch.autograd.grad(c(x_hat[:, None]).sum(), x_hat, create_graph=True)
            norm = torch.sqrt(torch.sum(torch.square(grad.flatten(1)), dim=1) + 1e-12)
            gp = torch.mean(torch.square(norm - 1.0))
            total = total + w + self.settings.gp_weight * gp
            wasserstein.append(-w)
            penalty.append(gp)
        return total, wasserstein, penalty

    def generator_loss(self, x_hu, z1, z2):
        """`(L_g, stats)` of the module docstring of `train.natural`."""
        import torch

        from ldct_jax.models import natural as natural_models
        s, spec = self.settings, self.spec
        (inv1, p1), (inv2, p2) = self.perturb(x_hu, z1), self.perturb(x_hu, z2)
        x_net = spec.to_net(x_hu)
        with torch.no_grad():
            y0 = self.f(x_net[:, None])[:, 0]
        both = torch.stack([p1, p2])                              # [2, B, H, W] HU
        both_net = spec.to_net(both)
        y = self.f(both_net.flatten(0, 1)[:, None])[:, 0].unflatten(0, both.shape[:2])
        d_out = torch.mean(torch.square(y - y0))
        change = torch.mean(bounded_mse(both_net, x_net.expand_as(both_net)))
        realism = torch.mean(torch.sum(self.scores(natural_models.to_units(both.flatten(0, 1))),
                                       dim=-1))
        diversity = torch.mean(bounded_mse(spec.to_net(p1), spec.to_net(p2)))
        loss = d_out - s.lam * change - s.alpha * realism - s.beta * diversity
        stats = {"d_out": d_out, "d_in": change, "realism": realism, "diversity": diversity,
                 "x_inv_rms_hu": torch.sqrt(torch.mean(torch.square(torch.stack([inv1, inv2])))),
                 "output_rms_hu": torch.sqrt(d_out) * spec.scale,
                 "lam": torch.tensor(s.lam)}
        return loss, stats

    def _noise(self, given: Optional[np.ndarray], shape):
        """`given` `[B, H, W, C]` as NCHW, or a fresh standard normal draw."""
        import torch
        if given is not None:
            return torch.from_numpy(given).to(self.device).permute(0, 3, 1, 2)
        b, h, w = shape
        return torch.randn((b, self.channels, h, w), generator=self.gen, device=self.device)

    def update_critics(self, batch: dict, draws: Optional[dict[str, np.ndarray]] = None) -> dict:
        """The `n_critic` critic updates on `batch` (`{'low', 'real'}` `[B, n_critic, p, p]` HU
        tensors) with the random numbers `draws` (as `library_draws`) or its own; returns the
        last update's losses."""
        import torch
        low, real = batch["low"], batch["real"]
        k = len(self.critics)
        for i in range(low.shape[1]):
            z = self._noise(None if draws is None else draws["z"][i], low[:, i].shape)
            with torch.no_grad():
                fake = self.perturb(low[:, i], z)[1]
            alpha = (torch.rand((k, low.shape[0], 1, 1), generator=self.gen, device=self.device)
                     if draws is None else torch.from_numpy(draws["alpha"][i]).to(self.device))
            self.c_opt.zero_grad(set_to_none=True)
            c_loss, w, gp = self.critic_loss(real[:, i], fake, alpha)
            c_loss.backward()
            self.c_opt.step()
        metrics = {"critic_loss": c_loss.detach()}
        metrics.update({f"wasserstein_distance_{i}": w[i].detach() for i in range(k)})
        metrics.update({f"gradient_penalty_{i}": gp[i].detach() for i in range(k)})
        return metrics

    def update_generator(self, batch: dict,
                         draws: Optional[dict[str, np.ndarray]] = None) -> dict:
        """The generator update on `batch['low'][:, -1]`, the critics frozen; returns its loss,
        the loss's parts and the gradient norm."""
        import torch
        low = batch["low"][:, -1]
        for p in self.critics.parameters():
            p.requires_grad_(False)
        z1, z2 = (self._noise(None if draws is None else draws["z_gen"][j], low.shape)
                  for j in range(2))
        self.g_opt.zero_grad(set_to_none=True)
        g_loss, stats = self.generator_loss(low, z1, z2)
        g_loss.backward()
        grad_norm = torch.sqrt(sum(torch.sum(torch.square(p.grad)) for p in self.g.parameters()))
        self.g_opt.step()
        for p in self.critics.parameters():
            p.requires_grad_(True)
        return {k: v.detach() for k, v in {"loss": g_loss, **stats, "grad_norm": grad_norm}.items()}

    def load_critics(self, critic_params) -> None:
        """Replaces the critics' weights (in place: the optimiser keeps its state) by the Flax
        `{'stage<i>': params}`."""
        for i, c in enumerate(self.critics):
            params = critic_params[f"stage{i}"]
            c.load_state_dict(torch_twins.patch_critic(self.critic_module, params).state_dict())

    def __call__(self, batch: dict) -> dict:
        """One step with its own random numbers; returns the step's metrics."""
        import torch
        metrics = self.update_critics(batch)
        metrics.update(self.update_generator(batch))
        if self.device != "cpu":
            torch.cuda.synchronize()
        return metrics


# ---------------------------------------------------------------------------------------------
# The first step, both ways


def first_step(config, batch_np: dict[str, np.ndarray],
               device: str = "cpu") -> tuple[list[dict[str, Any]], JaxStep, Any]:
    """Both implementations' first step from the same params, batch and random numbers.

    The critics' losses are compared before their update, the generator's with the critics
    as the library updated them: Adam's first update moves every weight by about its learning
    rate whatever the size of its gradient, so weights whose gradient is zero but for rounding
    would end up apart by that much. Critics have such weights: the penalty does not depend on
    their biases (only the LeakyReLU slopes they select, piecewise constant), and a bias's
    Wasserstein gradient cancels where its unit is as often positive on the fakes as on the
    real patches.

    Returns:
      `(rows, jax_step, torch_step)`: per metric of the library's step `{'metric', 'jax',
      'torch', 'rel'}` (`rel`: |jax - torch| / max(|jax|, |torch|), for the Wasserstein
      estimates at least 1e-3), and the two steps, each
      one step on, ready to be timed (later steps draw their own random numbers).
    """
    import torch

    from ldct_jax import parallel
    jax_step = JaxStep(config, batch_np)
    torch_step = TorchNaturalStep(config, jax_step.trainer.denoiser, jax_step.initial, device)
    want = {k: float(v) for k, v in jax_step().items()}
    batch = {k: torch.from_numpy(v).to(device) for k, v in batch_np.items()}
    got = torch_step.update_critics(batch, jax_step.draws)
    torch_step.load_critics(parallel.to_host(jax_step.state.critic_params))
    got.update(torch_step.update_generator(batch, jax_step.draws))
    got = {k: float(v) for k, v in got.items()}
    if sorted(got) != sorted(want):
        raise ValueError(f"metrics of the PyTorch step {sorted(got)} are not the library's "
                         f"{sorted(want)}")
    # A Wasserstein estimate is a difference of two mean scores of order 1e-1 that can cancel
    # to ~1e-5: its difference is measured against a floor of 1e-3.
    floor = {k: 1e-3 if k.startswith("wasserstein_distance") else 1e-30 for k in want}
    rows = [{"metric": k, "jax": want[k], "torch": got[k],
             "rel": abs(want[k] - got[k]) / max(abs(want[k]), abs(got[k]), floor[k])}
            for k in want]
    return rows, jax_step, torch_step


def print_check(model: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{model}: the first step from the same params, batch, noise and interpolates")
    print("| metric | JAX | PyTorch | rel. diff |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['metric']} | {r['jax']:.6g} | {r['torch']:.6g} | {r['rel']:.1e} |")


def table_row(model: str, config, seconds: dict[str, float], check: list[dict[str, Any]]) -> str:
    """A row of the result table: sizes, ms per step and patches/s of both, the ratio, the
    first step's largest relative difference and whether it is within RTOL."""
    patches = config.batch_size * config.critic.n_critic
    jax_s, torch_s = seconds["jax"], seconds["torch"]
    worst = max(r["rel"] for r in check)
    verdict = "agree" if worst <= RTOL else "DIFFER"
    return (f"| {model} | {config.patch_size} | {config.batch_size} | {config.critic.n_critic} | "
            f"{1e3 * jax_s:.0f} | {1e3 * torch_s:.0f} | {common.fmt_rate(patches / jax_s)} | "
            f"{common.fmt_rate(patches / torch_s)} | {torch_s / jax_s:.2f}x | "
            f"{verdict} ({worst:.0e}) |")


TABLE_HEAD = ("| f | patch | batch | n_critic | JAX ms/step | PyTorch ms/step | JAX patches/s | "
              "PyTorch patches/s | JAX vs PyTorch | first step (max rel. diff) |")


def print_table(rows: list[str]) -> None:
    print(TABLE_HEAD)
    print("|" + "---|" * (TABLE_HEAD.count("|") - 1))
    print("\n".join(rows))


def main(_):
    import torch

    tdev = common.device_header(FLAGS.threads or common.cpu_threads())
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {common.cpu_threads()} cores" + (
        "; PyTorch's threads spin while they wait for each other, so on a loaded machine "
        "run with OMP_WAIT_POLICY=PASSIVE" if load > common.cpu_threads() and tdev == "cpu"
        and "OMP_WAIT_POLICY" not in os.environ else ""))
    print(f"float32 2048^3 matmul: JAX {common.jax_matmul_gflops():.1f} GFLOP/s, PyTorch "
          f"{common.torch_matmul_gflops(device=tdev):.1f} GFLOP/s")
    rng = np.random.default_rng(0)
    rows, failed = [], []
    for model in FLAGS.models:
        try:
            config = make_config(model, FLAGS.patch, FLAGS.batch, FLAGS.n_critic)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        batch_np = random_batch(rng, config)
        check, jax_step, torch_step = first_step(config, batch_np, tdev)
        print_check(model, check)
        if max(r["rel"] for r in check) > RTOL:
            failed.append(model)
        batch = {k: torch.from_numpy(v).to(tdev) for k, v in batch_np.items()}
        seconds = common.interleaved_best({"jax": jax_step, "torch": lambda: torch_step(batch)},
                                          FLAGS.repeats)
        print("  " + ", ".join(f"{model} {k}: {v:.3f} s/step" for k, v in seconds.items()),
              flush=True)
        rows.append(table_row(model, config, seconds, check))
    print(f"\nbest of {FLAGS.repeats} steps after the first; a step: n_critic updates of "
          "the critics, one of the generator")
    print_table(rows)
    if failed:
        raise SystemExit(f"JAX and PyTorch differ by more than {RTOL:g} on the first step of "
                         f"{', '.join(failed)}: a twin does not compute the library's step")


if __name__ == "__main__":
    define_flags()
    app.run(main)
