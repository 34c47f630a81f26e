"""jaxsr.infer: tiling, blending, channel handling and file I/O, with fake local models."""
import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from jaxsr import infer
from jaxsr.ops.imresize import imresize

BLUR3 = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0


def smooth_image(rng, h, w, c=3):
    return helpers.smooth_image(rng, h, w, c, sigma=1.5, margin=0.05)  # finer detail than the default


def local_fake(scale, kernel_of=None):
    """A shift-invariant local model: 3x3 blur (edge padding) then MATLAB bicubic x scale.

    Its receptive radius is about 3 LR pixels (1 for the blur, 2 for bicubic), under the
    overlap // 4 = 4 pixels that tiling with overlap 16 treats as exact. `kernel_of(lr)`
    gives a per-image kernel. Returns the jitted fake and a list of traced shapes."""
    traces = []

    @jax.jit
    def predict(lr):
        traces.append(lr.shape)
        n, h, w, c = lr.shape
        padded = jnp.pad(lr, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        blurred = sum(BLUR3[i, j] * padded[:, i:i + h, j:j + w]
                      for i in range(3) for j in range(3))
        sr = imresize(blurred, float(scale))
        return sr, (None if kernel_of is None else kernel_of(lr))

    return predict, traces


def direct(predict, lr):
    """The model on the whole, unpadded image: the reference tiling must reproduce."""
    sr, kernel = predict(jnp.asarray(lr[None]))
    return np.clip(np.asarray(sr[0]), 0, 1), None if kernel is None else np.asarray(kernel[0])


def test_tiled_equals_untiled():
    lr = smooth_image(np.random.default_rng(0), 96, 80)  # multiples of the bucket: no padding
    predict, _ = local_fake(2)
    untiled, _ = infer.super_resolve(predict, lr, scale=2)
    tiled, _ = infer.super_resolve(predict, lr, scale=2, tile=48, overlap=16)
    assert tiled.shape == untiled.shape == (192, 160, 3)
    np.testing.assert_allclose(tiled, untiled, atol=1e-5)
    np.testing.assert_allclose(untiled, direct(predict, lr)[0], atol=1e-6)


def test_large_image_tiles_compile_once_and_match():
    lr = smooth_image(np.random.default_rng(1), 300, 260)
    kernel_of = lambda x: jnp.mean(x, axis=(1, 2, 3))[:, None, None] * jnp.ones((1, 5, 5))
    predict, traces = local_fake(2, kernel_of)
    sr, kernel = infer.super_resolve(predict, lr, scale=2, tile=96, overlap=16, max_batch=4)
    assert sr.shape == (600, 520, 3) and sr.dtype == np.float32
    assert len(traces) == 1 and traces[0] == (4, 96, 96, 3)  # 16 tiles, 4 batches, one shape
    reference, _ = direct(predict, lr)
    np.testing.assert_allclose(sr, reference, atol=1e-5)
    # Tiles start at 0, 80, 160 and (shifted inward) 300-96 = 204 / 260-96 = 164.
    means = [lr[y:y + 96, x:x + 96].mean() for y in (0, 80, 160, 204) for x in (0, 80, 160, 164)]
    np.testing.assert_allclose(kernel, np.full((5, 5), np.mean(means)), rtol=1e-5)


def test_image_shorter_than_tile_on_one_axis():
    lr = smooth_image(np.random.default_rng(2), 40, 150)
    predict, traces = local_fake(2)
    tiled, _ = infer.super_resolve(predict, lr, scale=2, tile=64, overlap=16)
    untiled, _ = infer.super_resolve(predict, lr, scale=2)
    assert tiled.shape == (80, 300, 3)
    assert traces[0] == (3, 48, 64, 3)  # the short axis padded to the bucket, the long one cut
    # Untiled pads the right border to 160 columns, tiled does not: compare away from it.
    np.testing.assert_allclose(tiled[:, :-8], untiled[:, :-8], atol=1e-5)


def test_blending_is_a_weighted_average():
    # A model that adds a different constant to every tile: the blend must stay within the
    # range of the constants (weights normalised), and equal one tile's value where only it
    # counts (the image corner).
    lr = np.full((100, 100, 3), 0.2, np.float32)
    offsets = iter(np.linspace(0.0, 0.5, 100))

    def predict(x):
        bump = np.array([next(offsets) for _ in range(x.shape[0])], np.float32)
        return imresize(x, 2.0) + bump[:, None, None, None], None

    sr, _ = infer.super_resolve(predict, lr, scale=2, tile=40, overlap=16, max_batch=1)
    assert sr.min() >= 0.2 - 1e-6 and sr.max() <= 0.7 + 1e-6
    assert sr[0, 0, 0] == pytest.approx(0.2, abs=1e-6)  # first tile, offset 0


def test_gray_and_rgba_channels():
    rng = np.random.default_rng(3)
    predict, _ = local_fake(2)
    gray = smooth_image(rng, 32, 32, c=1)
    sr_gray, _ = infer.super_resolve(predict, gray, scale=2)
    sr_rgb, _ = infer.super_resolve(predict, np.repeat(gray, 3, axis=-1), scale=2)
    assert sr_gray.shape == (64, 64, 1)
    np.testing.assert_allclose(sr_gray[..., 0], sr_rgb.mean(axis=-1), atol=1e-6)
    rgba = np.concatenate([smooth_image(rng, 32, 32), rng.random((32, 32, 1), np.float32)], -1)
    sr_rgba, _ = infer.super_resolve(predict, rgba, scale=2)
    assert sr_rgba.shape == (64, 64, 4)
    np.testing.assert_allclose(sr_rgba[..., :3], infer.super_resolve(predict, rgba[..., :3], scale=2)[0])
    alpha = np.clip(np.asarray(imresize(jnp.asarray(rgba[None, ..., 3:]), 2.0))[0], 0, 1)
    np.testing.assert_allclose(sr_rgba[..., 3:], alpha, atol=1e-6)


def write_png(path, image):
    iio.imwrite(path, np.round(image * 255).astype(np.uint8), extension=".png")
    return path


def test_infer_paths_end_to_end(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "in"
    folder.mkdir()
    gray = smooth_image(rng, 36, 30, c=1)[..., 0]
    rgba = np.concatenate([smooth_image(rng, 40, 44), smooth_image(rng, 40, 44, c=1)], -1)
    write_png(folder / "gray.png", gray)
    write_png(folder / "logo.png", rgba)
    kernel = np.outer([1, 3, 5, 3, 1], [1, 3, 5, 3, 1]).astype(np.float32) / 169
    predict, _ = local_fake(2, lambda x: jnp.broadcast_to(kernel, (x.shape[0], 5, 5)))

    written = infer.infer_paths(predict, str(folder), tmp_path / "out", scale=2, tile=32,
                                overlap=8)
    out = tmp_path / "out"
    assert written == [str(out / n) for n in ("gray_x2.png", "gray_kernel.png",
                                              "logo_x2.png", "logo_kernel.png")]
    sr_gray = iio.imread(out / "gray_x2.png")
    assert sr_gray.shape == (72, 60) and sr_gray.dtype == np.uint8
    stored_gray = np.round(gray * 255) / 255  # what the PNG holds
    expect, _ = infer.super_resolve(predict, stored_gray, scale=2, tile=32, overlap=8)
    np.testing.assert_array_equal(sr_gray, np.round(expect[..., 0] * 255))

    sr_rgba = iio.imread(out / "logo_x2.png")
    assert sr_rgba.shape == (80, 88, 4)
    stored = (np.round(rgba * 255) / 255).astype(np.float32)
    alpha = np.clip(np.asarray(imresize(jnp.asarray(stored[None, ..., 3:]), 2.0))[0, ..., 0], 0, 1)
    assert np.abs(sr_rgba[..., 3].astype(float) - np.round(alpha * 255)).max() <= 1
    expect_rgb, _ = infer.super_resolve(predict, stored[..., :3], scale=2, tile=32, overlap=8)
    assert np.abs(sr_rgba[..., :3].astype(float) - np.round(expect_rgb * 255)).max() <= 1

    view = iio.imread(out / "gray_kernel.png")
    assert view.shape == (40, 40) and view.max() == 255
    np.testing.assert_array_equal(view[::8, ::8], np.round(kernel / kernel.max() * 255))


def test_input_forms_and_errors(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b", "a"):
        write_png(folder / f"{name}.png", smooth_image(rng, 16, 16))
    predict, _ = local_fake(2)
    out = tmp_path / "out"
    assert infer.infer_paths(predict, folder / "a.png", out, scale=2) == [str(out / "a_x2.png")]
    assert infer.infer_paths(predict, str(folder / "*.png"), out, scale=2) == \
        [str(out / "a_x2.png"), str(out / "b_x2.png")]
    assert len(infer.infer_paths(predict, [folder / "b.png", folder / "a.png"], out, scale=2)) == 2

    with pytest.raises(FileNotFoundError, match="missing.png"):
        infer.infer_paths(predict, folder / "missing.png", out, scale=2)
    with pytest.raises(FileNotFoundError, match="no image files match"):
        infer.infer_paths(predict, str(folder / "*.jpg"), out, scale=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        infer.infer_paths(predict, empty, out, scale=2)
    with pytest.raises(ValueError, match="share the name"):
        infer.infer_paths(predict, [folder / "a.png", folder / "a.png"], out, scale=2)


def test_super_resolve_bad_arguments():
    predict, _ = local_fake(2)
    lr = np.zeros((16, 16, 3), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        infer.super_resolve(predict, lr, scale=2, tile=16, overlap=16)
    with pytest.raises(ValueError, match="lr"):
        infer.super_resolve(predict, np.zeros((16, 16, 5), np.float32), scale=2)
    with pytest.raises(ValueError, match="lr must be a floating-point"):
        infer.super_resolve(predict, np.zeros((16, 16, 3), np.uint8), scale=2)
    with pytest.raises(ValueError, match="scale"):
        infer.super_resolve(predict, lr, scale=5)
    with pytest.raises(ValueError, match="sr"):  # a model returning the wrong scale
        infer.super_resolve(lambda x: (x, None), lr, scale=2)
