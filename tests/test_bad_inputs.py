"""The README's bad-input table, one test per row and command (train, eval, infer, jaxsr.io/ops).

Nothing here trains a model: `train` rows exercise what a run does at start-up (config checks,
`jaxsr.data` folder resolution and the input pipeline), `eval` and `infer` rows use cheap fake
predict functions. A row's outcome is either a clear error naming the file / key / value, or the
documented handling; outputs are never half-written.
"""
import os
import re
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxsr import cli, config_lib, infer, io
from jaxsr import evaluate as E
from jaxsr.data import datasets, pipeline
from jaxsr.ops import degrade
from jaxsr.ops.imresize import imresize

REPO = Path(__file__).resolve().parents[1]
# imageio tries every plugin on a non-image file; one of them warns about its own deprecation
pytestmark = pytest.mark.filterwarnings("ignore:The legacy:DeprecationWarning")
H, W = 48, 40  # the small test images


# ----------------------------------------------------------------------------- helpers

def smooth_levels(shape, seed=0) -> np.ndarray:
    """A smooth uint8 image (gradients plus a little texture), photo-like enough for JPEG."""
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    channels = shape[2] if len(shape) == 3 else 1
    planes = [0.5 + 0.35 * np.sin(3 * xx + 2 * yy + c) + 0.1 * np.cos(9 * yy - c) for c in range(channels)]
    image = np.stack(planes, -1) + np.random.default_rng(seed).normal(0, 0.01, (h, w, channels))
    levels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return levels if len(shape) == 3 else levels[..., 0]


def write_png16_rgb(path: Path, values: np.ndarray) -> None:
    """A 16-bit RGB PNG (imageio's Pillow backend cannot write one)."""
    height, width, _ = values.shape
    raw = b"".join(b"\x00" + values[i].astype(">u2").tobytes() for i in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# kind -> (file name, channels read with mode="keep", channels of infer's output)
FORMATS = {
    "gray": ("gray.png", 1, 1),
    "gray16": ("gray16.png", 1, 1),
    "rgb16": ("rgb16.png", 3, 3),
    "palette": ("palette.png", 3, 3),
    "rgba": ("rgba.png", 3, 4),
    "gray_alpha": ("gray_alpha.png", 1, 2),
    "cmyk_jpeg": ("cmyk.jpg", 3, 3),
}


def write_format(folder: Path, kind: str) -> tuple[Path, np.ndarray]:
    """One file of `kind` and the float image read_image(mode="keep") must return for it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FORMATS[kind][0]
    rgb = smooth_levels((H, W, 3))
    if kind == "gray":
        Image.fromarray(rgb[..., 0]).save(path)
        return path, rgb[..., :1] / np.float32(255)
    if kind == "gray16":
        values = (rgb[..., 0].astype(np.uint16) * 257 + 100).astype(np.uint16)
        iio.imwrite(path, values)
        return path, values[..., None] / np.float32(65535)
    if kind == "rgb16":
        values = rgb.astype(np.uint16) * 257
        write_png16_rgb(path, values)
        return path, values / np.float32(65535)
    if kind == "palette":
        image = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=32)
        image.save(path)
        return path, np.asarray(image.convert("RGB")) / np.float32(255)
    if kind == "rgba":
        alpha = smooth_levels((H, W), seed=1)
        Image.fromarray(np.dstack([rgb, alpha])).save(path)
        return path, rgb / np.float32(255)
    if kind == "gray_alpha":
        Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]]), mode="LA").save(path)
        return path, rgb[..., :1] / np.float32(255)
    if kind == "cmyk_jpeg":
        cmyk = Image.new("CMYK", (W, H))
        cmyk.paste(Image.fromarray(rgb).convert("CMYK"))
        cmyk.save(path, quality=95)
        with Image.open(path) as stored:
            assert stored.mode == "CMYK"
            return path, np.asarray(stored.convert("RGB")) / np.float32(255)
    raise ValueError(kind)


BROKEN = ("truncated_png", "truncated_jpeg", "empty_png", "text_as_png")


def write_broken(folder: Path, kind: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("truncated_png", "truncated_jpeg"):
        suffix = ".png" if kind == "truncated_png" else ".jpg"
        path = folder / f"b_{kind}{suffix}"
        iio.imwrite(path, smooth_levels((H, W, 3)), extension=suffix)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "empty_png":
        path = folder / "b_empty.png"
        path.write_bytes(b"")
    else:
        path = folder / "b_text.png"
        path.write_text("not an image\n")
    return path


def write_good(folder: Path, name="a.png", shape=(H, W, 3)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    iio.imwrite(path, smooth_levels(shape))
    return path


def nearest_predict(scale):
    """A cheap predict_fn: nearest-neighbour upsampling on the host (exact under tiling)."""
    def predict(lr):
        lr = np.asarray(lr)
        return np.repeat(np.repeat(lr, scale, axis=1), scale, axis=2), None
    return predict


@jax.jit
def bicubic_x2(lr):
    return imresize(lr, 2.0), None


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interrupted write would leave."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def tiny_config():
    return config_lib.load(REPO / "configs" / "dan.py", "tiny")


# ----------------------------------------------------------------------------- truncated / empty file

@pytest.mark.parametrize("broken", BROKEN)
@pytest.mark.parametrize("command", ["train", "eval", "infer", "io"])
def test_broken_file(command, broken, tmp_path):
    folder = tmp_path / "images"
    write_good(folder)
    bad = write_broken(folder, broken)
    match = f"could not read {bad}"
    if command == "train":  # at start-up, before the first step (jaxsr.data.filecheck), naming the file
        paths = datasets.resolve_image_paths([str(folder)])
        with pytest.raises(ValueError, match=rf"(?s)training images cannot be used.*{re.escape(str(bad))}"):
            pipeline.make_train_dataset(paths, patch_size=16, batch_size=2, seed=0, num_threads=0)
    elif command == "eval":
        with pytest.raises(ValueError, match=match):
            E.load_hr_images(folder)
    elif command == "infer":
        out = tmp_path / "out"
        with pytest.raises(ValueError, match=match):
            infer.infer_paths(nearest_predict(2), folder, out, scale=2)
        # the image before it was written completely; nothing of the broken one, no temp file
        assert sorted(p.name for p in out.iterdir()) == ["a_x2.png"]
        assert io.read_image(out / "a_x2.png").shape == (2 * H, 2 * W, 3)
    else:
        with pytest.raises(ValueError, match=match):
            io.read_image(bad)


@pytest.mark.parametrize("broken", BROKEN)
def test_broken_file_train_without_cache(broken, tmp_path):
    """data.cache=False (the paper variants): every file is checked at start-up too (PNG chunk CRCs,
    a 1/8-scale JPEG decode), so even a truncated file fails before the first step, naming it."""
    folder = tmp_path / "images"
    write_good(folder)
    bad = write_broken(folder, broken)
    paths = datasets.resolve_image_paths([str(folder)])
    with pytest.raises(ValueError, match=rf"(?s)training images cannot be used.*{re.escape(str(bad))}"):
        pipeline.make_train_dataset(paths, patch_size=16, batch_size=2, seed=0, cache=False, num_threads=0)


# ----------------------------------------------------------------------------- non-image files

@pytest.mark.parametrize("command", ["train", "eval", "infer", "io"])
def test_non_image_files_in_a_folder_are_ignored(command, tmp_path):
    folder = tmp_path / "images"
    write_good(folder)
    (folder / "notes.txt").write_text("shot on a phone")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder / "raw.npy").write_bytes(b"\x93NUMPY")
    (folder / "sub").mkdir()
    write_good(folder / "sub", "nested.png")  # subfolders are not searched
    if command == "train":
        assert datasets.resolve_image_paths([str(folder)]) == [str((folder / "a.png").resolve())]
    elif command == "eval":
        assert [name for name, _ in E.load_hr_images(folder)] == ["a"]
    elif command == "infer":
        written = infer.infer_paths(nearest_predict(2), folder, tmp_path / "out", scale=2)
        assert written == [str(tmp_path / "out" / "a_x2.png")]
    else:
        assert io.list_images(folder) == [folder / "a.png"]
        with pytest.raises(ValueError, match="notes.txt is not an image file"):
            datasets.resolve_image_paths([str(folder / "notes.txt")])


# ----------------------------------------------------------------------------- 16-bit, palette, gray, RGBA, CMYK

@pytest.mark.parametrize("kind", FORMATS)
def test_formats_io_and_ops(kind, tmp_path):
    path, expected = write_format(tmp_path, kind)
    image = io.read_image(path, mode="keep")
    assert image.shape == (H, W, FORMATS[kind][1]) and image.dtype == np.float32
    # 16-bit RGB is reduced to 8 bits by Pillow: within one 8-bit level; everything else exact
    np.testing.assert_allclose(image, expected, atol=1 / 255 if kind == "rgb16" else 1e-6)
    if kind == "cmyk_jpeg":  # converted to RGB, not read as RGB + alpha
        assert np.abs(image - smooth_levels((H, W, 3)) / 255).mean() < 0.03
    rgb = io.read_image(path)
    assert rgb.shape == (H, W, 3)
    blurred = degrade.blur(jnp.asarray(image[None]), degrade.gaussian8_kernels(2, 21)[:1])
    assert blurred.shape == (1, H, W, FORMATS[kind][1])  # the operators take any channel count


@pytest.mark.parametrize("kind", FORMATS)
def test_formats_train(kind, tmp_path):
    path, expected = write_format(tmp_path, kind)
    rgb = expected if expected.shape[-1] == 3 else np.repeat(expected, 3, axis=-1)
    np.testing.assert_allclose(datasets.read_rgb_uint8(path), np.round(rgb * 255), atol=1 if kind == "rgb16" else 0)
    dataset = pipeline.make_train_dataset([str(path)], patch_size=16, batch_size=2, seed=0, num_threads=0)
    batch = next(iter(dataset))
    assert batch["hr"].shape == (2, 16, 16, 3) and batch["hr"].dtype == np.uint8


@pytest.mark.parametrize("kind", FORMATS)
def test_formats_eval(kind, tmp_path):
    path, expected = write_format(tmp_path / "set", kind)
    [(name, image)] = E.load_hr_images(tmp_path / "set")
    assert name == path.stem and image.shape[-1] == FORMATS[kind][1]  # gray stays gray
    result = E.evaluate(bicubic_x2, [(name, image)], scale=2, protocol="gaussian8")
    # the bicubic fake is the bicubic baseline, so model and baseline agree
    assert np.isfinite(result["mean"]["psnr"])
    assert result["mean"]["psnr"] == pytest.approx(result["mean"]["bicubic_psnr"], abs=1e-3)


@pytest.mark.parametrize("kind", FORMATS)
def test_formats_infer(kind, tmp_path):
    path, expected = write_format(tmp_path / "in", kind)
    [out] = infer.infer_paths(nearest_predict(2), path, tmp_path / "out", scale=2)
    stored = iio.imread(out)
    stored = stored if stored.ndim == 3 else stored[..., None]
    assert stored.shape == (2 * H, 2 * W, FORMATS[kind][2]) and stored.dtype == np.uint8
    color = np.repeat(np.repeat(np.round(expected * 255), 2, axis=0), 2, axis=1)
    np.testing.assert_allclose(stored[..., :color.shape[-1]], color, atol=1 if kind == "rgb16" else 0)


# ----------------------------------------------------------------------------- smaller than kernel / patch

@pytest.mark.parametrize("command", ["train", "eval", "infer", "ops"])
def test_image_smaller_than_kernel_or_patch(command, tmp_path):
    small = write_good(tmp_path / "images", "small.png", shape=(10, 12, 3))
    if command == "train":
        with pytest.raises(ValueError, match=rf"(?s)training image cannot be used.*{re.escape(str(small))} is 10x12"
                                             r".*smaller than the HR patch"):
            pipeline.make_train_dataset([str(small)], patch_size=24, batch_size=2, seed=0, num_threads=0)
        with pytest.raises(ValueError, match=f"validation image {small} is 10x12.*data.val_size"):
            pipeline.load_validation_set([str(small)], size=24, scale=2, max_images=1)
    elif command == "eval":
        image = io.read_image(small)
        with pytest.raises(ValueError, match=r"'small', 10x12\).*too small for 21x21 kernels"):
            E.evaluate(bicubic_x2, [("small", image)], scale=2, protocol="gaussian8")
    elif command == "infer":  # handled: mirror-padded to the size bucket, cropped back
        [out] = infer.infer_paths(nearest_predict(2), small, tmp_path / "out", scale=2)
        assert io.read_image(out).shape == (20, 24, 3)
        one_pixel, _ = infer.super_resolve(nearest_predict(4), np.full((1, 1, 3), 0.5, np.float32), scale=4)
        assert one_pixel.shape == (4, 4, 3)
    else:
        with pytest.raises(ValueError, match="10x12 are too small for 21x21 kernels"):
            degrade.blur(jnp.zeros((1, 10, 12, 3)), degrade.gaussian8_kernels(2, 21)[:1])


# ----------------------------------------------------------------------------- a 6000x4000 photo for infer

def png_rows(path: Path, chunk_rows: int = 64):
    """Rows of an 8-bit PNG written by jaxsr.io.write_png_rows (filter "up" or none),
    decoded a few at a time: (width, channels) from the header, then uint8 row blocks."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, color_type = header[:4]
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[color_type]
    assert depth == 8
    stride = 1 + width * channels
    decompressor, pending = zlib.decompressobj(), b""
    previous = np.zeros(width * channels, np.uint8)
    compressed = b"".join(idat)
    rows_done, offset = 0, 0
    while rows_done < height:
        while len(pending) < stride * min(chunk_rows, height - rows_done):
            pending += decompressor.decompress(compressed[offset:offset + (1 << 16)])
            offset += 1 << 16
        n = min(chunk_rows, height - rows_done)
        block = np.frombuffer(pending[:n * stride], np.uint8).reshape(n, stride)
        pending = pending[n * stride:]
        assert set(np.unique(block[:, 0])) <= {0, 2}
        if np.all(block[:, 0] == 2):  # undo "up": add the row above, modulo 256 (uint8 wraps)
            rows = np.cumsum(block[:, 1:], axis=0, dtype=np.uint8) + previous
        else:
            rows = block[:, 1:].copy()
            for i in range(n):
                if block[i, 0] == 2:
                    rows[i] += rows[i - 1] if i else previous
        previous = rows[-1]
        yield rows.reshape(n, width, channels)
        rows_done += n


def test_large_photo_infer_is_tiled_in_bounded_memory(tmp_path):
    """A 6000x4000 RGB photo at x2 with the config's tile setting: the SR (12000x8000) is never
    held whole; peak host memory stays within the README's bound."""
    height, width, scale = 4000, 6000, 2
    settings = config_lib.base_config().infer
    tile, overlap, max_batch = settings.tile, settings.overlap, 4
    yy, xx = np.mgrid[0:height, 0:width]
    lr = np.stack([(xx // 40 * 37) % 256, (yy // 40 * 53) % 256, ((xx + yy) // 60 * 11) % 256], -1).astype(np.uint8)
    del yy, xx
    iio.imwrite(tmp_path / "photo.png", lr)

    tracemalloc.start()
    try:
        [out] = infer.infer_paths(nearest_predict(scale), tmp_path / "photo.png", tmp_path / "out", scale=scale,
                                  tile=tile, overlap=overlap, max_batch=max_batch)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the README's bound: the LR as float32, one row of tiles in HR, one batch of SR tiles, 200 MB
    lr_bytes = 12 * height * width
    band_bytes = 12 * scale ** 2 * tile * width
    batch_bytes = 12 * max_batch * (scale * tile) ** 2
    bound = lr_bytes + band_bytes + batch_bytes + 200 * 2 ** 20
    sr_bytes = 12 * scale ** 2 * height * width  # the whole SR as float32: what is never held
    assert peak < bound < sr_bytes, (peak / 2 ** 20, bound / 2 ** 20)

    row = 0
    for rows in png_rows(Path(out)):  # nearest upsampling is exact under tiling
        first, last = row // scale, (row + len(rows) - 1) // scale
        expected = np.repeat(np.repeat(lr[first:last + 1], scale, axis=0), scale, axis=1)
        expected = expected[row - first * scale:row - first * scale + len(rows)]
        np.testing.assert_array_equal(rows, expected)
        row += len(rows)
    assert row == scale * height


# ----------------------------------------------------------------------------- NaN / Inf

@pytest.mark.parametrize("command", ["train", "eval", "infer", "ops", "io"])
def test_nan_and_inf(command, tmp_path):
    bad = np.full((H, W, 3), 0.5, np.float32)
    bad[3, 4, 1], bad[5, 6, 0] = np.nan, np.inf
    if command in ("train", "io"):  # from a file: a float TIFF
        path = tmp_path / "images" / "hdr.tif"
        path.parent.mkdir()
        iio.imwrite(path, bad)
        match = f"{path}: floating-point image values must lie in"
        if command == "train":  # refused by the start-up file check, naming the file
            with pytest.raises(ValueError, match=rf"(?s)training image cannot be used.*{re.escape(str(path))}"):
                pipeline.make_train_dataset(datasets.resolve_image_paths([str(path.parent)]), patch_size=16,
                                            batch_size=2, seed=0, num_threads=0)
        else:
            with pytest.raises(ValueError, match=match):
                io.read_image(path)
            with pytest.raises(ValueError, match="NaN or Inf.*out.png"):
                io.write_image(tmp_path / "out.png", bad)
            assert not (tmp_path / "out.png").exists() and not leftovers(tmp_path)
    elif command == "eval":
        with pytest.raises(ValueError, match=r"hr_images\[0\] contains NaN or Inf"):
            E.evaluate(bicubic_x2, [("x", bad)], scale=2, protocol="gaussian8")
    elif command == "infer":
        with pytest.raises(ValueError, match="lr contains NaN or Inf"):
            infer.super_resolve(nearest_predict(2), bad, scale=2)
    else:
        kernels = degrade.gaussian8_kernels(2, 21)[:1]
        with pytest.raises(ValueError, match="images contains NaN or Inf"):
            degrade.blur(jnp.asarray(bad[None]), kernels)
        with pytest.raises(ValueError, match="kernels contains NaN or Inf"):
            degrade.blur(jnp.zeros((1, H, W, 3)), kernels.at[0, 0, 0].set(jnp.inf))


# ----------------------------------------------------------------------------- unwritable workdir / output

@pytest.mark.parametrize("command", ["train", "eval", "infer", "io"])
def test_unwritable_output(command, tmp_path):
    """A folder that cannot be created (its parent is a file): a clear error before any work.
    (Permission bits are tested separately; they do not stop root.)"""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    target = blocker / "out"
    cfg = tiny_config()
    images = tmp_path / "images"
    write_good(images)
    if command == "train":
        with pytest.raises(OSError, match=f"cannot write to the workdir {target}"):
            cli.train(cfg, str(target))
    elif command == "eval":
        workdir = tmp_path / "run"
        workdir.mkdir()
        (workdir / "eval").write_text("a file where the reports go")
        cfg.eval.dirs = (str(images),)
        # fails before the model is built: there is no checkpoint in this workdir at all
        with pytest.raises(OSError, match=f"cannot write to the eval output folder {workdir / 'eval'}"):
            cli.evaluate(cfg, str(workdir))
    elif command == "infer":
        with pytest.raises(OSError, match=f"cannot write to the output folder {target}"):
            cli.infer(cfg, str(tmp_path / "run"), str(images), str(target))
        with pytest.raises(OSError, match=f"cannot write to the output folder {target}"):
            infer.infer_paths(nearest_predict(2), images, target, scale=2)
    else:
        with pytest.raises(OSError, match=str(blocker)):
            io.write_image(target / "x.png", np.zeros((4, 4, 3), np.float32))
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_output_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OSError, match=f"cannot write to the output folder {folder}"):
            infer.infer_paths(nearest_predict(2), write_good(tmp_path / "in"), folder, scale=2)
    finally:
        folder.chmod(0o700)


def test_outputs_replace_atomically(tmp_path):
    """An output that exists is replaced only by a complete file: a failing write leaves it."""
    path = tmp_path / "x.png"
    io.write_image(path, np.zeros((4, 4, 3), np.float32))
    before = path.read_bytes()

    def bands():
        yield np.zeros((2, 4, 3), np.float32)
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        io.write_png_rows(path, bands(), height=4, width=4, channels=3)
    assert path.read_bytes() == before and not leftovers(tmp_path)


# ----------------------------------------------------------------------------- config key with a wrong type

@pytest.mark.parametrize("mode, flag, message", [
    ("train", "--config.train.steps=abc", "--config.train.steps=abc: invalid literal for int"),
    ("train", "--config.data.batch_size=2.5", "--config.data.batch_size=2.5: invalid literal for int"),
    ("eval", "--config.data.train_dirs=5", "config key data.train_dirs must be a folder, glob or file name"),
    ("infer", "--config.infer.tile=big", "--config.infer.tile=big: invalid literal for int"),
])
def test_config_key_with_wrong_type(mode, flag, message, tmp_path):
    cmd = [sys.executable, "-m", "jaxsr.main", "--config=configs/dan.py:tiny", f"--workdir={tmp_path / 'run'}",
           f"--mode={mode}", "--input=nothing.png", flag]
    res = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]  # the message, not where it was raised
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_config_file_with_wrong_type():
    """A config file (not the flag parser) with a float where an integer belongs."""
    values = tiny_config().to_dict()
    values["train"]["steps"] = 1e5
    with pytest.raises(ValueError, match=r"config key train.steps must be an integer, got 100000.0 \(float\)"):
        config_lib.validate(ml_collections.ConfigDict(values))


# ----------------------------------------------------------------------------- missing benchmark set

def test_missing_benchmark_set_names_folder_variable_and_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSR_DATA", str(tmp_path / "sets"))
    with pytest.raises(ValueError) as error:
        datasets.resolve_image_paths(["benchmark:Urban100"], key="eval.dirs")
    message = str(error.value)
    assert "eval.dirs" in message and str(tmp_path / "sets" / "Urban100") in message
    assert "JAXSR_DATA" in message and "BasicSR" in message and "KernelGAN" in message
    monkeypatch.delenv("JAXSR_DATA")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"JAXSR_DATA is not set, so the default \./data"):
        datasets.resolve_image_paths(["benchmark:Set5"], key="data.val_dirs")
    write_good(tmp_path / "data" / "Set5", "baby.png")
    assert datasets.resolve_image_paths(["benchmark:Set5"]) == [str((tmp_path / "data" / "Set5" / "baby.png"))]
