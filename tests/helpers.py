"""Helpers shared by several test files (import them as `from helpers import ...`: tests/conftest.py
puts this folder on sys.path)."""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

REPO = pathlib.Path(__file__).resolve().parents[1]


def rand(shape, seed=0):
    """Uniform [0, 1) float32 values from NumPy: jax.random would compile its kernels again for
    every new shape (seconds each on CPU)."""
    return jnp.asarray(np.random.default_rng(seed).random(shape), jnp.float32)


def count(tree) -> int:
    """Number of scalars in a pytree of arrays (or of shape structs)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def torch_like_params(model, seed=0, input_shape=(1, 6, 7, 3), other_fan_in=100, num_iters=1):
    """Random parameters with PyTorch's default bounds, uniform in ±1/sqrt(fan_in), made with NumPy
    from the shapes `model.init` traces on zeros of `input_shape` (running `init` would mostly
    compile random-number kernels). Conv kernels (4-d) use their own fan-in, every other leaf
    `other_fan_in`; `num_iters` is passed to `init` unless None."""
    init_kwargs = {} if num_iters is None else {"num_iters": num_iters}
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), **init_kwargs))
    rng = np.random.default_rng(seed)

    def fill(leaf):
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) == 4 else other_fan_in
        bound = 1 / np.sqrt(fan_in)
        return jnp.asarray(rng.uniform(-bound, bound, leaf.shape), jnp.float32)

    return jax.tree.map(fill, shapes)


def load_config(name, variant):
    """The repository's `configs/<name>.py` at `variant`."""
    from jaxsr import config_lib  # here: most files importing these helpers load no config
    return config_lib.load(REPO / "configs" / f"{name}.py", variant)


def smooth_image(rng, h, w, c=3, sigma=2.0, margin=0.1):
    """A random smooth float32 image: a Gaussian-blurred random field (`sigma` pixels), stretched
    to [margin, 1 - margin]."""
    field = ndimage.gaussian_filter(rng.random((h, w, c)), sigma=(sigma, sigma, 0))
    field = (field - field.min()) / (field.max() - field.min())
    return (margin + (1 - 2 * margin) * field).astype(np.float32)
