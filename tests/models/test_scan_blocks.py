"""Repeated blocks as one scanned body (`scan_blocks`, GPU/TPU programs) in DSSR and USRNet:
the same parameter tree, the same outputs and the same gradients as the blocks written out (CPU
programs). DAN's blocks have their own tests in test_dan.py. KXNet's prox blocks stay written out:
scanned, its step compiled no faster and needed more memory (docs/benchmarks.md)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, rand, torch_like_params

from jaxsr import models

# Deeper than `tiny`, so every scanned stack holds several blocks.
CASES = {
    "dssr": dict(structure_blocks=3, refine_blocks=2),
    "usrnet": dict(num_blocks=3),
}


def model_pair(name):
    cfg = load_config(name, "tiny")
    cfg.model.update(CASES[name])
    unrolled = models.create(cfg, "cpu")
    return unrolled, unrolled.clone(scan_blocks=True)


def outputs(name, model, params, lr):
    if name == "usrnet":
        kernel = jnp.asarray(np.random.default_rng(4).dirichlet(np.ones(9), 2).reshape(2, 3, 3), jnp.float32)
        return model.apply({"params": params}, lr, kernel, jnp.asarray([0.0, 7.5]))
    return model.apply({"params": params}, lr)


@pytest.mark.parametrize("name", sorted(CASES))
def test_scanned_blocks_match_the_unrolled_blocks(name):
    unrolled, scanned = model_pair(name)
    assert not unrolled.scan_blocks
    params = torch_like_params(unrolled, seed=3, input_shape=(1, 8, 8, 3), num_iters=None)["params"]
    assert jax.tree.structure(torch_like_params(scanned, input_shape=(1, 8, 8, 3), num_iters=None)["params"]) \
        == jax.tree.structure(params)
    lr = rand((2, 8, 9, 3), 7)

    def run(model):
        def loss(p):
            out = outputs(name, model, p, lr)
            return sum(jnp.mean(v.astype(jnp.float32) ** 2) for v in jax.tree.leaves(out)), out
        return jax.jit(jax.grad(loss, has_aux=True))(params)

    (g_unrolled, out_unrolled), (g_scanned, out_scanned) = run(unrolled), run(scanned)
    for key in out_unrolled:
        np.testing.assert_allclose(out_scanned[key], out_unrolled[key], rtol=1e-5, atol=1e-6, err_msg=key)

    def same(path, a, b):
        assert float(jnp.sum(a ** 2)) > 0, jax.tree_util.keystr(path)  # every parameter is reached
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    jax.tree_util.tree_map_with_path(same, g_unrolled, g_scanned)


@pytest.mark.parametrize("name", sorted(CASES))
def test_create_scans_blocks_for_accelerators_only(name):
    cfg = load_config(name, "tiny")
    assert not models.create(cfg, "cpu").scan_blocks
    assert models.create(cfg, "gpu").scan_blocks and models.create(cfg, "tpu").scan_blocks
    cfg.model.scan_blocks = False  # an explicit choice is kept
    assert not models.create(cfg, "tpu").scan_blocks
