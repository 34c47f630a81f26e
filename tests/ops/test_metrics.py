"""PSNR / SSIM against float64 NumPy/SciPy references written from the definitions."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from jaxsr.ops import metrics


# ----------------------------------------------------------------------------- references
def ref_levels(x, quantize=True):
    if not quantize:
        return np.asarray(x, np.float64) * 255
    # The product is taken in float32, as the official scripts do (tensor2img on float32
    # arrays): in float64 a value within one float32 ulp of a half level can round the
    # other way, which moves a high PSNR by ~1e-3 dB.
    x32 = np.clip(np.asarray(x, np.float32), 0, 1) * np.float32(255)
    return np.round(x32).astype(np.float64)


def ref_luma(levels):
    """rgb2ycbcr Y in [0, 255] units from 0..255 RGB levels (the DESIGN.md formula)."""
    rgb = levels / 255.0
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def ref_prepare(img, crop, y_only, quantize=True):
    levels = ref_levels(img, quantize)
    if y_only and levels.shape[-1] == 3:
        levels = ref_luma(levels)[..., None]
    if crop:
        levels = levels[crop:-crop, crop:-crop]
    return levels


def ref_psnr(sr, hr, crop=0, y_only=True, quantize=True):
    a, b = ref_prepare(sr, crop, y_only, quantize), ref_prepare(hr, crop, y_only, quantize)
    mse = np.mean((a - b) ** 2)
    return np.inf if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def ref_window():
    x = np.arange(11) - 5.0
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g)
    return w / w.sum()


def ref_ssim_channel(a, b):
    """Wang et al. (2004), eq. 13 with a Gaussian-weighted local window, 'valid' positions."""
    w = ref_window()
    filt = lambda z: signal.correlate2d(z, w, mode="valid")
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a ** 2
    var_b = filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean()


def ref_ssim(sr, hr, crop=0, y_only=True, quantize=True):
    a, b = ref_prepare(sr, crop, y_only, quantize), ref_prepare(hr, crop, y_only, quantize)
    return np.mean([ref_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[-1])])


def pair(rng, shape, noise=0.05):
    """A smooth-ish HR and a noisy SR so SSIM lands in a mid range, not near 0 or 1."""
    hr = rng.random(shape)
    hr = (hr + np.roll(hr, 1, axis=-2) + np.roll(hr, 1, axis=-3)) / 3
    sr = np.clip(hr + noise * rng.standard_normal(shape), 0, 1)
    return sr.astype(np.float32), hr.astype(np.float32)


# ----------------------------------------------------------------------------- basics
def test_quantize_levels():
    x = jnp.array([-0.3, 0.0, 0.4 / 255, 0.6 / 255, 0.5, 1.0, 1.7])
    np.testing.assert_array_equal(metrics.quantize(x), [0, 0, 0, 1, 128, 255, 255])
    assert metrics.quantize(x).dtype == jnp.float32


def test_rgb_to_y_matches_formula_and_range():
    rng = np.random.default_rng(0)
    rgb = rng.random((2, 5, 4, 3))
    np.testing.assert_allclose(metrics.rgb_to_y(jnp.asarray(rgb, jnp.float32))[..., 0],
                               ref_luma(rgb * 255) / 255, atol=1e-6)
    y = metrics.rgb_to_y(jnp.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(y[:, 0], [16 / 255, 235 / 255], atol=1e-6)
    gray = jnp.asarray(rng.random((5, 4, 1)), jnp.float32)
    np.testing.assert_array_equal(metrics.rgb_to_y(gray), gray)
    with pytest.raises(ValueError, match="channels"):
        metrics.rgb_to_y(jnp.zeros((4, 4, 2)))


# ----------------------------------------------------------------------------- PSNR
@pytest.mark.parametrize("channels,y_only", [(1, True), (3, True), (3, False)])
def test_identical_images(channels, y_only):
    img = np.random.default_rng(1).random((20, 18, channels)).astype(np.float32)
    assert metrics.psnr(img, img, 2, y_only) == np.inf
    assert float(metrics.ssim(img, img, 2, y_only)) == 1.0


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("channels,y_only", [(1, True), (3, False)])
def test_constant_offset_psnr_is_exact(k, channels, y_only):
    rng = np.random.default_rng(k)
    levels = rng.integers(0, 256 - k, (16, 17, channels))
    hr = (levels / 255).astype(np.float32)
    sr = ((levels + k) / 255).astype(np.float32)
    expected = 20 * np.log10(255 / k)
    np.testing.assert_allclose(metrics.psnr(sr, hr, 0, y_only), expected, atol=1e-4)
    np.testing.assert_allclose(metrics.psnr(sr, hr, 3, y_only), expected, atol=1e-4)


@pytest.mark.parametrize("crop", [0, 4])
@pytest.mark.parametrize("y_only", [True, False])
def test_psnr_matches_float64_reference(crop, y_only):
    sr, hr = pair(np.random.default_rng(2), (23, 19, 3))
    got = metrics.psnr(sr, hr, crop, y_only)
    np.testing.assert_allclose(got, ref_psnr(sr, hr, crop, y_only), rtol=0, atol=1e-4)


def test_quantize_inputs_switch():
    hr = np.full((12, 12, 1), 0.5, np.float32)
    sr = hr + np.float32(0.3 / 255)  # below half a level: vanishes after quantisation
    assert metrics.psnr(sr, hr) == np.inf
    np.testing.assert_allclose(metrics.psnr(sr, hr, quantize_inputs=False),
                               20 * np.log10(255 / 0.3), atol=1e-3)
    sr2, hr2 = pair(np.random.default_rng(3), (20, 20, 3))
    np.testing.assert_allclose(metrics.psnr(sr2, hr2, 2, True, False),
                               ref_psnr(sr2, hr2, 2, True, quantize=False), atol=1e-4)


# ----------------------------------------------------------------------------- SSIM
@pytest.mark.parametrize("shape,crop,y_only", [
    ((24, 21, 3), 0, True), ((24, 21, 3), 3, True), ((24, 21, 3), 2, False),
    ((19, 26, 1), 0, True), ((19, 26, 1), 4, True)])
@pytest.mark.parametrize("noise", [0.06, 0.3])
def test_ssim_matches_float64_reference(shape, crop, y_only, noise):
    sr, hr = pair(np.random.default_rng(int(noise * 100) + crop), shape, noise)
    got = float(metrics.ssim(sr, hr, crop, y_only))
    expected = ref_ssim(sr, hr, crop, y_only)
    assert 0.05 < expected < 0.99  # a meaningful, non-trivial value
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_ssim_on_uncorrelated_images_matches_reference():
    rng = np.random.default_rng(4)
    sr, hr = rng.random((2, 22, 22, 3)).astype(np.float32)
    np.testing.assert_allclose(metrics.ssim(sr, hr), ref_ssim(sr, hr), atol=1e-4)


def test_ssim_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")
    sr, hr = pair(np.random.default_rng(5), (30, 27, 3), 0.08)
    a, b = ref_prepare(sr, 0, True)[..., 0], ref_prepare(hr, 0, True)[..., 0]
    expected = skm.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=255)
    np.testing.assert_allclose(metrics.ssim(sr, hr), expected, atol=1e-4)


# ----------------------------------------------------------------------------- protocol
def test_border_crop_ignores_border_differences():
    rng = np.random.default_rng(6)
    hr = rng.random((24, 24, 3)).astype(np.float32)
    sr = hr.copy()
    sr[:3] = 1 - sr[:3]
    sr[:, -3:] = 0.0
    assert np.isfinite(metrics.psnr(sr, hr, 2))
    assert float(metrics.ssim(sr, hr, 2)) < 1.0
    assert metrics.psnr(sr, hr, 3) == np.inf
    assert float(metrics.ssim(sr, hr, 3)) == 1.0
    # Cropping inside the metric equals cropping the arrays first.
    sr2, hr2 = pair(rng, (26, 25, 3))
    c = 4
    np.testing.assert_allclose(metrics.psnr(sr2, hr2, c),
                               metrics.psnr(sr2[c:-c, c:-c], hr2[c:-c, c:-c]), atol=1e-5)
    np.testing.assert_allclose(metrics.ssim(sr2, hr2, c),
                               metrics.ssim(sr2[c:-c, c:-c], hr2[c:-c, c:-c]), atol=1e-6)


@pytest.mark.parametrize("fn", [metrics.psnr, metrics.ssim])
def test_batched_matches_per_image_and_jit(fn):
    sr, hr = pair(np.random.default_rng(7), (3, 22, 20, 3))
    batched = fn(sr, hr, 2)
    assert batched.shape == (3,)
    single = np.array([fn(sr[i], hr[i], 2) for i in range(3)])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    jitted = jax.jit(functools.partial(fn, crop_border=2, y_only=True))
    np.testing.assert_allclose(jitted(sr, hr), batched, atol=1e-5)
    assert fn(sr[0], hr[0], 2).shape == ()


def test_differentiable_without_quantisation():
    sr, hr = pair(np.random.default_rng(8), (16, 16, 3))
    for fn in (metrics.psnr, metrics.ssim):
        grad = jax.grad(lambda x: fn(x, hr, 1, True, False))(jnp.asarray(sr))
        assert grad.shape == sr.shape and bool(jnp.all(jnp.isfinite(grad)))
        assert float(jnp.abs(grad).sum()) > 0


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("fn", [metrics.psnr, metrics.ssim])
def test_errors(fn):
    img = np.zeros((20, 20, 3), np.float32)
    with pytest.raises(ValueError, match=r"same shape.*\(20, 20, 3\).*\(20, 19, 3\)"):
        fn(img, img[:, :19])
    with pytest.raises(ValueError, match=r"sr must be .*\(20, 20\)"):
        fn(img[..., 0], img[..., 0])
    with pytest.raises(ValueError, match="crop_border=10"):
        fn(img, img, 10)
    with pytest.raises(ValueError, match="crop_border"):
        fn(img, img, -1)
    with pytest.raises(ValueError, match="dtype"):
        fn(img.astype(np.uint8), img.astype(np.uint8))
    with pytest.raises(ValueError, match="y_only"):
        fn(np.zeros((20, 20, 4), np.float32), np.zeros((20, 20, 4), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        fn(np.full((20, 20, 3), np.nan, np.float32), img)


def test_ssim_needs_a_full_window():
    img = np.zeros((20, 20, 1), np.float32)
    assert np.isinf(metrics.psnr(img, img, 5))  # 10x10 is fine for PSNR ...
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(img, img, 5)  # ... but smaller than the SSIM window
