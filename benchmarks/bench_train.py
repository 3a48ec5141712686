"""Train-step throughput (patches/s) of ldct_jax's CNN-10 and WGAN-VGG steps against PyTorch.

    python -m benchmarks.bench_train                               # patch 64, batch 8, CPU
    python -m benchmarks.bench_train --batch=128 --repeats=5       # the paper's batch
    python -m benchmarks.bench_train --models=wgan_vgg --n_critic=1

Implementations, timed in the same run on the same random weights and random HU patches:

  jax        the library's step, as the trainer builds it: `ldct_jax.train.supervised` /
             `ldct_jax.train.wgan` `make_step`, jitted by `parallel.data_parallel_step`
             (state donated, batch sharded over all local devices).
  torch      the same step in plain PyTorch (NCHW, weights copied from the JAX params, Adam with
             the same settings; the WGAN-GP critic updates with a double-backward penalty, then
             the generator update with VGG19 conv5_4 L1, the critic frozen for it).

A WGAN-VGG step is `n_critic` critic updates and one generator update; it consumes
batch x n_critic patches, which is what patches/s counts (as `Trainer.patches_per_step`).
The VGG19 is random-init (timing only). On a GPU (JAX's default device a GPU and
`torch.cuda.is_available()`), PyTorch runs on CUDA too.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from absl import app, flags

from benchmarks import common, torch_twins

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags (defined only when run as a script, so that tests can
    import every benchmark into one process)."""
    flags.DEFINE_integer("patch", 64, "patch side (paper: 64)")
    flags.DEFINE_integer("batch", 8, "patches per (sub-)batch (paper: 128)")
    flags.DEFINE_integer("n_critic", 4, "critic updates per WGAN-VGG step (paper: 4)")
    flags.DEFINE_list("models", ["cnn10", "wgan_vgg"], "models")
    flags.DEFINE_list("impls", ["jax", "torch"], f"implementations to time, of {IMPLS}")
    flags.DEFINE_integer("repeats", 2, "timed steps per implementation after a warm-up step, "
                         "taken in turns (the best one counts)")
    flags.DEFINE_integer("threads", 0, "PyTorch CPU threads (0: the cores this process may use)")


LR, B1, B2 = 1e-5, 0.5, 0.9          # the paper preset (Adam for generator and critic)
GP_WEIGHT, PERCEPTUAL_WEIGHT, TAP = 10.0, 0.1, "conv5_4"
IMPLS = ("jax", "torch")


def random_patches(rng, shape) -> dict[str, np.ndarray]:
    low = rng.normal(40.0, 300.0, shape).astype(np.float32)
    return {"low": low, "full": (low + rng.normal(0.0, 30.0, shape)).astype(np.float32)}


# ---------------------------------------------------------------------------------------------
# JAX


def jax_setup(model: str, patch: int, batch: int, n_critic: int, seed: int = 0):
    """`(step, state, extra)`: the library's jitted step, its initial state, extra args."""
    import jax

    from ldct_jax import models, parallel
    from ldct_jax.models import vgg_weights, wgan_vgg
    from ldct_jax.train import supervised, wgan

    mesh = parallel.make_mesh()
    parallel.check_batch_divisible(batch, mesh)
    key = jax.random.key(seed)
    d = models.create(model, jax.random.fold_in(key, 0))
    opt = supervised.adam(LR, B1, B2)
    if model == "cnn10":
        state = supervised.init_state(d, opt, seed)
        step = parallel.data_parallel_step(supervised.make_step(d.spec, opt), mesh)
        return d, step, parallel.replicate(state, mesh), (), mesh, {}
    critic, cparams = wgan_vgg.init_critic(jax.random.fold_in(key, 1), patch)
    vgg = vgg_weights.random_init("vgg19", jax.random.fold_in(key, 2), imagenet_norm=False)
    copt = supervised.adam(LR, B1, B2)
    settings = wgan.WGANSettings(n_critic=n_critic, gp_weight=GP_WEIGHT,
                                 perceptual_weight=PERCEPTUAL_WEIGHT, tap=TAP)
    state = wgan.init_state(d, cparams, opt, copt, seed)
    step = parallel.data_parallel_step(wgan.make_step(d.spec, critic, vgg, opt, copt, settings),
                                       mesh, extra_args=1)
    extra = (parallel.replicate(vgg.params, mesh),)
    return d, step, parallel.replicate(state, mesh), extra, mesh, {"critic": cparams,
                                                                     "vgg": vgg}


def jax_runner(model: str, batch_np: dict) -> Callable[[], Any]:
    """One blocking call of the library's jitted step per call (traced and compiled here)."""
    import jax

    from ldct_jax import parallel
    b = batch_np["low"].shape[0]
    _, step, state, extra, mesh, _ = jax_setup(model, FLAGS.patch, b, FLAGS.n_critic)
    batch = parallel.global_batch(batch_np, mesh)
    holder = [state]

    def one():
        holder[0], metrics = step(holder[0], batch, *extra)
        jax.block_until_ready(metrics)

    one()
    return one


# ---------------------------------------------------------------------------------------------
# PyTorch


class TorchCNN10Step:
    """Adam on the MSE in network units, as `supervised.make_step`."""

    def __init__(self, denoiser, device: str = "cpu"):
        import torch
        self.d, self.device = denoiser, device
        self.net = torch_twins.denoiser(denoiser.spec.name, denoiser.params).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=LR, betas=(B1, B2))

    def loss(self, low, full):
        import torch
        x, y = self.d.spec.to_net(low)[:, None], self.d.spec.to_net(full)[:, None]
        return torch.mean(torch.square(self.net(x) - y))

    def __call__(self, batch) -> dict:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(batch["low"], batch["full"])
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}


class TorchWGANStep:
    """`n_critic` WGAN-GP critic updates, then the generator update, as `wgan.make_step`."""

    def __init__(self, generator, critic_params, vgg, patch: int, device: str = "cpu",
                 seed: int = 0):
        import torch
        self.d, self.device = generator, device
        self.g = torch_twins.denoiser(generator.spec.name, generator.params).to(device)
        self.c = torch_twins.critic(critic_params, patch).to(device)
        self.vgg = torch_twins.vgg_to("vgg19", vgg.params, TAP).to(device)
        for p in self.vgg.parameters():
            p.requires_grad_(False)
        self.g_opt = torch.optim.Adam(self.g.parameters(), lr=LR, betas=(B1, B2))
        self.c_opt = torch.optim.Adam(self.c.parameters(), lr=LR, betas=(B1, B2))
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def critic_loss(self, real, fake, alpha):
        """Wasserstein term + GP at `alpha real + (1 - alpha) fake`; all `[B, 1, p, p]`."""
        import torch
        wasserstein = self.c(fake).mean() - self.c(real).mean()
        x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.c(x_hat).sum(), x_hat, create_graph=True)
        norm = torch.sqrt(torch.sum(torch.square(grad.flatten(1)), dim=1) + 1e-12)
        gp = torch.mean(torch.square(norm - 1.0))
        return wasserstein + GP_WEIGHT * gp, wasserstein, gp

    def generator_loss(self, x, y):
        import torch
        fake = self.g(x)
        adversarial = -self.c(fake).mean()
        fa = self.vgg(fake.expand(-1, 3, -1, -1))
        with torch.no_grad():
            fb = self.vgg(y.expand(-1, 3, -1, -1))
        perceptual = torch.mean(torch.abs(fa - fb))
        return PERCEPTUAL_WEIGHT * perceptual + adversarial, adversarial, perceptual

    def __call__(self, batch) -> dict:
        import torch
        x = self.d.spec.to_net(batch["low"])[:, :, None]    # [B, n_critic, 1, p, p]
        y = self.d.spec.to_net(batch["full"])[:, :, None]
        for i in range(x.shape[1]):
            with torch.no_grad():
                fake = self.g(x[:, i])
            alpha = torch.rand((x.shape[0], 1, 1, 1), generator=self.gen, device=self.device)
            self.c_opt.zero_grad(set_to_none=True)
            c_loss, w, gp = self.critic_loss(y[:, i], fake, alpha)
            c_loss.backward()
            self.c_opt.step()
        for p in self.c.parameters():
            p.requires_grad_(False)
        self.g_opt.zero_grad(set_to_none=True)
        g_loss, adv, perc = self.generator_loss(x[:, -1], y[:, -1])
        g_loss.backward()
        self.g_opt.step()
        for p in self.c.parameters():
            p.requires_grad_(True)
        return {"loss": g_loss.detach(), "critic_loss": c_loss.detach()}


def torch_runner(model: str, batch_np: dict, device: str) -> Callable[[], Any]:
    """One blocking PyTorch step per call (after one warm-up step here)."""
    import torch
    b = batch_np["low"].shape[0]
    d, _, _, _, _, extra = jax_setup(model, FLAGS.patch, b, FLAGS.n_critic)
    if model == "cnn10":
        step = TorchCNN10Step(d, device)
    else:
        step = TorchWGANStep(d, extra["critic"], extra["vgg"], FLAGS.patch, device)
    batch = {k: torch.from_numpy(v).to(device) for k, v in batch_np.items()}

    def one():
        step(batch)
        if device != "cpu":
            torch.cuda.synchronize()

    one()
    return one


def main(_):
    impls = [i for i in IMPLS if i in FLAGS.impls]
    if sorted(set(FLAGS.impls) - set(impls)):
        raise app.UsageError(f"--impls: expected some of {IMPLS}, got {FLAGS.impls}")
    tdev = common.device_header(FLAGS.threads or common.cpu_threads())
    jmm = common.jax_matmul_gflops()
    tmm = common.torch_matmul_gflops(device=tdev)
    print(f"float32 2048^3 matmul: JAX {jmm:.1f} GFLOP/s, PyTorch {tmm:.1f} GFLOP/s")
    rng = np.random.default_rng(0)
    head = "| model | patch | batch | impl | step s | patches/s | vs PyTorch |"
    rows = []
    for model in FLAGS.models:
        if model == "cnn10":
            shape, per_step = (FLAGS.batch, FLAGS.patch, FLAGS.patch), FLAGS.batch
            model_impls = impls
        elif model == "wgan_vgg":
            shape = (FLAGS.batch, FLAGS.n_critic, FLAGS.patch, FLAGS.patch)
            per_step, model_impls = FLAGS.batch * FLAGS.n_critic, impls
        else:
            raise app.UsageError(f"--models: unknown {model!r}; expected cnn10, wgan_vgg")
        batch_np = random_patches(rng, shape)
        runners = {}
        for impl in model_impls:
            runners[impl] = (torch_runner(model, batch_np, tdev) if impl == "torch" else
                             jax_runner(model, batch_np))
        result = common.interleaved_best(runners, FLAGS.repeats)
        print("  " + ", ".join(f"{model} {k}: {v:.3f} s/step" for k, v in result.items()),
              flush=True)
        for impl, sec in result.items():
            vs = f"{result['torch'] / sec:.2f}x" if "torch" in result and impl != "torch" else ""
            rows.append(f"| {model} | {FLAGS.patch} | {FLAGS.batch} | {impl} | {sec:.3f} | "
                        f"{common.fmt_rate(per_step / sec)} | {vs} |")
    note = f"; WGAN-VGG: {FLAGS.n_critic} critic updates + 1 generator update per step"
    print(f"\nbest of {FLAGS.repeats} steps after a warm-up{note}")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    print("\n".join(rows))


if __name__ == "__main__":
    define_flags()
    app.run(main)
