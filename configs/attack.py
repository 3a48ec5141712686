"""Adversarial attack sweep: `python launch/main.py --config=configs/attack.py:<model>[,<variant>]`.

The opposite of the invariance sweep: small perturbations (L-infinity budget in HU) with a large
output change, by FGSM, BIM and PGD (ldct_jax.analysis.attacks), over the grid methods x
budgets x images, in chunks that a restarted run does not redo, then a report (figures: x,
x_adv, f(x), f(x_adv), the perturbation and the output difference; a table). See
ldct_jax/jobs/attack.py for what lands in the workdir.

Models: gauss_ri (no training; 2 synthetic 128x128 slices), cnn10 and wgan_vgg
(config.checkpoint, default runs/cnn10/model and runs/wgan/model from configs/cnn10.py and
configs/wgan.py, or an ldct-benchmark .pt; 2 synthetic 512x512 slices as in training,
centre-cropped to 128x128: --config.crop=0 for whole slices).
Variants (after a comma):
  targeted   towards config.target: 'remove_center' (f(x) with the central disc of
             config.target_radius_px replaced by the median of the ring around it: the output
             with whatever lay there removed) or a .npy of output images in HU.
  paper      Mayo chest and abdomen slices at 512x512 (--config.data.root=...), budgets 1 to
             20 HU, 20 steps.

Images as in configs/invariance.py: config.images (.npy) or config.num_images slices of
config.data. Every field can be overridden, e.g. --config.epsilons_hu='(1., 10.)'.
"""

import ml_collections

from ldct_jax.jobs import configs

MODELS = configs.SWEEP_MODELS
VARIANTS = ("default", "targeted", "paper")


def get_config(arg=None):
    model, variant = configs.parse_preset("configs/attack.py", arg, MODELS, VARIANTS)
    c = configs.sweep_config("attack", model)

    # The grid: methods x images (each chunk one method, all budgets).
    c.methods = ("fgsm", "bim", "pgd")
    c.epsilons_hu = (1.0, 5.0, 20.0)
    c.steps = 10               # BIM and PGD
    c.step_size_hu = 0.0       # 0: 2.5 * epsilon / steps
    c.probe_hu = -1.0          # FGSM/BIM first-gradient probe; < 0: the attacks' default
    c.attack_seed = 0          # PGD start and probe
    c.target = ""              # '' untargeted | 'remove_center' | .npy of output images (HU)
    c.target_radius_px = 8
    c.images_per_chunk = 2

    c.report = ml_collections.ConfigDict(dict(figures=True, compare=()))

    if model == "gauss_ri":
        c.target_radius_px = 24  # reaches past the zeroed 30x30 square (inside it f is 0)
    if variant == "targeted":
        c.target = "remove_center"
    elif variant == "paper":
        configs.mayo_sweep_data(c)
        c.epsilons_hu = (1.0, 2.0, 5.0, 10.0, 20.0)
        c.steps = 20
    c.lock()
    return c
