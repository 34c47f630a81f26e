"""Image reading / writing, mod-crop and folder listing."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import imageio.v3 as iio
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxsr import io

def random_levels(rng, shape):
    return rng.integers(0, 256, shape, dtype=np.uint8)


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("shape", [(7, 9, 3), (7, 9, 1), (7, 9)])
def test_write_read_round_trip_is_exact(tmp_path, shape):
    levels = random_levels(np.random.default_rng(0), shape)
    image = levels.astype(np.float32) / 255
    path = io.write_image(tmp_path / "a" / "b" / "img.png", image)  # parents created
    assert path.is_file()
    back = io.read_image(path, mode="keep")
    assert back.dtype == np.float32
    expected = image if image.ndim == 3 else image[..., None]
    np.testing.assert_array_equal(back, expected)
    np.testing.assert_array_equal(np.round(back * 255).astype(np.uint8),
                                  levels.reshape(expected.shape))


def test_write_clips_and_rounds(tmp_path):
    image = np.array([[-0.5, 0.0, 0.49 / 255, 0.51 / 255, 0.5, 1.0, 7.0]], np.float32)
    io.write_image(tmp_path / "c.png", image)
    np.testing.assert_array_equal(iio.imread(tmp_path / "c.png"), [[0, 0, 0, 1, 128, 255, 255]])


def test_write_accepts_jax_arrays(tmp_path):
    io.write_image(tmp_path / "j.PNG", jnp.full((4, 5, 3), 0.2))
    np.testing.assert_array_equal(iio.imread(tmp_path / "j.PNG"), np.full((4, 5, 3), 51))


# ----------------------------------------------------------------------------- modes
def test_gray_file_in_each_mode(tmp_path):
    levels = random_levels(np.random.default_rng(1), (6, 8))
    iio.imwrite(tmp_path / "g.png", levels)
    gray = levels.astype(np.float32)[..., None] / 255
    np.testing.assert_array_equal(io.read_image(tmp_path / "g.png", "keep"), gray)
    np.testing.assert_array_equal(io.read_image(tmp_path / "g.png", "gray"), gray)
    np.testing.assert_array_equal(io.read_image(tmp_path / "g.png"), np.repeat(gray, 3, -1))


def test_rgb_to_gray_uses_bt601_weights(tmp_path):
    levels = random_levels(np.random.default_rng(2), (6, 8, 3))
    iio.imwrite(tmp_path / "c.png", levels)
    rgb = levels / 255.0
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    got = io.read_image(tmp_path / "c.png", "gray")
    assert got.shape == (6, 8, 1)
    np.testing.assert_allclose(got[..., 0], expected, atol=1e-6)
    assert io.read_image(tmp_path / "c.png", "keep").shape == (6, 8, 3)


@pytest.mark.parametrize("channels", [2, 4])
def test_alpha_is_dropped_not_composited(tmp_path, channels):
    levels = random_levels(np.random.default_rng(3), (5, 6, channels))
    iio.imwrite(tmp_path / "a.png", levels)
    colour = levels[..., :-1].astype(np.float32) / 255
    np.testing.assert_array_equal(io.read_image(tmp_path / "a.png", "keep"), colour)
    assert io.read_image(tmp_path / "a.png").shape == (5, 6, 3)


def test_16_bit_gray_keeps_precision(tmp_path):
    values = np.random.default_rng(4).integers(0, 65536, (5, 7), dtype=np.uint16)
    iio.imwrite(tmp_path / "g16.png", values)
    got = io.read_image(tmp_path / "g16.png", "keep")
    # 1e-7 is far below one 8-bit level (~4e-3): the 16 bits survive.
    np.testing.assert_allclose(got[..., 0], values / 65535.0, atol=1e-7)


def _write_png_rgb16(path, values):
    """Minimal 16-bit RGB PNG writer (imageio's Pillow backend cannot write one)."""
    height, width, _ = values.shape
    rows = b"".join(b"\x00" + values[i].astype(">u2").tobytes() for i in range(height))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_rgb_is_read_within_one_8_bit_level(tmp_path):
    values = np.random.default_rng(5).integers(0, 65536, (4, 6, 3)).astype(np.uint16)
    _write_png_rgb16(tmp_path / "c16.png", values)
    got = io.read_image(tmp_path / "c16.png")
    assert got.shape == (4, 6, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, values / 65535.0, atol=1 / 255)


def test_palette_png_is_expanded(tmp_path):
    levels = random_levels(np.random.default_rng(6), (8, 9, 3))
    palette_image = Image.fromarray(levels).convert("P", palette=Image.ADAPTIVE, colors=6)
    palette_image.save(tmp_path / "p.png")
    expected = np.asarray(palette_image.convert("RGB"), np.float32) / 255
    np.testing.assert_array_equal(io.read_image(tmp_path / "p.png"), expected)


def test_one_bit_png(tmp_path):
    bits = np.random.default_rng(7).integers(0, 2, (5, 6)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "b.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "b.png", "keep")[..., 0], bits)


@pytest.mark.parametrize("name", ["x.jpg", "x.JPEG"])
def test_jpeg(tmp_path, name):
    yy, xx = np.mgrid[0:32, 0:40]
    smooth = np.stack([xx / 40, yy / 32, (xx + yy) / 72], -1)
    iio.imwrite(tmp_path / name, (smooth * 255).round().astype(np.uint8),
                extension=".jpg", quality=95)
    got = io.read_image(tmp_path / name)
    assert got.shape == (32, 40, 3) and got.dtype == np.float32
    assert np.abs(got - smooth).mean() < 0.02


def test_float_tiff(tmp_path):
    values = np.random.default_rng(8).random((4, 5, 3)).astype(np.float32)
    iio.imwrite(tmp_path / "f.tif", values)
    np.testing.assert_array_equal(io.read_image(tmp_path / "f.tif"), values)
    iio.imwrite(tmp_path / "hdr.tif", values * 4)
    with pytest.raises(ValueError, match=r"hdr\.tif.*\[0, 1\]"):
        io.read_image(tmp_path / "hdr.tif")


def test_set14_bridge_is_gray(shared_data):
    path = shared_data / "Set14" / "bridge.png"
    if not path.is_file():
        pytest.skip(f"Set14/bridge.png not found under {shared_data}")
    stored = iio.imread(path)
    assert stored.ndim == 2  # the file really is single-channel
    rgb = io.read_image(path)
    assert rgb.shape == stored.shape + (3,) and rgb.dtype == np.float32
    np.testing.assert_array_equal(rgb[..., 0], stored / np.float32(255))
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    assert io.read_image(path, "keep").shape == stored.shape + (1,)
    names = [p.name for p in io.list_images(shared_data / "Set14")]
    assert "bridge.png" in names and names == sorted(names)


# ----------------------------------------------------------------------------- read errors
# imageio probes every plugin on the junk file; one of them warns about its own deprecation.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        io.read_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="junk.png"):
        io.read_image(tmp_path / "junk.png")
    iio.imwrite(tmp_path / "ints.tif", np.zeros((4, 5), np.int32))
    with pytest.raises(ValueError, match=r"ints\.tif.*int32"):
        io.read_image(tmp_path / "ints.tif")
    iio.imwrite(tmp_path / "five.tif", np.zeros((4, 5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"five\.tif.*\(4, 5, 5\)"):
        io.read_image(tmp_path / "five.tif")
    iio.imwrite(tmp_path / "ok.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="mode"):
        io.read_image(tmp_path / "ok.png", mode="RGB")


def test_write_errors(tmp_path):
    image = np.zeros((4, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"\.png"):
        io.write_image(tmp_path / "x.jpg", image)
    with pytest.raises(ValueError, match="uint8"):
        io.write_image(tmp_path / "x.png", image.astype(np.uint8))
    with pytest.raises(ValueError, match=r"\(4, 5, 4\)"):
        io.write_image(tmp_path / "x.png", np.zeros((4, 5, 4), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        io.write_image(tmp_path / "x.png", np.full((4, 5), np.nan, np.float32))
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------- mod_crop
@pytest.mark.parametrize("shape,scale,expected", [
    ((13, 10, 3), 4, (12, 8, 3)), ((13, 10, 3), 1, (13, 10, 3)), ((12, 9, 1), 3, (12, 9, 1)),
    ((2, 13, 11, 3), 2, (2, 12, 10, 3)), ((14, 7), 3, (12, 6))])
def test_mod_crop_shapes_and_top_left(shape, scale, expected):
    image = np.random.default_rng(9).random(shape).astype(np.float32)
    out = io.mod_crop(image, scale)
    assert out.shape == expected
    np.testing.assert_array_equal(out, image[tuple(slice(0, n) for n in expected)])
    jax_out = io.mod_crop(jnp.asarray(image), scale)
    assert isinstance(jax_out, type(jnp.asarray(image))) and jax_out.shape == expected


def test_mod_crop_errors():
    with pytest.raises(ValueError, match="scale"):
        io.mod_crop(np.zeros((8, 8, 3)), 0)
    with pytest.raises(ValueError, match="scale"):
        io.mod_crop(np.zeros((8, 8, 3)), 2.0)
    with pytest.raises(ValueError, match="smaller than scale=4"):
        io.mod_crop(np.zeros((3, 8, 3)), 4)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        io.mod_crop(np.zeros(8), 2)


# ----------------------------------------------------------------------------- list_images
def test_list_images(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.Jpeg", "d.bmp", "e.TIF", "notes.txt", ".hidden"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in io.list_images(tmp_path)]
    assert names == ["a.jpg", "b.PNG", "c.Jpeg", "d.bmp", "e.TIF"]
    assert all(isinstance(p, Path) for p in io.list_images(str(tmp_path)))


def test_list_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        io.list_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match="no image files"):
        io.list_images(tmp_path / "empty")


def test_atomic_path_is_the_one_writer_and_leaves_nothing_behind(tmp_path, monkeypatch):
    from jaxsr import files
    assert io.atomic_path is files.atomic_path
    synced = []
    real_fsync = files.os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    target = tmp_path / "sub" / "manifest.json"
    with files.atomic_path(target, durable=True) as tmp:
        assert files.is_temporary(tmp.name) and tmp.parent == target.parent
        tmp.write_text("whole")
    assert target.read_text() == "whole" and len(synced) == 2  # the file, then its folder
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "whole" and sorted(p.name for p in target.parent.iterdir()) == ["manifest.json"]
    assert not files.is_temporary("manifest.json") and not files.is_temporary("photo.tmp")


def test_progress_line_counts_rate_and_time_left(capsys):
    from jaxsr import progress
    assert progress.line(25, 100, 5.0, label="prepare", unit="img", note="1 failed", width=4) == \
        "prepare [#...] 25/100 1 failed, 5.00 img/s, ETA 15 s"
    assert progress.line(0, 10, 0.0, width=2).endswith("ETA ?")
    assert "ETA 2.5 min" in progress.line(50, 200, 1.0)
    bar = progress.Progress(4, label="verify", unit="img", interval=3600)
    bar.update()  # the first unit is always drawn
    bar.update()  # within the interval: not drawn again
    bar.update(2, note="2 failed")  # the last one always is
    bar.close()
    err = capsys.readouterr().err
    assert err.count("\r") == 4 and "1/4" in err and "2/4" not in err and "4/4 2 failed" in err
    assert err.endswith("\n")
    progress.Progress(5, enabled=False).close()
    assert capsys.readouterr().err == ""
