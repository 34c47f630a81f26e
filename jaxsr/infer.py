"""Super-resolve real images with any model, tile by tile when they are large.

A model enters only as a *predict function* (already jitted by the caller)::

    predict_fn(lr: (N, h, w, 3) float32 in [0, 1]) -> (sr: (N, s*h, s*w, 3), kernel: (N, k, k) | None)

Every call here feeds it a few fixed input shapes, so it compiles once per shape, not once
per image:

* untiled, the LR image is mirror-padded on the bottom/right up to a multiple of `bucket`
  pixels and the SR is cropped back;
* tiled, every tile has the same (tile, tile) shape; along an axis at least a tile long the
  last tile is shifted inward (never padded), and the batch of tiles is padded to a fixed
  size by repeating a tile.

Tiles are blended in HR space. The outer quarter of each overlap (next to a tile's inner
edge, where the model saw a border instead of the real neighbourhood) gets weight 0, the
middle half is cross-faded with a raised-cosine ramp. Hence, for a shift-invariant model
whose receptive radius is at most `overlap // 4` LR pixels, tiled and untiled outputs agree
exactly; for real networks the seams are smooth. The estimated kernel of a tiled run is the
plain mean of the tiles' kernels (each tile counted once).

Channels: the models take RGB. Gray input is replicated to 3 channels and the SR converted
back to gray as the mean of its channels; RGBA (and gray+alpha) super-resolve the colour
part and upscale alpha with MATLAB bicubic (`imresize`), clipped to [0, 1].
"""
from __future__ import annotations

import glob
from collections.abc import Callable, Iterator
from pathlib import Path

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import io
from jaxsr.ops import _checks
from jaxsr.ops.imresize import imresize

PredictFn = Callable[[jax.Array], tuple[jax.Array, "jax.Array | None"]]

KERNEL_VIEW_ZOOM = 8  # nearest-neighbour magnification of the saved kernel image


# --------------------------------------------------------------------------- shared helpers

def pad_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
    """Mirror-pad an NHWC batch on the bottom/right so H and W become multiples of `multiple`.

    'symmetric' mirroring (edge pixel repeated) is MATLAB imresize's own border rule, and
    NumPy applies it for any pad length, even one longer than the image.
    """
    _, h, w, _ = images.shape
    pad_h, pad_w = -h % multiple, -w % multiple
    if not pad_h and not pad_w:
        return images
    return np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")


def iter_batches(predict_fn: PredictFn, inputs: np.ndarray, max_batch: int
                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Run `predict_fn` over `inputs` (M, h, w, C) in batches of one fixed size.

    The batch size is min(max_batch, M); the last batch is filled up by repeating its last
    input so `predict_fn` only ever sees one shape. Yields (start, sr, kernel) with the
    filler dropped: sr (b, s*h, s*w, C) and kernel (b, k, k) or None, as NumPy arrays.
    """
    count = inputs.shape[0]
    size = min(max_batch, count)
    for start in range(0, count, size):
        chunk = inputs[start:start + size]
        valid = chunk.shape[0]
        if valid < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - valid, axis=0)])
        sr, kernel = predict_fn(jnp.asarray(chunk, jnp.float32))
        sr = np.asarray(sr)
        if sr.ndim != 4 or sr.shape[0] != size or sr.shape[-1] != chunk.shape[-1]:
            raise ValueError(f"predict_fn returned sr of shape {sr.shape} for input of shape "
                             f"{chunk.shape}; expected (N, s*h, s*w, C)")
        if kernel is not None:
            kernel = np.asarray(kernel)
            if kernel.ndim != 3 or kernel.shape[0] != size:
                raise ValueError(f"predict_fn returned kernel of shape {kernel.shape} for a "
                                 f"batch of {size}; expected (N, k, k) or None")
            kernel = kernel[:valid]
        yield start, sr[:valid], kernel


def _check_sr_size(sr: np.ndarray, lr_hw: tuple[int, int], scale: int) -> None:
    want = (scale * lr_hw[0], scale * lr_hw[1])
    if sr.shape[1:3] != want:
        raise ValueError(f"predict_fn returned sr of spatial size {sr.shape[1:3]} for an LR "
                         f"input of {lr_hw}; expected {want} at scale {scale}")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- tiling

def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, length) (length >= tile)."""
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def _ramp(length: int, margin: int) -> np.ndarray:
    """0 for `margin` pixels, then a raised cosine rising to 1 at `length - margin`."""
    rise = length - 2 * margin
    position = np.arange(length, dtype=np.float64) - margin + 0.5
    t = np.clip(position / max(rise, 1), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * t)


def _axis_weight(start: int, tile: int, length: int, overlap: int, scale: int) -> np.ndarray:
    """HR-space blending weight along one axis of the tile starting at LR offset `start`."""
    weight = np.ones(tile * scale)
    hr_overlap, hr_margin = overlap * scale, (overlap // 4) * scale
    if overlap == 0:
        return weight
    ramp = _ramp(hr_overlap, hr_margin)
    if start > 0:  # a neighbour on the left/top
        weight[:hr_overlap] *= ramp
    if start + tile < length:  # a neighbour on the right/bottom
        weight[-hr_overlap:] *= ramp[::-1]
    return weight


def _axis_plan(length: int, tile: int | None, overlap: int, bucket: int) -> tuple[int, list[int]]:
    """(tile length, starts) along one axis; a short axis is one tile padded to the bucket."""
    if tile is not None and length >= tile:
        return tile, _tile_starts(length, tile, overlap)
    return length + (-length % bucket), [0]


def _super_resolve_rgb(predict_fn: PredictFn, lr: np.ndarray, scale: int, tile: int | None,
                       overlap: int, bucket: int, max_batch: int):
    """lr (H, W, 3) -> (sr (sH, sW, 3), mean kernel or None)."""
    h, w, _ = lr.shape
    if tile is None or (h <= tile and w <= tile):
        tile = None  # one piece: the whole image padded to the bucket
    tile_h, starts_h = _axis_plan(h, tile, overlap, bucket)
    tile_w, starts_w = _axis_plan(w, tile, overlap, bucket)
    # Short axes are padded once for the whole image; long axes are cut without padding.
    padded = np.pad(lr, ((0, max(tile_h - h, 0)), (0, max(tile_w - w, 0)), (0, 0)),
                    mode="symmetric")
    corners = [(y, x) for y in starts_h for x in starts_w]
    tiles = np.stack([padded[y:y + tile_h, x:x + tile_w] for y, x in corners])

    out_h, out_w = scale * max(h, tile_h), scale * max(w, tile_w)
    total = np.zeros((out_h, out_w, 3))
    weights = np.zeros((out_h, out_w, 1))
    kernels = []
    for start, sr, kernel in iter_batches(predict_fn, tiles, max_batch):
        _check_sr_size(sr, (tile_h, tile_w), scale)
        if kernel is not None:
            kernels.append(kernel.astype(np.float64))
        for j, tile_sr in enumerate(sr):
            y, x = corners[start + j]
            weight = np.outer(_axis_weight(y, tile_h, h, overlap, scale),
                              _axis_weight(x, tile_w, w, overlap, scale))[..., None]
            region = np.s_[scale * y:scale * (y + tile_h), scale * x:scale * (x + tile_w)]
            total[region] += weight * tile_sr
            weights[region] += weight
    sr = (total / weights)[:scale * h, :scale * w]
    kernel = np.concatenate(kernels).mean(axis=0) if kernels else None
    return sr.astype(np.float32), None if kernel is None else kernel.astype(np.float32)


def super_resolve(predict_fn: PredictFn, lr: np.ndarray, *, scale: int, tile: int | None = None,
                  overlap: int = 16, bucket: int = 16, max_batch: int = 4
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Super-resolve one LR image (H, W, C) float in [0, 1], C = 1, 2 (gray+alpha), 3 or 4.

    tile:    None for one pass over the whole image; otherwise the LR tile size used when the
             image is larger than a tile (needs tile > overlap).
    overlap: LR pixels shared by neighbouring tiles (their last tile may share more).
    bucket:  untiled (and on axes shorter than a tile) the LR is padded to a multiple of this.
    Returns the SR (sH, sW, C) clipped to [0, 1] and the estimated (k, k) kernel or None.
    """
    scale = _checks.check_scale("scale", scale)
    bucket = _positive_int("bucket", bucket)
    max_batch = _positive_int("max_batch", max_batch)
    if tile is not None:
        tile = _positive_int("tile", tile)
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or overlap < 0 \
            or (tile is not None and overlap >= tile):
        raise ValueError(f"overlap must be a non-negative integer smaller than tile={tile}, "
                         f"got {overlap!r}")
    lr = np.asarray(lr)
    if lr.ndim == 2:
        lr = lr[..., None]
    if lr.ndim != 3 or lr.shape[-1] not in (1, 2, 3, 4) or min(lr.shape[:2]) < 1:
        raise ValueError(f"lr must be an (H, W, C) image with 1 to 4 channels, got shape {lr.shape}")
    _checks.check_float("lr", lr)
    _checks.check_finite("lr", lr)
    lr = lr.astype(np.float32)

    channels = lr.shape[-1]
    has_alpha = channels in (2, 4)
    color = lr[..., :-1] if has_alpha else lr
    gray = color.shape[-1] == 1
    rgb = np.repeat(color, 3, axis=-1) if gray else color
    sr, kernel = _super_resolve_rgb(predict_fn, rgb, scale, tile, int(overlap), bucket, max_batch)
    if gray:
        sr = sr.mean(axis=-1, keepdims=True)
    if has_alpha:
        alpha = np.asarray(imresize(jnp.asarray(lr[None, ..., -1:]), float(scale)))[0]
        sr = np.concatenate([sr, alpha], axis=-1)
    return np.clip(sr, 0.0, 1.0), kernel


# --------------------------------------------------------------------------- files

def _read_with_alpha(path: Path) -> np.ndarray:
    """The image as float (H, W, C) in [0, 1], keeping an alpha channel if it has one.

    jaxsr.io.read_image drops alpha, so alpha (when present) is read here and reattached.
    """
    color = io.read_image(path, mode="keep")
    pixels = np.asarray(iio.imread(path, index=0))
    if pixels.ndim == 3 and pixels.shape[-1] in (2, 4):
        alpha = pixels[..., -1:]
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(alpha.dtype, 1.0)
        return np.concatenate([color, alpha.astype(np.float32) / scale], axis=-1)
    return color


def _write_png(path: Path, image: np.ndarray) -> None:
    if image.shape[-1] in (1, 3):
        io.write_image(path, image)
        return
    # Gray+alpha / RGBA: jaxsr.io.write_image takes 1 or 3 channels only.
    levels = np.round(np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, levels, extension=".png")


def kernel_image(kernel: np.ndarray, zoom: int = KERNEL_VIEW_ZOOM) -> np.ndarray:
    """A (k*zoom, k*zoom) view of a kernel: scaled to [0, 1] by its max, nearest-neighbour zoom."""
    kernel = np.asarray(kernel, np.float64)
    peak = kernel.max()
    view = kernel / peak if peak > 0 else np.zeros_like(kernel)
    return np.kron(np.clip(view, 0.0, 1.0), np.ones((zoom, zoom))).astype(np.float32)


def _expand_inputs(inputs: str | Path | list) -> list[Path]:
    """Files named by a path, a folder (its images), a glob pattern, or a list of these."""
    items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    if not items:
        raise ValueError("inputs is empty; give an image file, a folder or a glob pattern")
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(io.list_images(path))
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(str(item)):
            matches = sorted(Path(p) for p in glob.glob(str(item))
                             if Path(p).is_file() and Path(p).suffix.lower() in io.IMAGE_SUFFIXES)
            if not matches:
                raise FileNotFoundError(f"no image files match the pattern {item!r}")
            files.extend(matches)
        else:
            raise FileNotFoundError(f"input {item!r} is neither a file, a folder nor a glob "
                                    f"pattern that matches anything")
    stems = [f.stem for f in files]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise ValueError(f"several inputs share the name(s) {clashes}; their outputs would "
                         f"overwrite each other")
    return files


def infer_paths(predict_fn: PredictFn, inputs: str | Path | list, out_dir: str | Path, *,
                scale: int, tile: int | None = None, overlap: int = 16, bucket: int = 16,
                max_batch: int = 4) -> list[str]:
    """Super-resolve image files into `out_dir`: `<name>_x{scale}.png` for every input and,
    when the model estimates one, `<name>_kernel.png` (see `kernel_image`).

    `inputs` is an image file, a folder (its images, not recursive), a glob pattern, or a
    list of these. Returns the paths written, in input order.
    """
    files = _expand_inputs(inputs)
    out_dir = Path(out_dir)
    written = []
    for path in files:
        lr = _read_with_alpha(path)
        sr, kernel = super_resolve(predict_fn, lr, scale=scale, tile=tile, overlap=overlap,
                                   bucket=bucket, max_batch=max_batch)
        sr_path = out_dir / f"{path.stem}_x{scale}.png"
        _write_png(sr_path, sr)
        written.append(str(sr_path))
        if kernel is not None:
            kernel_path = out_dir / f"{path.stem}_kernel.png"
            io.write_image(kernel_path, kernel_image(kernel))
            written.append(str(kernel_path))
    return written
