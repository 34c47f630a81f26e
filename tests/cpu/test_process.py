"""`jaxsr.cpu.process`: the allocator restart and inline dispatch, checked in child processes."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxsr.cpu import process

_RESTART_SCRIPT = """
import os, sys
print("run", flush=True)
from jaxsr.cpu import process
process.restart_with_malloc_tuning()
print("argv", sys.argv[1:], "tunables", os.environ.get("GLIBC_TUNABLES"))
"""

def _run_restart_script(script=_RESTART_SCRIPT, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", process.MALLOC_TUNING_ENV)}
    full_env.update(env)
    res = subprocess.run([sys.executable, "-c", script, "a b", "--flag=1"], env=full_env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _glibc_linux() -> bool:
    return sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))


def test_restart_with_malloc_tuning_sets_the_tunables_once_and_keeps_the_command_line():
    out = _run_restart_script(GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    last = out.strip().splitlines()[-1]
    assert last.startswith("argv ['a b', '--flag=1'] tunables ")
    if not _glibc_linux():
        assert out.count("run") == 1 and last.endswith("glibc.malloc.arena_max=4")
        return
    huge = "[never]" not in open(process._THP_SETTING).read() if os.path.exists(process._THP_SETTING) \
        else False
    # restarted exactly once; the caller's arena_max kept (ours not added), the rest appended
    expected = ["glibc.malloc.arena_max=4"] + [t for t in process.HEAP_TUNABLES if "arena_max" not in t]
    expected += [process.HUGE_PAGES_TUNABLE] if huge else []
    assert out.count("run") == 2 and last.endswith("tunables " + ":".join(expected))


def test_restart_with_malloc_tuning_opt_out():
    out = _run_restart_script(**{process.MALLOC_TUNING_ENV: "0"})
    assert out.count("run") == 1 and out.strip().endswith("tunables None")


def test_keep_large_buffers_in_heap_leaves_start_up_thresholds(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", ":".join(process.HEAP_TUNABLES))
    called = []
    monkeypatch.setattr(process.ctypes, "CDLL", lambda *a: called.append(a))
    assert process.keep_large_buffers_in_heap() == sys.platform.startswith("linux")
    assert not called  # mallopt (an int, at most 2 GiB) would have lowered the 64 GiB thresholds


def test_no_malloc_tuning_where_the_caller_expects_an_accelerator(monkeypatch):
    """The caller judges (`jaxsr.cpu.setup(accelerator=jaxsr.platform.accelerator_likely())`);
    this module probes for nothing."""
    monkeypatch.delenv(process.MALLOC_TUNING_ENV, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert process.malloc_tunables_wanted(accelerator=True) == ()
    assert bool(process.malloc_tunables_wanted(accelerator=False)) == _glibc_linux()
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")  # read by jaxsr.platform, not here
    assert bool(process.malloc_tunables_wanted()) == _glibc_linux()


def test_setup_with_an_accelerator_keeps_the_heap_settings(monkeypatch):
    """No restart and no heap thresholds where the caller expects an accelerator."""
    calls = []
    monkeypatch.setattr(process, "restart_with_malloc_tuning", lambda accelerator: calls.append(accelerator))
    monkeypatch.setattr(process, "run_cpu_executions_inline", lambda: False)
    monkeypatch.setattr(process, "keep_large_buffers_in_heap", lambda: calls.append("heap") or True)
    assert process.setup(accelerator=True)["heap"] is False and calls == [True]
    assert process.setup(accelerator=False)["heap"] is True and calls == [True, False, "heap"]


_INLINE_SCRIPT = """
import sys, jax, jax.numpy as jnp
from jaxsr.cpu import process
inline = sys.argv[1] == "inline"
if inline:
    assert process.run_cpu_executions_inline()
x = jnp.ones((768, 768), jnp.float32)
f = jax.jit(lambda x: jax.lax.fori_loop(0, 40, lambda i, y: jnp.tanh(y @ x), x))
f(x).block_until_ready()
ready = [f(x).is_ready() for _ in range(3)]
print("ready", all(ready), "late", process.run_cpu_executions_inline())
"""


@pytest.mark.parametrize("mode", ["inline", "async"])
def test_cpu_executions_run_inline_only_when_asked_before_the_backend_starts(mode):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _INLINE_SCRIPT, mode], capture_output=True, text=True, env=env,
                         check=True).stdout
    # inline: the result is complete when the call returns; queued (JAX's default), a 40-matmul
    # loop is still running. Once the backend runs, the switch refuses (it would change nothing).
    assert out.split() == ["ready", str(mode == "inline"), "late", "False"], out
