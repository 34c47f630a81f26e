"""jaxsr.cache.enable_compilation_cache: where the cache goes, that a second process loads what the
first compiled, and that JAXSR_COMPILATION_CACHE=0 keeps it off. Each case runs in a child process:
JAX opens the cache once per process, at the first compile."""
import json
import os
import pathlib
import subprocess
import sys

from jaxsr import cache

REPO = pathlib.Path(__file__).resolve().parents[1]

# Enables the cache as an entry point would, compiles one small program and reports what JAX did.
_CHILD = """
import json
import jax
import jax.numpy as jnp
from jaxsr import cache

events = []
jax.monitoring.register_event_listener(lambda event, **_: events.append(event))
folder = cache.enable_compilation_cache()
f = jax.jit(lambda x: jnp.tanh(x @ x.T + 1.0).sum(axis=0))
f(jnp.arange(64.0).reshape(8, 8) / 64).block_until_ready()
print(json.dumps({
    "folder": folder,
    "enabled": jax.config.jax_enable_compilation_cache,
    "dir": jax.config.jax_compilation_cache_dir,
    "min_seconds": jax.config.jax_persistent_cache_min_compile_time_secs,
    "hits": events.count("/jax/compilation_cache/cache_hits"),
    "misses": events.count("/jax/compilation_cache/cache_misses"),
}))
"""


def _run_child(**env):
    # the test session's own cache settings (tests/conftest.py) must not leak into these cases
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("JAXSR_COMPILATION_CACHE", "JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    clean.update(JAX_PLATFORMS="cpu", **env)
    res = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, env=clean, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _entries(folder):
    return sorted(p.name for p in pathlib.Path(folder).rglob("*") if p.is_file())


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    folder = tmp_path / "xla"
    # the test program compiles in milliseconds: cache it regardless of its compile time
    first = _run_child(JAXSR_COMPILATION_CACHE=str(folder), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    assert first["folder"] == first["dir"] == str(folder) and first["enabled"]
    assert first["hits"] == 0 and first["misses"] >= 1, first
    written = _entries(folder)
    assert written, "the first process wrote no cache entry"

    second = _run_child(JAXSR_COMPILATION_CACHE=str(folder), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    assert second["hits"] >= 1 and second["misses"] == 0, second
    assert _entries(folder) == written  # nothing compiled, so nothing new written


def test_the_default_folder_is_per_user_under_the_jaxsr_cache(tmp_path):
    out = _run_child(JAXSR_CACHE_DIR=str(tmp_path))
    folder = pathlib.Path(out["folder"])
    assert folder.parent == tmp_path and folder.name.startswith("xla-") and folder.is_dir()
    assert out["dir"] == str(folder) and out["min_seconds"] == cache.MIN_COMPILE_SECONDS
    assert folder.stat().st_mode & 0o077 == 0  # private: its entries are code the next run executes


def test_zero_turns_the_cache_off_even_over_jax_own_setting(tmp_path):
    folder = tmp_path / "xla"
    out = _run_child(JAXSR_COMPILATION_CACHE="0", JAX_COMPILATION_CACHE_DIR=str(folder),
                     JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    assert out["folder"] is None and not out["enabled"]
    assert out["hits"] == 0 and out["misses"] == 0, out
    assert not folder.exists() or not _entries(folder)


def test_compilation_cache_setting_reads_the_argument_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXSR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(cache.COMPILATION_CACHE_ENV, raising=False)
    assert cache.compilation_cache_setting() == str(cache.default_compilation_cache_dir())
    assert cache.default_compilation_cache_dir().parent == tmp_path
    monkeypatch.setenv(cache.COMPILATION_CACHE_ENV, "gs://bucket/xla")
    assert cache.compilation_cache_setting() == "gs://bucket/xla"
    assert cache.compilation_cache_setting("/flag/dir") == "/flag/dir"  # a flag's value wins
    for off in ("0", "off", "False"):
        assert cache.compilation_cache_setting(off) is None
        monkeypatch.setenv(cache.COMPILATION_CACHE_ENV, off)
        assert cache.compilation_cache_setting() is None
