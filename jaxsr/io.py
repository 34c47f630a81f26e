"""Reading and writing images on the host (NumPy + imageio v3).

Images come out as float32 HWC arrays in [0, 1], the layout the operators and models use.
Nothing here runs under ``jit``: this is the boundary between files and arrays.
"""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np

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
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / 65535.0
    if np.issubdtype(pixels.dtype, np.floating):
        low, high = float(np.min(pixels)), float(np.max(pixels))
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
            raise ValueError(f"{path}: floating-point image values must lie in [0, 1], "
                             f"found range [{low}, {high}]")
        return pixels.astype(np.float32)
    raise ValueError(f"{path}: unsupported pixel type {pixels.dtype}; expected uint8, "
                     f"uint16, bool or float in [0, 1]")


def read_image(path: str | Path, mode: str = "rgb") -> np.ndarray:
    """Read one image file as a float32 (H, W, C) array in [0, 1].

    8-bit and 16-bit PNG, JPEG, BMP, TIFF and palette images are accepted (palettes are
    expanded to colours; 16-bit RGB PNGs are reduced to 8 bits by Pillow, 16-bit gray keeps
    its precision). An alpha channel is **dropped, not composited**: the colour values are
    returned as stored. JPEG EXIF orientation is not applied.

    mode:
      "rgb"  three channels; gray images are replicated.
      "gray" one channel; colour is converted with the BT.601 weights 0.299 R + 0.587 G +
             0.114 B (computed in float, not rounded).
      "keep" the stored channel count, 1 or 3 (after dropping alpha).
    """
    if mode not in READ_MODES:
        raise ValueError(f"mode must be one of {READ_MODES}, got {mode!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        # index=0: the first frame of animated / multi-page files, never a stack.
        pixels = np.asarray(iio.imread(path, index=0))
    except Exception as error:  # imageio raises several types depending on the plugin
        raise ValueError(f"could not read {path} as an image: {error}") from error

    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4) or 0 in pixels.shape:
        raise ValueError(f"{path}: unsupported image shape {pixels.shape}; expected (H, W) "
                         f"or (H, W, C) with 1 to 4 channels")
    if pixels.shape[-1] in (2, 4):  # gray+alpha or RGBA
        pixels = pixels[..., :-1]
    image = _to_unit_float(pixels, path)

    channels = image.shape[-1]
    if mode == "rgb" and channels == 1:
        image = np.repeat(image, 3, axis=-1)
    elif mode == "gray" and channels == 3:
        image = np.clip(image @ _GRAY_WEIGHTS, 0.0, 1.0)[..., None]
    return np.ascontiguousarray(image, dtype=np.float32)


def write_image(path: str | Path, image) -> Path:
    """Write a float [0, 1] image (H, W), (H, W, 1) or (H, W, 3) as an 8-bit PNG.

    Values are clipped to [0, 1] and rounded to the nearest of the 256 levels, so a
    ``read_image`` of the result gives back ``round(clip(image) * 255) / 255``. Parent
    folders are created. Returns the path written.
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
    levels = np.round(np.clip(pixels.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, levels, extension=".png")
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
