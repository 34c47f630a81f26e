"""The CPU compile options (`jaxsr.cpu.compiler_options`) change speed only, never results."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr import models, platform
from jaxsr.cpu import compile as cpu_compile
from jaxsr.models import dan, dssr


def test_cpu_gets_the_options_and_accelerators_none():
    assert cpu_compile.compiler_options() == cpu_compile.CPU_OPTIONS
    assert platform.compiler_options("cpu") == cpu_compile.CPU_OPTIONS
    assert platform.compiler_options("gpu") == {}
    assert platform.compiler_options("tpu") == {}


def test_an_option_this_xla_does_not_know_is_dropped(monkeypatch):
    monkeypatch.setattr(cpu_compile, "CPU_OPTIONS", {"xla_cpu_no_such_option_jaxsr": "1"})
    cpu_compile._supported.cache_clear()
    try:
        assert cpu_compile.compiler_options() == {}
        assert float(platform.jit(lambda x: x * 2)(jnp.float32(3))) == 6.0
    finally:
        cpu_compile._supported.cache_clear()


def test_jit_is_built_on_first_call_and_keeps_static_arguments():
    calls = []

    def f(x, n):
        calls.append(n)
        return x * n

    jitted = platform.jit(f, static_argnames=("n",))
    assert jitted._jitted == {} and jitted.__name__ == "f"
    assert float(jitted(jnp.float32(2), n=3)) == 6.0
    assert float(jitted(jnp.float32(5), n=3)) == 15.0
    assert calls == [3]  # traced once for n=3
    # the compiled program carries the CPU options (an XLA that knows them reports them back)
    text = jitted.lower(jnp.float32(1), n=2).compile().as_text()
    assert float(jitted(jnp.float32(1), n=2)) == 2.0 and "ROOT" in text


def test_inside_a_callers_jit_grad_and_vmap():
    """JAX refuses compile options on a nested jit, so inside any trace the plain jit runs:
    `jaxsr.ops.degrade.degrade` inside a user's (or the training step's) jit must work."""
    from jaxsr.ops import degrade

    double = platform.jit(lambda x: 2.0 * x)
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
    ours = spec.jit_predict(model)(params, lr)[0]  # jaxsr.jit: the CPU options
    plain = jax.jit(lambda p, x: spec.predict(model, {"params": p}, x)[0])(params, lr)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(plain), rtol=1e-5, atol=1e-5)
    assert float(jnp.std(ours)) > 1e-3  # a real image, not a constant
