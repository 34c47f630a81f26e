"""The classical degradation model y = (x ⊗ k)↓s + n, as pure JAX functions.

Everything here is jittable, vmappable and differentiable, and runs on the accelerator:
kernels are sampled with `jax.random` inside the jitted step (the official PyTorch code
builds them in NumPy on the host for every batch).

Conventions
- Images are NHWC float32 in [0, 1]; kernels are (B, k, k) float32, odd k, summing to 1.
- `blur` is a cross-correlation with reflect padding, as the official DAN/IKC code does
  (`F.conv2d` after `ReflectionPad2d`); for the symmetric Gaussians used here it equals a
  convolution.
- Noise levels are in **[0, 255] units** everywhere (σ = 25 means 25/255 in image units),
  as the papers state them.
- Anisotropic Gaussians are parameterised by the standard deviations along their principal
  axes (σx, σy) and the rotation θ: Σ = R(θ) diag(σx², σy²) R(θ)ᵀ.
- The operators are written here once, in XLA's plain formulation (a grouped convolution for the
  blur, then the downsampler); the CPU formulations ("fft", "fused") are `jaxsr.cpu.degrade`, reached
  through `jaxsr.cpu.hook`, and "auto" picks them in programs compiled for the CPU.

Quick use::

    import jax, jaxsr.ops.degrade as D
    spec = D.setting1(scale=4)
    lr, kernels, sigma = D.degrade(jax.random.key(0), hr, spec)   # hr: (N, H, W, 3) in [0, 1]
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import cpu, platform
from jaxsr.ops import _checks
from jaxsr.ops.imresize import _matlab_matrix, imresize

# Upper end of the training σ range of setting 1 (IKC / DAN), per scale.
SETTING1_SIGMA_MAX = {1: 4.0, 2: 2.0, 3: 3.0, 4: 4.0}
# Gaussian8 test kernels: 8 σ values evenly spaced in these ranges (IKC / DAN protocol).
GAUSSIAN8_RANGE = {2: (0.80, 1.60), 3: (1.35, 2.40), 4: (1.80, 3.20)}
DOWNSAMPLERS = ("bicubic", "sfold")
KERNEL_TYPES = ("iso", "aniso")
# How the per-tap kernel noise is drawn (`DegradationSpec.kernel_noise_mode`): every tap is multiplied
# by 1 + n and the kernel renormalised, with n ~ U(-a, a) ("symmetric", jaxsr's reading of the papers'
# "multiplicative noise up to 25%") or n ~ U(0, a) ("positive": `k + U(0, 0.25)·k`, what the official
# DAN code does, greatlog/DAN codes/utils/deg_utils.py `random_batch_kernel`).
KERNEL_NOISE_MODES = ("symmetric", "positive")
BLUR_METHODS = ("auto", "conv", "fft")
# What a DegradationSpec may ask for: the blur implementations above, or "fused" (blur and
# downsampler composed, see `blur_downsample`).
SPEC_BLUR_METHODS = BLUR_METHODS + ("fused",)


# --------------------------------------------------------------------------- kernels

def gaussian_kernels(size: int, sigma_x, sigma_y=None, theta=0.0) -> jax.Array:
    """Normalised Gaussian kernels of odd `size`, one per entry of the (broadcast) parameters.

    `sigma_x`, `sigma_y`, `theta` are scalars or 1-D arrays of equal length B; the result has
    shape (B, size, size) (B = 1 for scalars). `sigma_y=None` gives isotropic kernels.
    """
    size = _checks.check_odd_size("size", size)
    sigma_x = jnp.atleast_1d(jnp.asarray(sigma_x, jnp.float32))
    sigma_y = sigma_x if sigma_y is None else jnp.atleast_1d(jnp.asarray(sigma_y, jnp.float32))
    theta = jnp.atleast_1d(jnp.asarray(theta, jnp.float32))
    for name, v in (("sigma_x", sigma_x), ("sigma_y", sigma_y), ("theta", theta)):
        if v.ndim != 1:
            raise ValueError(f"{name} must be a scalar or a 1-D array, got shape {v.shape}")
        if _checks.is_concrete(v) and name != "theta" and not bool(jnp.all(v > 0)):
            raise ValueError(f"{name} must be positive, got {np.asarray(v)}")
    sigma_x, sigma_y, theta = jnp.broadcast_arrays(sigma_x, sigma_y, theta)

    r = jnp.arange(size, dtype=jnp.float32) - size // 2
    yy, xx = jnp.meshgrid(r, r, indexing="ij")  # (k, k): row = y, column = x
    cos, sin = jnp.cos(theta)[:, None, None], jnp.sin(theta)[:, None, None]
    # Coordinates in the kernel's principal frame: u along the σx axis, v along the σy axis.
    u = cos * xx + sin * yy
    v = -sin * xx + cos * yy
    log_k = -0.5 * ((u / sigma_x[:, None, None]) ** 2 + (v / sigma_y[:, None, None]) ** 2)
    k = jnp.exp(log_k - jnp.max(log_k, axis=(1, 2), keepdims=True))
    return k / jnp.sum(k, axis=(1, 2), keepdims=True)


def gaussian8_sigmas(scale: int) -> np.ndarray:
    """The 8 test σ of the Gaussian8 protocol for x2/x3/x4."""
    scale = _checks.check_scale("scale", scale, allowed=tuple(GAUSSIAN8_RANGE))
    lo, hi = GAUSSIAN8_RANGE[scale]
    return np.linspace(lo, hi, 8)


def gaussian8_kernels(scale: int, size: int = 21) -> jax.Array:
    """(8, size, size) isotropic Gaussian8 test kernels for x2/x3/x4."""
    return gaussian_kernels(size, gaussian8_sigmas(scale))


def kxnet_test_kernels(size: int) -> jax.Array:
    """KXNet's 8 anisotropic test kernels: (σx, σy) ∈ {(0.8, 1.6), (2.0, 4.0)} × θ ∈ {0, π/4, π/2, 3π/4}."""
    pairs = [(0.8, 1.6), (2.0, 4.0)]
    thetas = [0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    sx, sy, th = zip(*[(a, b, t) for a, b in pairs for t in thetas])
    return gaussian_kernels(size, np.array(sx), np.array(sy), np.array(th))


# --------------------------------------------------------------------------- spec

@dataclasses.dataclass(frozen=True)
class DegradationSpec:
    """What `degrade` does to a batch; frozen and hashable so it can be a static jit argument.

    kernel_type:   "iso" (σ ~ U[sigma_range]) or "aniso" (σx, σy ~ U[sigma_range], θ ~ U[theta_range],
                   multiplicative per-tap noise, renormalised: see kernel_noise_mode).
    kernel_noise_mode: "symmetric" (each tap times 1 + U(-kernel_noise, kernel_noise)) or "positive"
                   (times 1 + U(0, kernel_noise), the official DAN code's `k + U(0, 0.25)·k`).
    downsampler:   "bicubic" (MATLAB imresize, antialiased) or "sfold" (keep the upper-left pixel
                   of each s×s block).
    noise_range:   AWGN σ ~ U[noise_range] per image, in [0, 255] units; (0, 0) = noise-free.
    quantize:      clip the LR image to [0, 1] and round it to uint8 levels, as the official test
                   sets are stored.
    round_lr:      round the LR image to 8-bit levels without clipping, `round(LR * 255) / 255`, as the
                   official DAN v1/v2, DSSR and KXNet training loops do after degrading each batch.
    blur_method:   "auto" | "conv" | "fft" | "fused". "conv" and "fft" blur at full resolution and
                   then downsample (see `blur`); "fused" computes only the kept outputs of the
                   composed operator (see `blur_downsample`). "auto" = "fused" on CPU, "conv" on
                   GPU/TPU. All agree to float32 rounding.
    """
    scale: int = 4
    kernel_size: int = 21
    kernel_type: str = "iso"
    sigma_range: tuple[float, float] = (0.2, 4.0)
    theta_range: tuple[float, float] = (-np.pi, np.pi)
    kernel_noise: float = 0.0
    downsampler: str = "bicubic"
    noise_range: tuple[float, float] = (0.0, 0.0)
    quantize: bool = False
    blur_method: str = "auto"
    kernel_noise_mode: str = "symmetric"
    round_lr: bool = False

    def __post_init__(self):
        _checks.check_scale("scale", self.scale)
        _checks.check_odd_size("kernel_size", self.kernel_size)
        if self.kernel_type not in KERNEL_TYPES:
            raise ValueError(f"kernel_type must be one of {KERNEL_TYPES}, got {self.kernel_type!r}")
        if self.downsampler not in DOWNSAMPLERS:
            raise ValueError(f"downsampler must be one of {DOWNSAMPLERS}, got {self.downsampler!r}")
        for name in ("sigma_range", "theta_range", "noise_range"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(lo, hi)}")
            object.__setattr__(self, name, (float(lo), float(hi)))  # hashable, even from lists
        if self.sigma_range[0] <= 0:
            raise ValueError(f"sigma_range must be positive, got {self.sigma_range}")
        if self.noise_range[0] < 0:
            raise ValueError(f"noise_range must be >= 0 (in [0, 255] units), got {self.noise_range}")
        if self.blur_method not in SPEC_BLUR_METHODS:
            raise ValueError(f"blur_method must be one of {SPEC_BLUR_METHODS}, got {self.blur_method!r}")
        if not 0 <= self.kernel_noise < 1:
            raise ValueError(f"kernel_noise must be in [0, 1), got {self.kernel_noise}")
        if self.kernel_noise_mode not in KERNEL_NOISE_MODES:
            raise ValueError(f"kernel_noise_mode must be one of {KERNEL_NOISE_MODES}, got {self.kernel_noise_mode!r}")


def setting1(scale: int, kernel_size: int = 21) -> DegradationSpec:
    """IKC/DAN setting 1: isotropic Gaussian σ ~ U[0.2, 2 | 3 | 4] for x2 | x3 | x4, bicubic down."""
    scale = _checks.check_scale("scale", scale)
    return DegradationSpec(scale=scale, kernel_size=kernel_size, kernel_type="iso",
                           sigma_range=(0.2, SETTING1_SIGMA_MAX[scale]), downsampler="bicubic")


def setting2(scale: int, kernel_size: int | None = None) -> DegradationSpec:
    """DIV2KRK-style setting 2: anisotropic σx, σy ~ U(0.6, 5), θ ~ U[-π, π], 25% multiplicative tap
    noise, bicubic down. Kernel 11x11 for x2, 21x21 otherwise (as DAN uses for x4)."""
    scale = _checks.check_scale("scale", scale)
    size = kernel_size or (11 if scale == 2 else 21)
    return DegradationSpec(scale=scale, kernel_size=size, kernel_type="aniso", sigma_range=(0.6, 5.0),
                           theta_range=(-np.pi, np.pi), kernel_noise=0.25, downsampler="bicubic")


def kxnet_setting(scale: int, setting: int = 2, noise_max: float = 25.0) -> DegradationSpec:
    """KXNet's training degradations, s-fold down. Setting 1: isotropic, noise-free, 21x21 at every
    scale (as its paper and configs); setting 2: anisotropic (σ in [0.6, 5]), 11/15/21 kernels for
    x2/x3/x4, AWGN σ ~ U[0, noise_max]."""
    scale = _checks.check_scale("scale", scale, allowed=(2, 3, 4))
    size = {2: 11, 3: 15, 4: 21}[scale]
    if setting == 1:
        return DegradationSpec(scale=scale, kernel_size=21, kernel_type="iso",
                               sigma_range=(0.2, SETTING1_SIGMA_MAX[scale]), downsampler="sfold")
    if setting == 2:
        return DegradationSpec(scale=scale, kernel_size=size, kernel_type="aniso", sigma_range=(0.6, 5.0),
                               theta_range=(0.0, np.pi), downsampler="sfold", noise_range=(0.0, noise_max))
    raise ValueError(f"setting must be 1 or 2, got {setting!r}")


def kenet_setting(scale: int) -> DegradationSpec:
    """KENet: anisotropic σ ∈ [0.2, 4], θ ∈ [0, π]; 11x11 kernels for x2, 21x21 for x4; s-fold down."""
    scale = _checks.check_scale("scale", scale, allowed=(2, 4))
    return DegradationSpec(scale=scale, kernel_size=11 if scale == 2 else 21, kernel_type="aniso",
                           sigma_range=(0.2, 4.0), theta_range=(0.0, np.pi), downsampler="sfold")


def sample_kernels(rng: jax.Array, batch: int, spec: DegradationSpec) -> jax.Array:
    """(batch, k, k) random kernels for `spec`, one per image, sampled on device."""
    k_sx, k_sy, k_th, k_noise = jax.random.split(rng, 4)
    lo, hi = spec.sigma_range
    sigma_x = jax.random.uniform(k_sx, (batch,), minval=lo, maxval=hi)
    if spec.kernel_type == "iso":
        return gaussian_kernels(spec.kernel_size, sigma_x)
    sigma_y = jax.random.uniform(k_sy, (batch,), minval=lo, maxval=hi)
    theta = jax.random.uniform(k_th, (batch,), minval=spec.theta_range[0], maxval=spec.theta_range[1])
    k = gaussian_kernels(spec.kernel_size, sigma_x, sigma_y, theta)
    if spec.kernel_noise > 0:
        low = -spec.kernel_noise if spec.kernel_noise_mode == "symmetric" else 0.0
        noise = jax.random.uniform(k_noise, k.shape, minval=low, maxval=spec.kernel_noise)
        k = perturb_taps(k, noise)
    return k


def perturb_taps(kernels: jax.Array, noise: jax.Array) -> jax.Array:
    """Multiply every tap by 1 + noise (same shape as `kernels`) and renormalise each kernel to sum
    to 1: the setting-2 tap noise, given its draws (see KERNEL_NOISE_MODES for their distributions)."""
    k = kernels * (1.0 + noise)
    return k / jnp.sum(k, axis=(-2, -1), keepdims=True)


# --------------------------------------------------------------------------- operators


def blur(images: jax.Array, kernels: jax.Array, method: str = "auto") -> jax.Array:
    """Blur each image with its own kernel (cross-correlation, reflect padding).

    images (N, H, W, C), kernels (N, k, k) -> (N, H, W, C).

    method="conv": one grouped `lax.conv_general_dilated` (the batch folded into channels, one
    depthwise filter per image and channel); this is what accelerators run fastest.
    method="fft": the same correlation through real FFTs (`jaxsr.cpu.degrade.correlate_fft`);
    XLA's CPU depthwise convolution is slow for 21x21 kernels, and this is ~10x faster there.
    method="auto": "conv" on GPU/TPU, "fft" on CPU. Both agree to float32 rounding (~1e-6).
    When a downsampler follows, `blur_downsample` skips the pixels it would drop.
    """
    _checks.check_images("images", images)
    _checks.check_kernels("kernels", kernels, batch=images.shape[0])
    if method not in BLUR_METHODS:
        hint = " ('fused' needs a downsampler: use blur_downsample or apply_degradation)" if method == "fused" else ""
        raise ValueError(f"method must be one of {BLUR_METHODS}, got {method!r}{hint}")
    n, h, w, c = images.shape
    size = kernels.shape[-1]
    pad = size // 2
    _checks.check_reflect_size(h, w, size)
    x = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    kernels = kernels.astype(x.dtype)
    if method == "auto":  # per the platform the program is compiled for
        return cpu.on_cpu(x, kernels, cpu=cpu.correlate_fft, default=_correlate)
    return cpu.correlate_fft(x, kernels) if method == "fft" else _correlate(x, kernels)


def _correlate(padded: jax.Array, kernels: jax.Array) -> jax.Array:
    """'valid' correlation of padded (N, H+k-1, W+k-1, C) images with (N, k, k) kernels of their
    dtype: the batch folded into channels, so one depthwise convolution applies N different kernels."""
    n, hp, wp, c = padded.shape
    size = kernels.shape[-1]
    h, w = hp - size + 1, wp - size + 1
    x = jnp.transpose(padded, (1, 2, 3, 0)).reshape(1, hp, wp, c * n)  # channel = c*N + n
    rhs = jnp.tile(kernels, (c, 1, 1))  # (c*N, k, k), same channel order
    rhs = jnp.transpose(rhs, (1, 2, 0))[:, :, None, :]  # HWIO with I = 1 (depthwise)
    out = jax.lax.conv_general_dilated(
        x, rhs, window_strides=(1, 1), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=n * c,
        precision=jax.lax.Precision.HIGHEST)
    return jnp.transpose(out.reshape(h, w, c, n), (3, 0, 1, 2))


def downsample_sfold(images: jax.Array, scale: int) -> jax.Array:
    """Keep the upper-left pixel of every scale×scale block (the 's-fold' downsampler)."""
    _checks.check_images("images", images)
    scale = _checks.check_scale("scale", scale)
    return images[:, ::scale, ::scale, :]


def downsample_bicubic(images: jax.Array, scale: int) -> jax.Array:
    """MATLAB `imresize(x, 1/scale, 'bicubic')` with antialiasing."""
    _checks.check_images("images", images)
    scale = _checks.check_scale("scale", scale)
    if scale == 1:
        return images
    return imresize(images, 1.0 / scale)


def downsample(images: jax.Array, scale: int, method: str = "bicubic") -> jax.Array:
    if method == "bicubic":
        return downsample_bicubic(images, scale)
    if method == "sfold":
        return downsample_sfold(images, scale)
    raise ValueError(f"downsampler must be one of {DOWNSAMPLERS}, got {method!r}")


def downsampler_matrix(n: int, scale: int, downsampler: str) -> np.ndarray:
    """M (out, n) float64: output i of the downsampler is sum_r M[i, r] x[r] along one axis (the
    CPU formulations of blur + downsample take the downsampler in this form)."""
    if downsampler == "sfold":
        out = -(-n // scale)
        m = np.zeros((out, n))
        m[np.arange(out), scale * np.arange(out)] = 1.0
        return m
    out = math.ceil(n * (1.0 / scale))  # the size imresize(x, 1 / scale) gives
    return np.asarray(_matlab_matrix(n, out, 1.0 / scale, True), np.float64)


# --------------------------------------------------------------------------- blur + downsample at the kept pixels
# The "fused" blur method: CPU formulations (`jaxsr.cpu.degrade`), public here with their argument
# checks; they compute `downsample(blur(...))` on any platform that calls them.

def blur_downsample(images: jax.Array, kernels: jax.Array, scale: int, downsampler: str = "bicubic") -> jax.Array:
    """`downsample(blur(images, kernels), scale, downsampler)` without the full-resolution blur:
    the composed linear operator evaluated only at the kept output positions
    (`jaxsr.cpu.degrade.blur_downsample`). Equal to the two-step path up to float32 rounding, for
    any kernel; for 21x21 kernels at x4 ~10x fewer multiply-adds than the full-resolution blur.
    """
    _checks.check_images("images", images)
    _checks.check_kernels("kernels", kernels, batch=images.shape[0])
    scale = _checks.check_scale("scale", scale)
    if downsampler not in DOWNSAMPLERS:
        raise ValueError(f"downsampler must be one of {DOWNSAMPLERS}, got {downsampler!r}")
    _checks.check_reflect_size(*images.shape[1:3], kernels.shape[-1])
    return cpu.blur_downsample(images, kernels, scale, downsampler, downsampler_matrix)


def separable_blur_downsample(images: jax.Array, taps_h: jax.Array, taps_w: jax.Array, scale: int,
                              downsampler: str = "bicubic") -> jax.Array:
    """`downsample(blur(images, k), scale, downsampler)` for separable kernels k[n] = outer(taps_h[n],
    taps_w[n]) (taps_h along H, taps_w along W, each (N, k)), as two matrix products per image
    (`jaxsr.cpu.degrade.separable_blur_downsample`). Equal to the 2-D paths up to float32 rounding;
    `degrade` takes it for isotropic Gaussians on the "fused" method (the CPU default).
    """
    _checks.check_images("images", images)
    scale = _checks.check_scale("scale", scale)
    n, h, w, c = images.shape
    for name, taps in (("taps_h", taps_h), ("taps_w", taps_w)):
        if taps.ndim != 2 or taps.shape[0] != n or taps.shape[1] % 2 == 0:
            raise ValueError(f"{name} must have shape ({n}, k) with k odd, got {taps.shape}")
    if taps_h.shape != taps_w.shape:
        raise ValueError(f"taps_h and taps_w must have the same shape, got {taps_h.shape} and {taps_w.shape}")
    if downsampler not in DOWNSAMPLERS:
        raise ValueError(f"downsampler must be one of {DOWNSAMPLERS}, got {downsampler!r}")
    _checks.check_reflect_size(h, w, taps_h.shape[1])
    return cpu.separable_blur_downsample(images, taps_h, taps_w, scale, downsampler, downsampler_matrix)


separable_factors = cpu.separable_factors  # (taps_h, taps_w) of rank-1 kernels that sum to 1


def add_noise(rng: jax.Array, images: jax.Array, sigma) -> jax.Array:
    """Additive white Gaussian noise with per-image σ in [0, 255] units, clipped to [0, 1]."""
    _checks.check_images("images", images)
    sigma = jnp.broadcast_to(jnp.asarray(sigma, images.dtype), (images.shape[0],))
    noise = jax.random.normal(rng, images.shape, images.dtype) * (sigma / 255.0)[:, None, None, None]
    return jnp.clip(images + noise, 0.0, 1.0)


def round_8bit(images: jax.Array) -> jax.Array:
    """`round(x * 255) / 255` without clipping (ties to even, as torch.round), straight-through so
    gradients still flow: the official training loops' rounding of each degraded LR batch."""
    q = jnp.round(images * 255.0) / 255.0
    return images + jax.lax.stop_gradient(q - images)


def quantize(images: jax.Array) -> jax.Array:
    """Round to uint8 levels (kept as float); straight-through so gradients still flow."""
    q = jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0) / 255.0
    return images + jax.lax.stop_gradient(q - images)


class Degraded(NamedTuple):
    lr: jax.Array           # (N, H/s, W/s, C)
    kernel: jax.Array       # (N, k, k)
    noise_sigma: jax.Array  # (N,), [0, 255] units


def apply_degradation(hr: jax.Array, kernels: jax.Array, spec: DegradationSpec,
                      noise_sigma=None, rng: jax.Array | None = None) -> jax.Array:
    """Degrade `hr` with given kernels (and optional noise levels): the deterministic half of `degrade`."""
    return _apply_degradation(hr, kernels, spec, noise_sigma, rng, separable=False)


def _apply_degradation(hr, kernels, spec, noise_sigma, rng, separable: bool) -> jax.Array:
    """`apply_degradation`; `separable` says the kernels are outer products (only `degrade` knows:
    it sampled them), which lets the fused method take the separable formulation."""
    _checks.check_images("hr", hr)
    n, h, w, _ = hr.shape
    if h % spec.scale or w % spec.scale:
        raise ValueError(f"hr spatial size {h}x{w} is not a multiple of scale {spec.scale}; "
                         f"mod-crop it first (jaxsr.io.mod_crop)")
    if kernels.ndim != 3 or kernels.shape[-1] != spec.kernel_size:
        raise ValueError(f"kernels must have shape (N, {spec.kernel_size}, {spec.kernel_size}) for this "
                         f"spec, got {kernels.shape}")
    _checks.check_kernels("kernels", kernels, batch=n)
    _checks.check_reflect_size(h, w, spec.kernel_size)
    scale, down, method = spec.scale, spec.downsampler, spec.blur_method
    if method == "auto":  # per the platform the program is compiled for
        lr = cpu.on_cpu(hr, kernels, default=lambda x, k: downsample(blur(x, k, "conv"), scale, down),
                        cpu=lambda x, k: cpu.blur_downsample(x, k, scale, down, downsampler_matrix, separable))
    elif method == "fused":
        lr = cpu.blur_downsample(hr, kernels, scale, down, downsampler_matrix, separable)
    else:
        lr = downsample(blur(hr, kernels, method), scale, down)
    if noise_sigma is not None:
        if rng is None:
            raise ValueError("rng is required when noise_sigma is given")
        lr = add_noise(rng, lr, noise_sigma)
    if spec.round_lr:
        lr = round_8bit(lr)
    return quantize(lr) if spec.quantize else lr


@functools.partial(platform.jit, static_argnames=("spec",))
def _degrade(rng, hr, spec):
    k_kernel, k_sigma, k_noise = jax.random.split(rng, 3)
    n = hr.shape[0]
    kernels = sample_kernels(k_kernel, n, spec)
    separable = spec.kernel_type == "iso"  # sample_kernels adds tap noise to anisotropic ones only
    lo, hi = spec.noise_range
    if hi > 0:
        sigma = jax.random.uniform(k_sigma, (n,), minval=lo, maxval=hi)
        lr = _apply_degradation(hr, kernels, spec, sigma, k_noise, separable)
    else:
        sigma = jnp.zeros((n,), jnp.float32)
        lr = _apply_degradation(hr, kernels, spec, None, None, separable)
    return Degraded(lr, kernels, sigma)


def degrade(rng: jax.Array, hr: jax.Array, spec: DegradationSpec) -> Degraded:
    """The whole pipeline for a batch: sample one kernel (and noise level) per image, blur,
    downsample, add noise. Deterministic for a given `rng`; jitted (spec is static).

    Returns `Degraded(lr, kernel, noise_sigma)`.
    """
    if not isinstance(spec, DegradationSpec):
        raise ValueError(f"spec must be a DegradationSpec, got {type(spec).__name__}")
    _checks.check_images("hr", hr)
    return _degrade(rng, hr, spec)
