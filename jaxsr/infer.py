"""Super-resolve real images with any model, tile by tile when they are large.

A model enters only as a *predict function* (`jaxsr.predict.PredictFn`, e.g. from
`jaxsr.predict.build`)::

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

Memory: tiles are blended one row of tiles at a time and finished rows leave at once, so
`infer_paths` holds the LR image (12 bytes per LR pixel as float32), one row of tiles in HR
(12 * s^2 * tile * W bytes for an LR width W) and one batch of SR tiles
(12 * max_batch * (s * tile)^2 bytes), never the whole SR image: the PNG is written band by
band (`jaxsr.io.write_png_rows`). For a 6000x4000 RGB photo with tile 256 the host peak
(tracemalloc) was 0.42 GB at x2 and 0.73 GB at x4, where the SR alone would take 1.15 GB and
4.6 GB as float32 (tests/test_bad_inputs.py checks the x2 case). RGBA inputs also hold the
upscaled alpha plane (4 bytes per HR pixel). `super_resolve` returns the whole SR array, so it
holds it.

Channels: the models take RGB. Gray input is replicated to 3 channels and the SR converted
back to gray as the mean of its channels; RGBA (and gray+alpha) super-resolve the colour
part and upscale alpha with MATLAB bicubic (`imresize`), clipped to [0, 1].
"""
from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxsr import io
from jaxsr.ops import _checks
from jaxsr.ops.imresize import imresize
from jaxsr.predict import PredictFn, iter_batches

KERNEL_VIEW_ZOOM = 8  # nearest-neighbour magnification of the saved kernel image


# --------------------------------------------------------------------------- shared helpers

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


class _Tiles:
    """The (tile_h, tile_w) tiles of `image` at `corners`, cut only when a batch asks for them."""

    def __init__(self, image: np.ndarray, corners: list[tuple[int, int]], tile_h: int, tile_w: int):
        self.image, self.corners, self.tile_h, self.tile_w = image, corners, tile_h, tile_w
        self.shape = (len(corners), tile_h, tile_w, image.shape[-1])

    def __getitem__(self, index: slice) -> np.ndarray:
        return np.stack([self.image[y:y + self.tile_h, x:x + self.tile_w]
                         for y, x in self.corners[index]])


BAND_ROWS = 64  # HR rows handed on at a time


def _tile_layout(lr: np.ndarray, tile: int | None, overlap: int, bucket: int):
    """(padded lr, tile corners in row-major order, tile_h, tile_w, row starts, column starts)."""
    h, w, _ = lr.shape
    if tile is None or (h <= tile and w <= tile):
        tile = None  # one piece: the whole image padded to the bucket
    tile_h, starts_h = _axis_plan(h, tile, overlap, bucket)
    tile_w, starts_w = _axis_plan(w, tile, overlap, bucket)
    # Short axes are padded once for the whole image; long axes are cut without padding.
    pad_h, pad_w = max(tile_h - h, 0), max(tile_w - w, 0)
    padded = np.pad(lr, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric") if pad_h or pad_w else lr
    corners = [(y, x) for y in starts_h for x in starts_w]
    return padded, corners, tile_h, tile_w, starts_h, starts_w


def _axis_weights(starts: list[int], tile: int, length: int, overlap: int,
                  scale: int) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """The HR blending weight of the tiles starting at each of `starts` along one axis, and
    their sum at every HR position of that axis."""
    weights = {s: _axis_weight(s, tile, length, overlap, scale).astype(np.float32) for s in starts}
    total = np.zeros(scale * max(length, tile), np.float32)
    for s in starts:
        total[scale * s:scale * (s + tile)] += weights[s]
    return weights, total


class _Band:
    """The weighted sum of one row of HR tiles, `top` its first HR row; rows above the next
    row of tiles are final and handed on normalised and cropped to the image."""

    def __init__(self, rows: int, cols: int, out_h: int, out_w: int, total_y: np.ndarray, total_x: np.ndarray):
        self.band = np.zeros((rows, cols, 3), np.float32)
        self.top, self.out_h, self.out_w = 0, out_h, out_w
        self.total_y, self.norm_x = total_y, total_x[:out_w, None]

    def add(self, y: int, x: int, weighted: np.ndarray) -> None:
        """Accumulate a weighted HR tile whose top-left HR pixel is (y, x)."""
        self.band[y - self.top:y - self.top + weighted.shape[0], x:x + weighted.shape[1]] += weighted

    def _rows(self, end: int) -> Iterator[np.ndarray]:
        for a in range(self.top, min(end, self.out_h), BAND_ROWS):
            b = min(a + BAND_ROWS, end, self.out_h)
            yield self.band[a - self.top:b - self.top, :self.out_w] / (self.total_y[a:b, None, None] * self.norm_x)

    def finished(self, end: int) -> Iterator[np.ndarray]:
        """Hand on the band's rows above HR row `end` (normalised, cropped), then move the
        rest of the band up by as many rows."""
        yield from self._rows(end)
        band, done = self.band, end - self.top
        step = min(done, BAND_ROWS)  # pieces of at most `done` rows never overlap: no temporary copy
        for a in range(0, len(band) - done, step):
            b = min(a + step, len(band) - done)
            band[a:b] = band[a + done:b + done]
        band[len(band) - done:] = 0.0
        self.top = end

    def rest(self) -> Iterator[np.ndarray]:
        """The last row of tiles: every row left down to the image's bottom."""
        yield from self._rows(self.out_h)


def _sr_bands(predict_fn: PredictFn, lr: np.ndarray, scale: int, tile: int | None, overlap: int,
              bucket: int, max_batch: int, kernels: list) -> Iterator[np.ndarray]:
    """lr (H, W, 3) -> the SR (sH, sW, 3) as float32 bands of at most BAND_ROWS rows, top to
    bottom; the tiles' kernels are appended to `kernels`.

    Tiles run in row-major order. Every tile's blending weight is an outer product wy x wx
    and the tiles form a full grid, so the total weight at a pixel is (sum of wy)(sum of wx)
    and a row is final as soon as the next row of tiles starts below it: only one row of
    tiles is accumulated at a time.
    """
    h, w, _ = lr.shape
    padded, corners, tile_h, tile_w, starts_h, starts_w = _tile_layout(lr, tile, overlap, bucket)
    weight_y, total_y = _axis_weights(starts_h, tile_h, h, overlap, scale)
    weight_x, total_x = _axis_weights(starts_w, tile_w, w, overlap, scale)
    band = _Band(scale * tile_h, scale * max(w, tile_w), scale * h, scale * w, total_y, total_x)
    for start, sr, kernel in iter_batches(predict_fn, _Tiles(padded, corners, tile_h, tile_w), max_batch):
        _check_sr_size(sr, (tile_h, tile_w), scale)
        if kernel is not None:
            kernels.append(kernel.astype(np.float64))
        for j, tile_sr in enumerate(sr):
            y, x = corners[start + j]
            if scale * y > band.top:  # the first tile of a new row: the rows above it are final
                yield from band.finished(scale * y)
            weight = weight_y[y][:, None, None] * weight_x[x][None, :, None]
            band.add(scale * y, scale * x, weight * tile_sr)
    yield from band.rest()


def _check_settings(scale, tile, overlap, bucket, max_batch) -> tuple[int, int | None, int, int, int]:
    scale = _checks.check_scale("scale", scale)
    bucket = _positive_int("bucket", bucket)
    max_batch = _positive_int("max_batch", max_batch)
    if tile is not None:
        tile = _positive_int("tile", tile)
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or overlap < 0 \
            or (tile is not None and overlap >= tile):
        raise ValueError(f"overlap must be a non-negative integer smaller than tile={tile}, "
                         f"got {overlap!r}")
    return scale, tile, int(overlap), bucket, max_batch


def _check_lr(lr) -> np.ndarray:
    lr = np.asarray(lr)
    if lr.ndim == 2:
        lr = lr[..., None]
    if lr.ndim != 3 or lr.shape[-1] not in (1, 2, 3, 4) or min(lr.shape[:2]) < 1:
        raise ValueError(f"lr must be an (H, W, C) image with 1 to 4 channels, got shape {lr.shape}")
    _checks.check_float("lr", lr)
    _checks.check_finite("lr", lr)
    return np.asarray(lr, np.float32)  # no copy when it already is float32


def _sr_rows(predict_fn: PredictFn, lr: np.ndarray, scale: int, tile: int | None, overlap: int,
             bucket: int, max_batch: int, kernels: list) -> Iterator[np.ndarray]:
    """The final SR of a checked lr (H, W, C), C = 1 to 4, as bands of rows clipped to [0, 1]."""
    has_alpha = lr.shape[-1] in (2, 4)
    color = lr[..., :-1] if has_alpha else lr
    gray = color.shape[-1] == 1
    rgb = np.repeat(color, 3, axis=-1) if gray else color
    alpha = None
    if has_alpha:
        alpha = np.asarray(imresize(jnp.asarray(lr[None, ..., -1:]), float(scale)))[0]
    row = 0
    for band in _sr_bands(predict_fn, rgb, scale, tile, overlap, bucket, max_batch, kernels):
        if gray:
            band = band.mean(axis=-1, keepdims=True)
        if alpha is not None:
            band = np.concatenate([band, alpha[row:row + len(band)]], axis=-1)
        row += len(band)
        yield np.clip(band, 0.0, 1.0)


def _mean_kernel(kernels: list) -> np.ndarray | None:
    return np.concatenate(kernels).mean(axis=0).astype(np.float32) if kernels else None


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
    scale, tile, overlap, bucket, max_batch = _check_settings(scale, tile, overlap, bucket, max_batch)
    lr = _check_lr(lr)
    kernels: list = []
    sr = np.concatenate(list(_sr_rows(predict_fn, lr, scale, tile, overlap, bucket, max_batch, kernels)))
    return sr, _mean_kernel(kernels)


# --------------------------------------------------------------------------- files

def kernel_image(kernel: np.ndarray, zoom: int = KERNEL_VIEW_ZOOM) -> np.ndarray:
    """A (k*zoom, k*zoom) view of a kernel: scaled to [0, 1] by its max, nearest-neighbour zoom."""
    kernel = np.asarray(kernel, np.float64)
    peak = kernel.max()
    view = kernel / peak if peak > 0 else np.zeros_like(kernel)
    return np.kron(np.clip(view, 0.0, 1.0), np.ones((zoom, zoom))).astype(np.float32)


def expand_inputs(inputs: str | Path | list) -> list[Path]:
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

    Inputs and settings are checked and `out_dir` is made sure to be writable before the
    first image is run. Images are read, super-resolved and written one at a time; an image
    that cannot be read stops the run with an error naming it. Every output appears only
    complete (written to a temporary file, then renamed), so a failure or a kill never leaves
    a partial PNG, and the outputs of earlier images stay.
    """
    scale, tile, overlap, bucket, max_batch = _check_settings(scale, tile, overlap, bucket, max_batch)
    files = expand_inputs(inputs)
    out_dir = io.check_writable_folder(out_dir)
    written = []
    for path in files:
        lr = _check_lr(io.read_image(path, mode="keep", keep_alpha=True))
        height, width, channels = lr.shape
        kernels: list = []
        sr_path = io.write_png_rows(
            out_dir / f"{path.stem}_x{scale}.png",
            _sr_rows(predict_fn, lr, scale, tile, overlap, bucket, max_batch, kernels),
            height=scale * height, width=scale * width, channels=channels)
        written.append(str(sr_path))
        kernel = _mean_kernel(kernels)
        if kernel is not None:
            kernel_path = out_dir / f"{path.stem}_kernel.png"
            io.write_image(kernel_path, kernel_image(kernel))
            written.append(str(kernel_path))
    return written
