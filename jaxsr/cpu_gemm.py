"""Float32 matrix products on XLA:CPU through the BLAS that numpy ships (OpenBLAS).

XLA:CPU computes dots with Eigen; on this project's CPU it ran the products that the convolution
gradients reduce to 1.3-3x slower than OpenBLAS's sgemm (benchmarks/gemm.py: A^T B with 33280 x 192
operands, 58-90 vs 129-175 GFLOP/s). `matmul` runs such a product as an XLA FFI custom call that
calls numpy's `cblas_sgemm` on the operands in place (no copies, no Python during the run).

The custom call is a few lines of C++ (`native/gemm.cc`) compiled on first use with the system's
C++ compiler against jaxlib's FFI headers and cached (`$JAXSR_CACHE_DIR`, else
`$XDG_CACHE_HOME/jaxsr`, else `~/.cache/jaxsr`). Where that is not possible (no compiler, no
OpenBLAS inside numpy, an accelerator backend, bfloat16 operands) `matmul` is
`lax.dot_general`: the same product, XLA's speed. `JAXSR_CPU_GEMM=0` turns the custom call off.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
log = logging.getLogger(__name__)

TARGET = "jaxsr_gemm"
SOURCE = pathlib.Path(__file__).resolve().parent / "native" / "gemm.cc"
# Set to False (before tracing) to trace `matmul` as XLA's dot, as benchmarks compare.
ENABLED = os.environ.get("JAXSR_CPU_GEMM", "1").strip().lower() not in ("0", "false", "no", "off")

# (library glob inside numpy's wheel, sgemm symbol, set-threads symbol, 64-bit integers)
_BLAS_CANDIDATES = (
    ("libscipy_openblas64_*.so*", "scipy_cblas_sgemm64_", "scipy_openblas_set_num_threads64_", True),
    ("libscipy_openblas-*.so*", "scipy_cblas_sgemm", "scipy_openblas_set_num_threads", False),
)


def cache_dir() -> pathlib.Path:
    if os.environ.get("JAXSR_CACHE_DIR"):
        return pathlib.Path(os.environ["JAXSR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "jaxsr"


def _atomic_copy(source: pathlib.Path, target: pathlib.Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=target.suffix, dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _private_sgemm() -> tuple[ctypes.CDLL, int, bool] | None:
    """(library, sgemm address, ilp64) of a private copy of numpy's OpenBLAS, set to one thread.

    A copy (under another file name) loads as a second library instance, so setting its thread
    count leaves numpy's own BLAS alone; the dynamic loader finds the copy's dependencies among
    those numpy already loaded (by their sonames)."""
    site = pathlib.Path(np.__file__).resolve().parent.parent
    for pattern, symbol, set_threads, ilp64 in _BLAS_CANDIDATES:
        for path in sorted(glob.glob(str(site / "numpy.libs" / pattern))):
            path = pathlib.Path(path)
            digest = hashlib.sha256(f"{path}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode()).hexdigest()[:16]
            copy = cache_dir() / f"openblas-{digest}.so"
            try:
                if not copy.exists():
                    _atomic_copy(path, copy)
                lib = ctypes.CDLL(str(copy))
                getattr(lib, set_threads)(ctypes.c_int(1))
                return lib, ctypes.cast(getattr(lib, symbol), ctypes.c_void_p).value, ilp64
            except (OSError, AttributeError) as err:
                log.info("jaxsr.cpu_gemm: %s unusable (%s)", path, err)
    return None


def _compiled_library() -> pathlib.Path | None:
    """native/gemm.cc built for this jaxlib, from the cache or compiled now (atomically, so
    processes starting together never load a half-written file)."""
    include = jax.ffi.include_dir()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + include.encode() + jax.__version__.encode()).hexdigest()[:16]
    target = cache_dir() / f"gemm-{key}.so"
    if target.exists():
        return target
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        log.info("jaxsr.cpu_gemm: no C++ compiler found; XLA's dot is used")
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{include}", str(SOURCE), "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            log.warning("jaxsr.cpu_gemm: compiling %s failed; XLA's dot is used:\n%s", SOURCE, done.stderr[-2000:])
            return None
        os.replace(tmp, target)
        return target
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("jaxsr.cpu_gemm: compiling %s failed (%s); XLA's dot is used", SOURCE, err)
        return None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether the custom call is registered (built, loaded and given numpy's sgemm)."""
    blas = _private_sgemm()
    if blas is None:
        log.info("jaxsr.cpu_gemm: numpy has no OpenBLAS here; XLA's dot is used")
        return False
    try:
        path = _compiled_library()
        if path is None:
            return False
        native = ctypes.CDLL(str(path))
        _, sgemm, ilp64 = blas
        native.jaxsr_set_sgemm(ctypes.c_void_p(sgemm), ctypes.c_int(int(ilp64)))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(native.jaxsr_gemm), platform="cpu")
    except Exception as err:  # a broken build or an FFI this jaxlib lacks: keep XLA's dot
        log.warning("jaxsr.cpu_gemm: the custom call could not be registered (%s); XLA's dot is used", err)
        return False
    available.libraries = (native, blas[0])  # keep both loaded
    return True


def used_for(a: Array, b: Array) -> bool:
    """Whether `matmul(a, b)` traces as the custom call: float32 matrices, the CPU backend."""
    return (ENABLED and a.ndim == 2 and b.ndim == 2 and a.dtype == jnp.float32 and b.dtype == jnp.float32
            and jax.default_backend() == "cpu" and available())


def _dot(a: Array, b: Array, transpose_a: bool, transpose_b: bool) -> Array:
    return jax.lax.dot_general(a, b, (((0 if transpose_a else 1,), (1 if transpose_b else 0,)), ((), ())))


def _shape(a, b, transpose_a, transpose_b) -> tuple[int, int]:
    m, k = (a.shape[1], a.shape[0]) if transpose_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if transpose_b else b.shape
    if k != kb:
        raise ValueError(f"matmul: contracted sizes differ: {a.shape}{'^T' if transpose_a else ''} "
                         f"@ {b.shape}{'^T' if transpose_b else ''}")
    return m, n


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _gemm(a: Array, b: Array, transpose_a: bool, transpose_b: bool) -> Array:
    m, n = _shape(a, b, transpose_a, transpose_b)
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((m, n), jnp.float32), vmap_method="sequential")
    return call(a, b, transpose_a=bool(transpose_a), transpose_b=bool(transpose_b))


def _gemm_fwd(a, b, transpose_a, transpose_b):
    return _gemm(a, b, transpose_a, transpose_b), (a, b)


def _gemm_bwd(transpose_a, transpose_b, residuals, g):
    a, b = residuals
    # C = op(A) op(B): d op(A) = G op(B)^T, d op(B) = op(A)^T G, transposed back where op is ^T
    da = matmul(b, g, transpose_b, True) if transpose_a else matmul(g, b, False, not transpose_b)
    db = matmul(g, a, True, transpose_a) if transpose_b else matmul(a, g, not transpose_a, False)
    return da, db


_gemm.defvjp(_gemm_fwd, _gemm_bwd)


def matmul(a: Array, b: Array, transpose_a: bool = False, transpose_b: bool = False) -> Array:
    """op(a) @ op(b) for matrices, op = transpose where asked: numpy's sgemm on XLA:CPU for
    float32 (`used_for`), `lax.dot_general` otherwise. Differentiable (reverse mode)."""
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"matmul takes matrices, got shapes {a.shape} and {b.shape}")
    _shape(a, b, transpose_a, transpose_b)
    if used_for(a, b):
        return _gemm(a, b, bool(transpose_a), bool(transpose_b))
    return _dot(a, b, transpose_a, transpose_b)
