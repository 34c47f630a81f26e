"""Tests for jaxsr.ops.imresize against independent float64 loop references and hand values."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsr.ops.imresize import imresize, resize_bicubic_torch


# ----------------------------------------------------------------------------------------
# References, written per output pixel from the published definitions (no shared code).

def keys_cubic(x: float, a: float) -> float:
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def matlab_taps(n_in: int, n_out: int, scale: float, antialias: bool = True):
    """For each output pixel: list of (0-based input index, normalised weight)."""
    shrink = antialias and scale < 1
    width = 4 / scale if shrink else 4
    result = []
    for x in range(1, n_out + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        first = math.floor(u - width / 2)
        raw = []
        for j in range(first, first + math.ceil(width) + 2):
            d = u - j
            w = scale * keys_cubic(scale * d, -0.5) if shrink else keys_cubic(d, -0.5)
            while j < 1 or j > n_in:  # symmetric reflection, edge pixel repeated
                j = 1 - j if j < 1 else 2 * n_in + 1 - j
            raw.append((j - 1, w))
        total = sum(w for _, w in raw)
        result.append([(j, w / total) for j, w in raw])
    return result


def torch_taps(n_in: int, n_out: int, align_corners: bool, scale=None):
    result = []
    for x in range(n_out):
        if align_corners:
            src = x * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            ratio = 1 / scale if scale is not None else n_in / n_out
            src = (x + 0.5) * ratio - 0.5
        base = math.floor(src)
        t = src - base
        taps = []
        for k in (-1, 0, 1, 2):
            j = min(max(base + k, 0), n_in - 1)  # replicate border
            taps.append((j, keys_cubic(t - k, -0.75)))
        result.append(taps)
    return result


def resize_ref(image: np.ndarray, rows, cols) -> np.ndarray:
    """Apply per-output-pixel tap lists to an (H, W, C) image with explicit loops."""
    out = np.zeros((len(rows), len(cols), image.shape[-1]))
    for oy, ytaps in enumerate(rows):
        for ox, xtaps in enumerate(cols):
            acc = np.zeros(image.shape[-1])
            for iy, wy in ytaps:
                for ix, wx in xtaps:
                    acc += wy * wx * image[iy, ix]
            out[oy, ox] = acc
    return out


def matlab_ref(image, scale_hw, antialias=True):
    (h, w), (sh, sw) = image.shape[:2], scale_hw
    return resize_ref(image, matlab_taps(h, math.ceil(h * sh), sh, antialias),
                      matlab_taps(w, math.ceil(w * sw), sw, antialias))


# ----------------------------------------------------------------------------------------
# MATLAB imresize

@pytest.mark.parametrize("scale, hw, c", [
    (1 / 4, (24, 20), 3), (1 / 3, (15, 13), 1), (1 / 2, (11, 16), 3), (2, (7, 5), 1),
    (3, (5, 6), 3), (4, (4, 7), 1), (0.7, (13, 9), 3), (1.5, (9, 7), 1),
    ((0.5, 2), (10, 5), 3), ((3, 1 / 3), (4, 12), 1),
])
def test_imresize_matches_loop_reference(scale, hw, c):
    rng = np.random.default_rng(0)
    x = rng.random((2, *hw, c))
    got = np.asarray(imresize(jnp.asarray(x, jnp.float32), scale))
    s = scale if isinstance(scale, tuple) else (scale, scale)
    want = np.stack([matlab_ref(img, s) for img in x])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_imresize_without_antialiasing_and_output_size():
    rng = np.random.default_rng(1)
    x = rng.random((1, 12, 10, 2))
    got = np.asarray(imresize(jnp.asarray(x, jnp.float32), 0.5, antialiasing=False))
    np.testing.assert_allclose(got[0], matlab_ref(x[0], (0.5, 0.5), antialias=False), atol=1e-5)
    # output_size: MATLAB derives each scale as out / in.
    got = np.asarray(imresize(jnp.asarray(x, jnp.float32), output_size=(5, 17)))
    np.testing.assert_allclose(got[0], matlab_ref(x[0], (5 / 12, 17 / 10)), atol=1e-5)


def test_impulse_downscaled_by_two_hand_values():
    # 1x8 row [0,0,0,1,0,0,0,0], scale 1/2: kernel h(d) = 0.5 * cubic(d / 2), a = -0.5.
    # Output x = 1..4 samples u = 2x - 0.5 = 1.5, 3.5, 5.5, 7.5; the impulse sits at 4, so
    # d = u - 4 = -2.5, -0.5, 1.5, 3.5. With cubic(s) = 1.5s^3 - 2.5s^2 + 1 (s <= 1) and
    # -0.5s^3 + 2.5s^2 - 4s + 2 (1 < s <= 2):
    #   0.5*cubic(1.25) = 0.5*(-0.0703125) = -0.03515625
    #   0.5*cubic(0.25) = 0.5*( 0.8671875) =  0.43359375
    #   0.5*cubic(0.75) = 0.5*( 0.2265625) =  0.11328125
    #   0.5*cubic(1.75) = 0.5*(-0.0234375) = -0.01171875
    # Every output's 10 taps cover the whole support |d| < 4, so the weights already sum
    # to 1, and no mirrored tap lands on index 4 with a non-zero weight.
    row = np.array([0, 0, 0, 1, 0, 0, 0, 0], np.float32).reshape(1, 1, 8, 1)
    got = np.asarray(imresize(jnp.asarray(row), output_size=(1, 4)))[0, 0, :, 0]
    # Height 1 -> 1 is the identity (scale 1), so only the width pass acts.
    np.testing.assert_allclose(got, [-0.03515625, 0.43359375, 0.11328125, -0.01171875],
                               atol=1e-7)


def test_constant_stays_constant_and_ramp_stays_linear():
    const = jnp.full((1, 9, 7, 3), 0.37, jnp.float32)
    for scale in (1 / 4, 0.7, 1 / 3, 2, 3.5):
        np.testing.assert_allclose(np.asarray(imresize(const, scale)), 0.37, atol=1e-6)
    # Cubic convolution reproduces linear functions away from the mirrored border:
    # upsampling by 2, output x (1-based) samples u = x/2 + 1/4, so a ramp f(i) = i
    # becomes f(u) wherever all 4 taps are inside [1, 16].
    ramp = jnp.broadcast_to(jnp.arange(1, 17, dtype=jnp.float32), (1, 3, 16)).reshape(1, 3, 16, 1)
    got = np.asarray(imresize(ramp, 2))[0, 0, :, 0]
    u = np.arange(1, 33) / 2 + 0.25
    interior = slice(4, 28)  # u in [2.75, 14.25]: taps floor(u)-1 .. floor(u)+2 all valid
    np.testing.assert_allclose(got[interior], u[interior], atol=1e-5)
    assert not np.allclose(got[:2], u[:2], atol=1e-3)  # mirroring bends the border


def test_output_size_follows_matlab_ceil():
    x = jnp.zeros((1, 10, 7, 1))
    assert imresize(x, 1 / 4).shape == (1, 3, 2, 1)
    assert imresize(x, 3).shape == (1, 30, 21, 1)
    assert imresize(x, (0.5, 2)).shape == (1, 5, 14, 1)


def test_uint8_round_trip_within_one_level():
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (1, 32, 28, 3)).astype(np.float64) / 255
    got = np.asarray(imresize(jnp.asarray(hr, jnp.float32), 1 / 4))
    want = matlab_ref(hr[0], (0.25, 0.25))[None]
    quant = lambda v: np.clip(np.round(v * 255), 0, 255).astype(np.int32)
    assert np.abs(quant(got) - quant(want)).max() <= 1


def test_batched_equals_per_image_and_jit():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.random((3, 12, 9, 2)), jnp.float32)
    fn = jax.jit(lambda v: imresize(v, 1 / 3))
    batched = np.asarray(fn(x))
    for n in range(3):
        np.testing.assert_allclose(batched[n], np.asarray(imresize(x[n:n + 1], 1 / 3))[0],
                                   atol=1e-6)
    stacked = jax.vmap(lambda v: imresize(v, 2))(x[:, None])  # vmap over an outer axis
    np.testing.assert_allclose(np.asarray(stacked[:, 0]), np.asarray(imresize(x, 2)), atol=1e-6)


@pytest.mark.parametrize("fn", [lambda v: imresize(v, 0.7),
                                lambda v: resize_bicubic_torch(v, (11, 5))])
def test_gradient_matches_finite_differences(fn):
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.random((1, 8, 9, 2)))
    probe = jnp.asarray(rng.standard_normal(fn(x).shape), jnp.float32)
    loss = lambda v: jnp.sum(fn(v) * probe)
    grad = jax.grad(loss)(x.astype(jnp.float32))
    assert np.all(np.isfinite(np.asarray(grad)))
    direction = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    eps = 1e-2
    fd = (loss(x + eps * direction) - loss(x - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.sum(grad * direction)), float(fd), rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("kwargs, match", [
    ({"scale": 5}, "scale"), ({"scale": 0.2}, "scale"), ({"scale": 0}, "scale"),
    ({"scale": -2}, "scale"), ({"scale": float("nan")}, "scale"), ({"scale": (2, 1, 1)}, "scale"),
    ({"output_size": (0, 4)}, "output_size"), ({"output_size": (2.5, 4)}, "output_size"),
    ({}, "exactly one"), ({"scale": 2, "output_size": (4, 4)}, "exactly one"),
])
def test_imresize_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        imresize(jnp.zeros((1, 8, 8, 3)), **kwargs)


def test_rejects_bad_images():
    with pytest.raises(ValueError, match="images"):
        imresize(jnp.zeros((8, 8, 3)), 2)
    with pytest.raises(ValueError, match="images"):
        imresize(jnp.zeros((1, 8, 8, 3), jnp.uint8), 2)
    with pytest.raises(ValueError, match="images"):
        resize_bicubic_torch(jnp.zeros((1, 8, 8, 3), jnp.int32), (4, 4))


# ----------------------------------------------------------------------------------------
# PyTorch bicubic

TORCH_CASES = [((7, 9), {"output_size": (14, 27)}), ((12, 10), {"output_size": (5, 4)}),
               ((6, 5), {"output_size": (1, 13)}), ((9, 8), {"scale": 1.7}),
               ((10, 12), {"scale": (0.5, 3)}), ((5, 7), {"output_size": 9})]


def torch_shape_and_scale(hw, kwargs):
    if "output_size" in kwargs:
        size = kwargs["output_size"]
        return (size, size) if isinstance(size, int) else size, (None, None)
    s = kwargs["scale"]
    s = s if isinstance(s, tuple) else (s, s)
    return tuple(math.floor(n * f) for n, f in zip(hw, s)), s


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("hw, kwargs", TORCH_CASES)
def test_torch_bicubic_matches_loop_reference(hw, kwargs, align_corners):
    rng = np.random.default_rng(5)
    x = rng.random((2, *hw, 3))
    got = np.asarray(resize_bicubic_torch(jnp.asarray(x, jnp.float32), align_corners=align_corners,
                                          **kwargs))
    (oh, ow), (sh, sw) = torch_shape_and_scale(hw, kwargs)
    rows = torch_taps(hw[0], oh, align_corners, sh)
    cols = torch_taps(hw[1], ow, align_corners, sw)
    want = np.stack([resize_ref(img, rows, cols) for img in x])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_torch_bicubic_explicit_scale_differs_from_size_ratio():
    # With scale given, PyTorch samples with ratio 1/scale even when floor(in*scale)/in != scale.
    x = jnp.asarray(np.random.default_rng(6).random((1, 9, 9, 1)), jnp.float32)
    by_scale = resize_bicubic_torch(x, scale=1.7)
    by_size = resize_bicubic_torch(x, (15, 15))
    assert by_scale.shape == by_size.shape == (1, 15, 15, 1)
    assert not np.allclose(np.asarray(by_scale), np.asarray(by_size), atol=1e-3)


def test_torch_bicubic_errors():
    x = jnp.zeros((1, 4, 4, 1))
    with pytest.raises(ValueError, match="scale"):
        resize_bicubic_torch(x, scale=0.1)  # floor(0.4) = 0 rows
    with pytest.raises(ValueError, match="scale"):
        resize_bicubic_torch(x, scale=-1)
    with pytest.raises(ValueError, match="output_size"):
        resize_bicubic_torch(x, (0, 3))
    with pytest.raises(ValueError, match="exactly one"):
        resize_bicubic_torch(x)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("hw, kwargs", TORCH_CASES)
def test_torch_bicubic_matches_torch(hw, kwargs, align_corners):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(7).random((2, *hw, 3)).astype(np.float32)
    got = np.asarray(resize_bicubic_torch(jnp.asarray(x), align_corners=align_corners, **kwargs))
    size = kwargs.get("output_size")
    t_kwargs = ({"size": size} if size is not None else {"scale_factor": kwargs["scale"]})
    want = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), mode="bicubic",
                                           align_corners=align_corners, **t_kwargs)
    np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), atol=1e-5)
