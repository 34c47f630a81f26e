"""Compile options for jaxsr's own jitted functions, chosen per backend.

On the CPU, XLA (JAX >= 0.10) hands convolutions and matmuls to YNNPACK by default. For the
convolutions of these models, XLA's own (Eigen) kernels are much faster on x86: 1.2-1.9x for a
whole model's forward pass on the 2-core machine of benchmarks/vs_torch.py (see the README's
benchmark section), with outputs equal within float rounding. So jaxsr compiles its functions
with YNN fusions switched off on the CPU.

The options are passed per compiled function (`jax.jit(..., compiler_options=...)`), never
through XLA_FLAGS, so a program that imports jaxsr as a library keeps its own settings. GPU and
TPU get no options. A JAX whose XLA does not know an option simply runs without it.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp

# Empty list = no YNNPACK fusions: convolutions and dots go to XLA's Eigen kernels.
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
# Set to False (before anything is compiled) to compile with XLA's defaults, e.g. to compare.
ENABLED = True


@functools.cache
def _cpu_options_supported() -> tuple[tuple[str, str], ...]:
    """The CPU_OPTIONS this XLA accepts (an unknown name fails at compile time)."""
    kept = []
    for name, value in CPU_OPTIONS.items():
        try:
            jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(jnp.zeros((), jnp.float32)).compile()
        except Exception:  # noqa: BLE001 - any refusal means "not supported by this XLA"
            continue
        kept.append((name, value))
    return tuple(kept)


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """The options jaxsr compiles with on `backend` (default: JAX's default backend)."""
    if not ENABLED or (backend or jax.default_backend()) != "cpu":
        return {}
    return dict(_cpu_options_supported())


# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_KEEP_BYTES = 1 << 30  # mallopt takes an int: at most 2 GiB at run time


def keep_large_buffers_in_heap() -> bool:
    """Make glibc serve large host buffers from its heap instead of fresh mmap'ed pages.

    XLA:CPU allocates every temporary and output with malloc. glibc maps blocks over 32 MiB
    (one 256x256x128 float32 feature map) with mmap and unmaps them on free, so each step pays
    page faults on every large buffer: a 32 MiB pixel shuffle took ~21 ms that way and ~5 ms
    from the heap on the benchmark machine. Raising the mmap and trim thresholds to 1 GiB keeps
    freed blocks for reuse (the process keeps up to that much freed memory).

    The run-time half of `restart_with_malloc_tuning` (which sets larger thresholds, and one
    heap for all threads, at start-up): where those tunables are already set it leaves them.
    Process-wide, so only `python -m jaxsr.main` calls it (on the CPU backend) and the
    benchmarks; a library user may call it too. Returns whether both settings are in effect
    (False off glibc Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.mmap_threshold" in tunables and "glibc.malloc.trim_threshold" in tunables:
        return True  # set at start-up (possibly above what mallopt can take); keep them
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mmap_set = bool(mallopt(_M_MMAP_THRESHOLD, HEAP_KEEP_BYTES))
    trim_set = bool(mallopt(_M_TRIM_THRESHOLD, HEAP_KEEP_BYTES))
    return mmap_set and trim_set


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
# Blocks up to this size come from the heap, and freed memory up to it stays there (64 GiB: more
# than any step's temporaries; the process keeps its peak heap between steps, as it needs it back).
HEAP_TUNABLE_BYTES = 1 << 36
# One heap (arena) for every thread: XLA allocates from its worker threads too, and glibc serves a
# block over 64 MiB asked for on a thread's own arena with a fresh mmap whatever the thresholds.
HEAP_TUNABLES = ("glibc.malloc.arena_max=1", f"glibc.malloc.mmap_threshold={HEAP_TUNABLE_BYTES}",
                 f"glibc.malloc.trim_threshold={HEAP_TUNABLE_BYTES}")
# Set to "0" to keep a process from restarting itself with the tunables.
MALLOC_TUNING_ENV = "JAXSR_MALLOC_TUNING"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_linux() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (OSError, ValueError):
        return False


def _huge_pages_available() -> bool:
    try:
        with open(_THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def accelerator_plugin_installed() -> bool:
    """Whether JAX could find a GPU/TPU here without starting it: JAX_PLATFORMS names another
    platform, or a PJRT plugin (the `jax_plugins` namespace or entry points, libtpu) is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return any(p.strip() not in ("cpu", "") for p in platforms.split(","))
    if importlib.util.find_spec("libtpu") is not None:
        return True
    try:
        if importlib.metadata.entry_points(group="jax_plugins"):
            return True
    except Exception:  # noqa: BLE001 - a broken metadata entry is not a plugin
        pass
    try:
        import jax_plugins  # noqa: F401 - namespace package of the CUDA/ROCm plugins
    except ImportError:
        return False
    return True


def malloc_tunables_wanted() -> tuple[str, ...]:
    """The glibc tunables `restart_with_malloc_tuning` would add to GLIBC_TUNABLES: HEAP_TUNABLES
    and (where transparent huge pages are not off) HUGE_PAGES_TUNABLE, less those whose name the
    environment already sets. Empty off glibc Linux, where an accelerator plugin is installed
    (the host then holds no XLA temporaries, and one heap would only make the input pipeline's
    threads contend), or with JAXSR_MALLOC_TUNING=0."""
    if os.environ.get(MALLOC_TUNING_ENV) == "0" or not _glibc_linux() or accelerator_plugin_installed():
        return ()
    present = {t.split("=")[0] for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t}
    wanted = HEAP_TUNABLES + ((HUGE_PAGES_TUNABLE,) if _huge_pages_available() else ())
    return tuple(t for t in wanted if t.split("=")[0] not in present)


def restart_with_malloc_tuning() -> None:
    """Re-run this process (same PID and command line, `os.execve`) with glibc's malloc set up
    for XLA:CPU's large per-step buffers (`malloc_tunables_wanted()`), if any is missing:

    * transparent huge pages (glibc.malloc.hugetlb=1): a page fault per 2 MiB instead of 4 KiB.
      XLA:CPU allocates each step's temporaries (gigabytes for HR-size training) afresh: on
      4 KiB pages, 343k faults and ~1 s of kernel time per USRNet training step (T = 2) on the
      benchmark machine; 1.5k and 0.2 s with huge pages.
    * one heap for all threads that keeps blocks of any size (HEAP_TUNABLES), so those buffers
      are reused from step to step and not faulted in again at all: a DSSR training step had
      ~2600 huge-page faults and 0.3 s of kernel time with huge pages alone, none with both; and
      when other work allocates in between (PyTorch's step in benchmarks/vs_torch.py), refaulting
      cost 1.7-2.6 s of kernel time per step (DSSR step 5.0 -> 5.8 s), none with both. The price:
      the heap keeps its high-water mark (7.5 GB for that DSSR step with PyTorch alongside), and
      each time it grows the new memory is faulted in once.

    glibc reads tunables only at process start, hence the restart. Call it first thing, before
    any thread or device starts; `python -m jaxsr.main` and the benchmarks do. Tunables already
    in GLIBC_TUNABLES are kept. Set JAXSR_MALLOC_TUNING=0 to opt out.
    """
    missing = malloc_tunables_wanted()
    if not missing:
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"),) + missing if t)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)


def run_cpu_executions_inline() -> bool:
    """Make the CPU backend run each computation to its end inside the call that launches it
    (`jax_cpu_enable_async_dispatch=False`), instead of queueing it.

    With asynchronous dispatch the next training step starts as soon as the last one's outputs are
    ready, before the runtime has freed that step's temporaries (one block of several GB for an
    HR-size step; XLA:CPU allocates it per execution). Two of them are then live at once, and as
    their places in glibc's heap shift the heap keeps growing: a USRNet step (3.9 GB of temporaries)
    grew it by 3.9 GB in 4 of its first 8 steps and now and then later, each time ~2000 huge-page
    faults and 16-19 s of kernel time on the 2-core benchmark VM, in a 10-12 s step. Run inline, one
    step's temporaries are freed before the next is allocated (none of 12 traced steps allocated
    while another's were live; no page faults in the timed USRNet rounds of vs_torch). The price is
    that Python no longer runs ahead of the computation (the input pipeline still prefetches in its
    own threads). Multi-device computations are not affected.

    Process-wide and read when the CPU backend starts, so call it before anything touches a device;
    `python -m jaxsr.main` does. Returns False (and changes nothing) once a backend is running.
    """
    try:
        from jax._src import xla_bridge
        if xla_bridge.backends_are_initialized():
            return False
    except (ImportError, AttributeError):
        pass
    try:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    except (AttributeError, KeyError, ValueError):  # a JAX without the option
        return False
    return True


def _tracing(args, kwargs) -> bool:
    """Whether a JAX trace is under way (or, failing that check, any argument is a tracer)."""
    try:
        from jax._src import core as jax_core
        return not jax_core.trace_state_clean()
    except (ImportError, AttributeError):
        return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs)))


class _Jit:
    """`jax.jit(fun, **kwargs)` with `compiler_options()`, built on first use: the backend is
    only known once JAX has started, which must not happen at import time (multi-host runs
    call `jax.distributed.initialize` first)."""

    def __init__(self, fun: Callable, kwargs: dict[str, Any]):
        functools.update_wrapper(self, fun)
        self._fun, self._kwargs, self._jitted = fun, kwargs, None
        self._nested = jax.jit(fun, **kwargs)

    @property
    def jitted(self):
        if self._jitted is None:
            self._jitted = jax.jit(self._fun, compiler_options=compiler_options() or None, **self._kwargs)
        return self._jitted

    def __call__(self, *args, **kwargs):
        # Inside another trace (a caller's jit, grad or vmap) JAX refuses compile options: the
        # caller's own jit compiles the whole program, so the plain nested jit is used.
        if _tracing(args, kwargs):
            return self._nested(*args, **kwargs)
        return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)


def jit(fun: Callable | None = None, **kwargs) -> Callable:
    """Drop-in for `jax.jit` (also as `@jit(static_argnames=...)`) that adds the backend's
    compile options."""
    if fun is None:
        return lambda f: _Jit(f, kwargs)
    return _Jit(fun, kwargs)
