"""Train a denoiser with the MSE, as ldct-benchmark trains every method but WGAN-VGG and DU-GAN:
`python launch/main.py --config=configs/supervised.py:<method>[,<preset>]` (-> runs/
supervised_<method>, whose model/ the sweeps of that method read by default).

Methods:
  cnn10       CNN-10 (also configs/cnn10.py, which trains into runs/cnn10)
  redcnn      RED-CNN; the default has 16 channels (ldct-benchmark: 96)
  resnet      ldct-benchmark's ResNet; the default has 32 channels and 4 blocks (128, 10). Its
              BatchNorm layers are trained in inference form: fixed statistics (0 and 1 at
              init), trainable scale and bias. ldct-benchmark trains them with batch statistics;
              its checkpoints import with their running statistics.
  qae         the quadratic autoencoder (15 channels, as ldct-benchmark's)
  bilateral   three trainable bilateral filters (12 params). The range sigmas have a learning
              rate of their own, config.optimizer.lr_range (ldct-benchmark's lr_r); the spatial
              sigmas config.optimizer.lr. Spatial sigmas above 3 px need a larger
              --config.model_config.max_radius (7 by default).
  transct     TransCT (79 M params), whole 512 x 512 slices only: config.patch_size is 512 in
              every preset (ldct-benchmark's patchsize 0) and any other value is refused.
Presets (after a comma):
  (none)      synthetic data built into <workdir>/data, minutes on a 2-core CPU: patches 48,
              Adam 1e-3 with a cosine decay (CNN-10: 2000 steps of batch 16; RED-CNN, ResNet,
              Q-AE 1000 steps of batch 8; bilateral 300 steps of 8 patches of 64 px, lr 0.05 and
              lr_range 0.01; TransCT 60 steps of one slice, lr 3e-4: a smoke run only, far from
              denoising, see ldct_jax/jobs/configs.py).
  paper       Mayo data (--config.data.root=...), the architecture at ldct-benchmark's widths,
              patches 64, batch 128, Adam 1e-5 (0.5, 0.9): the published WGAN-VGG settings, so
              that every network is trained alike (bilateral's lr_range too).
  ldctbench   the package's architecture and its tuned values (configs/<method>.yaml of
              eeulig/ldct-benchmark: Adam lr, iterations, minibatch, patch size, seed; bilateral's
              lr_r), Mayo data. Bilateral starts from sigmas 0.5 and 0.01 as ldct-benchmark's
              does: its yaml's sigma_xyz_init and sigma_r_init are ignored by its model.

Every field can be overridden, e.g. --config.num_steps=100 --config.model_config.features=32.
"""

from ldct_jax.jobs import configs

METHODS = tuple(configs.SUPERVISED_DEFAULTS)
PRESETS = ("default", "paper", "ldctbench")


def get_config(arg=None):
    method, preset = configs.parse_preset("configs/supervised.py", arg, METHODS, PRESETS)
    c = configs.supervised_config(method, preset)
    c.lock()
    return c
