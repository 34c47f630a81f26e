"""The bad-file policy of the training pipeline: **every file is checked at start-up, and a
run with any file it cannot use stops before its first step, naming all of them.**

Why fail rather than skip: a skipped file silently changes the data (and, on a multi-host
run, which host trains on what), while a start-up error costs seconds and names the file to
fix or remove. What is checked, per file, before anything is compiled:

- an empty file (0 bytes)                      refused: "empty file"
- not an image at all (text, HTML, an archive)  refused: Pillow cannot identify it
- PNG                                           every chunk's CRC and the closing IEND
                                                chunk (``PIL.Image.verify``, no pixels
                                                decoded): catches truncated and corrupted
                                                files; about 3 ms for a 2K PNG
- JPEG                                          decoded at 1/8 scale (all of the entropy-
                                                coded data is read): catches truncation
- any other format (BMP, TIFF, ...)             decoded in full with ``jaxsr.io.read_image``
- a store array (``.npy`` from ``prepare``)     header and size; the store's manifest was
                                                checked when the path list was made
- an image smaller than the HR patch            refused, with its size

Accepted on purpose (``jaxsr.io.read_image`` converts them; the pipeline keeps 8 bits per
channel): gray (replicated to RGB), gray + alpha and RGBA (alpha dropped), palette images
(expanded to their colours; a palette with transparency loses it like any alpha), 16-bit
gray PNGs (rounded to the nearest 8-bit level) and 16-bit RGB PNGs (reduced to 8 bits by
Pillow, within one level of rounding).

A file that passes and later fails to decode (it was replaced during the run) still stops
the run with an error naming it; the last checkpoint is intact.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from jaxsr.data import store as store_lib

MAX_LISTED = 20  # bad files named in one error message


def _pil_check(path: str) -> tuple[int, int]:
    """(height, width) after the format-specific check; raises on a bad file."""
    from PIL import Image  # noqa: PLC0415  (Pillow comes with imageio)

    try:
        image = Image.open(path)
    except Exception as error:  # noqa: BLE001  Pillow raises many types
        raise ValueError(f"not an image Pillow can read ({_describe(error, path)})") from None
    with image:
        image_format = image.format
        width, height = image.size
        if image_format == "PNG":
            try:
                image.verify()  # chunk CRCs up to IEND; decodes no pixels
            except Exception as error:  # noqa: BLE001
                raise ValueError(f"truncated or damaged PNG ({_describe(error, path)})") from None
            return int(height), int(width)
    if image_format in ("JPEG", "MPO"):
        try:
            with Image.open(path) as image:
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                image.load()
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"truncated or damaged JPEG ({_describe(error, path)})") from None
        return int(height), int(width)
    from jaxsr.io import read_image  # noqa: PLC0415

    height, width = read_image(path, mode="keep").shape[:2]
    return int(height), int(width)


def _describe(error: Exception, path: str = "") -> str:
    text = (str(error) or type(error).__name__).replace("\n", " ")
    if path:  # the caller names the file already
        text = text.replace(f" '{path}'", "").replace(f" {path}", "")
    return text


def check_image_file(path: str | os.PathLike) -> tuple[tuple[int, int] | None, str | None]:
    """((height, width), None) for a usable training file, (None, reason) for a bad one."""
    path = os.fspath(path)
    try:
        size = os.stat(path).st_size
        if size == 0:
            return None, "empty file (0 bytes)"
        if path.endswith(store_lib.ARRAY_SUFFIX):
            return store_lib.array_size(path), None
        return _pil_check(path), None
    except FileNotFoundError:
        return None, "file not found"
    except (OSError, ValueError) as error:
        message = _describe(error)
        # read_image's messages start with the path; the caller prints it already.
        if message.startswith(path):
            message = message[len(path):].lstrip(": ")
        if message.startswith(f"could not read {path} as an image: "):
            message = message[len(f"could not read {path} as an image: "):]
        return None, message or "unreadable"


def check_training_files(paths: Sequence[str], *, patch_size: int,
                         num_threads: int = 1) -> list[tuple[int, int]]:
    """Check every file (see the module docstring) and return their (height, width), in
    order. Raises ``ValueError`` listing every file that cannot be used.

    Every host checks every file, so all hosts of a run fail alike.
    """
    with ThreadPoolExecutor(max(1, int(num_threads))) as pool:
        results = list(pool.map(check_image_file, paths))
    problems = []
    for path, (size, reason) in zip(paths, results):
        if reason is not None:
            problems.append(f"{path}: {reason}")
        elif size[0] < patch_size or size[1] < patch_size:
            problems.append(f"{path} is {size[0]}x{size[1]} (HxW), smaller than the HR patch "
                            f"of {patch_size}x{patch_size}; remove it or lower the patch size")
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = (f"\n  ... and {len(problems) - MAX_LISTED} more"
                if len(problems) > MAX_LISTED else "")
        noun = "image" if len(paths) == 1 else "images"
        raise ValueError(f"{len(problems)} of {len(paths)} training {noun} cannot be used "
                         f"(checked before the first step; fix or remove them):\n  {shown}{more}")
    return [size for size, _ in results]
