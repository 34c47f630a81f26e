"""The one jaxsr cache directory: `$JAXSR_CACHE_DIR`, else `$XDG_CACHE_HOME/jaxsr`, else
`~/.cache/jaxsr`. Compiled CPU kernels, fitted PCA matrices and (per user) JAX's persistent
compilation cache are kept there."""
from __future__ import annotations

import getpass
import os
import pathlib

# JAXSR_COMPILATION_CACHE=DIR keeps compiled programs in DIR (a local folder, or a path every host
# of a multi-host job can read, such as gs://bucket/xla-cache); =0 turns the cache off.
COMPILATION_CACHE_ENV = "JAXSR_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no", "none")

# A program that compiles faster than this is not worth a cache file (or a bucket round trip);
# jaxsr's training and evaluation programs take seconds to minutes and are all kept. JAX's own
# default (1 s) would skip the small programs a restart also recompiles.
MIN_COMPILE_SECONDS = 0.1


def cache_dir() -> pathlib.Path:
    """Where jaxsr keeps what it builds or fits once per machine (not created here)."""
    if os.environ.get("JAXSR_CACHE_DIR"):
        return pathlib.Path(os.environ["JAXSR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "jaxsr"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return str(os.getuid()) if hasattr(os, "getuid") else "user"


def default_compilation_cache_dir() -> pathlib.Path:
    """`<cache_dir()>/xla-<user>`: one folder per user even when `$JAXSR_CACHE_DIR` is shared,
    since a cache entry is code that the next process runs."""
    return cache_dir() / f"xla-{_user()}"


def compilation_cache_setting(path: str | os.PathLike | None = None) -> str | None:
    """The folder the compilation cache would use, or None when it is off: `path` if given (a
    flag's value: a folder, or "0" for off), else `$JAXSR_COMPILATION_CACHE`, else the default."""
    setting = os.fspath(path) if path is not None else os.environ.get(COMPILATION_CACHE_ENV, "")
    setting = setting.strip()
    if setting.lower() in _OFF:
        return None
    return setting or str(default_compilation_cache_dir())


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache for this process; returns its folder, or None
    when it is off (`path="0"` or `JAXSR_COMPILATION_CACHE=0`: then the cache stays off even if
    JAX's own `JAX_COMPILATION_CACHE_DIR` is set).

    Call it once at start-up, before anything is compiled: JAX opens the cache at the first
    compile and keeps that folder for the life of the process. With the cache on, a restarted
    run (after a preemption), a second `--mode=eval` or a repeated `jaxsr.aot` loads its
    programs from disk instead of compiling them again. For a multi-host job, give every host
    the same folder (a bucket or a shared file system): only the first process writes entries,
    so a per-host local folder would leave the other hosts compiling on every restart.

    Trust: an entry in this folder is a compiled program, i.e. machine code that the next jaxsr
    process loads and runs without recompiling or checking it. Anyone who can write to the
    folder can therefore run code as you. Keep the default per-user folder private, and point
    several users or machines at one shared folder only when everyone who can write there is
    trusted.

    JAX's own settings win where the user gave them: `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`
    and `JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES`; `JAX_COMPILATION_CACHE_MAX_SIZE` bounds the
    folder (unbounded by default; eviction needs the `filelock` package).
    """
    import jax  # here, not at the top: `cache_dir()` is used by code that must not start JAX

    folder = compilation_cache_setting(path)
    if folder is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if "://" not in folder:  # a local folder; bucket paths are created by JAX's file layer
        os.makedirs(folder, mode=0o700, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # every size, no override
    return folder
