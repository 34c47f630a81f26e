"""Bicubic resizing as a dense linear map per axis.

Two flavours, both separable and exact to their reference definitions:

* `imresize` follows MATLAB's `imresize(..., 'bicubic')`: Keys cubic with a = -0.5, an
  antialiasing kernel stretched by 1/scale when shrinking, symmetric (edge-repeating)
  mirroring at the borders. It is the degradation used by the DAN/IKC test protocols.
* `resize_bicubic_torch` follows PyTorch's `F.interpolate(mode='bicubic')`: a = -0.75,
  no antialiasing, border pixels replicated. KXNet and DSSR build their inputs with it.

Shapes are static under `jit`, so each axis's (out, in) weight matrix is built once in
NumPy float64 at trace time and applied on device with an einsum. Every function here is
linear in the image, hence jittable, vmappable and differentiable. Outputs are neither
clipped nor rounded: bicubic overshoots (values slightly outside [0, 1]) are kept, and the
caller quantises (e.g. to uint8, as MATLAB does for uint8 inputs) where a protocol asks.
"""
from __future__ import annotations

import functools
import math
from numbers import Real

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr.ops._checks import check_images

__all__ = ["imresize", "resize_bicubic_torch"]

_MIN_SCALE, _MAX_SCALE = 0.25, 4.0


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter `a`, support [-2, 2]."""
    ax = np.abs(x)
    near = ((a + 2) * ax - (a + 3)) * ax**2 + 1
    far = ((ax - 5) * ax + 8) * ax * a - 4 * a
    return np.where(ax <= 1, near, np.where(ax < 2, far, 0.0))


def _dense(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, in_len: int) -> np.ndarray:
    """Scatter-add tap weights into an (out, in) matrix; taps hitting one pixel accumulate."""
    matrix = np.zeros((rows.shape[0], in_len))
    np.add.at(matrix, (np.broadcast_to(rows, cols.shape), cols), weights)
    matrix.flags.writeable = False  # cached and shared between calls
    return matrix


@functools.lru_cache(maxsize=256)
def _matlab_matrix(in_len: int, out_len: int, scale: float, antialiasing: bool) -> np.ndarray:
    """MATLAB's `contributions` for the cubic kernel, as a dense (out_len, in_len) matrix."""
    stretch = antialiasing and scale < 1
    width = 4.0 / scale if stretch else 4.0
    u = np.arange(1, out_len + 1) / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate
    left = np.floor(u - width / 2)
    taps = left[:, None] + np.arange(math.ceil(width) + 2)  # 1-based indices, may fall outside
    dist = u[:, None] - taps
    weights = scale * _cubic(scale * dist, -0.5) if stretch else _cubic(dist, -0.5)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Mirror with the edge repeated: 0 -> 1, -1 -> 2, n+1 -> n, periodic with period 2n.
    # MATLAB then drops all-zero tap columns, which a dense matrix does implicitly.
    folded = np.mod(taps.astype(np.int64) - 1, 2 * in_len)
    cols = np.where(folded < in_len, folded, 2 * in_len - 1 - folded)
    return _dense(np.arange(out_len)[:, None], cols, weights, in_len)


@functools.lru_cache(maxsize=256)
def _torch_matrix(in_len: int, out_len: int, scale: float | None, align_corners: bool) -> np.ndarray:
    """PyTorch's bicubic upsampling weights (a = -0.75, replicate border) as a dense matrix."""
    dst = np.arange(out_len, dtype=np.float64)
    if align_corners:
        ratio = (in_len - 1) / (out_len - 1) if out_len > 1 else 0.0
        src = ratio * dst
    else:
        ratio = 1.0 / scale if scale is not None else in_len / out_len
        src = ratio * (dst + 0.5) - 0.5
    base = np.floor(src)
    t = (src - base)[:, None]
    weights = _cubic(t - np.arange(-1, 3), -0.75)  # taps at base-1 .. base+2
    cols = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3), 0, in_len - 1)
    return _dense(np.arange(out_len)[:, None], cols, weights, in_len)


def _apply(images: jax.Array, matrix: np.ndarray, axis: int) -> jax.Array:
    """Resize one spatial axis (1 = H, 2 = W) by a (out, in) matrix."""
    m = jnp.asarray(matrix, dtype=images.dtype)
    spec = "oh,nhwc->nowc" if axis == 1 else "ow,nhwc->nhoc"
    # HIGHEST: default TPU/GPU matmul precision (bf16 passes) would break MATLAB parity.
    return jnp.einsum(spec, m, images, precision=jax.lax.Precision.HIGHEST)


def _pair(name: str, value) -> tuple:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be a number or an (h, w) pair, got {value!r}")
    return pair


def _check_scale(value, limits: tuple[float, float] | None) -> tuple[float, float]:
    pair = _pair("scale", value)
    for s in pair:
        ok = isinstance(s, Real) and not isinstance(s, bool) and math.isfinite(s) and s > 0
        if ok and limits is not None:
            ok = limits[0] <= s <= limits[1]
        if not ok:
            bounds = f"in [{limits[0]}, {limits[1]}]" if limits else "positive and finite"
            raise ValueError(f"scale must be {bounds} (a number or an (h, w) pair), got {value!r}")
    return float(pair[0]), float(pair[1])


def _check_size(name: str, value) -> tuple[int, int]:
    pair = _pair(name, value)
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in pair):
        raise ValueError(f"{name} must be a pair of positive integers (h, w), got {value!r}")
    return int(pair[0]), int(pair[1])


def _one_of(scale, output_size) -> None:
    if (scale is None) == (output_size is None):
        raise ValueError(f"give exactly one of scale and output_size, got scale={scale!r}, "
                         f"output_size={output_size!r}")


def imresize(images: jax.Array, scale=None, *, output_size=None,
             antialiasing: bool = True) -> jax.Array:
    """MATLAB-compatible bicubic `imresize` of an NHWC float batch (any channel count).

    Args:
      images: (N, H, W, C) floating-point array.
      scale: factor in [1/4, 4], a number or an (h, w) pair; the output size is
        ceil(size * scale) per axis, computed in float64 exactly as MATLAB does.
      output_size: alternatively the (h, w) output size; the scales are then out / in.
      antialiasing: stretch the kernel by 1/scale when shrinking (MATLAB's default).

    Returns the resized batch in the input dtype, neither clipped nor rounded.
    """
    check_images("images", images)
    _one_of(scale, output_size)
    in_hw = images.shape[1:3]
    if output_size is not None:
        out_hw = _check_size("output_size", output_size)
        scales = tuple(o / i for o, i in zip(out_hw, in_hw))
    else:
        scales = _check_scale(scale, (_MIN_SCALE, _MAX_SCALE))
        out_hw = tuple(math.ceil(i * s) for i, s in zip(in_hw, scales))
    # MATLAB resizes the axis with the smaller scale first (H on ties). With float images
    # the two passes commute up to rounding, but shrinking first is also the cheaper order.
    order = (1, 2) if scales[0] <= scales[1] else (2, 1)
    out = images
    for axis in order:
        i, o, s = in_hw[axis - 1], out_hw[axis - 1], scales[axis - 1]
        out = _apply(out, _matlab_matrix(i, o, s, bool(antialiasing)), axis)
    return out


def resize_bicubic_torch(images: jax.Array, output_size=None, *, scale=None,
                         align_corners: bool = False) -> jax.Array:
    """PyTorch `F.interpolate(images, size | scale_factor, mode='bicubic')` on an NHWC batch.

    Args:
      images: (N, H, W, C) floating-point array.
      output_size: the (h, w) output size (or one int for both); the ratio is in / out.
      scale: alternatively a positive factor or (h, w) pair; like PyTorch (without
        `recompute_scale_factor`) the output size is floor(size * scale) and the sampling
        ratio is 1 / scale, not in / out.
      align_corners: map corner pixel centres onto each other, ratio (in-1) / (out-1);
        `scale` then only sets the output size.

    Returns the resized batch in the input dtype, neither clipped nor rounded.
    """
    check_images("images", images)
    _one_of(scale, output_size)
    in_hw = images.shape[1:3]
    if output_size is not None:
        out_hw, scales = _check_size("output_size", output_size), (None, None)
    else:
        scales = _check_scale(scale, None)
        out_hw = tuple(math.floor(i * s) for i, s in zip(in_hw, scales))
        if min(out_hw) < 1:
            raise ValueError(f"scale={scale!r} gives an empty output {out_hw} for input size "
                             f"{tuple(in_hw)}")
    out = images
    for axis in (1, 2):
        i, o, s = in_hw[axis - 1], out_hw[axis - 1], scales[axis - 1]
        out = _apply(out, _torch_matrix(i, o, None if align_corners else s,
                                        bool(align_corners)), axis)
    return out
