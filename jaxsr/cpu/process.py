"""Process-wide settings that make XLA:CPU training fast: glibc's allocator and inline dispatch.

None of them changes a program or a result; each is measured in its docstring. They touch the
whole process (an `os.execve` restart, a `mallopt` call, a JAX config flag), so only entry points
call them: `setup()` does it all, first thing in `python -m jaxsr.main` and the benchmarks. A
library user may call `setup()` too, before anything touches a device.
"""
from __future__ import annotations

import ctypes
import os
import sys

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


def malloc_tunables_wanted(accelerator: bool = False) -> tuple[str, ...]:
    """The glibc tunables `restart_with_malloc_tuning` would add to GLIBC_TUNABLES: HEAP_TUNABLES
    and (where transparent huge pages are not off) HUGE_PAGES_TUNABLE, less those whose name the
    environment already sets. Empty off glibc Linux, with `accelerator` (the caller expects JAX
    to run on a GPU/TPU: the host then holds no XLA temporaries, and one heap would only make the
    input pipeline's threads contend), or with JAXSR_MALLOC_TUNING=0."""
    if os.environ.get(MALLOC_TUNING_ENV) == "0" or not _glibc_linux() or accelerator:
        return ()
    present = {t.split("=")[0] for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t}
    wanted = HEAP_TUNABLES + ((HUGE_PAGES_TUNABLE,) if _huge_pages_available() else ())
    return tuple(t for t in wanted if t.split("=")[0] not in present)


def restart_with_malloc_tuning(accelerator: bool = False) -> None:
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
    in GLIBC_TUNABLES are kept. Set JAXSR_MALLOC_TUNING=0 to opt out; `accelerator` as in
    `malloc_tunables_wanted`.
    """
    missing = malloc_tunables_wanted(accelerator)
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
    import jax  # here, not at import: `restart_with_malloc_tuning` runs before JAX loads
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


def setup(restart: bool = True, accelerator: bool = False) -> dict[str, bool]:
    """All of the above for a process about to run XLA:CPU work, in the order they need: the
    allocator restart (`restart_with_malloc_tuning`, unless `restart=False`; it re-executes the
    process, so call this first thing), inline dispatch, and the heap thresholds. With
    `accelerator` (the caller's judgement: `jaxsr.cpu.setup` takes it from
    `jaxsr.hardware.accelerator_likely()`), only what is harmless there. Returns what took effect."""
    if restart:
        restart_with_malloc_tuning(accelerator)
    inline = run_cpu_executions_inline()
    heap = keep_large_buffers_in_heap() if not accelerator else False
    return {"inline_dispatch": inline, "heap": heap,
            "malloc_tunables": "glibc.malloc.mmap_threshold" in os.environ.get("GLIBC_TUNABLES", "")}
