"""PSNR and SSIM under the usual super-resolution evaluation protocol.

The protocol (as in the DAN / IKC / BasicSR evaluation scripts):

1. quantise SR and HR to 8-bit levels (an SR result is saved as uint8 before it is scored),
   as round(clip(x, 0, 1) * 255) in float32 like the official ``tensor2img`` helpers;
2. for RGB, keep only the luma Y of MATLAB's ``rgb2ycbcr`` (range 16..235), in [0, 255] units
   and *not* rounded again; grayscale images are scored on their single channel;
3. crop ``crop_border`` pixels (usually the scale factor) from every side;
4. PSNR = 10 log10(255² / MSE); SSIM with an 11x11 Gaussian window (σ = 1.5), K1 = 0.01,
   K2 = 0.03, L = 255, computed only where the window fits inside the image ("valid") and
   averaged over the map (and over channels when scoring several).

Everything is pure ``jax.numpy``; ``crop_border``, ``y_only`` and ``quantize_inputs`` are
Python values (mark them static when jitting). Also ``kernel_errors``: an estimated blur kernel
against the true one, in NumPy float64.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.ops._checks import check_finite, check_float

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PIXEL_MAX = 255.0

# MATLAB rgb2ycbcr luma row, for R, G, B in [0, 1] giving Y in [16, 235].
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0


def quantize(x: jax.Array) -> jax.Array:
    """Map [0, 1] floats to the 256 uint8 levels 0..255, kept as float32 so it stays jittable."""
    return jnp.round(jnp.clip(jnp.asarray(x, jnp.float32), 0.0, 1.0) * PIXEL_MAX)


def rgb_to_y(images: jax.Array) -> jax.Array:
    """Luma of MATLAB's ``rgb2ycbcr`` for float RGB in [0, 1]; result in [16/255, 235/255].

    Input ``(..., 3)`` gives ``(..., 1)``. A single-channel ``(..., 1)`` input is returned
    unchanged (grayscale images are evaluated on their one channel).
    """
    images = jnp.asarray(images)
    channels = images.shape[-1] if images.ndim else None
    if channels == 1:
        return images
    if channels != 3:
        raise ValueError(f"images must have 1 or 3 channels in the last axis, "
                         f"got shape {images.shape}")
    weights = jnp.asarray(_Y_WEIGHTS, images.dtype)
    y = (_Y_OFFSET + jnp.tensordot(images, weights, axes=([-1], [0]))) / PIXEL_MAX
    return y[..., None]


def _prepare(sr, hr, crop_border, y_only, quantize_inputs, min_size: int = 1):
    """Validate, quantise, convert to Y and crop; returns NHWC float32 in [0, 255] units."""
    sr_shape, hr_shape = getattr(sr, "shape", None), getattr(hr, "shape", None)
    if sr_shape is None or len(sr_shape) not in (3, 4):
        raise ValueError(f"sr must be an (H, W, C) image or an (N, H, W, C) batch, "
                         f"got shape {sr_shape}")
    if tuple(sr_shape) != tuple(hr_shape or ()):
        raise ValueError(f"sr and hr must have the same shape, got sr {tuple(sr_shape)} "
                         f"and hr {hr_shape if hr_shape is None else tuple(hr_shape)}")
    for name, x in (("sr", sr), ("hr", hr)):
        check_float(name, x)
        check_finite(name, x)
    if not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative integer, got {crop_border!r}")
    height, width, channels = sr_shape[-3:]
    if y_only and channels not in (1, 3):
        raise ValueError(f"y_only=True needs 1 or 3 channels, got sr shape {tuple(sr_shape)}; "
                         f"pass y_only=False to score every channel")
    left_h, left_w = height - 2 * crop_border, width - 2 * crop_border
    if left_h < min_size or left_w < min_size:
        raise ValueError(
            f"crop_border={crop_border} leaves {left_h}x{left_w} pixels of the "
            f"{height}x{width} images (sr/hr shape {tuple(sr_shape)}); at least "
            f"{min_size}x{min_size} are needed")

    def to_levels(x):
        x = jnp.asarray(x, jnp.float32)
        x = quantize(x) / PIXEL_MAX if quantize_inputs else x
        if y_only:
            x = rgb_to_y(x)
        x = x * PIXEL_MAX
        if crop_border:
            x = x[..., crop_border:-crop_border, crop_border:-crop_border, :]
        return x if x.ndim == 4 else x[None]

    return to_levels(sr), to_levels(hr), len(sr_shape) == 3


def psnr(sr: jax.Array, hr: jax.Array, crop_border: int = 0, y_only: bool = True,
         quantize_inputs: bool = True) -> jax.Array:
    """Peak signal-to-noise ratio in dB (peak 255); inf where the images are identical.

    ``sr``, ``hr``: (H, W, C) or (N, H, W, C) float in [0, 1]. Returns a scalar for one
    image, an (N,) array for a batch.
    """
    a, b, single = _prepare(sr, hr, crop_border, y_only, quantize_inputs)
    mse = jnp.mean(jnp.square(a - b), axis=(1, 2, 3))
    safe_mse = jnp.where(mse > 0, mse, 1.0)  # keeps the gradient finite for identical images
    value = jnp.where(mse > 0, 10.0 * jnp.log10(PIXEL_MAX ** 2 / safe_mse), jnp.inf)
    return value[0] if single else value


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    taps = np.exp(-offsets ** 2 / (2.0 * sigma ** 2))
    return (taps / taps.sum()).astype(np.float32)


def _filter_valid(x: jax.Array) -> jax.Array:
    """Separable Gaussian filtering of NHWC ``x``, each channel alone, 'valid' output."""
    taps = jnp.asarray(_gaussian_1d(SSIM_WINDOW, SSIM_SIGMA))
    channels = x.shape[-1]
    dims = ("NHWC", "HWIO", "NHWC")
    # HIGHEST: accelerators otherwise use reduced-precision passes (e.g. TF32) for convs.
    conv = lambda v, k: jax.lax.conv_general_dilated(
        v, k, (1, 1), "VALID", dimension_numbers=dims, feature_group_count=channels,
        precision=jax.lax.Precision.HIGHEST)
    vertical = jnp.tile(taps.reshape(SSIM_WINDOW, 1, 1, 1), (1, 1, 1, channels))
    horizontal = jnp.tile(taps.reshape(1, SSIM_WINDOW, 1, 1), (1, 1, 1, channels))
    return conv(conv(x, vertical), horizontal)


def ssim(sr: jax.Array, hr: jax.Array, crop_border: int = 0, y_only: bool = True,
         quantize_inputs: bool = True) -> jax.Array:
    """Structural similarity (Wang et al. 2004) with the standard Gaussian-window settings.

    Same inputs and output shape as :func:`psnr`. The map is averaged over all valid
    window positions and over channels (equal to averaging per-channel SSIMs).
    """
    a, b, single = _prepare(sr, hr, crop_border, y_only, quantize_inputs, min_size=SSIM_WINDOW)
    c1 = (SSIM_K1 * PIXEL_MAX) ** 2
    c2 = (SSIM_K2 * PIXEL_MAX) ** 2
    # (Co)variances are shift invariant: centring on mid-gray shrinks the E[x²] - E[x]²
    # cancellation error in float32 about four-fold.
    a0, b0 = a - PIXEL_MAX / 2, b - PIXEL_MAX / 2
    mu_a0, mu_b0 = _filter_valid(a0), _filter_valid(b0)
    var_a = _filter_valid(a0 * a0) - mu_a0 ** 2
    var_b = _filter_valid(b0 * b0) - mu_b0 ** 2
    cov = _filter_valid(a0 * b0) - mu_a0 * mu_b0
    mu_a, mu_b = mu_a0 + PIXEL_MAX / 2, mu_b0 + PIXEL_MAX / 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    value = jnp.mean(ssim_map, axis=(1, 2, 3))
    return value[0] if single else value


def kernel_errors(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """kernel_mae (mean |k_est - k|), kernel_psnr (10 log10(1 / MSE) on the sum-to-one kernels,
    peak 1: FKP's and KENet's kernel PSNR) and kernel_psnr_max (the same after dividing both by
    max(truth)) of two (k, k) kernels; the smaller is zero-padded around its centre (`jaxsr.evaluate`)."""
    estimate, truth = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    for name, k in (("estimate", estimate), ("truth", truth)):
        if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0:
            raise ValueError(f"{name} kernel must be square with an odd size, got {k.shape}")
    size = max(estimate.shape[0], truth.shape[0])
    estimate, truth = (np.pad(k, (size - k.shape[0]) // 2) for k in (estimate, truth))

    def psnr(mse: float) -> float:
        return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)

    diff = estimate - truth
    return {"kernel_mae": float(np.mean(np.abs(diff))),
            "kernel_psnr": psnr(float(np.mean(diff ** 2))),
            "kernel_psnr_max": psnr(float(np.mean((diff / truth.max()) ** 2)))}
