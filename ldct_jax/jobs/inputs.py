"""What both sweeps read before computing anything: the denoiser, the images, a mask.

Everything here fails at start, with a message naming the config key, the value and what was
expected, so that a sweep never dies after an hour on a bad input.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import numpy as np
from absl import logging

from ldct_jax import ct, files, models
from ldct_jax.jobs import configs, data as data_job
from ldct_jax.analysis import arrays
from ldct_jax.models.denoiser import Denoiser

# Where the training jobs leave their models (the default workdirs of configs/cnn10.py,
# configs/wgan.py and configs/supervised.py:<method>), and how to make them.
TRAINED = {
    "cnn10": ("runs/cnn10/model", "python launch/main.py --config=configs/cnn10.py"),
    "wgan_vgg": ("runs/wgan/model", "python launch/main.py --config=configs/wgan.py"),
    **{m: (f"runs/supervised_{m}/model",
           f"python launch/main.py --config=configs/supervised.py:{m}")
       for m in ("redcnn", "resnet", "qae", "transct", "bilateral")},
}


def denoiser_name(model: str) -> str:
    """The registered name of config.model (an alias such as 'wganvgg' -> 'wgan_vgg').

    Raises:
      ValueError: naming config.model and the names there are.
    """
    try:
        return models.canonical(model)
    except ValueError:
        raise ValueError(f"config.model={model!r} is not a denoiser; expected one of "
                         f"{sorted([*models.ARCHITECTURES, *models.ALIASES])}") from None


def load_denoiser(model: str, checkpoint: str = "", model_config: Optional[dict] = None,
                  seed: int = 0, key: str = "checkpoint") -> Denoiser:
    """The denoiser a sweep studies.

    Args:
      model: a registered architecture or alias (`models.ARCHITECTURES`, config.model).
      checkpoint: a saved model directory (`ldct_jax.models.save`) or an ldct-benchmark
        `.pt`; '' -> the training job's default (TRAINED); gauss_ri (no weights) needs none.
      model_config: module arguments for a model built without a checkpoint (gauss_ri).
      seed: init key of such a model.
      key: the config field of `checkpoint`, named in errors.

    Raises:
      ValueError: unknown model, or a checkpoint holding another model.
      FileNotFoundError: no checkpoint where expected (says how to train one).
    """
    model = denoiser_name(model)
    if not checkpoint and not models.param_shapes(models.spec(model, **dict(model_config or {}))):
        return models.create(model, jax.random.key(seed), **dict(model_config or {}))
    default, train = TRAINED.get(model, ("", ""))
    path = checkpoint or default
    if not os.path.exists(path):
        how = (f"train one with `{train}` (it writes {default}), or " if train else "")
        raise FileNotFoundError(
            f"config.{key}={path!r}: no saved {model} model there; {how}point "
            f"--config.{key} at a directory written by ldct_jax.models.save (or an "
            "ldct-benchmark .pt)")
    if os.path.isfile(path):
        if not path.endswith((".pt", ".pth", ".safetensors")):
            raise ValueError(f"config.{key}={path!r} is a file; expected a directory written "
                             "by ldct_jax.models.save or an ldct-benchmark .pt/.pth/.safetensors")
        return models.import_ldctbench(path, model)  # ldct-benchmark's trained weights
    d = models.load(path)
    if d.spec.name != model:
        raise ValueError(f"config.{key}={path!r} holds a {d.name!r} model, not a {model!r} "
                         f"one; point --config.{key} at a {model} model"
                         + (f" (or set --config.model={d.name})" if key == "checkpoint" else ""))
    return d


def load_npy(key: str, path: str, expected: str) -> np.ndarray:
    """The array of `config.<key>` (a .npy file); errors name the key, the file and `expected`.
    Pickled object arrays are refused: loading them could run code."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.{key}={path!r}: no such file (expected {expected})")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"config.{key}={path!r}: not a plain .npy array (expected {expected}; "
                         f"pickled object arrays are refused): {e}") from None


def load_images(config: Any, workdir: str, scans: Optional[list] = None) -> "Images":
    """The sweep's images in HU, their anatomies (display windows) and where each came from.

    From `config.images` (.npy, `[H, W]` or `[N, H, W]`), or else `config.num_images` low-dose
    slices of `scans` (default: `config.data`, loaded) drawn with `config.image_seed`; then
    centre-cropped to `config.crop` px when it is > 0.

    Returns:
      (images `[N, H, W]` float32 HU, anatomy per image, source description per image).
    """
    if config.images:
        path = config.images
        raw = load_npy("images", path, "a .npy of HU, [H, W] or [N, H, W]")
        images = arrays.check_images(raw, f"config.images={path!r}")
        data_job.check_anatomy("anatomy", config.anatomy)
        anatomy = [str(config.anatomy)] * len(images)
        source = [f"{os.path.basename(path)}[{i}]" for i in range(len(images))]
    else:
        from ldct_jax.data.sampling import sample_slices
        if config.num_images < 1:
            raise ValueError(f"config.num_images={config.num_images}; expected >= 1")
        scans = scans or data_job.load_scans(config.data, workdir)
        picked = sample_slices(scans, config.num_images, config.image_seed)
        images = arrays.check_images(picked["low"], f"config.data ({config.data.source})")
        anatomy = [scans[p].anatomy for p in picked["patient"]]
        source = [f"{scans[p].patient} slice {s}" for p, s in
                  zip(picked["patient"], picked["slice"])]
    return clip_to_hu_range(crop(images, config.crop)), anatomy, source


def clip_to_hu_range(images: np.ndarray) -> np.ndarray:
    """Images clipped to [HU_MIN, HU_MAX] (logged): outside it, 'x + delta in range' and 'a
    budget of eps HU' cannot both hold (e.g. -2048 HU padding outside a scanner's field of view)."""
    outside = (images < ct.HU_MIN) | (images > ct.HU_MAX)
    if outside.any():
        logging.warning("%d pixel(s) outside the valid HU range [%g, %g] (min %g, max %g) "
                        "clipped to it", int(outside.sum()), ct.HU_MIN, ct.HU_MAX,
                        images.min(), images.max())
        images = np.clip(images, ct.HU_MIN, ct.HU_MAX)
    return images


def crop(images: np.ndarray, size: int) -> np.ndarray:
    """Centre crop of `[N, H, W]` to `size` x `size` (0: unchanged)."""
    if not size:
        return images
    h, w = images.shape[-2:]
    if size > min(h, w) or size < 1:
        raise ValueError(f"config.crop={size}: expected 0 (no crop) or 1..{min(h, w)} for "
                         f"images of {h}x{w}")
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(images[:, top:top + size, left:left + size])


def read_mask(config: Any) -> Optional[np.ndarray]:
    """config.mask as it is on disk (None when unset): read before anything else of the sweep,
    so that a bad file fails before the data set is built."""
    if not config.mask:
        return None
    return load_npy("mask", config.mask, "a .npy of 0/1, [H, W] or [N, H, W]")


def fit_mask(config: Any, raw: Optional[np.ndarray], shape: tuple[int, ...]
             ) -> Optional[np.ndarray]:
    """`read_mask`'s array checked against images of `shape` `[N, H, W]` (0/1, `[H, W]` or
    `[N, H, W]`); a mask of the uncropped slice size is cropped like the images."""
    if raw is None:
        return None
    m = raw
    if config.crop and m.ndim in (2, 3) and m.shape[-2:] != tuple(shape[-2:]):
        m = crop(m, config.crop) if m.ndim == 3 else crop(m[None], config.crop)[0]
    return arrays.check_mask(m, tuple(shape), f"config.mask={config.mask!r}")


# Config fields that do not change results (left out of a sweep's manifest).
NOT_RESULTS = ("progress_bar", "report", "distributed", "num_devices")
# In every sweep's manifest: bumped when the code changes what one config's results are (2:
# anneal's default lambda_steps follows the iterations; attack probes and Jacobian starts
# drawn per image id), so that a sweep started before is not finished with other results.
RESULTS_VERSION = 2


@dataclasses.dataclass
class Inputs:
    """What a sweep studies: the denoiser and the images, with their anatomy and source."""

    denoiser: Denoiser
    images: np.ndarray   # [N, H, W] HU
    anatomy: list[str]
    source: list[str]

    def start(self, config: Any, workdir: str, arrays_: dict[str, Optional[np.ndarray]],
              **extra: Any) -> None:
        """Logs the images, claims `workdir` for the sweep (its manifest: `settings`) and saves
        inputs/images.npy and images.json there (process 0)."""
        from ldct_jax.jobs import chunks
        for i, (a, s) in enumerate(zip(self.anatomy, self.source)):
            logging.info("image %d: %s (%s), %dx%d", i, s, a, *self.images.shape[-2:])
        os.makedirs(workdir, exist_ok=True)
        chunks.claim(workdir, self.settings(config, {"images": self.images, **arrays_}, **extra))
        if jax.process_index() == 0:
            files.write_npy(os.path.join(workdir, "inputs", "images.npy"), self.images)
            files.write_json(os.path.join(workdir, "inputs", "images.json"),
                             {"anatomy": list(self.anatomy), "source": list(self.source)})

    def settings(self, config: Any, arrays_: dict[str, Optional[np.ndarray]],
                 **extra: Any) -> dict:
        """What a sweep's results depend on (its manifest): the config without NOT_RESULTS,
        the model (name, module config, params digest) and digests of `arrays_`."""
        cfg = files.plain(config.to_dict())
        for k in NOT_RESULTS:
            cfg.pop(k, None)
        spec = self.denoiser.spec
        out = {"config": cfg, "results_version": RESULTS_VERSION,
               "model": {"name": spec.name, "config": files.plain(spec.config),
                         "params": files.digest(self.denoiser.params)}}
        out.update({k: None if a is None else files.digest(a) for k, a in arrays_.items()})
        out.update(extra)
        return out


Images = tuple[np.ndarray, list[str], list[str]]  # HU [N, H, W], anatomy, source per image


def load(config: Any, workdir: str, images: Optional[Images] = None) -> Inputs:
    """The denoiser (`load_denoiser`) and images (`load_images`) a sweep config names, or
    `images` already loaded (a comparison of several models on the same images)."""
    denoiser = load_denoiser(config.model, config.checkpoint, dict(config.model_config),
                             config.seed)
    images = images or load_images(config, workdir)
    with configs.naming("model", config.model):
        models.check_input_size(denoiser.name, images[0].shape)
    return Inputs(denoiser, *images)
