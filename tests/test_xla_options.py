"""jaxsr's per-backend compile options change speed only, never results."""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import models, xla_options
from jaxsr.models import dan, dssr


def test_cpu_gets_the_options_and_accelerators_none():
    assert xla_options.compiler_options("cpu") == xla_options.CPU_OPTIONS
    assert xla_options.compiler_options("gpu") == {}
    assert xla_options.compiler_options("tpu") == {}


def test_disabled_means_xla_defaults(monkeypatch):
    monkeypatch.setattr(xla_options, "ENABLED", False)
    assert xla_options.compiler_options("cpu") == {}


def test_an_option_this_xla_does_not_know_is_dropped(monkeypatch):
    monkeypatch.setattr(xla_options, "CPU_OPTIONS", {"xla_cpu_no_such_option_jaxsr": "1"})
    xla_options._cpu_options_supported.cache_clear()
    try:
        assert xla_options.compiler_options("cpu") == {}
        assert float(xla_options.jit(lambda x: x * 2)(jnp.float32(3))) == 6.0
    finally:
        xla_options._cpu_options_supported.cache_clear()


def test_jit_is_built_on_first_call_and_keeps_static_arguments():
    calls = []

    def f(x, n):
        calls.append(n)
        return x * n

    jitted = xla_options.jit(f, static_argnames=("n",))
    assert jitted._jitted is None and jitted.__name__ == "f"
    assert float(jitted(jnp.float32(2), n=3)) == 6.0
    assert float(jitted(jnp.float32(5), n=3)) == 15.0
    assert calls == [3]  # traced once for n=3
    assert "xla_cpu" in str(xla_options.compiler_options()) or jax.default_backend() != "cpu"
    assert jitted.lower(jnp.float32(1), n=2).compile() is not None


def test_inside_a_callers_jit_grad_and_vmap():
    """JAX refuses compile options on a nested jit, so inside any trace the plain jit runs:
    `jaxsr.ops.degrade.degrade` inside a user's (or the training step's) jit must work."""
    from jaxsr.ops import degrade

    double = xla_options.jit(lambda x: 2.0 * x)
    x = jnp.arange(3.0)
    np.testing.assert_allclose(jax.jit(double)(x), [0.0, 2.0, 4.0])
    np.testing.assert_allclose(jax.grad(lambda v: double(v).sum())(x), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(jax.vmap(double)(x), [0.0, 2.0, 4.0])

    spec = degrade.setting1(2)
    hr = jax.random.uniform(jax.random.key(0), (2, 24, 24, 3))
    inside = jax.jit(lambda key, img: degrade.degrade(key, img, spec).lr)(jax.random.key(1), hr)
    outside = degrade.degrade(jax.random.key(1), hr, spec).lr
    np.testing.assert_allclose(np.asarray(inside), np.asarray(outside), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["danv1", "dssr"])
def test_compiled_with_options_equals_xla_defaults(name):
    """The jitted predictor (jaxsr's options) against plain `jax.jit` (XLA's defaults), on random
    weights and a random image: the options pick other convolution kernels, not other math."""
    spec = models.get(name)
    if name == "danv1":
        k, c = 11, 5
        pca = np.linalg.qr(np.random.default_rng(0).standard_normal((k * k, c)))[0].astype(np.float32)
        model = dan.DANv1(scale=2, kernel_size=k, code_length=c, num_iters=2, pca_matrix=pca, restorer_features=16,
                          restorer_blocks=2, estimator_features=16, estimator_blocks=1)
    else:
        model = dssr.DSSR(scale=2, features=16, structure_blocks=2, refine_blocks=1, num_iters=2)
    lr = jax.random.uniform(jax.random.key(1), (2, 12, 12, 3))
    params = spec.init(model, jax.random.key(0), lr)["params"]
    ours = spec.jit_predict(model)(params, lr)[0]
    plain = jax.jit(lambda p, x: spec.predict(model, {"params": p}, x)[0])(params, lr)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(plain), rtol=1e-5, atol=1e-5)
    assert float(jnp.std(ours)) > 1e-3  # a real image, not a constant


_RESTART_SCRIPT = """
import os, sys
print("run", flush=True)
from jaxsr import xla_options
xla_options.restart_with_malloc_tuning()
print("argv", sys.argv[1:], "tunables", os.environ.get("GLIBC_TUNABLES"))
"""

# Faults while a worker thread allocates and fills 300 MiB a second time: zero when glibc hands
# back the first block from its heap, one per page (>= 150 even with 2 MiB pages) on a fresh mmap.
_REFAULT_SCRIPT = _RESTART_SCRIPT + """
import resource, threading
import numpy as np
out = {}
def work():
    a = np.ones(300 << 18, np.float32); del a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(300 << 18, np.float32); del a
    out["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
t = threading.Thread(target=work); t.start(); t.join()
print("faults", out["faults"])
"""


def _run_restart_script(script=_RESTART_SCRIPT, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", xla_options.MALLOC_TUNING_ENV)}
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
    huge = "[never]" not in open(xla_options._THP_SETTING).read() if os.path.exists(xla_options._THP_SETTING) \
        else False
    # restarted exactly once; the caller's arena_max kept (ours not added), the rest appended
    expected = ["glibc.malloc.arena_max=4"] + [t for t in xla_options.HEAP_TUNABLES if "arena_max" not in t]
    expected += [xla_options.HUGE_PAGES_TUNABLE] if huge else []
    assert out.count("run") == 2 and last.endswith("tunables " + ":".join(expected))


def test_restart_with_malloc_tuning_opt_out():
    out = _run_restart_script(**{xla_options.MALLOC_TUNING_ENV: "0"})
    assert out.count("run") == 1 and out.strip().endswith("tunables None")


@pytest.mark.skipif(not _glibc_linux(), reason="glibc tunables only")
def test_malloc_tuning_reuses_large_blocks_freed_on_another_thread():
    tuned = int(_run_restart_script(_REFAULT_SCRIPT).split("faults")[-1])
    plain = int(_run_restart_script(_REFAULT_SCRIPT, **{xla_options.MALLOC_TUNING_ENV: "0"}).split("faults")[-1])
    assert plain >= 100, plain  # the test can fail: without the tunables the block is mapped afresh
    assert tuned < 20, tuned


def test_keep_large_buffers_in_heap_leaves_start_up_thresholds(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", ":".join(xla_options.HEAP_TUNABLES))
    called = []
    monkeypatch.setattr(xla_options.ctypes, "CDLL", lambda *a: called.append(a))
    assert xla_options.keep_large_buffers_in_heap() == sys.platform.startswith("linux")
    assert not called  # mallopt (an int, at most 2 GiB) would have lowered the 64 GiB thresholds


def test_no_malloc_tuning_where_jax_would_use_an_accelerator(monkeypatch):
    monkeypatch.delenv(xla_options.MALLOC_TUNING_ENV, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert xla_options.accelerator_plugin_installed()
    assert xla_options.malloc_tunables_wanted() == ()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert not xla_options.accelerator_plugin_installed()
    assert bool(xla_options.malloc_tunables_wanted()) == _glibc_linux()


_INLINE_SCRIPT = """
import sys, jax, jax.numpy as jnp
from jaxsr import xla_options
inline = sys.argv[1] == "inline"
if inline:
    assert xla_options.run_cpu_executions_inline()
x = jnp.ones((768, 768), jnp.float32)
f = jax.jit(lambda x: jax.lax.fori_loop(0, 40, lambda i, y: jnp.tanh(y @ x), x))
f(x).block_until_ready()
ready = [f(x).is_ready() for _ in range(3)]
print("ready", all(ready), "late", xla_options.run_cpu_executions_inline())
"""


@pytest.mark.parametrize("mode", ["inline", "async"])
def test_cpu_executions_run_inline_only_when_asked_before_the_backend_starts(mode):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _INLINE_SCRIPT, mode], capture_output=True, text=True, env=env,
                         check=True).stdout
    # inline: the result is complete when the call returns; queued (JAX's default), a 40-matmul
    # loop is still running. Once the backend runs, the switch refuses (it would change nothing).
    assert out.split() == ["ready", str(mode == "inline"), "late", "False"], out
