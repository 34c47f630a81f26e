"""Native kernels for XLA:CPU: the kernel gradient of stride-1 convolutions as an FFI custom call.

XLA:CPU reduces a convolution's kernel gradient to a matrix product whose contraction runs over
every output pixel and whose result is small (kh·kw·C x O). Its Eigen kernels run that shape at
about half the speed they reach on the forward pass, and only after copying shifted views of the
input and cotangent into stacks (`layers.matmul_kernel_gradient`). `kernel_gradient` computes the
same sums without copies, as small products of contiguous pixel runs in AVX-512 registers
(`native/conv_kernel_grad.cc`), the work split over XLA's intra-op threads.

The C++ is compiled on first use with the system's C++ compiler against jaxlib's FFI headers and
cached (`$JAXSR_CACHE_DIR`, else `$XDG_CACHE_HOME/jaxsr`, else `~/.cache/jaxsr`). Where that is not
possible (no compiler, no AVX-512, not x86-64, a JAX without `jax.ffi`) `available()` is False and
callers keep XLA's formulation. `JAXSR_NATIVE=0` turns the kernels off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp

Array = jax.Array
log = logging.getLogger(__name__)

TARGET = "jaxsr_conv_kernel_grad"
SOURCE = pathlib.Path(__file__).resolve().parent / "native" / "conv_kernel_grad.cc"
# Set to False (before tracing) to trace XLA's formulation instead, as the benchmarks compare.
ENABLED = os.environ.get("JAXSR_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")
COMPILE_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-mavx512f", "-mfma", "-w")


def cache_dir() -> pathlib.Path:
    """Where compiled kernels are kept."""
    if os.environ.get("JAXSR_CACHE_DIR"):
        return pathlib.Path(os.environ["JAXSR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "jaxsr"


def _compiled_library() -> pathlib.Path | None:
    """The kernel source built for this jaxlib, from the cache or compiled now (atomically, so
    processes starting together never load a half-written file)."""
    include = jax.ffi.include_dir()
    key = hashlib.sha256(SOURCE.read_bytes() + include.encode() + jax.__version__.encode()
                         + " ".join(COMPILE_FLAGS).encode()).hexdigest()[:16]
    target = cache_dir() / f"conv_kernel_grad-{key}.so"
    if target.exists():
        return target
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        log.info("jaxsr.cpu_kernels: no C++ compiler found; XLA's kernel gradients are used")
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *COMPILE_FLAGS, f"-I{include}", str(SOURCE), "-o", tmp],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            log.warning("jaxsr.cpu_kernels: compiling %s failed; XLA's kernel gradients are used:\n%s",
                        SOURCE, done.stderr[-2000:])
            return None
        os.replace(tmp, target)
        return target
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("jaxsr.cpu_kernels: compiling %s failed (%s); XLA's kernel gradients are used", SOURCE, err)
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.lru_cache(maxsize=None)
def _registered() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64") or not hasattr(jax, "ffi"):
        return False
    try:
        path = _compiled_library()
        if path is None:
            return False
        lib = ctypes.CDLL(str(path))
        if not lib.jaxsr_native_supported():
            log.info("jaxsr.cpu_kernels: this CPU has no AVX-512; XLA's kernel gradients are used")
            return False
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.jaxsr_conv_kernel_grad), platform="cpu")
    except Exception as err:  # a broken build or an FFI this jaxlib lacks: keep XLA's formulation
        log.warning("jaxsr.cpu_kernels: the custom call could not be registered (%s); "
                    "XLA's kernel gradients are used", err)
        return False
    _registered.library = lib  # keep it loaded
    return True


def available() -> bool:
    """Whether `kernel_gradient` runs natively: enabled, the CPU backend, and the kernel built and
    registered here."""
    return ENABLED and jax.default_backend() == "cpu" and _registered()


def used_for(*operands: Array) -> bool:
    """Whether a kernel gradient of these operands runs natively: `available()`, all float32."""
    return all(x.dtype == jnp.float32 for x in operands) and available()


def kernel_gradient(x: Array, g: Array, kernel_shape: tuple[int, ...], padding: tuple[tuple[int, int], ...]) -> Array:
    """dw (kh, kw, C, O) of a stride-1 NHWC/HWIO convolution with input `x` (N, H, W, C), output
    cotangent `g` (N, Ho, Wo, O) and `padding` ((top, bottom), (left, right)), float32: the native
    kernel. Callers check `used_for(x, g)` first."""
    kh, kw, c, o = kernel_shape
    (pt, pb), (pl, pr) = padding
    n, h, w, cx = x.shape
    if (cx != c or g.shape[0] != n or g.shape[3] != o or g.shape[1] != h + pt + pb - kh + 1
            or g.shape[2] != w + pl + pr - kw + 1 or min(pt, pb, pl, pr) < 0):
        raise ValueError(f"kernel_gradient: x {x.shape}, g {g.shape}, kernel {kernel_shape} and padding "
                         f"{padding} do not describe one stride-1 convolution")
    if x.dtype != jnp.float32 or g.dtype != jnp.float32:
        raise ValueError(f"kernel_gradient: takes float32 operands, got {x.dtype} and {g.dtype}")
    if not _registered():
        raise RuntimeError("jaxsr.cpu_kernels: the native kernel is not available here (see available())")
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((kh, kw, c, o), jnp.float32), vmap_method="sequential")
    return call(x, g, pad_top=int(pt), pad_left=int(pl))
