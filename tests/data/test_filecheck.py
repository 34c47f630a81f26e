"""The bad-file policy (jaxsr.data.filecheck): a training folder with a file the pipeline
cannot use fails when the dataset is built, before any batch, naming every such file; the
unusual-but-valid PNG flavours are accepted on purpose and read the same way everywhere."""
from __future__ import annotations

import io
import struct
import zlib

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from jaxsr.data import make_train_dataset, read_rgb_uint8, resolve_image_paths
from jaxsr.data import prepare as prepare_lib
from jaxsr.data.filecheck import check_image_file

PATCH = 8


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_png_rgb16(path, values: np.ndarray) -> None:
    """A 16-bit RGB PNG (Pillow cannot write one)."""
    height, width, _ = values.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "train"
    folder.mkdir()
    for name, shape in [("good_a", (20, 24, 3)), ("good_b", (18, 30, 3)), ("good_c", (16, 16))]:
        iio.imwrite(folder / f"{name}.png", rng.integers(0, 256, shape, dtype=np.uint8))
    return folder


def _png_bytes(shape=(20, 22, 3), seed=1) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return iio.imwrite("<bytes>", pixels, extension=".png")


def _jpeg_bytes(shape=(40, 48, 3), seed=2) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _corrupt_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x55]) + data[middle + 1:]


BAD_FILES = {
    # name: (bytes, words the reason must contain)
    "truncated.png": (lambda: _png_bytes()[: len(_png_bytes()) * 2 // 3], "truncated"),
    "zero_bytes.png": (lambda: b"", "empty file"),
    "not_an_image.png": (lambda: b"<html><body>404 Not Found</body></html>\n",
                         "cannot identify"),
    "corrupted_crc.png": (lambda: _corrupt_middle(_png_bytes()), "broken png"),
    "truncated.jpg": (lambda: _jpeg_bytes()[:-300], "damaged jpeg"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_fails_at_build_time_naming_it(folder, name):
    make_bytes, reason = BAD_FILES[name]
    (folder / name).write_bytes(make_bytes())
    paths = resolve_image_paths(str(folder))  # listing never decodes
    size, why = check_image_file(folder / name)
    assert size is None and reason in why.lower(), why
    with pytest.raises(ValueError) as error:
        make_train_dataset(paths, patch_size=PATCH, batch_size=2, seed=0, cache=False)
    message = str(error.value)
    assert f"{folder / name}: " in message and reason in message.lower()
    assert "1 of 4 training images cannot be used" in message
    assert "good_a.png" not in message


def test_every_bad_file_is_named_in_one_error(folder):
    for name, (make_bytes, _) in BAD_FILES.items():
        (folder / name).write_bytes(make_bytes())
    iio.imwrite(folder / "too_small.png", np.zeros((5, 40, 3), np.uint8))
    with pytest.raises(ValueError) as error:
        make_train_dataset(resolve_image_paths(str(folder)), patch_size=PATCH, batch_size=2,
                           seed=0)
    message = str(error.value)
    assert "6 of 9 training images cannot be used" in message
    for name in [*BAD_FILES, "too_small.png"]:
        assert name in message
    assert "5x40" in message


def test_good_files_pass_with_their_sizes(folder):
    (folder / "photo.jpg").write_bytes(_jpeg_bytes())
    assert check_image_file(folder / "photo.jpg") == ((40, 48), None)
    assert check_image_file(folder / "good_b.png") == ((18, 30), None)
    assert check_image_file(folder / "missing.png") == (None, "file not found")


def test_16_bit_and_palette_pngs_are_accepted_and_read_alike_everywhere(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "odd"
    folder.mkdir()
    gray16 = rng.integers(0, 65536, (18, 20), dtype=np.uint16)
    iio.imwrite(folder / "gray16.png", gray16)
    rgb16 = rng.integers(0, 65536, (19, 17, 3), dtype=np.uint16)
    write_png_rgb16(folder / "rgb16.png", rgb16)
    colours = rng.integers(0, 256, (16, 21, 3), dtype=np.uint8)
    palette = Image.fromarray(colours).convert("P", palette=Image.ADAPTIVE, colors=8)
    palette.save(folder / "palette.png")
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    transparent.save(folder / "palette_trns.png", transparency=0)
    gray_alpha = rng.integers(0, 256, (17, 18, 2), dtype=np.uint8)
    iio.imwrite(folder / "gray_alpha.png", gray_alpha)

    # 16 bits are rounded to the nearest of the 256 8-bit levels (Pillow reduces 16-bit
    # RGB itself, so within one level); palettes expand to their colours; alpha is dropped.
    np.testing.assert_array_equal(read_rgb_uint8(folder / "gray16.png"),
                                  np.repeat(np.round(gray16 / 257.0)[..., None], 3, -1))
    assert np.abs(read_rgb_uint8(folder / "rgb16.png").astype(int)
                  - np.round(rgb16 / 257.0)).max() <= 1
    expected_palette = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(read_rgb_uint8(folder / "palette.png"), expected_palette)
    np.testing.assert_array_equal(read_rgb_uint8(folder / "palette_trns.png"), expected_palette)
    np.testing.assert_array_equal(read_rgb_uint8(folder / "gray_alpha.png"),
                                  np.repeat(gray_alpha[..., :1], 3, -1))

    paths = resolve_image_paths(str(folder))
    store = tmp_path / "store"
    assert not prepare_lib.prepare_store([folder], store, workers=0, progress=False).failed
    arrays = resolve_image_paths(str(store))
    kwargs = dict(patch_size=PATCH, batch_size=5, seed=1)
    decoded = [next(iter(make_train_dataset(paths, cache=False, **kwargs)))["hr"]]
    for got in (next(iter(make_train_dataset(paths, cache=True, **kwargs)))["hr"],
                next(iter(make_train_dataset(arrays, cache=False, **kwargs)))["hr"]):
        np.testing.assert_array_equal(got, decoded[0])
