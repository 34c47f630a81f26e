"""The training input pipeline (grain): an endless, checkpointable stream of HR patches.

The jitted training step blurs, downsamples and adds noise on the device, so the host only
crops and augments high-resolution patches and ships them as uint8 (a quarter of the
float32 bytes); the step converts them to float.

Stream layout, for one host::

    range(n_images * samples_per_image)   each image appears samples_per_image times
      .shuffle(shuffle_seed)              a different permutation every epoch
      .repeat()                           endless; the element index keeps growing
      .random_map(crop_and_augment)       rng = f(crop_seed, element index)
      .batch(batch_size)
      .to_iter_dataset(ReadOptions)       worker threads; state = next batch index

Every random choice comes from grain's per-element generator, so batch ``i`` is a pure
function of (paths, seed, shard, sizes, i): two iterators built alike agree batch for batch,
and an iterator restored from ``get_state()`` continues exactly where the saved one was.

Multi-host sharding: the sorted file list is permuted with ``seed`` (the same permutation on
every host) and host ``shard_index`` takes every ``shard_count``-th file of it, so the
shards are disjoint and together cover every image; shuffling first keeps a folder's sort
order (often a scene or a source) from landing on one host. With fewer images than hosts
every host uses every image; hosts still differ because the shuffle and crop seeds are
always derived from (seed, shard_index).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grain
import numpy as np

from jaxsr.data.datasets import image_size, read_rgb_uint8, to_uint8
from jaxsr.io import read_image

# Default epoch length (patches per host) when samples_per_image is not given: small
# datasets such as the bundled photos still give many distinct crops per epoch.
MIN_PATCHES_PER_EPOCH = 1000


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_paths(paths: Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        raise ValueError(f"paths must be a list of image files, got the single value {paths!r}; "
                         f"expand folders with jaxsr.data.resolve_image_paths")
    # Sorted so that every host starts from the same list whatever order it was given in.
    paths = sorted({os.fspath(p) for p in paths})
    if not paths:
        raise ValueError("paths is empty: no training images")
    return paths


def shard_paths(paths: Sequence[str], *, seed: int, shard_index: int,
                shard_count: int) -> list[str]:
    """The images host ``shard_index`` of ``shard_count`` trains on (see module docstring)."""
    if len(paths) < shard_count:
        return list(paths)
    order = np.random.default_rng(seed).permutation(len(paths))
    return [paths[i] for i in order[shard_index::shard_count]]


def _stream_seeds(seed: int, shard_index: int) -> tuple[int, int]:
    """Independent 32-bit seeds for the shuffle and the crops of one shard."""
    shuffle_seed, crop_seed = np.random.SeedSequence([seed, shard_index]).generate_state(2)
    return int(shuffle_seed), int(crop_seed)


def _check_large_enough(paths: Sequence[str], patch_size: int) -> None:
    for path in paths:
        height, width = image_size(path)
        if height < patch_size or width < patch_size:
            raise ValueError(f"training image {path} is {height}x{width} (HxW), smaller than "
                             f"the HR patch of {patch_size}x{patch_size}; remove it or lower "
                             f"the patch size")


class _PatchSampler:
    """Random P x P crop of one image plus a random flip/transpose (a plain picklable class
    so grain can also run it in worker processes)."""

    def __init__(self, paths: list[str], images: list[np.ndarray] | None, patch_size: int,
                 augment: bool):
        self.paths, self.images = paths, images
        self.patch_size, self.augment = patch_size, augment

    def __call__(self, element: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        image_index = int(element) % len(self.paths)
        if self.images is not None:
            image = self.images[image_index]
        else:  # decoded on access; only the crop is quantised to uint8
            image = read_image(self.paths[image_index], mode="rgb")
        size = self.patch_size
        height, width = image.shape[:2]
        if height < size or width < size:  # the file changed since the build-time check
            raise ValueError(f"training image {self.paths[image_index]} is {height}x{width}, "
                             f"smaller than the HR patch of {size}x{size}")
        top = int(rng.integers(0, height - size + 1))
        left = int(rng.integers(0, width - size + 1))
        patch = image[top:top + size, left:left + size]
        if self.augment:
            # Three fair bits give each of the 8 flips/rotations of the square once.
            flip_rows, flip_cols, transpose = rng.integers(0, 2, size=3)
            if flip_rows:
                patch = patch[::-1]
            if flip_cols:
                patch = patch[:, ::-1]
            if transpose:
                patch = patch.transpose(1, 0, 2)
        if patch.dtype != np.uint8:
            patch = to_uint8(patch)
        return {"hr": np.ascontiguousarray(patch)}


def make_train_dataset(paths: Sequence[str | os.PathLike], *, patch_size: int,
                       batch_size: int, seed: int, shard_index: int = 0,
                       shard_count: int = 1, augment: bool = True, cache: bool = True,
                       num_threads: int = 2, samples_per_image: int | None = None,
                       prefetch_batches: int | None = None) -> grain.IterDataset:
    """An endless dataset of ``{"hr": uint8 (batch_size, patch_size, patch_size, 3)}``.

    paths: image files (expand config entries with ``resolve_image_paths`` first).
    patch_size: HR patch side, i.e. the LR patch side times the scale.
    batch_size: this host's batch (global batch / number of processes).
    seed: one seed for the file shuffle, the per-epoch element shuffles and the crops.
    shard_index, shard_count: this host and the number of hosts (``jax.process_index()``,
      ``jax.process_count()``).
    augment: random vertical/horizontal flips and transposes (all 8 right-angle rotations
      and flips of the square, equally likely).
    cache: decode this host's images once and keep them in memory as uint8 (right for the
      bundled photos and benchmark sets); False decodes an image for every patch taken
      from it (right for DIV2K-sized data).
    num_threads: grain worker threads (0: produce batches in the calling thread).
    samples_per_image: how many patches each image gives per epoch; default
      ``ceil(1000 / images on this host)`` so an epoch has at least 1000 patches.
    prefetch_batches: batches produced ahead (default ``2 * num_threads``).

    Every image is checked once at build time (header only) and one smaller than the
    patch raises ``ValueError`` naming the file. Iterate with ``iter(dataset)``; the
    iterator's ``get_state()`` is a small JSON-serialisable dict.
    """
    paths = _check_paths(paths)
    patch_size = _check_positive_int("patch_size", patch_size)
    batch_size = _check_positive_int("batch_size", batch_size)
    shard_count = _check_positive_int("shard_count", shard_count)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if (isinstance(shard_index, bool) or not isinstance(shard_index, (int, np.integer))
            or not 0 <= shard_index < shard_count):
        raise ValueError(f"shard_index must be an integer in [0, {shard_count}), "
                         f"got {shard_index!r}")
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) \
            or num_threads < 0:
        raise ValueError(f"num_threads must be a non-negative integer, got {num_threads!r}")

    _check_large_enough(paths, patch_size)  # every file, so all hosts fail alike
    local_paths = shard_paths(paths, seed=int(seed), shard_index=int(shard_index),
                              shard_count=shard_count)
    if samples_per_image is None:
        samples_per_image = math.ceil(MIN_PATCHES_PER_EPOCH / len(local_paths))
    samples_per_image = _check_positive_int("samples_per_image", samples_per_image)

    images = None
    if cache:
        with ThreadPoolExecutor(max(1, num_threads)) as pool:
            images = list(pool.map(read_rgb_uint8, local_paths))

    shuffle_seed, crop_seed = _stream_seeds(int(seed), int(shard_index))
    sampler = _PatchSampler(local_paths, images, patch_size, bool(augment))
    dataset = (grain.MapDataset.range(len(local_paths) * samples_per_image)
               .shuffle(seed=shuffle_seed)
               .repeat(reseed_each_epoch=True)
               .random_map(sampler, seed=crop_seed)
               .batch(batch_size, drop_remainder=True))
    if prefetch_batches is None:
        prefetch_batches = 2 * num_threads
    read_options = grain.ReadOptions(num_threads=int(num_threads),
                                     prefetch_buffer_size=int(prefetch_batches))
    return dataset.to_iter_dataset(read_options)


def save_iterator_state(iterator: grain.DatasetIterator) -> dict:
    """The iterator's position as a plain JSON-compatible dict (a copy, safe to store)."""
    return json.loads(json.dumps(iterator.get_state()))


def restore_iterator_state(iterator: grain.DatasetIterator, state: dict) -> grain.DatasetIterator:
    """Move a freshly built iterator (same paths, seed and sizes) to ``state``; returns it."""
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict from save_iterator_state, got {type(state)}")
    iterator.set_state(state)
    return iterator


def load_validation_set(paths: Sequence[str | os.PathLike], *, size: int, scale: int,
                        max_images: int) -> np.ndarray:
    """Centre ``size`` x ``size`` crops of the first ``max_images`` images (sorted order), as
    float32 (N, size, size, 3) in [0, 1], for validation with static shapes.

    ``size`` must be a multiple of ``scale`` and the crop's corner is rounded down to a
    multiple of ``scale``, so a crop lies on the same s x s grid as the mod-cropped image.
    """
    paths = _check_paths(paths)
    size = _check_positive_int("size", size)
    scale = _check_positive_int("scale", scale)
    max_images = _check_positive_int("max_images", max_images)
    if size % scale:
        raise ValueError(f"size must be a multiple of scale={scale}, got size={size}")
    crops = []
    for path in paths[:max_images]:
        image = read_image(path, mode="rgb")
        height, width = image.shape[:2]
        if height < size or width < size:
            raise ValueError(f"validation image {path} is {height}x{width} (HxW), smaller "
                             f"than the {size}x{size} crop; lower data.val_size")
        top = (height - size) // 2 // scale * scale
        left = (width - size) // 2 // scale * scale
        crops.append(image[top:top + size, left:left + size])
    return np.stack(crops).astype(np.float32)
