"""`layers.Conv` against PyTorch's Conv2d as defined (cross-correlation, zero padding, bias)."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr.models import layers


def test_conv_module_matches_torch_conv2d_definition():
    """`Conv` (kernel, bias, stride, padding) against a NumPy cross-correlation from the definition."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 9, 8, 3)).astype(np.float32)
    module = layers.Conv(5, 3, stride=2, padding=1)
    variables = module.init(jax.random.key(0), jnp.asarray(x))
    w, b = (np.asarray(variables["params"][k]) for k in ("kernel", "bias"))
    assert w.shape == (3, 3, 3, 5) and b.shape == (5,) and w.dtype == np.float32
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((2, 5, 4, 5), np.float32)
    for i, j in np.ndindex(5, 4):
        want[:, i, j] = np.einsum("nabc,abco->no", xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3], w) + b
    np.testing.assert_allclose(module.apply(variables, jnp.asarray(x)), want, rtol=1e-5, atol=1e-5)


def test_a_parameter_of_the_wrong_shape_is_named_at_apply():
    """`layers.param` checks an existing parameter's shape itself (Flax's `param` would trace the
    initialiser again for it), with Flax's error naming the parameter and both shapes."""
    x = jnp.ones((1, 5, 5, 4))
    conv = layers.Conv(6, 3, padding=1)
    variables = conv.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].shape == (3, 3, 4, 6)
    wrong = {"params": {**variables["params"], "kernel": jnp.ones((3, 3, 4, 5))}}
    shapes = r"kernel.*expected.*\(3, 3, 4, 6\).*existing.*\(3, 3, 4, 5\)"
    with pytest.raises(flax.errors.ScopeParamShapeError, match=shapes):
        conv.apply(wrong, x)
