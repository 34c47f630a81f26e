"""Argument checks shared by the operators.

They run at trace time (on shapes and dtypes, which are static under `jit`), so a bad
argument fails with a `ValueError` naming it instead of an XLA error deep in a kernel.
Value checks (NaN) only run where the array is concrete, i.e. outside `jit`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when `x` holds actual values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_float(name: str, x) -> None:
    dtype = jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{name} must be a floating-point array in [0, 1], got dtype {dtype}; "
            f"convert integer images with x.astype(np.float32) / 255.")


def check_finite(name: str, x) -> None:
    if not is_concrete(x):
        return
    if isinstance(x, np.ndarray):  # on the host already: no copy to the device
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or Inf values")
        return
    # A device-side reduction (only one boolean crosses to the host), evaluated now even when
    # a concrete array is closed over inside a jit trace.
    with jax.ensure_compile_time_eval():
        finite = bool(jnp.all(jnp.isfinite(jnp.asarray(x))))
    if not finite:
        raise ValueError(f"{name} contains NaN or Inf values")


def check_images(name: str, x, channels: tuple[int, ...] | None = None) -> None:
    """NHWC float image batch; optionally restrict the channel count."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"{name} must be a 4-D NHWC batch, got shape {shape}")
    if channels is not None and shape[-1] not in channels:
        raise ValueError(f"{name} must have {' or '.join(map(str, channels))} channels "
                         f"(NHWC), got shape {tuple(shape)}")
    if shape[1] < 1 or shape[2] < 1:
        raise ValueError(f"{name} has an empty spatial size: shape {tuple(shape)}")
    check_float(name, x)
    check_finite(name, x)


def check_kernels(name: str, k, batch: int | None = None) -> None:
    """(B, k, k) square kernels of odd size."""
    shape = getattr(k, "shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(f"{name} must have shape (batch, size, size), got {shape}")
    if shape[1] != shape[2]:
        raise ValueError(f"{name} must be square, got spatial size {shape[1]}x{shape[2]}")
    if shape[1] % 2 == 0:
        raise ValueError(f"{name} size must be odd so the kernel has a centre, got {shape[1]}")
    if batch is not None and shape[0] != batch:
        raise ValueError(f"{name} has {shape[0]} kernels but the image batch has {batch}; "
                         f"pass one kernel per image")
    check_float(name, k)
    check_finite(name, k)


def check_odd_size(name: str, size) -> int:
    if not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"{name} must be a positive odd integer, got {size!r}")
    return int(size)


def check_scale(name: str, scale, allowed=(1, 2, 3, 4)) -> int:
    if not isinstance(scale, (int, np.integer)) or int(scale) not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {scale!r}")
    return int(scale)


def check_reflect_size(h: int, w: int, size: int) -> None:
    pad = size // 2
    if pad >= h or pad >= w:
        raise ValueError(f"images of spatial size {h}x{w} are too small for {size}x{size} kernels "
                         f"(reflect padding needs more than {pad} pixels per side)")
