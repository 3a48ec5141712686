"""The JAX projector and FBP against scikit-image's radon / iradon (same conventions)."""

import numpy as np
import pytest
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize

from ldct_jax.data.synthetic import projector


def _phantom(size):
    image = resize(shepp_logan_phantom(), (size, size), anti_aliasing=True)
    return (image * projector.circle_mask(size)).astype(np.float64)


def _rel(a, b, mask=None):
    if mask is not None:
        a, b = a[mask], b[mask]
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("size,num_angles", [(96, 120), (128, 181)])
def test_radon_matches_skimage(size, num_angles):
    image = _phantom(size)
    angles = projector.scanner_angles(num_angles)
    ours = np.asarray(projector.radon(image, angles))
    ref = radon(image, angles, circle=True)
    assert ours.shape == ref.shape
    assert _rel(ours, ref) < 0.01


@pytest.mark.parametrize("filter_name", ["ramp", "hann"])
def test_fbp_matches_skimage_inside_circle(filter_name):
    size, angles = 128, projector.scanner_angles(180)
    sinogram = radon(_phantom(size), angles, circle=True)
    ours = np.asarray(projector.fbp(sinogram, angles, filter=filter_name))
    ref = iradon(sinogram, angles, filter_name=filter_name, circle=True)
    mask = projector.circle_mask(size)
    assert _rel(ours, ref, mask) < 0.01
    assert np.all(ours[~mask] == 0)


def test_batched_equals_single():
    size, angles = 96, projector.scanner_angles(120)
    images = np.stack([_phantom(size), _phantom(size)[::-1].copy()])
    batch = np.asarray(projector.radon(images, angles))
    assert _rel(batch[1], radon(images[1], angles, circle=True)) < 0.01
    np.testing.assert_allclose(batch[0], np.asarray(projector.radon(images[0], angles)),
                               rtol=1e-5, atol=1e-4)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"\[\.\.\., N, N\]"):
        projector.radon(np.zeros((4, 5)), projector.scanner_angles(3))
    with pytest.raises(ValueError, match="3 angles for a sinogram with 4"):
        projector.fbp(np.zeros((8, 4)), projector.scanner_angles(3))
    with pytest.raises(ValueError, match="unknown filter 'box'"):
        projector.fbp(np.zeros((8, 4)), projector.scanner_angles(4), filter="box")
    with pytest.raises(ValueError, match="num_angles must be >= 1"):
        projector.scanner_angles(0)
