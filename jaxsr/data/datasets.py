"""Where training and validation images come from: folders, globs, files, bundled photos.

``resolve_image_paths`` turns the entries of a config list (``data.train_dirs``,
``data.val_dirs``) into a sorted, de-duplicated list of absolute image paths, so that every
host of a multi-host run sees the same list in the same order.

``BUNDLED`` names a handful of real colour photographs that scikit-image ships as files
inside its wheel. They make a training run possible with nothing downloaded: good for
smoke tests and demos, far too few for a model that generalises (use DIV2K/Flickr2K).

Prepared stores: a folder holding a ``manifest.json`` written by ``python -m
jaxsr.data.prepare`` stands for the arrays it lists (see ``jaxsr.data.store``); the
functions below read those ``.npy`` arrays as they read image files.

Channels: every image is read as RGB. Grayscale files are **replicated to three equal
channels** (rather than rejected or given a 1-channel model) so that one model and one
pipeline serve mixed folders such as BSD68 or Set14; an alpha channel is dropped, not
composited (see ``jaxsr.io.read_image``).
"""
from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxsr.data import store as store_lib
from jaxsr.io import IMAGE_SUFFIXES, list_images, read_image

BUNDLED = "bundled"

# "benchmark:NAME" stands for the folder NAME under the data root: $JAXSR_DATA, or ./data
# (relative to the current directory) when the variable is unset. See the README's
# "Benchmark data" section for the expected layout.
BENCHMARK = "benchmark"
DATA_ROOT_ENV = "JAXSR_DATA"
DEFAULT_DATA_ROOT = "data"
BENCHMARK_SOURCES = ("Set5, Set14, B100, Urban100 and Manga109 are distributed with the common "
                     "super-resolution toolboxes (for example BasicSR's dataset instructions and "
                     "the EDSR/RCAN 'benchmark' package); DIV2KRK is published with KernelGAN")

# Colour photographs from ``skimage/data`` that are at least 256 px on each side.
# Left out on purpose: synthetic pictures (color, phantom, chessboard, logo), grayscale ones
# (camera, moon, ...), and anything under 256 px. The stereo pair motorcycle_left/right shows
# one scene twice, so both halves stay in train and can never leak into validation.
_BUNDLED_PHOTOS = {
    "train": (
        "astronaut.png",          # 512x512, portrait
        "coffee.png",             # 400x600, still life
        "hubble_deep_field.jpg",  # 872x1000, telescope image
        "ihc.png",                # 512x512, stained tissue micrograph
        "motorcycle_left.png",    # 500x741, street scene
        "motorcycle_right.png",   # 500x741, same scene, other camera
        "retina.jpg",             # 1411x1411, fundus photograph
    ),
    "val": (
        "chelsea.png",            # 300x451, cat
        "rocket.jpg",             # 427x640, launch pad
    ),
}


def _bundled_folder() -> Path:
    # Imported lazily: scikit-image is only needed when the bundled photos are asked for.
    import skimage.data  # noqa: PLC0415

    return Path(os.path.dirname(skimage.data.__file__))


def bundled_photo_paths(split: str = "train") -> list[str]:
    """Paths of the bundled scikit-image photos of ``split`` ("train" or "val"), sorted.

    Train has 7 photos and val 2; the two lists never share a file or a scene. The files
    are read from the installed package, never downloaded.
    """
    if split not in _BUNDLED_PHOTOS:
        raise ValueError(f"split must be one of {tuple(_BUNDLED_PHOTOS)}, got {split!r}")
    folder = _bundled_folder()
    paths = [folder / name for name in _BUNDLED_PHOTOS[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"bundled photos missing from the installed scikit-image: {missing}; "
                         f"reinstall scikit-image>=0.21 (they ship inside its wheel)")
    return sorted(str(p) for p in paths)


def data_root() -> Path:
    """Where "benchmark:NAME" entries are looked up: $JAXSR_DATA, else ./data."""
    return Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT).expanduser()


def resolve_benchmark(entry: str, key: str) -> str:
    """``"benchmark:NAME"`` as the path of NAME under ``data_root()`` (NAME may have
    subfolders, e.g. ``"benchmark:DIV2KRK/gt"``); any other entry unchanged. A folder that
    does not exist raises ``ValueError`` naming it, the variable and where the sets come from."""
    if not entry.startswith(BENCHMARK + ":"):
        return entry
    name = entry[len(BENCHMARK) + 1:].strip("/")
    if not name:
        raise ValueError(f"{key}: {entry!r} names no set; write e.g. '{BENCHMARK}:Set5'")
    root = data_root()
    path = root / name
    if not path.exists() and not any(char in name for char in "*?["):
        how = (f"{DATA_ROOT_ENV}={os.environ[DATA_ROOT_ENV]}" if os.environ.get(DATA_ROOT_ENV)
               else f"{DATA_ROOT_ENV} is not set, so the default ./{DEFAULT_DATA_ROOT} under "
                    f"the current directory")
        raise ValueError(
            f"{key}: benchmark set {name!r} not found: the folder {path.absolute()} does not "
            f"exist ({how}). Set {DATA_ROOT_ENV} to the folder that holds your benchmark sets "
            f"(one subfolder per set, e.g. {DATA_ROOT_ENV}/Set5/*.png), or give the folder "
            f"itself instead of {entry!r}. {BENCHMARK_SOURCES}.")
    return str(path)


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _expand_entry(entry: str, key: str) -> list[Path]:
    """The image files one config entry stands for."""
    entry = resolve_benchmark(entry, key)
    if entry == BUNDLED or entry.startswith(BUNDLED + ":"):
        split = entry.partition(":")[2] or "train"
        if split not in _BUNDLED_PHOTOS:
            raise ValueError(f"{key}: unknown bundled split in {entry!r}; use "
                             f"{BUNDLED!r}, '{BUNDLED}:train' or '{BUNDLED}:val'")
        return [Path(p) for p in bundled_photo_paths(split)]

    path = Path(entry).expanduser()
    if any(char in entry for char in "*?["):
        matches = [Path(m) for m in glob.glob(str(path), recursive=True)]
        files = [m for m in matches if _is_image_file(m)]
        if not files:
            raise ValueError(f"{key}: the pattern {entry!r} matches no image files "
                             f"({', '.join(IMAGE_SUFFIXES)}) under {Path.cwd()}")
        return files
    if path.is_dir() and store_lib.is_store(path):
        try:
            return [Path(p) for p in store_lib.store_array_paths(path)]
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from error
    if path.is_dir():
        try:
            return list_images(path)
        except ValueError as error:
            raise ValueError(f"{key}: {error}") from error
    if path.is_file():
        if not _is_image_file(path):
            raise ValueError(f"{key}: {path} is not an image file "
                             f"(expected one of {', '.join(IMAGE_SUFFIXES)})")
        return [path]
    raise ValueError(f"{key}: the folder {str(path)!r} does not exist "
                     f"(resolved to {path.absolute()}); fix {key} or use {BUNDLED!r} "
                     f"for the photos bundled with scikit-image")


def resolve_image_paths(folders: str | os.PathLike | Sequence[str | os.PathLike], *,
                        key: str = "data.train_dirs") -> list[str]:
    """Absolute paths of every image named by ``folders``, sorted and de-duplicated.

    Each entry is a folder (its images, not its subfolders), a store made by ``python -m
    jaxsr.data.prepare`` (its arrays), a glob pattern (``**`` allowed), one image file,
    ``"bundled"`` / ``"bundled:train"`` / ``"bundled:val"``, or ``"benchmark:NAME"`` for the
    folder NAME under the data root (``resolve_benchmark``).
    Relative paths are taken from the current directory. ``key`` is the config key the
    entries came from; errors name it so the user knows what to fix.
    """
    entries = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
    if not entries:
        raise ValueError(f"{key} is empty; give at least one folder, glob, image file "
                         f"or {BUNDLED!r}")
    found: set[str] = set()
    for entry in entries:
        found.update(str(p.resolve()) for p in _expand_entry(os.fspath(entry), key))
    return sorted(found)


def _is_store_array(path: str | os.PathLike) -> bool:
    return os.fspath(path).endswith(store_lib.ARRAY_SUFFIX)


def read_rgb_uint8(path: str | os.PathLike) -> np.ndarray:
    """One image as uint8 (H, W, 3): gray replicated, alpha dropped, 16-bit rounded to 8.
    A store array (``.npy``) is loaded as it is."""
    if _is_store_array(path):
        return store_lib.load_array(path)
    image = read_image(path, mode="rgb")
    return to_uint8(image)


def read_rgb_float(path: str | os.PathLike) -> np.ndarray:
    """One image as float32 (H, W, 3) in [0, 1] (``jaxsr.io.read_image``, or a store array
    divided by 255)."""
    if _is_store_array(path):
        return store_lib.load_array(path).astype(np.float32) / np.float32(255.0)
    return read_image(path, mode="rgb")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round float [0, 1] pixels to the nearest of 256 levels (exact for 8-bit sources)."""
    return np.round(image * np.float32(255.0)).astype(np.uint8)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image, from its header when Pillow can read it."""
    if _is_store_array(path):
        return store_lib.array_size(path)
    try:
        from PIL import Image  # noqa: PLC0415  (Pillow comes with imageio)

        with Image.open(path) as header:  # lazy: decodes nothing
            width, height = header.size
        return int(height), int(width)
    except Exception:  # noqa: BLE001  unusual formats: fall back to a full decode
        height, width = read_image(path, mode="keep").shape[:2]
        return int(height), int(width)
