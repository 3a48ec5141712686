"""How natural a set of invariances x_inv is: noise power spectra, spread, where they live.

Host-side numpy on images in HU. A denoiser f ignores x_inv when f(x + x_inv) ~= f(x); these
numbers describe such perturbations next to CT noise physics:

- `radial_power_spectrum`, `band_powers`: the radially averaged noise power spectrum (NPS).
- `spectral_distance`: mean |log2| ratio of the band powers of x_inv and of real low-dose noise
  (low minus routine dose); 0 when x_inv has the texture of the noise, 1 per factor 2 in power.
- `diversity`: how different the samples of x_inv for one image are, relative to their size.
- `inside_outside_ratio`: for gauss_ri, how much of x_inv lies where f is blind by design.
- `summary`: all of them for one model, plus the input/output changes of the search's metrics.

Spectra. Each image has its own mean subtracted, then P = |FFT2(x - mean)|^2 / (H W): white
noise of variance s^2 has a flat spectrum at s^2 (HU^2, pixel units, no pixel spacing), and by
Parseval the sum of P over all H W frequencies, over H W, is the image's variance. There is no
apodisation window: the FFT treats each image as periodic, so an edge jump between opposite
borders leaks some power into all frequencies (negligible for noise-like x_inv). Frequencies are
numpy's `fftfreq` per axis (cycles/px, non-square images allowed), the radius sqrt(fx^2 + fy^2);
a radial bin [lo, hi) is the mean of P over the frequencies whose radius lies in it (the last bin
also holds its upper edge, e.g. the Nyquist frequency 0.5). The zero frequency is in no bin: the
mean subtraction sets it to 0, which would pull the lowest bin down by an amount that depends on
how many frequencies share it. So the mean over one bin holding every other frequency is
H W / (H W - 1) times the variance.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax
import numpy as np

from ldct_jax import ct, metrics
from ldct_jax.models.gauss_ri import central_square

# Default radial bins of `radial_power_spectrum`: uniform from 0 to the Nyquist frequency.
DEFAULT_BINS = 32
NYQUIST = 0.5
# Images per FFT batch: bounds the complex128 temporaries for stacks of whole slices.
_FFT_CHUNK = 64


def _stack(images: Any, what: str) -> np.ndarray:
    """`images` `[..., H, W]` as float64 `[M, H, W]`; a ValueError naming `what` otherwise."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim < 2 or x.size == 0:
        raise ValueError(f"{what}: expected images [..., H, W] in HU, got shape {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{what}: {int(bad.sum())} NaN/inf value(s), the first at index "
                         f"{first} of shape {x.shape}; expected finite HU")
    return x.reshape((-1,) + x.shape[-2:])


def _edges(bands: Union[None, int, Sequence[float]], what: str) -> np.ndarray:
    """Bin edges from None (the default bins), a number of uniform bins on [0, 0.5], or edges."""
    if bands is None:
        bands = DEFAULT_BINS
    if np.ndim(bands) == 0:
        if int(bands) != bands or bands < 1:
            raise ValueError(f"{what}: expected a positive number of bins, got {bands!r}")
        return np.linspace(0.0, NYQUIST, int(bands) + 1)
    e = np.asarray(bands, dtype=np.float64)
    if (e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)) or e[0] < 0
            or np.any(np.diff(e) <= 0)):
        raise ValueError(f"{what}: expected increasing, finite, non-negative band edges "
                         f"(cycles/px, at least 2), got {bands!r}")
    return e


def _mean_spectrum(x: np.ndarray) -> np.ndarray:
    """`[M, H, W]` -> `[H, W]`: |FFT2(x - mean)|^2 / (H W) averaged over the M images."""
    m, h, w = x.shape
    total = np.zeros((h, w))
    for i in range(0, m, _FFT_CHUNK):
        c = x[i:i + _FFT_CHUNK]
        c = c - c.mean(axis=(-2, -1), keepdims=True)
        total += np.sum(np.abs(np.fft.fft2(c)) ** 2, axis=0)
    return total / (m * h * w)


def _binned(x: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the spectrum of `x` in each radial bin of `edges`, and the frequencies per bin."""
    p = _mean_spectrum(x)
    h, w = p.shape
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    k = edges.size - 1
    idx = np.searchsorted(edges, radius, side="right") - 1
    idx[radius == edges[-1]] = k - 1
    idx[0, 0] = -1  # the zero frequency, 0 after the mean subtraction
    inside = (idx >= 0) & (idx < k)
    counts = np.bincount(idx[inside], minlength=k)
    sums = np.bincount(idx[inside], weights=p[inside], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts, counts


def radial_power_spectrum(images: Any, *, bands: Union[None, int, Sequence[float]] = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """The radially averaged noise power spectrum of a stack of noise images.

    Each image minus its mean, |FFT2|^2 / (H W) (white noise of variance s^2 -> flat at s^2),
    averaged over the images, then over the frequencies of each radial bin (module docstring).

    Args:
      images: `[..., H, W]` HU, zero-mean-ish noise (e.g. low minus routine dose, or x_inv);
        all leading axes are images.
      bands: None (32 uniform bins on [0, 0.5] cycles/px), a number of uniform bins on
        [0, 0.5], or the bin edges in cycles/px (increasing). Frequencies beyond the last edge
        (the corners of the 2-D spectrum, up to sqrt(0.5)) are left out.

    Returns:
      `(freqs, power)`: the bin centres in cycles/px and the mean power per bin in HU^2, both
      `[bins]` float64; power is nan in a bin that holds no frequency of an H x W image other
      than 0 (e.g. the lowest of the default bins, [0, 1/64), for images of 64 px or less).
    """
    edges = _edges(bands, "radial_power_spectrum: bands")
    power, _ = _binned(_stack(images, "radial_power_spectrum: images"), edges)
    return (edges[:-1] + edges[1:]) / 2, power


def band_powers(images: Any, edges: Sequence[float]) -> np.ndarray:
    """Mean power (HU^2) of the spectrum of `images` in the radial bands `[edges[i], edges[i+1])`.

    The same numbers as `radial_power_spectrum(images, bands=edges)[1]`, but a band without a
    single (non-zero) frequency of an H x W image is a ValueError instead of nan.

    Args:
      images: `[..., H, W]` HU; all leading axes are images.
      edges: `k + 1` increasing band edges in cycles/px.

    Returns:
      `[k]` float64.
    """
    return _band_powers(images, edges, "band_powers: images")


def _band_powers(images: Any, edges: Any, what: str) -> np.ndarray:
    if np.ndim(edges) != 1:
        raise ValueError(f"band_powers: edges must be a sequence of band edges, got {edges!r}")
    e = _edges(edges, "band_powers: edges")
    x = _stack(images, what)
    power, counts = _binned(x, e)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        i = empty[0]
        raise ValueError(f"{what}: band [{e[i]:.4g}, {e[i + 1]:.4g}) cycles/px holds no "
                         f"frequency of a {x.shape[1]} x {x.shape[2]} image (frequency step "
                         f"1/{max(x.shape[1:])}); use wider bands or larger images")
    return power


def spectral_distance(x_inv: Any, noise: Any, *, low: float = 0.05, high: float = 0.45,
                      bands: int = 8) -> float:
    """How far the noise power spectrum of x_inv is from that of real noise, in octaves of power.

    Mean over `bands` radial bands evenly spaced from `low` to `high` cycles/px of
    |log2(P_inv / P_noise)|, P the mean power of each stack in the band (`band_powers`): 0 for
    the same spectrum, 2 for x_inv twice the noise's amplitude at every frequency. Leaving out
    the lowest frequencies keeps the image-sized structures of a slice out; stopping short of
    the Nyquist frequency 0.5 keeps every band a full ring of the 2-D spectrum.

    Args:
      x_inv: `[..., H, W]` HU, e.g. `[N, S, H, W]`; all leading axes are images.
      noise: `[..., H', W']` HU, e.g. low minus routine dose; its size may differ from x_inv's.

    Returns:
      The distance, >= 0.

    Raises:
      ValueError: a stack has zero power in a band (e.g. x_inv == 0 everywhere), where the log
        ratio is undefined; the message names the stack and the band.
    """
    if int(bands) != bands or bands < 1:
        raise ValueError(f"spectral_distance: bands must be a positive integer, got {bands!r}")
    if not 0 <= low < high:
        raise ValueError(f"spectral_distance: expected 0 <= low < high (cycles/px), got "
                         f"low={low}, high={high}")
    edges = np.linspace(low, high, int(bands) + 1)
    p = {}
    for name, v in (("x_inv", x_inv), ("noise", noise)):
        p[name] = _band_powers(v, edges, f"spectral_distance: {name}")
        zero = np.flatnonzero(p[name] <= 0)
        if zero.size:
            i = zero[0]
            raise ValueError(f"spectral_distance: {name} has zero power in the band "
                             f"[{edges[i]:.4g}, {edges[i + 1]:.4g}) cycles/px (and "
                             f"{zero.size - 1} other band(s)); the log ratio is undefined")
    return float(np.mean(np.abs(np.log2(p["x_inv"] / p["noise"]))))


@jax.jit
def _input_ssim(x, x_inv):
    """SSIM(x, x + x_inv) per image, data range HU_MAX - HU_MIN (the search's input_ssim)."""
    return metrics.ssim(x, x + x_inv, ct.HU_MAX - ct.HU_MIN)


def _rms(a: np.ndarray) -> np.ndarray:
    """RMS over the last two axes, float64."""
    return np.sqrt(np.mean(np.square(a, dtype=np.float64), axis=(-2, -1)))


def diversity(samples: Any) -> float:
    """How different the samples of x_inv for one image are, relative to their size.

    The mean over images and over sample pairs i < j of RMS(s_i - s_j), divided by the mean over
    images and samples of RMS(s_i): 0 for identical samples, sqrt(2) for independent zero-mean
    samples of equal RMS, at most 2.

    Args:
      samples: `[N, S, H, W]` HU, S >= 2 samples of x_inv per image.

    Returns:
      The diversity, >= 0.
    """
    s = np.asarray(samples)
    if s.ndim != 4 or s.shape[1] < 2:
        raise ValueError(f"diversity: samples must be [N, S, H, W] with S >= 2 samples per "
                         f"image, got shape {s.shape}")
    flat = _stack(s, "diversity: samples").reshape(s.shape)
    scale = np.mean(_rms(flat))
    if scale == 0:
        raise ValueError("diversity: every sample is zero everywhere; the diversity is undefined")
    pairs = [_rms(flat[:, i, None] - flat[:, i + 1:]) for i in range(s.shape[1] - 1)]
    return float(np.mean(np.concatenate(pairs, axis=1)) / scale)


def inside_outside_ratio(x_inv: Any, square: int, *, margin: int = 4) -> float:
    """Mean |x_inv| deep inside gauss_ri's zeroed square over mean |x_inv| outside it.

    gauss_ri (`ldct_jax.models.gauss_ri.GaussRI`) zeroes its output in the central `square` x
    `square` px (`central_square`); input pixels more than its kernel radius (4 px for sigma 1,
    truncate 4) inside the square do not reach any output pixel outside it, so there f is blind
    by design. "Deep inside" are the pixels with at least `margin` pixels of the square between
    them and the outside; "outside" are all pixels not in the square.

    Args:
      x_inv: `[..., H, W]` HU; the means run over all leading axes.
      square: the side in px of the central square (GaussRI's `square`, 30 by default).
      margin: the depth in px a pixel must have to count as inside; GaussRI's kernel radius.

    Returns:
      The ratio; inf where x_inv is zero outside the square but not deep inside.
    """
    x = _stack(x_inv, "inside_outside_ratio: x_inv")
    h, w = x.shape[1:]
    if int(square) != square or not 0 < square <= min(h, w) or square >= max(h, w):
        raise ValueError(f"inside_outside_ratio: square={square!r} must be a side in px with "
                         f"pixels outside it in a {h} x {w} image")
    if int(margin) != margin or not 0 <= 2 * margin < square:
        raise ValueError(f"inside_outside_ratio: margin={margin!r} leaves no pixel deep inside "
                         f"the {square} px square; expected 0 <= margin < {square / 2}")
    square, margin = int(square), int(margin)
    rows, cols = central_square(h, w, square)
    outside = np.ones((h, w), bool)
    outside[rows, cols] = False
    deep = np.zeros((h, w), bool)
    deep[rows.start + margin:rows.stop - margin, cols.start + margin:cols.stop - margin] = True
    a = np.abs(x)
    inside_mean, outside_mean = a[:, deep].mean(), a[:, outside].mean()
    if outside_mean == 0:
        if inside_mean == 0:
            raise ValueError("inside_outside_ratio: x_inv is zero both deep inside and outside "
                             "the square; the ratio is undefined")
        return float("inf")
    return float(inside_mean / outside_mean)


def summary(images: Any, x_inv: Any, out_x: Any, out_pert: Any, *, noise: Any = None,
            square: Optional[int] = None, margin: int = 4) -> dict[str, float]:
    """The invariance numbers of one model, as floats.

    - `input_rms_hu`: RMS of x_inv per image and sample, averaged.
    - `output_rms_hu`: RMS of f(x + x_inv) - f(x) per image and sample, averaged.
    - `ratio`: input_rms_hu / output_rms_hu, the ratio of the means as in the sweep reports
      (robust where single outputs did not change at all); inf where no output changed (nan if
      x_inv is zero too).
    - `input_ssim`: SSIM(x, x + x_inv) per image and sample, averaged: `ldct_jax.metrics.ssim`
      (scikit-image's Gaussian-window SSIM) with data range HU_MAX - HU_MIN = 4095 HU, the
      convention of the search's `input_ssim`, so the numbers compare across methods. A fixed
      range (not each image's own) keeps SSIM's constants the same for every image.
    - `diversity` (if S >= 2), `spectral_distance` (if `noise` is given), `inside_outside_ratio`
      (if `square` is given, with `margin`).

    Args:
      images: x, `[N, H, W]` HU.
      x_inv: `[N, S, H, W]` HU, S perturbations per image.
      out_x: f(x), `[N, H, W]` HU.
      out_pert: f(x + x_inv), `[N, S, H, W]` HU.
      noise: real noise (low minus routine dose) `[..., H', W']` HU, for `spectral_distance`.
      square: gauss_ri's square side in px, for `inside_outside_ratio`.
      margin: its kernel radius in px (`GaussRI.radius`; 4 at the default sigma 1).
    """
    x = np.asarray(images)
    if x.ndim != 3:
        raise ValueError(f"summary: images must be [N, H, W], got shape {x.shape}")
    n, h, w = x.shape
    dx, y, yp = np.asarray(x_inv), np.asarray(out_x), np.asarray(out_pert)
    if dx.ndim != 4 or (dx.shape[0],) + dx.shape[2:] != (n, h, w):
        raise ValueError(f"summary: x_inv must be [N, S, H, W] = [{n}, S, {h}, {w}] (N, H, W of "
                         f"images), got shape {dx.shape}")
    if y.shape != x.shape:
        raise ValueError(f"summary: out_x must be [N, H, W] = {list(x.shape)} like images, got "
                         f"shape {y.shape}")
    if yp.shape != dx.shape:
        raise ValueError(f"summary: out_pert must be [N, S, H, W] = {list(dx.shape)} like x_inv, "
                         f"got shape {yp.shape}")
    x = _stack(x, "summary: images").reshape(x.shape)
    dx = _stack(dx, "summary: x_inv").reshape(dx.shape)
    y = _stack(y, "summary: out_x").reshape(y.shape)
    yp = _stack(yp, "summary: out_pert").reshape(yp.shape)

    in_rms = float(np.mean(_rms(dx)))
    out_rms = float(np.mean(_rms(yp - y[:, None])))
    if out_rms > 0:
        ratio = in_rms / out_rms
    else:
        ratio = float("inf") if in_rms > 0 else float("nan")
    # float32 like the search; one compiled call instead of dm-pix's ops one by one.
    ssim = _input_ssim(np.broadcast_to(x[:, None], dx.shape).astype(np.float32),
                       dx.astype(np.float32))
    out = dict(input_rms_hu=in_rms, output_rms_hu=out_rms, ratio=ratio,
               input_ssim=float(np.mean(np.asarray(ssim, np.float64))))
    if dx.shape[1] >= 2:
        out["diversity"] = diversity(dx)
    if noise is not None:
        out["spectral_distance"] = spectral_distance(dx, noise)
    if square is not None:
        out["inside_outside_ratio"] = inside_outside_ratio(dx, square, margin=margin)
    return out
