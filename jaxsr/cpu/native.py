"""Native XLA:CPU kernels for stride-1 convolutions, as FFI custom calls.

* `kernel_gradient`: XLA:CPU reduces a convolution's kernel gradient to a matrix product whose
  contraction runs over every output pixel and whose result is small (kh·kw·C x O); its Eigen
  kernels run that shape at about half their forward-pass speed, after copying shifted views into
  stacks (`jaxsr.cpu.conv.matmul_kernel_gradient`). The native kernel computes the same sums
  without copies, as products of contiguous pixel runs in AVX-512 registers.
* `conv_forward`: the convolution (and, with the flipped kernel, its input gradient) from tiles of
  6 output pixels x 64 output channels held in registers, reading a packed copy of the kernel.
  XLA:CPU's Eigen convolution runs USRNet's 64-512-channel 3x3 convolutions at 255-305 GFLOP/s on
  a 2-core AVX-512 machine, this kernel at 300-320 (benchmarks/native_conv.py).

Both live in `native/conv.cc` and run on XLA's intra-op threads. Built once per machine, never
while tracing: `build()` (or `python -m jaxsr.cpu.native`) compiles the C++ with the system
compiler against jaxlib's FFI headers into the jaxsr cache directory (`jaxsr.cache.cache_dir()`);
`load()` registers a built library with XLA, building it first if `build_missing=True`.
`python -m jaxsr.main` and the benchmarks call `load(build_missing=True)` at start-up. Only then does
`registered()` turn true, and only CPU programs traced after it use the kernels; elsewhere XLA's
formulation runs. Where they cannot be built (no compiler, no AVX-512, not x86-64) nothing changes.

`in_use()` is the one read of this module's state while tracing: the hook (`jaxsr.cpu.hook`) calls
it once per convolution in its CPU branch and hands the answer to `jaxsr.cpu.conv`, whose
formulations read nothing else.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsr.cache import cache_dir

Array = jax.Array
log = logging.getLogger(__name__)

TARGET = "jaxsr_conv_kernel_grad"
FORWARD_TARGET = "jaxsr_conv_forward"
SOURCE = pathlib.Path(__file__).resolve().parent / "native" / "conv.cc"
# Output channels per block of `conv_forward`'s packed kernel (four AVX-512 registers).
FORWARD_BLOCK = 64
COMPILE_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-mavx512f", "-mfma", "-w")
_state: dict = {}  # "library": the loaded ctypes library once registered


def library_path() -> pathlib.Path:
    """Where the kernel built for this jaxlib and source lives in the cache."""
    key = hashlib.sha256(SOURCE.read_bytes() + jax.ffi.include_dir().encode() + jax.__version__.encode()
                         + " ".join(COMPILE_FLAGS).encode()).hexdigest()[:16]
    return cache_dir() / f"jaxsr_conv-{key}.so"


def supported_machine() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and hasattr(jax, "ffi")


def build() -> pathlib.Path | None:
    """The built kernel's path, compiling it now if the cache lacks it (atomically: processes
    starting together never load a half-written file). None where it cannot be built."""
    if not supported_machine():
        return None
    target = library_path()
    if target.exists():
        return target
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        log.info("jaxsr.cpu.native: no C++ compiler found; XLA's convolutions are used")
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *COMPILE_FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            log.warning("jaxsr.cpu.native: compiling %s failed; XLA's convolutions are used:\n%s",
                        SOURCE, done.stderr[-2000:])
            return None
        os.replace(tmp, target)
        return target
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("jaxsr.cpu.native: compiling %s failed (%s); XLA's convolutions are used", SOURCE, err)
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(build_missing: bool = False) -> bool:
    """Register the built kernel with XLA (`build()` first when `build_missing`). Returns whether
    it is registered; False, and nothing changed, where it is not built or this CPU lacks AVX-512."""
    if "library" in _state:
        return True
    if not supported_machine():
        return False
    path = build() if build_missing else library_path()
    if path is None or not path.exists():
        return False
    try:
        lib = ctypes.CDLL(str(path))
        if not lib.jaxsr_native_supported():
            log.info("jaxsr.cpu.native: this CPU has no AVX-512; XLA's convolutions are used")
            return False
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.jaxsr_conv_kernel_grad), platform="cpu")
        jax.ffi.register_ffi_target(FORWARD_TARGET, jax.ffi.pycapsule(lib.jaxsr_conv_forward), platform="cpu")
    except Exception as err:  # noqa: BLE001 - a broken build or an FFI this jaxlib lacks
        log.warning("jaxsr.cpu.native: the custom call could not be registered (%s); "
                    "XLA's convolutions are used", err)
        return False
    _state["library"] = lib  # keep it loaded
    return True


def registered() -> bool:
    """Whether `load()` registered the kernels in this process."""
    return "library" in _state


class Kernels(NamedTuple):
    """Which native kernels the CPU programs traced now use (for float32 operands)."""
    forward: bool
    kernel_gradient: bool


NO_KERNELS = Kernels(forward=False, kernel_gradient=False)


def in_use() -> Kernels:
    """The kernels a CPU program traced now uses: both once `load()` registered them, none inside
    `suspended()`, only the kernel gradient inside `forward_suspended()`."""
    if not registered():
        return NO_KERNELS
    return Kernels(forward=not _state.get("forward_suspended"), kernel_gradient=True)


@contextlib.contextmanager
def suspended():
    """Trace without the kernels inside this block (they stay registered with XLA): for programs
    whose FLOPs XLA's cost analysis must see whole, e.g. benchmarks/models.py's work count.
    JAX's trace caches do not see this switch, so they are cleared on the way in and out (where
    kernels are registered): a function traced before the block is traced again inside it, and
    one traced inside it again after. Compiled executables already held are unaffected."""
    lib = _state.pop("library", None)
    if lib is not None:
        jax.clear_caches()
    try:
        yield
    finally:
        if lib is not None:
            _state["library"] = lib
            jax.clear_caches()


@contextlib.contextmanager
def forward_suspended():
    """Trace convolutions with XLA's forward convolution inside this block (the kernel gradient
    stays native): benchmarks/native_conv.py's A/B of `conv_forward`."""
    _state["forward_suspended"] = _state.get("forward_suspended", 0) + 1
    try:
        yield
    finally:
        _state["forward_suspended"] -= 1


def kernel_gradient(x: Array, g: Array, kernel_shape: tuple[int, ...], padding: tuple[tuple[int, int], ...]) -> Array:
    """dw (kh, kw, C, O) of a stride-1 NHWC/HWIO convolution with input `x` (N, H, W, C), output
    cotangent `g` (N, Ho, Wo, O) and `padding` ((top, bottom), (left, right)), float32, by the
    native kernel. CPU programs only; callers check `in_use().kernel_gradient` first."""
    kh, kw, c, o = kernel_shape
    (pt, pb), (pl, pr) = padding
    _check_stride1("kernel_gradient", x.shape, g.shape, kernel_shape, padding)
    if x.dtype != jnp.float32 or g.dtype != jnp.float32:
        raise ValueError(f"kernel_gradient: takes float32 operands, got {x.dtype} and {g.dtype}")
    if not registered():
        raise RuntimeError("jaxsr.cpu.native: the kernels are not registered in this process (call load())")
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((kh, kw, c, o), jnp.float32), vmap_method="sequential")
    return call(x, g, pad_top=int(pt), pad_left=int(pl))


def _check_stride1(name: str, x_shape, out_shape, kernel_shape, padding) -> None:
    kh, kw, c, o = kernel_shape
    (pt, pb), (pl, pr) = padding
    n, h, w, cx = x_shape
    if (cx != c or out_shape[0] != n or out_shape[3] != o or out_shape[1] != h + pt + pb - kh + 1
            or out_shape[2] != w + pl + pr - kw + 1 or min(pt, pb, pl, pr) < 0):
        raise ValueError(f"{name}: input {tuple(x_shape)}, output {tuple(out_shape)}, kernel {tuple(kernel_shape)} "
                         f"and padding {padding} do not describe one stride-1 convolution")


def pack_kernel(w: Array) -> Array:
    """(kh, kw, C, O) -> (ceil(O / 64), kh, kw, C, 64), zero-padded: the layout `conv_forward`
    reads, each 64-wide block of output channels contiguous. One XLA copy; a kernel shared by
    several convolutions of a program (USRNet's stages, DAN's iterations) is packed once."""
    kh, kw, c, o = w.shape
    blocks = -(-o // FORWARD_BLOCK)
    wp = jnp.pad(w, ((0, 0), (0, 0), (0, 0), (0, blocks * FORWARD_BLOCK - o)))
    return wp.reshape(kh, kw, c, blocks, FORWARD_BLOCK).transpose(3, 0, 1, 2, 4)


def conv_forward(x: Array, w: Array, padding: tuple[tuple[int, int], ...]) -> Array:
    """conv(x, w) (N, Ho, Wo, O) of a stride-1 NHWC/HWIO convolution with non-negative `padding`
    ((top, bottom), (left, right)), float32, by the native kernel; the same sums as
    `lax.conv_general_dilated` up to float rounding. CPU programs only; callers check
    `in_use().forward` first."""
    kh, kw, c, o = w.shape
    (pt, pb), (pl, pr) = padding
    n, h, wd, _ = x.shape
    out_shape = (n, h + pt + pb - kh + 1, wd + pl + pr - kw + 1, o)
    _check_stride1("conv_forward", x.shape, out_shape, w.shape, padding)
    if x.dtype != jnp.float32 or w.dtype != jnp.float32:
        raise ValueError(f"conv_forward: takes float32 operands, got {x.dtype} and {w.dtype}")
    if not registered():
        raise RuntimeError("jaxsr.cpu.native: the kernels are not registered in this process (call load())")
    call = jax.ffi.ffi_call(FORWARD_TARGET, jax.ShapeDtypeStruct(out_shape, jnp.float32), vmap_method="sequential")
    return call(x, pack_kernel(w), pad_top=int(pt), pad_left=int(pl))


if __name__ == "__main__":  # python -m jaxsr.cpu.native: build once for this machine
    path = build()
    ok = load()
    print(f"native kernel: {path or 'not built'}; registered: {ok}")
    sys.exit(0 if path else 1)
