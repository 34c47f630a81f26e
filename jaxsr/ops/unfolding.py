"""Operators of the unfolded (model-based) networks: the data term y = (x ⊗ k)↓s of blind SR,
its gradients and its closed-form proximal step, as pure functions.

KXNet's K and X steps (`kernel_gradient`, `transposed_blur`, `blur_down`) use the library's
degradation (`degrade.blur`: cross-correlation, reflect padding; s-fold downsampling), written
here as grouped convolutions (`kernel_gradient` and `blur_down` with their own VJPs, so that
no gradient becomes a convolution with an image-sized window); their FFT formulations for the
CPU, where XLA's grouped and dilated convolutions are slow, are `jaxsr.cpu.degrade`'s (through
`jaxsr.cpu.hook`): `method="auto"` picks them in programs compiled for the CPU.

USRNet's data step (`data_precompute`, `data_step`) is the closed-form minimiser of
||y - (x ⊛ k)↓s||² + α||x - x_prev||² for *circular* convolution and the s-fold
downsampler, solved with FFTs.

All of them are jittable and differentiable (the convolution forms of `kernel_gradient` and
`blur_down` in reverse mode only: they define VJPs); no Flax.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxsr import cpu
from jaxsr.ops import _checks, degrade

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST
METHODS = ("auto", "conv", "fft")


# ----------------------------------------------------------------------------- KXNet: gradients of the data term
def blur_down(x: Array, kernels: Array, scale: int, method: str = "auto") -> Array:
    """(X ⊗ K)↓s with the library's degradation (reflect padding, s-fold downsampling).

    method "conv": one stride-s grouped convolution, which computes only the kept pixels (s²
    fewer multiply-adds than blurring at full resolution) and differentiates through
    `_strided_blur`'s VJP; "fft": the blur through FFTs, then every s-th pixel
    (`jaxsr.cpu.degrade.sfold_blur_fft`); "auto": "fft" on CPU, "conv" elsewhere.
    x (N, H, W, C), kernels (N, k, k) -> (N, ⌈H/s⌉, ⌈W/s⌉, C).
    """
    _check_method(method)
    _checks.check_images("x", x)
    _checks.check_kernels("kernels", kernels, batch=x.shape[0])
    scale = _checks.check_scale("scale", scale)
    _checks.check_reflect_size(*x.shape[1:3], kernels.shape[-1])
    pad = kernels.shape[-1] // 2
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    kernels = kernels.astype(x.dtype)
    if method == "auto":  # per the platform the program is compiled for
        return cpu.on_cpu(xp, kernels, cpu=lambda xp, k: cpu.sfold_blur_fft(xp, k, scale),
                          default=lambda xp, k: _strided_blur(xp, k, scale))
    if method == "fft":
        return cpu.sfold_blur_fft(xp, kernels, scale)
    return _strided_blur(xp, kernels, scale)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def kernel_gradient(x: Array, residual: Array, size: int, scale: int, method: str = "auto") -> Array:
    """(D_s U_f(X))ᵀ vec(R) / (C·h·w): the data term's gradient w.r.t. the kernel.

    Row (i, j, c) of D_s U_f(X) is the k×k patch of the reflect-padded X whose top-left corner
    is (s·i, s·j), so tap (a, b) of the product is Σ X_pad[s·i + a, s·j + b, c] · R[i, j, c]:
    a correlation of X_pad with R dilated by s, computed without materialising the
    (C·h·w) × k² unfold matrix. method "conv": one grouped convolution with the dilated
    residual as filter; "fft": the same correlation through real FFTs
    (`jaxsr.cpu.degrade.kernel_gradient_fft`); "auto": "fft" on CPU, "conv" elsewhere.

    x (N, H, W, C) with H > s·(h-1), residual (N, h, w, C) -> (N, size, size).
    """
    _check_method(method)
    c = x.shape[-1]
    h, w = residual.shape[1:3]
    pad = size // 2
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    residual = residual.astype(xp.dtype)
    if method == "auto":  # per the platform the program is compiled for
        out = cpu.on_cpu(xp, residual, cpu=lambda xp, r: cpu.kernel_gradient_fft(xp, r, size, scale),
                         default=lambda xp, r: _kernel_gradient(xp, r, size, scale))
    elif method == "fft":
        out = cpu.kernel_gradient_fft(xp, residual, size, scale)
    else:
        out = _kernel_gradient(xp, residual, size, scale)
    return out.astype(x.dtype) / (c * h * w)


# The data term is the trilinear form Σ xp[n, s·i+a, s·j+b, c] · K[n, a, b] · R[n, i, j, c] (xp: the
# reflect-padded X), read three ways: (xp, K) -> R is (X ⊗ K)↓s (`_strided_blur`), (xp, R) -> K the
# kernel gradient (`_kernel_gradient`) and (K, R) -> xp its scatter (`_scatter`). On accelerators each
# of the first two differentiates through the other two. Autodiff would instead take the gradient for
# the operand that is not the image as a convolution with an image-sized window (for xp in the kernel
# gradient, for K in the blur): on TPU v5e the kernel gradient's alone compiled in 190 s at x2.

def _per_channel(a: Array) -> Array:
    """(N, H, W, C) -> (1, H, W, N·C), channel n*C + c: one depthwise group per image and channel."""
    n, h, w, c = a.shape
    return jnp.transpose(a, (1, 2, 0, 3)).reshape(1, h, w, n * c)


def _from_per_channel(a: Array, n: int) -> Array:
    _, h, w, nc = a.shape
    return jnp.transpose(a[0].reshape(h, w, n, nc // n), (2, 0, 1, 3))


def _depthwise_filters(kernels: Array, channels: int) -> Array:
    """(N, k, k) -> (k, k, 1, N·C) HWIO, filter n*C + c = kernels[n]."""
    return jnp.transpose(jnp.repeat(kernels, channels, axis=0), (1, 2, 0))[:, :, None, :]


def _touched(xp: Array, h: int, w: int, size: int, scale: int) -> Array:
    """The rows and columns of xp that the k×k patches at (s·i, s·j), i < h, j < w, read."""
    return xp[:, :scale * (h - 1) + size, :scale * (w - 1) + size, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _strided_blur(xp: Array, kernels: Array, scale: int) -> Array:
    """R[n, i, j, c] = Σ_{a,b} xp[n, s·i+a, s·j+b, c] · K[n, a, b]: one stride-s depthwise convolution."""
    out = jax.lax.conv_general_dilated(
        _per_channel(xp), _depthwise_filters(kernels, xp.shape[-1]), window_strides=(scale, scale),
        padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=xp.shape[0] * xp.shape[-1],
        precision=_HIGHEST)
    return _from_per_channel(out, xp.shape[0])


def _strided_blur_fwd(xp, kernels, scale):
    return _strided_blur(xp, kernels, scale), (xp, kernels)


def _strided_blur_bwd(scale, res, g):
    xp, kernels = res
    g = g.astype(xp.dtype)
    return _scatter(kernels, g, scale, xp.shape), _kernel_gradient(xp, g, kernels.shape[-1], scale)


_strided_blur.defvjp(_strided_blur_fwd, _strided_blur_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _kernel_gradient(xp: Array, residual: Array, size: int, scale: int) -> Array:
    """`kernel_gradient` before its normalisation (xp: x reflect-padded), as one grouped convolution:
    K[n, a, b] = Σ_{i,j,c} xp[n, s·i+a, s·j+b, c] · R[n, i, j, c], the dilated residual as filter."""
    h, w = residual.shape[1:3]
    lhs = _per_channel(_touched(xp, h, w, size, scale))
    rhs = jnp.transpose(residual, (1, 2, 3, 0))  # (h, w, C, N): group n reads R[n], channels n*C .. n*C + C-1
    out = jax.lax.conv_general_dilated(
        lhs, rhs, window_strides=(1, 1), padding="VALID", rhs_dilation=(scale, scale),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=xp.shape[0], precision=_HIGHEST)
    return jnp.transpose(out[0], (2, 0, 1))


def _kernel_gradient_fwd(xp, residual, size, scale):
    return _kernel_gradient(xp, residual, size, scale), (xp, residual)


def _kernel_gradient_bwd(size, scale, res, g):
    xp, residual = res
    h, w = residual.shape[1:3]
    g = g.astype(xp.dtype)
    d_residual = _strided_blur(_touched(xp, h, w, size, scale), g, scale)
    return _scatter(g, residual, scale, xp.shape), d_residual.astype(residual.dtype)


_kernel_gradient.defvjp(_kernel_gradient_fwd, _kernel_gradient_bwd)


def _scatter(kernels: Array, residual: Array, scale: int, shape: tuple[int, ...]) -> Array:
    """xp[n, u, v, c] = Σ_{s·i+a=u, s·j+b=v} K[n, a, b] · R[n, i, j, c] in an array of `shape`: R dilated
    by s and convolved with K (zero beyond the rows the patches touch)."""
    n, h, w, c = residual.shape
    size = kernels.shape[-1]
    out = jax.lax.conv_general_dilated(
        _per_channel(residual), _depthwise_filters(kernels, c)[::-1, ::-1], window_strides=(1, 1),
        padding=((size - 1, size - 1), (size - 1, size - 1)), lhs_dilation=(scale, scale),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=n * c, precision=_HIGHEST)
    out = _from_per_channel(out, n)
    return jnp.pad(out, ((0, 0), (0, shape[1] - out.shape[1]), (0, shape[2] - out.shape[2]), (0, 0)))


def transposed_blur(e: Array, kernels: Array, scale: int, method: str = "auto") -> Array:
    """K ⊗ₛᵀ E: `F.conv_transpose2d(E, K, stride=s, padding=k//2, output_padding=s-1)` per image.

    The adjoint of the zero-padded, stride-s correlation: E is dilated by s (zeros between
    pixels) and convolved with K. method "conv": a grouped convolution with lhs dilation;
    "fft": real FFTs on a canvas large enough that nothing wraps
    (`jaxsr.cpu.degrade.transposed_blur_fft`); "auto": "fft" on CPU, "conv" elsewhere.
    e (N, h, w, C), kernels (N, k, k) -> (N, s·h, s·w, C).
    """
    _check_method(method)
    kernels = kernels.astype(e.dtype)
    if method == "auto":  # per the platform the program is compiled for
        return cpu.on_cpu(e, kernels, cpu=lambda e, k: cpu.transposed_blur_fft(e, k, scale),
                          default=lambda e, k: _transposed_blur(e, k, scale))
    if method == "fft":
        return cpu.transposed_blur_fft(e, kernels, scale)
    return _transposed_blur(e, kernels, scale)


def _transposed_blur(e: Array, kernels: Array, scale: int) -> Array:
    """`transposed_blur` as one grouped convolution with lhs dilation; kernels of e's dtype."""
    n, h, w, c = e.shape
    size = kernels.shape[-1]
    pad = size // 2
    lo, hi = size - 1 - pad, size - 1 - pad + scale - 1  # output_padding = s - 1 gives s·h rows
    lhs = jnp.transpose(e, (1, 2, 3, 0)).reshape(1, h, w, c * n)  # channel c*N + n
    rhs = jnp.tile(kernels[:, ::-1, ::-1], (c, 1, 1))  # same channel order
    rhs = jnp.transpose(rhs, (1, 2, 0))[:, :, None, :]
    out = jax.lax.conv_general_dilated(
        lhs, rhs, window_strides=(1, 1), padding=((lo, hi), (lo, hi)), lhs_dilation=(scale, scale),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c * n, precision=_HIGHEST)
    return jnp.transpose(out.reshape(scale * h, scale * w, c, n), (3, 0, 1, 2))


# ----------------------------------------------------------------------------- USRNet: the closed-form data step
def p2o(psf: Array, shape: tuple[int, int]) -> Array:
    """Optical transfer function of a (N, k, k) point-spread function on an (H, W) grid.

    The PSF goes in the top-left corner of a zero (H, W) canvas, is rolled by -(k // 2) on both
    axes (its centre to the origin) and Fourier transformed, so multiplying by the result
    is the circular convolution with the PSF centred. Returns complex (N, H, W).
    """
    n, kh, kw = psf.shape
    h, w = shape
    if kh > h or kw > w:
        raise ValueError(f"kernel of size {kh}x{kw} is larger than the HR grid {h}x{w}; "
                         f"use a larger LR input or a smaller kernel")
    canvas = jnp.zeros((n, h, w), psf.dtype).at[:, :kh, :kw].set(psf)
    canvas = jnp.roll(canvas, (-(kh // 2), -(kw // 2)), axis=(1, 2))
    return jnp.fft.fft2(canvas, axes=(1, 2))


def block_mean(x: Array, scale: int) -> Array:
    """Mean of the scale x scale distinct blocks of a spectrum: (N, sH, sW, ...) -> (N, H, W, ...).

    Block (i, j) is rows [i*H, (i+1)*H) and columns [j*W, (j+1)*W): in the Fourier domain,
    s-fold downsampling averages these aliased copies.
    """
    n, sh, sw = x.shape[:3]
    h, w = sh // scale, sw // scale
    x = x.reshape(n, scale, h, scale, w, *x.shape[3:])
    return jnp.mean(x, axis=(1, 3))


def upsample_zeros(lr: Array, scale: int) -> Array:
    """The adjoint of the s-fold downsampler: each LR pixel at the top-left of an s x s block of zeros."""
    n, h, w, c = lr.shape
    return jnp.zeros((n, h * scale, w * scale, c), lr.dtype).at[:, ::scale, ::scale, :].set(lr)


def data_precompute(lr: Array, kernel: Array, scale: int) -> tuple[Array, Array]:
    """(FB, FBᴴ·F(Sᵀy)) for `data_step`: the OTF of the blur on the HR grid and the Fourier
    transform of Kᵀ Sᵀ y. `kernel` (N, k, k) is a jaxsr (correlation) kernel; it is flipped into
    the convolution PSF that `p2o` expects."""
    n, h, w, _ = lr.shape
    fb = p2o(kernel[:, ::-1, ::-1].astype(lr.dtype), (h * scale, w * scale))
    fbfy = jnp.conj(fb)[..., None] * jnp.fft.fft2(upsample_zeros(lr, scale), axes=(1, 2))
    return fb, fbfy


def data_step(x: Array, fb: Array, fbfy: Array, alpha: Array, scale: int) -> Array:
    """argmin_z ||y - S K z||² + α ||z - x||² in closed form (S: s-fold downsampler, K: circular
    convolution with OTF `fb`).

    By the Woodbury identity, with d = Kᵀ Sᵀ y + α x and FR = F(d):
        F(z) = (FR - FBᴴ · ⇑[ mean_blocks(FB · FR) / (mean_blocks(|FB|²) + α) ]) / α
    where ⇑ tiles the (H, W) block means back to (sH, sW). x (N, sH, sW, C); alpha (N,).
    """
    alpha = alpha.astype(x.dtype)[:, None, None, None]
    fb = fb[..., None]
    fr = fbfy + jnp.fft.fft2(alpha * x, axes=(1, 2))
    fbr = block_mean(fb * fr, scale)
    inv_w = block_mean(jnp.abs(fb) ** 2, scale)
    inv_wbr = fbr / (inv_w + alpha)
    fx = (fr - jnp.conj(fb) * jnp.tile(inv_wbr, (1, scale, scale, 1))) / alpha
    return jnp.real(jnp.fft.ifft2(fx, axes=(1, 2))).astype(x.dtype)
