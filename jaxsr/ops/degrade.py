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
- `degrade` / `apply_degradation` on CPU do not blur at full resolution: `blur_downsample`
  evaluates blur-then-downsample only at the kept pixels (equal to the two-step path up to
  float32 rounding); for the isotropic kernels it samples itself, `degrade` uses
  `separable_blur_downsample` (two matrix products per image) instead. `DegradationSpec.blur_method`
  picks the implementation per backend.

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

from jaxsr.cpu import hook
from jaxsr.ops import _checks
from jaxsr.ops.imresize import _matlab_matrix, imresize

# Upper end of the training σ range of setting 1 (IKC / DAN), per scale.
SETTING1_SIGMA_MAX = {1: 4.0, 2: 2.0, 3: 3.0, 4: 4.0}
# Gaussian8 test kernels: 8 σ values evenly spaced in these ranges (IKC / DAN protocol).
GAUSSIAN8_RANGE = {2: (0.80, 1.60), 3: (1.35, 2.40), 4: (1.80, 3.20)}
DOWNSAMPLERS = ("bicubic", "sfold")
KERNEL_TYPES = ("iso", "aniso")
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
                   multiplicative per-tap noise ~ U[-kernel_noise, kernel_noise], renormalised).
    downsampler:   "bicubic" (MATLAB imresize, antialiased) or "sfold" (keep the upper-left pixel
                   of each s×s block).
    noise_range:   AWGN σ ~ U[noise_range] per image, in [0, 255] units; (0, 0) = noise-free.
    quantize:      round the LR image to uint8 levels, as the official test sets are stored.
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
        noise = jax.random.uniform(k_noise, k.shape, minval=-spec.kernel_noise, maxval=spec.kernel_noise)
        k = k * (1.0 + noise)
        k = k / jnp.sum(k, axis=(1, 2), keepdims=True)
    return k


# --------------------------------------------------------------------------- operators


def _check_reflect_size(h: int, w: int, size: int) -> None:
    pad = size // 2
    if pad >= h or pad >= w:
        raise ValueError(f"images of spatial size {h}x{w} are too small for {size}x{size} kernels "
                         f"(reflect padding needs more than {pad} pixels per side)")

def blur(images: jax.Array, kernels: jax.Array, method: str = "auto") -> jax.Array:
    """Blur each image with its own kernel (cross-correlation, reflect padding).

    images (N, H, W, C), kernels (N, k, k) -> (N, H, W, C).

    method="conv": one grouped `lax.conv_general_dilated` (the batch folded into channels, one
    depthwise filter per image and channel); this is what accelerators run fastest.
    method="fft": the same correlation through real FFTs of the padded images; XLA's CPU
    depthwise convolution is slow for 21x21 kernels, and this is ~10x faster there.
    method="auto": "conv" on GPU/TPU, "fft" on CPU. Both agree to float32 rounding (~1e-6).
    When a downsampler follows, `blur_downsample` skips the pixels it would drop.
    """
    _checks.check_images("images", images)
    _checks.check_kernels("kernels", kernels, batch=images.shape[0])
    if method not in BLUR_METHODS:
        hint = " ('fused' needs a downsampler: use blur_downsample or apply_degradation)" if method == "fused" else ""
        raise ValueError(f"method must be one of {BLUR_METHODS}, got {method!r}{hint}")
    if method == "auto":  # per the platform the program is compiled for
        return hook.on_cpu(images, kernels, cpu=lambda x, k: blur(x, k, "fft"), default=lambda x, k: blur(x, k, "conv"))
    n, h, w, c = images.shape
    size = kernels.shape[-1]
    pad = size // 2
    _check_reflect_size(h, w, size)
    x = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    kernels = kernels.astype(x.dtype)
    if method == "fft":
        return _correlate_fft(x, kernels, h, w)
    # Fold the batch into channels so one depthwise convolution applies N different kernels.
    x = jnp.transpose(x, (1, 2, 3, 0)).reshape(1, h + 2 * pad, w + 2 * pad, c * n)  # channel = c*N + n
    rhs = jnp.tile(kernels, (c, 1, 1))  # (c*N, k, k), same channel order
    rhs = jnp.transpose(rhs, (1, 2, 0))[:, :, None, :]  # HWIO with I = 1 (depthwise)
    out = jax.lax.conv_general_dilated(
        x, rhs, window_strides=(1, 1), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=n * c,
        precision=jax.lax.Precision.HIGHEST)
    return jnp.transpose(out.reshape(h, w, c, n), (3, 0, 1, 2))


def _correlate_fft(padded: jax.Array, kernels: jax.Array, h: int, w: int) -> jax.Array:
    """'valid' correlation of padded (N, H+k-1, W+k-1, C) images with (N, k, k) kernels via FFT.

    The flipped kernel sits in the corner of a zero canvas; circular convolution then equals
    linear convolution except in the first k-1 rows/columns, which are exactly the ones cropped.
    """
    size = kernels.shape[-1]
    hp, wp = padded.shape[1], padded.shape[2]
    canvas = jnp.zeros((kernels.shape[0], hp, wp), padded.dtype).at[:, :size, :size].set(kernels[:, ::-1, ::-1])
    spectrum = jnp.fft.rfft2(padded, axes=(1, 2)) * jnp.fft.rfft2(canvas, axes=(1, 2))[..., None]
    full = jnp.fft.irfft2(spectrum, s=(hp, wp), axes=(1, 2))
    return full[:, size - 1:size - 1 + h, size - 1:size - 1 + w, :].astype(padded.dtype)


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


# --------------------------------------------------------------------------- fused blur + downsample
#
# Both downsamplers keep a stride-s grid of a linear function of the blurred image, so blur
# followed by downsampling is one linear operator, and most of a full-resolution blur is thrown
# away. Along one axis, output i of the downsampler reads blurred pixels r through the weights
# M[i, r] (s-fold: a single 1 at r = s*i; bicubic: MATLAB's antialiased taps, mirrored at the
# borders), and blurred pixel r is sum_a k[a] xpad[r + a] on the reflect-padded input. With
# m_i = M[i] restricted to its nonzero span [b_i, b_i + len_i), output (i, j) is therefore
#
#     lr[i, j] = sum_{a', b'} K_ij[a', b'] xpad[b_i + a', b_j + b'],     K_ij = (m_i ⊗ m_j) * k,
#
# a correlation with the full 2-D convolution of the outer product of the two patterns with the
# kernel. Away from the borders every output has the same pattern h, at b_i = s*i + off, so the
# bulk of the image is one stride-s correlation. It is computed in two steps:
#   - along W (the contiguous axis) the fixed taps h are applied once to every row (a cheap,
#     separable prefilter), so the per-image part only needs the kernel's columns;
#   - along H the composed kernel (h * k along H, (len + k - 1) x k taps) is evaluated at the
#     kept rows only (a prefilter along the leading axis would stream len rows per output row).
# Outputs whose pattern differs (bicubic's first and last outputs per axis, where MATLAB mirrors
# the *blurred* image) use their own pattern: along W as per-output stacks of k columns, along H
# as their own composed kernel over a window of rows. The result equals blur-then-downsample up to
# float32 rounding, for any kernel.


def _downsampler_matrix(n: int, scale: int, downsampler: str) -> np.ndarray:
    """M (out, n) float64: output i of the downsampler is sum_r M[i, r] x[r] along one axis."""
    if downsampler == "sfold":
        out = -(-n // scale)
        m = np.zeros((out, n))
        m[np.arange(out), scale * np.arange(out)] = 1.0
        return m
    out = math.ceil(n * (1.0 / scale))  # the size imresize(x, 1 / scale) gives
    return np.asarray(_matlab_matrix(n, out, 1.0 / scale, True), np.float64)


class _AxisPlan(NamedTuple):
    out: int                # number of outputs along the axis
    regular: tuple          # (i0, i1): outputs i0 <= i < i1 share the pattern `taps`
    taps: tuple             # h, the shared pattern (float64 values)
    start: int              # b_{i0} in padded coordinates (output i reads from start + s*(i - i0))
    explicit: tuple         # the other outputs, in output order: ((b_i, m_i), ...)


@functools.lru_cache(maxsize=128)
def _axis_plan(n: int, scale: int, ksize: int, downsampler: str) -> _AxisPlan:
    """Static (trace-time, NumPy float64) description of one axis of the fused operator."""
    m = _downsampler_matrix(n, scale, downsampler)
    out = m.shape[0]
    spans = []
    for row in m:
        nz = np.flatnonzero(row)
        spans.append((int(nz[0]), row[nz[0]:nz[-1] + 1]))
    mid = out // 2
    taps, offset = spans[mid][1], spans[mid][0] - scale * mid

    def is_regular(i):
        b, t = spans[i]
        return b == scale * i + offset and len(t) == len(taps) and bool(np.all(np.abs(t - taps) <= 1e-12))

    i0, i1 = mid, mid + 1  # the middle output defines the pattern, so it is regular
    while i0 > 0 and is_regular(i0 - 1):
        i0 -= 1
    while i1 < out and is_regular(i1):
        i1 += 1
    explicit = tuple((b, tuple(float(v) for v in t)) for i, (b, t) in enumerate(spans) if not i0 <= i < i1)
    return _AxisPlan(out, (i0, i1), tuple(float(t) for t in taps), scale * i0 + offset, explicit)


def _reflect_pad(x: jax.Array, pad: int, tails: tuple[int, int]) -> jax.Array:
    """jnp.pad(x, pad, mode="reflect") on the two leading axes, then `tails` zeros at their ends.

    Written as in-place updates of one buffer: XLA:CPU runs the reverse/concatenate form of
    jnp.pad as a slow elementwise select.
    """
    h, w = x.shape[:2]
    rest = (0,) * (x.ndim - 2)
    buf = jnp.zeros((h + 2 * pad + tails[0], w + 2 * pad + tails[1]) + x.shape[2:], x.dtype)
    buf = jax.lax.dynamic_update_slice(buf, x, (pad, pad) + rest)
    buf = jax.lax.dynamic_update_slice(buf, x[pad:0:-1], (0, pad) + rest)
    buf = jax.lax.dynamic_update_slice(buf, x[h - 2:h - 2 - pad:-1], (pad + h, pad) + rest)
    rows = h + 2 * pad
    buf = jax.lax.dynamic_update_slice(buf, buf[:rows, 2 * pad:pad:-1], (0, 0) + rest)
    buf = jax.lax.dynamic_update_slice(buf, buf[:rows, w + pad - 2:w - 2:-1], (0, pad + w) + rest)
    return buf


def _tree_sum(terms: list) -> jax.Array:
    """Sum as a balanced tree. XLA:CPU keeps the association of a fused sum, so a left-to-right
    chain of multiply-adds becomes one serial dependency per vector register (latency-bound);
    a tree gives independent chains and runs ~3x faster."""
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def _prefilter(x: jax.Array, taps, start: int, count: int, axis: int) -> jax.Array:
    """g[m] = sum_t taps[t] x[start + m + t] along `axis`, for m < count (one fused loop)."""
    terms = []
    for t, weight in enumerate(taps):
        if weight == 0.0:
            continue
        tap = jax.lax.slice_in_dim(x, start + t, start + t + count, axis=axis)
        terms.append(tap if weight == 1.0 else tap * jnp.asarray(weight, x.dtype))
    return _tree_sum(terms)


def _compose_rows(patterns, kernels: jax.Array, rows: int) -> jax.Array:
    """(rows, k, len(patterns) * f): for each pattern p, the full convolution of p with the kernels
    along their rows (zero rows appended up to `rows`), patterns side by side on the last axis."""
    ka = kernels.shape[0]
    toeplitz = np.zeros((len(patterns), rows, ka))
    for e, pattern in enumerate(patterns):
        for t, weight in enumerate(pattern):
            toeplitz[e, np.arange(ka) + t, np.arange(ka)] = weight
    out = jnp.einsum("epa,abf->pbef", jnp.asarray(toeplitz, kernels.dtype), kernels,
                     precision=jax.lax.Precision.HIGHEST)
    return out.reshape(rows, kernels.shape[1], -1)


def _column_stacks(x: jax.Array, explicit, ksize: int) -> jax.Array:
    """(rows, len(explicit) * k, f): for each explicit output (b, m) along W, the k columns
    sum_t m[t] x[:, b + t + c], c < k. Outputs on one side share one fused loop (their patterns
    placed in a common window), so no per-output concatenation runs in the inner loop."""
    groups, current = [], []
    for b, m in explicit:  # split where the spans stop overlapping (the two image sides)
        if current and b > max(cb + len(cm) for cb, cm in current):
            groups.append(current)
            current = []
        current.append((b, m))
    groups.append(current)
    stacks = []
    for group in groups:
        lo = min(b for b, _ in group)
        width = max(b + len(m) for b, m in group) - lo
        weights = np.zeros((len(group), width))
        for j, (b, m) in enumerate(group):
            weights[j, b - lo:b - lo + len(m)] = m
        terms = []
        for t in range(width):
            if not weights[:, t].any():
                continue
            tap = jax.lax.slice_in_dim(x, lo + t, lo + t + ksize, axis=1)[:, None]  # (rows, 1, k, f)
            terms.append(tap * jnp.asarray(weights[:, t], x.dtype)[None, :, None, None])
        stacks.append(_tree_sum(terms))
    out = jnp.concatenate(stacks, axis=1) if len(stacks) > 1 else stacks[0]  # (rows, n_exp, k, f)
    return out.reshape(x.shape[0], -1, x.shape[-1])


def _strided_correlate(y: jax.Array, w: jax.Array, strides: tuple[int, int], counts: tuple[int, int]) -> jax.Array:
    """out[u, v, f] = sum_{a, b} w[a, b, f] y[sh*u + a, sw*v + b, f] for u < nh, v < nw.

    y is viewed as (hq, sh, wq, sw, f) (a reshape, no copy), so tap (a, b) is the block
    [a // sh + u, a % sh, b // sw + v, b % sw] for all (u, v): every tap reads whole rows of f
    contiguous values. The loop over a stays a loop (each step one fused multiply-add over the b
    taps): unrolled, XLA:CPU fuses all taps into one loop body that runs several times slower.
    y should hold exactly sh*hq rows and sw*wq columns (hq = nh + (ka-1)//sh); extra rows/columns
    are never read, missing ones are zero-padded here (a copy).
    """
    (sh, sw), (nh, nw) = strides, counts
    ka, kb, f = w.shape
    hq, wq = nh + (ka - 1) // sh, nw + (kb - 1) // sw
    y = y[:sh * hq, :sw * wq]
    if y.shape[:2] != (sh * hq, sw * wq):
        y = jnp.pad(y, ((0, sh * hq - y.shape[0]), (0, sw * wq - y.shape[1]), (0, 0)))
    y = y.reshape(hq, sh, wq, sw, f)

    def row(a, acc):
        wa = jax.lax.dynamic_index_in_dim(w, a, 0, keepdims=False)  # (kb, f)
        terms = []
        for b in range(kb):
            start = (a // sh, a % sh, jnp.int32(b // sw), jnp.int32(b % sw), jnp.int32(0))
            terms.append(jax.lax.dynamic_slice(y, start, (nh, 1, nw, 1, f))[:, 0, :, 0] * wa[b])
        return acc + _tree_sum(terms)

    return jax.lax.fori_loop(0, ka, row, jnp.zeros((nh, nw, f), y.dtype))


def _in_output_order(regular, explicit, plan: _AxisPlan, axis: int) -> jax.Array:
    """Concatenate the regular and explicit outputs of one axis in output order."""
    if explicit is None:
        return regular
    if regular is None:
        return explicit
    n_top = plan.regular[0]  # explicit outputs before the regular ones; the rest come after
    pieces = [jax.lax.slice_in_dim(explicit, 0, n_top, axis=axis), regular,
              jax.lax.slice_in_dim(explicit, n_top, explicit.shape[axis], axis=axis)]
    return jnp.concatenate([p for p in pieces if p.shape[axis]], axis=axis)


def blur_downsample(images: jax.Array, kernels: jax.Array, scale: int, downsampler: str = "bicubic") -> jax.Array:
    """`downsample(blur(images, kernels), scale, downsampler)` without the full-resolution blur.

    Evaluates the composed linear operator only at the kept output positions: the downsampler's
    fixed taps along W as a separable prefilter, the kernel composed with them along H, each at
    stride `scale`; the outputs at the borders, where bicubic mirrors the blurred image, use their
    own exact weights. Equal to the two-step path up to float32 rounding, for any kernel. For
    21x21 kernels at x4 this is ~10x fewer multiply-adds than the full-resolution blur alone.
    """
    _checks.check_images("images", images)
    _checks.check_kernels("kernels", kernels, batch=images.shape[0])
    scale = _checks.check_scale("scale", scale)
    if downsampler not in DOWNSAMPLERS:
        raise ValueError(f"downsampler must be one of {DOWNSAMPLERS}, got {downsampler!r}")
    n, h, w, c = images.shape
    size = kernels.shape[-1]
    pad = size // 2
    _check_reflect_size(h, w, size)
    if scale == 1:
        return blur(images, kernels)
    # Images are processed in groups whose temporaries stay under _TEMP_BUDGET: the layout below
    # keeps ~2.5 padded copies of a group alive, and XLA:CPU takes larger temporaries from fresh
    # mmap'ed pages on every call (glibc maps blocks over 32 MiB), whose page faults cost as much
    # as the arithmetic here.
    per_image = 2.5 * (h + 2 * pad + 2 * size) * (w + 2 * pad + 2 * size) * c * images.dtype.itemsize
    groups = -(-n // max(1, int(_TEMP_BUDGET // per_image)))
    if groups == 1:
        return _blur_downsample(images, kernels, scale, downsampler)
    per_group = -(-n // groups)
    extra = groups * per_group - n  # zero images (and kernels) to fill the last group
    images = jnp.pad(images, ((0, extra), (0, 0), (0, 0), (0, 0))) if extra else images
    kernels = jnp.pad(kernels, ((0, extra), (0, 0), (0, 0))) if extra else kernels
    out = jax.lax.map(lambda ik: _blur_downsample(ik[0], ik[1], scale, downsampler),
                      (images.reshape(groups, per_group, h, w, c), kernels.reshape(groups, per_group, size, size)))
    return out.reshape((groups * per_group,) + out.shape[2:])[:n]


_TEMP_BUDGET = 24 * 2 ** 20  # bytes of temporaries per group of images in blur_downsample


def _blur_downsample(images: jax.Array, kernels: jax.Array, scale: int, downsampler: str) -> jax.Array:
    """blur_downsample for one group of images (arguments already checked)."""
    n, h, w, c = images.shape
    size = kernels.shape[-1]
    pad = size // 2
    ph, pw = _axis_plan(h, scale, size, downsampler), _axis_plan(w, scale, size, downsampler)
    (h0, h1), (w0, w1) = ph.regular, pw.regular
    nh, nw = h1 - h0, w1 - w0
    len_e = max([len(t) for _, t in ph.explicit], default=0) + size - 1  # rows of an explicit H window
    hq = nh + (len(ph.taps) + size - 2) // scale  # row blocks the regular H correlation reads
    wq = nw + (size - 1) // scale
    # Padded sizes the reads below need; zeros beyond the reflect padding are never used.
    rows = max([h + 2 * pad, ph.start + scale * hq] + [b + len_e for b, _ in ph.explicit])
    cols = max(w + 2 * pad, pw.start + scale * wq + len(pw.taps) - 1)

    # Layout (H, W, C*N): channel and image are the vectorised innermost axis (image fastest: the
    # transpose from NHWC then moves whole channels, ~3x faster than with the channel fastest).
    x = jnp.transpose(images, (1, 2, 3, 0)).reshape(h, w, c * n)
    x = _reflect_pad(x, pad, (rows - h - 2 * pad, cols - w - 2 * pad))
    k = jnp.tile(jnp.transpose(kernels.astype(x.dtype), (1, 2, 0)), (1, 1, c))  # (k, k, f), f = c*N + n

    # Along W: the shared pattern as a prefilter, and k-column stacks for the explicit outputs.
    y_reg = _prefilter(x, pw.taps, pw.start, scale * wq, axis=1) if nw else None
    y_exp = _column_stacks(x, pw.explicit, size) if pw.explicit else None
    n_exp_w = len(pw.explicit)

    # Along H, regular outputs: the composed kernel at stride `scale`.
    reg = exp_cols = None
    if nh:
        kh = _compose_rows([ph.taps], k, len(ph.taps) + size - 1)
        rows_reg = slice(ph.start, ph.start + scale * hq)
        if nw:
            reg = _strided_correlate(y_reg[rows_reg], kh, (scale, scale), (nh, nw))
        if n_exp_w:
            exp_cols = _strided_correlate(y_exp[rows_reg], kh, (scale, size), (nh, n_exp_w))
    top = _in_output_order(reg, exp_cols, pw, axis=1) if nh else None

    # Along H, explicit outputs: each its own composed kernel over its own window of rows, as
    # separate feature groups of one correlation with a single output row.
    side = None
    if ph.explicit:
        n_exp_h, f = len(ph.explicit), n * c
        ke = _compose_rows([t for _, t in ph.explicit], k, len_e)  # (len_e, k, n_exp_h * f)

        def windows(y):  # (len_e, cols, n_exp_h * f): output e's rows b_e .. b_e + len_e
            return jnp.concatenate([y[b:b + len_e] for b, _ in ph.explicit], axis=-1)

        parts_reg = parts_exp = None
        if nw:
            parts_reg = _strided_correlate(windows(y_reg), ke, (1, scale), (1, nw))[0]  # (nw, e*f)
        if n_exp_w:
            ye = windows(y_exp).reshape(len_e, n_exp_w, size, n_exp_h * f)
            parts_exp = jnp.einsum("ajbg,abg->jg", ye, ke, precision=jax.lax.Precision.HIGHEST)
        side = _in_output_order(parts_reg, parts_exp, pw, axis=0)  # (out_w, e*f)
        side = jnp.transpose(side.reshape(pw.out, n_exp_h, f), (1, 0, 2))  # (n_exp_h, out_w, f)
    out = _in_output_order(top, side, ph, axis=0)
    return jnp.transpose(out.reshape(ph.out, pw.out, c, n), (3, 0, 1, 2))


# --------------------------------------------------------------------------- separable blur + downsample
#
# A kernel that is an outer product, k[a, b] = u[a] v[b] (every isotropic Gaussian), makes
# blur-then-downsample separable: along each axis, output i reads input p through
#
#     A[i, p] = sum_r M[i, r] sum_a u[a] [reflect(r + a - pad) = p],
#
# the downsampler's matrix M times the reflect-padded 1-D correlation. So lr = A_h X A_w^T per
# image and channel: two small matrix products, which run at matmul speed, instead of the 2-D
# correlation. A depends linearly on the taps, A = sum_a u[a] T[:, a, :], with T fixed per axis.


@functools.lru_cache(maxsize=64)
def _separable_basis(n: int, scale: int, ksize: int, downsampler: str) -> np.ndarray:
    """T (out, k, n) float64: T[i, a, p] = sum_r M[i, r] [reflect(r + a - k // 2) = p]."""
    m = _downsampler_matrix(n, scale, downsampler)
    pad = ksize // 2
    r = np.arange(n)
    basis = np.zeros((m.shape[0], ksize, n))
    for a in range(ksize):
        src = np.abs(r + a - pad)  # numpy/jnp "reflect": -1 -> 1, n -> n - 2
        src = np.where(src > n - 1, 2 * (n - 1) - src, src)
        np.add.at(basis[:, a, :], (slice(None), src), m)  # column r of M lands on input src[r]
    return basis


def separable_blur_downsample(images: jax.Array, taps_h: jax.Array, taps_w: jax.Array, scale: int,
                              downsampler: str = "bicubic") -> jax.Array:
    """`downsample(blur(images, k), scale, downsampler)` for separable kernels k[n] = outer(taps_h[n],
    taps_w[n]) (taps_h along H, taps_w along W, each (N, k)), as two matrix products per image.

    Equal to the 2-D paths up to float32 rounding. `degrade` takes it for isotropic Gaussians on
    the "fused" method (the CPU default): 2.2x the speed of `blur_downsample` at x4 on 256², more on
    smaller images (up to `SEPARABLE_MAX_SIDE`).
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
    size = taps_h.shape[1]
    _check_reflect_size(h, w, size)
    dtype = images.dtype
    hi = jax.lax.Precision.HIGHEST

    def operator(taps, length):  # (N, out, length)
        basis = jnp.asarray(_separable_basis(length, scale, size, downsampler), dtype)
        return jnp.einsum("na,oap->nop", taps.astype(dtype), basis, precision=hi)

    a_h, a_w = operator(taps_h, h), operator(taps_w, w)
    # H first: X[n] is (H, W*C) as stored, so no transpose of the HR batch is needed.
    z = jax.lax.dot_general(a_h, images.reshape(n, h, w * c), (((2,), (1,)), ((0,), (0,))), precision=hi)
    z = z.reshape(n, a_h.shape[1], w, c)
    return jnp.einsum("nowc,nqw->noqc", z, a_w, precision=hi)


# `degrade` takes the separable path up to this image side: its matrices are dense (out x side), so
# its cost grows with side^2 per axis against the 2-D path's side * k. Measured here (x4, 21x21
# kernels, separable / 2-D time): bicubic 0.10 at 96^2, 0.37 at 256^2, 0.52 at 512^2, 0.42 at 1024^2;
# s-fold 0.27, 0.78, 1.08, 0.92. Its fixed bases stay under 22 MB per axis.
SEPARABLE_MAX_SIDE = 1024


def separable_factors(kernels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(taps_h, taps_w) with outer(taps_h[n], taps_w[n]) = kernels[n], for kernels that ARE
    rank-1 and sum to 1 (their marginals then are the factors). Nothing checks that here: only
    `degrade` calls it, on isotropic Gaussians it sampled itself."""
    return jnp.sum(kernels, axis=2), jnp.sum(kernels, axis=1)


def add_noise(rng: jax.Array, images: jax.Array, sigma) -> jax.Array:
    """Additive white Gaussian noise with per-image σ in [0, 255] units, clipped to [0, 1]."""
    _checks.check_images("images", images)
    sigma = jnp.broadcast_to(jnp.asarray(sigma, images.dtype), (images.shape[0],))
    noise = jax.random.normal(rng, images.shape, images.dtype) * (sigma / 255.0)[:, None, None, None]
    return jnp.clip(images + noise, 0.0, 1.0)


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
    it sampled them), which lets the fused method take `separable_blur_downsample`."""
    _checks.check_images("hr", hr)
    n, h, w, _ = hr.shape
    if h % spec.scale or w % spec.scale:
        raise ValueError(f"hr spatial size {h}x{w} is not a multiple of scale {spec.scale}; "
                         f"mod-crop it first (jaxsr.io.mod_crop)")
    if kernels.ndim != 3 or kernels.shape[-1] != spec.kernel_size:
        raise ValueError(f"kernels must have shape (N, {spec.kernel_size}, {spec.kernel_size}) for this "
                         f"spec, got {kernels.shape}")
    method = spec.blur_method
    if method == "auto":  # per the platform the program is compiled for
        lr = hook.on_cpu(hr, kernels, cpu=lambda x, k: _blur_downsample_with(x, k, spec, "fused", separable),
                         default=lambda x, k: _blur_downsample_with(x, k, spec, "conv", separable))
    else:
        lr = _blur_downsample_with(hr, kernels, spec, method, separable)
    if noise_sigma is not None:
        if rng is None:
            raise ValueError("rng is required when noise_sigma is given")
        lr = add_noise(rng, lr, noise_sigma)
    return quantize(lr) if spec.quantize else lr


def _blur_downsample_with(hr, kernels, spec, method: str, separable: bool) -> jax.Array:
    h, w = hr.shape[1:3]
    if method == "fused" and separable and max(h, w) <= SEPARABLE_MAX_SIDE:
        lr = separable_blur_downsample(hr, *separable_factors(kernels), spec.scale, spec.downsampler)
    elif method == "fused":
        lr = blur_downsample(hr, kernels, spec.scale, spec.downsampler)
    else:
        lr = downsample(blur(hr, kernels, method), spec.scale, spec.downsampler)
    return lr


@functools.partial(hook.jit, static_argnames=("spec",))
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
