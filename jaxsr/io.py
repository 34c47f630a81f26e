"""Reading and writing images on the host (NumPy + imageio v3).

Images come out as float32 HWC arrays in [0, 1], the layout the operators and models use.
Nothing here runs under ``jit``: this is the boundary between files and arrays.
"""
from __future__ import annotations

import json
import math
import struct
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from jaxsr.files import atomic_path  # noqa: F401  (io.atomic_path: the one writer, re-exported)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
READ_MODES = ("rgb", "gray", "keep")

# ITU-R BT.601 luminance weights (PIL's "L" conversion), used only to turn colour input
# into a gray training/test image; the evaluation luma (MATLAB rgb2ycbcr) lives in
# jaxsr.ops.metrics.rgb_to_y.
_GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


def _to_unit_float(pixels: np.ndarray, path: Path) -> np.ndarray:
    """Scale stored pixel values to float32 [0, 1] according to their dtype."""
    if pixels.dtype == np.bool_:
        return pixels.astype(np.float32)
    if pixels.dtype in (np.uint8, np.uint16):
        image = pixels.astype(np.float32)
        image /= np.float32(np.iinfo(pixels.dtype).max)  # in place: one float copy of a large photo
        return image
    if np.issubdtype(pixels.dtype, np.floating):
        low, high = float(np.min(pixels)), float(np.max(pixels))
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
            raise ValueError(f"{path}: floating-point image values must lie in [0, 1], "
                             f"found range [{low}, {high}]")
        return pixels.astype(np.float32)
    raise ValueError(f"{path}: unsupported pixel type {pixels.dtype}; expected uint8, "
                     f"uint16, bool or float in [0, 1]")


def _is_cmyk(path: Path) -> bool:
    try:
        from PIL import Image  # noqa: PLC0415  (Pillow comes with imageio)

        with Image.open(path) as header:  # lazy: decodes nothing
            return header.mode == "CMYK"
    except Exception:  # noqa: BLE001  not a Pillow format: imageio's answer stands
        return False


def _cmyk_to_rgb(path: Path) -> np.ndarray:
    from PIL import Image  # noqa: PLC0415

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _decode(path: Path) -> np.ndarray:
    """The first frame of an image file as stored, (H, W, C) with C in 1..4; CMYK as RGB."""
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"could not read {path} as an image: the file is empty (0 bytes)")
    try:
        # index=0: the first frame of animated / multi-page files, never a stack.
        pixels = np.asarray(iio.imread(path, index=0))
        if pixels.ndim == 3 and pixels.shape[-1] == 4 and _is_cmyk(path):
            pixels = _cmyk_to_rgb(path)  # four channels, but ink, not RGB + alpha
    except Exception as error:  # imageio raises several types depending on the plugin
        raise ValueError(f"could not read {path} as an image: {error}") from error
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4) or 0 in pixels.shape:
        raise ValueError(f"{path}: unsupported image shape {pixels.shape}; expected (H, W) "
                         f"or (H, W, C) with 1 to 4 channels")
    return pixels


def read_image(path: str | Path, mode: str = "rgb", *, keep_alpha: bool = False) -> np.ndarray:
    """Read one image file as a float32 (H, W, C) array in [0, 1].

    8-bit and 16-bit PNG, JPEG, BMP, TIFF and palette images are accepted (palettes are
    expanded to colours; 16-bit RGB PNGs are reduced to 8 bits by Pillow, 16-bit gray keeps
    its precision). CMYK JPEG/TIFF files are converted to RGB by Pillow (no colour profile
    applied). An alpha channel is **dropped, not composited**: the colour values are
    returned as stored. JPEG EXIF orientation is not applied. An empty, truncated or
    undecodable file raises ``ValueError`` naming it.

    mode:
      "rgb"  three channels; gray images are replicated.
      "gray" one channel; colour is converted with the BT.601 weights 0.299 R + 0.587 G +
             0.114 B (computed in float, not rounded).
      "keep" the stored channel count, 1 or 3 (after dropping alpha).
    keep_alpha: append the alpha channel (scaled to [0, 1]) after the colour channels
      instead of dropping it, when the file has one.
    """
    if mode not in READ_MODES:
        raise ValueError(f"mode must be one of {READ_MODES}, got {mode!r}")
    path = Path(path)
    pixels = _decode(path)
    alpha = None
    if pixels.shape[-1] in (2, 4):  # gray+alpha or RGBA
        pixels, alpha = pixels[..., :-1], pixels[..., -1:]
    image = _to_unit_float(pixels, path)

    channels = image.shape[-1]
    if mode == "rgb" and channels == 1:
        image = np.repeat(image, 3, axis=-1)
    elif mode == "gray" and channels == 3:
        image = np.clip(image @ _GRAY_WEIGHTS, 0.0, 1.0)[..., None]
    if keep_alpha and alpha is not None:
        image = np.concatenate([image, _to_unit_float(alpha, path)], axis=-1)
    return np.ascontiguousarray(image, dtype=np.float32)


def check_writable_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and make sure a file can be written in it; an
    ``OSError`` naming the folder otherwise (before any work is done)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OSError(f"cannot write to the {what} {folder}: "
                      f"{error.strerror or error} ({type(error).__name__})") from error
    return folder


def write_image(path: str | Path, image) -> Path:
    """Write a float [0, 1] image (H, W), (H, W, 1) or (H, W, 3) as an 8-bit PNG.

    Values are clipped to [0, 1] and rounded to the nearest of the 256 levels, so a
    ``read_image`` of the result gives back ``round(clip(image) * 255) / 255``. Parent
    folders are created; the file appears only complete (``atomic_path``). Returns the
    path written.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"write_image writes lossless PNG only; give the path a .png "
                         f"suffix, got {path}")
    pixels = np.asarray(image)
    if not np.issubdtype(pixels.dtype, np.floating):
        raise ValueError(f"image must be floating point in [0, 1], got dtype {pixels.dtype} "
                         f"(for {path})")
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] == 3)) \
            or 0 in pixels.shape:
        raise ValueError(f"image must have shape (H, W), (H, W, 1) or (H, W, 3), got "
                         f"{np.shape(image)} (for {path})")
    if not np.all(np.isfinite(pixels)):
        raise ValueError(f"image contains NaN or Inf values (for {path})")
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, to_levels(pixels), extension=".png")
    return path


def to_levels(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] pixels as uint8: clipped, then rounded to the nearest of 256 levels."""
    return np.round(np.clip(np.asarray(image, np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


_PNG_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> gray, gray+alpha, RGB, RGBA


def write_png_rows(path: str | Path, bands: Iterable[np.ndarray], *, height: int, width: int,
                   channels: int, compress_level: int = 6) -> Path:
    """Write an 8-bit PNG from bands of rows, holding one band at a time, atomically.

    ``bands`` yields float [0, 1] arrays (rows, width, channels), top to bottom, ``height``
    rows in all (1: gray, 2: gray+alpha, 3: RGB, 4: RGBA); values are clipped and rounded as
    in ``write_image``. Every row uses PNG's "up" filter. The file appears at ``path`` only
    when complete (see ``atomic_path``). Returns the path written.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"write_png_rows writes PNG only; give the path a .png suffix, got {path}")
    if channels not in _PNG_COLOR_TYPES or height < 1 or width < 1:
        raise ValueError(f"need height, width >= 1 and 1 to 4 channels, got {height}x{width}x"
                         f"{channels} (for {path})")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
            ">IIBBBBB", width, height, 8, _PNG_COLOR_TYPES[channels], 0, 0, 0)))
        compressor = zlib.compressobj(compress_level)
        previous = np.zeros((1, width * channels), np.uint8)
        rows = 0
        for band in bands:
            band = np.asarray(band)
            if band.ndim != 3 or band.shape[1:] != (width, channels):
                raise ValueError(f"band of shape {band.shape} for a {width}x{channels} image ({path})")
            if not np.all(np.isfinite(band)):
                raise ValueError(f"image contains NaN or Inf values (for {path})")
            levels = to_levels(band).reshape(len(band), -1)
            rows += len(levels)
            up = levels - np.concatenate([previous, levels[:-1]])  # uint8 arithmetic wraps mod 256
            previous = levels[-1:]
            filtered = np.concatenate([np.full((len(up), 1), 2, np.uint8), up], axis=1)
            data = compressor.compress(filtered.tobytes())
            if data:
                out.write(chunk(b"IDAT", data))
        if rows != height:
            raise ValueError(f"got {rows} rows for an image of height {height} ({path})")
        out.write(chunk(b"IDAT", compressor.flush()) + chunk(b"IEND", b""))
    return path


def mod_crop(image, scale: int):
    """Crop height and width down to multiples of ``scale``, keeping the top-left corner.

    Works on (H, W), (H, W, C) and (N, H, W, C) NumPy or JAX arrays and returns the same type.
    """
    if not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    shape = getattr(image, "shape", None)
    if shape is None or len(shape) not in (2, 3, 4):
        raise ValueError(f"image must be (H, W), (H, W, C) or (N, H, W, C), got shape {shape}")
    h_axis = 1 if len(shape) == 4 else 0
    height, width = shape[h_axis], shape[h_axis + 1]
    new_h, new_w = height - height % scale, width - width % scale
    if new_h == 0 or new_w == 0:
        raise ValueError(f"image of size {height}x{width} (shape {tuple(shape)}) is smaller "
                         f"than scale={scale}")
    if h_axis == 1:
        return image[:, :new_h, :new_w]
    return image[:new_h, :new_w]


def list_images(folder: str | Path) -> list[Path]:
    """Image files (png, jpg, jpeg, bmp, tif, tiff; any letter case) in ``folder``, sorted
    by name. Subfolders are not searched."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def _strict_json(value):
    """Strict JSON has no Infinity/NaN: they become the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def write_json(path: str | Path, value) -> Path:
    """`value` as indented strict JSON (non-finite floats as strings), the file appearing only complete."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_strict_json(value), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(path)
