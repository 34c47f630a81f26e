"""The training input pipeline (grain): an endless, checkpointable stream of HR patches.

The jitted training step blurs, downsamples and adds noise on the device, so the host only
crops and augments high-resolution patches and ships them as uint8 (a quarter of the
float32 bytes); the step converts them to float.

Stream layout, for one host::

    range(n_images * samples_per_image)   each image appears samples_per_image times
      .shuffle(shuffle_seed)              a different permutation every epoch
      .repeat()                           endless; the element index keeps growing
      .batch(batch_size)                  batch_size element indices
      .random_map(sample_batch)           rng = f(crop_seed, batch index): crops + flips
      .to_iter_dataset(ReadOptions)       worker threads; state = next batch index
      [.mp_prefetch(num_workers)]         optional worker processes, same stream

Every random choice comes from grain's per-batch generator, so batch ``i`` is a pure
function of (paths, seed, shard, sizes, i): two iterators built alike agree batch for batch,
whatever the number of threads or worker processes, and an iterator restored from
``get_state()`` continues exactly where the saved one was.

Where the pixels come from (``paths`` may mix the three):

- a store array (``.npy`` from ``python -m jaxsr.data.prepare``): memory-mapped, and a crop
  is a slice of the mapping: no decoding, and host memory stays O(batch x prefetch);
- ``cache=True``: this host's images decoded once and held in RAM as uint8;
- ``cache=False``: the image file is decoded for every patch taken from it.

All three give the same pixels, so a store yields exactly the batches its source folder
does. Flips and transposes are applied while copying the crop into the batch (one copy per
patch, per channel when the pixel order changes: NumPy copies 3-byte pixels slowly).

Bad files: every file is checked before the first batch (``jaxsr.data.filecheck``) and a
run with a file it cannot use fails at start-up, naming every such file.

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

from jaxsr.data import filecheck
from jaxsr.data import store as store_lib
from jaxsr.data.datasets import read_rgb_float, read_rgb_uint8, to_uint8
from jaxsr.io import read_image

# Default epoch length (patches per host) when samples_per_image is not given: small
# datasets such as the bundled photos still give many distinct crops per epoch.
MIN_PATCHES_PER_EPOCH = 1000


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_non_negative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
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


def _copy_patch(out: np.ndarray, view: np.ndarray, symmetry: int) -> None:
    """``out[...] = symmetry(view)`` for one of the 8 flips/rotations of the square: bit 0
    flips the rows, bit 1 the columns, bit 2 transposes. The flips and the transpose are
    views; the one copy goes channel by channel when the pixel order changes, because
    NumPy copies a run of 3-byte pixels several times slower than three strided planes."""
    if symmetry & 1:
        view = view[::-1]
    if symmetry & 2:
        view = view[:, ::-1]
    if symmetry & 4:
        view = view.transpose(1, 0, 2)
    if symmetry & 6:
        for channel in range(view.shape[2]):
            np.copyto(out[..., channel], view[..., channel])
    else:
        np.copyto(out, view)


def _crop_uint8(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """A view of the crop (a uint8 copy for a float image decoded on access)."""
    view = image[top:top + size, left:left + size]
    return view if view.dtype == np.uint8 else to_uint8(view)


class _BatchSampler:
    """One batch of random P x P crops, each under a random flip/transpose (a plain
    picklable class so grain can also run it in worker processes)."""

    def __init__(self, paths: list[str], sizes: list[tuple[int, int]],
                 images: list[np.ndarray] | None, patch_size: int, augment: bool):
        self.paths, self.images = paths, images
        self.sizes = np.asarray(sizes, np.int64).reshape(len(paths), 2)
        self.patch_size, self.augment = patch_size, augment
        self.read_array = store_lib.ArrayReader()  # maps store arrays on first use

    def _image(self, image_index: int) -> np.ndarray:
        if self.images is not None:
            return self.images[image_index]
        path = self.paths[image_index]
        if path.endswith(store_lib.ARRAY_SUFFIX):
            return self.read_array(path)
        image = read_image(path, mode="rgb")  # decoded on access; only the crop is quantised
        if tuple(image.shape[:2]) != tuple(self.sizes[image_index]):
            height, width = self.sizes[image_index]
            raise ValueError(f"training image {path} changed during the run: it is now "
                             f"{image.shape[0]}x{image.shape[1]}, it was {height}x{width}")
        return image

    def __call__(self, elements: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        which = np.asarray(elements, np.int64).reshape(-1) % len(self.paths)
        size, count = self.patch_size, which.shape[0]
        # All draws at once, in a fixed order: tops, lefts, symmetries.
        tops = rng.integers(0, self.sizes[which, 0] - size + 1)
        lefts = rng.integers(0, self.sizes[which, 1] - size + 1)
        symmetries = (rng.integers(0, 8, size=count) if self.augment
                      else np.zeros(count, np.int64))
        out = np.empty((count, size, size, 3), np.uint8)
        # Image by image, so that one drawn twice is decoded once and at most one decoded
        # image per thread is alive.
        slots: dict[int, list[int]] = {}
        for k, index in enumerate(which.tolist()):
            slots.setdefault(index, []).append(k)
        for index, ks in slots.items():
            image = self._image(index)
            for k in ks:
                _copy_patch(out[k], _crop_uint8(image, int(tops[k]), int(lefts[k]), size),
                            int(symmetries[k]))
            del image
        return {"hr": out}


def make_train_dataset(paths: Sequence[str | os.PathLike], *, patch_size: int,
                       batch_size: int, seed: int, shard_index: int = 0,
                       shard_count: int = 1, augment: bool = True, cache: bool = True,
                       num_threads: int = 2, samples_per_image: int | None = None,
                       prefetch_batches: int | None = None,
                       num_workers: int = 0) -> grain.IterDataset:
    """An endless dataset of ``{"hr": uint8 (batch_size, patch_size, patch_size, 3)}``.

    paths: image files and/or store arrays (expand config entries, folders and stores,
      with ``resolve_image_paths`` first).
    patch_size: HR patch side, i.e. the LR patch side times the scale.
    batch_size: this host's batch (global batch / number of processes).
    seed: one seed for the file shuffle, the per-epoch element shuffles and the crops.
    shard_index, shard_count: this host and the number of hosts (``jax.process_index()``,
      ``jax.process_count()``).
    augment: random vertical/horizontal flips and transposes (all 8 right-angle rotations
      and flips of the square, equally likely).
    cache: decode this host's images once and keep them in memory as uint8 (right for the
      bundled photos and benchmark sets); False decodes an image file for every patch
      taken from it, and reads store arrays through memory maps (right for DIV2K-sized
      data: prepare a store with ``python -m jaxsr.data.prepare``).
    num_threads: grain worker threads (0: produce batches in the calling thread); with
      ``num_workers``, the threads of each worker process.
    samples_per_image: how many patches each image gives per epoch; default
      ``ceil(1000 / images on this host)`` so an epoch has at least 1000 patches.
    prefetch_batches: batches produced ahead (default ``2 * num_threads``).
    num_workers: grain worker processes (0: none). They produce the very same stream, so
      a run may be resumed with another value; they pay off on many-core hosts reading
      PNGs (``cache=False``), less with a store, whose reads are cheap.

    Every file is checked once at build time (``jaxsr.data.filecheck``: empty, not an
    image, truncated or corrupted, smaller than the patch) and ``ValueError`` lists every
    file that cannot be used. Iterate with ``iter(dataset)``; the iterator's
    ``get_state()`` is a small JSON-serialisable dict.
    """
    paths = _check_paths(paths)
    patch_size = _check_positive_int("patch_size", patch_size)
    batch_size = _check_positive_int("batch_size", batch_size)
    shard_count = _check_positive_int("shard_count", shard_count)
    seed, num_threads, num_workers = (_check_non_negative_int(name, value) for name, value in
                                      (("seed", seed), ("num_threads", num_threads), ("num_workers", num_workers)))
    if (isinstance(shard_index, bool) or not isinstance(shard_index, (int, np.integer))
            or not 0 <= shard_index < shard_count):
        raise ValueError(f"shard_index must be an integer in [0, {shard_count}), "
                         f"got {shard_index!r}")

    # Every file on every host, so that all hosts of a run fail alike.
    sizes = dict(zip(paths, filecheck.check_training_files(
        paths, patch_size=patch_size, num_threads=max(1, int(num_threads)))))
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
    sampler = _BatchSampler(local_paths, [sizes[p] for p in local_paths], images,
                            patch_size, bool(augment))
    dataset = (grain.MapDataset.range(len(local_paths) * samples_per_image)
               .shuffle(seed=shuffle_seed)
               .repeat(reseed_each_epoch=True)
               .batch(batch_size, drop_remainder=True)
               .random_map(sampler, seed=crop_seed))
    if prefetch_batches is None:
        prefetch_batches = 2 * num_threads
    read_options = grain.ReadOptions(num_threads=int(num_threads),
                                     prefetch_buffer_size=int(prefetch_batches))
    return _in_workers(dataset.to_iter_dataset(read_options), num_workers, prefetch_batches)


def _in_workers(stream: grain.IterDataset, num_workers: int, prefetch_batches: int) -> grain.IterDataset:
    """`stream` produced by `num_workers` processes (0: as it is)."""
    if not num_workers:
        return stream
    from absl import flags  # noqa: PLC0415  grain's workers read absl flags

    if not flags.FLAGS.is_parsed():  # a script, not `python -m jaxsr.main`
        flags.FLAGS.mark_as_parsed()
    return stream.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=int(num_workers), per_worker_buffer_size=max(1, int(prefetch_batches))))


def save_iterator_state(iterator: grain.DatasetIterator) -> dict:
    """The iterator's position as a plain JSON-compatible dict (a copy, safe to store)."""
    return json.loads(json.dumps(iterator.get_state()))


# grain's iterator states, as this pipeline builds them: without worker processes
# {"next_index": batches consumed}; with k workers an interleave over k slices, worker w
# producing batches w, w + k, w + 2k, ... and counting them in its own "next_index".
_WORKER_STATES = "iterators_in_use_states"


def _batches_consumed(state: dict) -> int:
    if set(state) == {"next_index"}:
        return int(state["next_index"])
    workers = state.get(_WORKER_STATES)
    if isinstance(workers, list) and workers and all(
            isinstance(w, dict) and set(w) == {"next_index"} for w in workers) \
            and sorted(state.get("iterators_in_use_indices", [])) == list(range(len(workers))):
        return sum(int(w["next_index"]) for w in workers)
    raise ValueError(f"unrecognised data iterator state {json.dumps(state)[:200]}; it was not "
                     f"saved by this version of jaxsr.data.pipeline")


def _state_at(template: dict, consumed: int) -> dict:
    """``template`` (the fresh iterator's state) moved to ``consumed`` batches."""
    if set(template) == {"next_index"}:
        return {"next_index": consumed}
    state = json.loads(json.dumps(template))
    workers = len(state[_WORKER_STATES])
    state["next_index_in_cycle"] = consumed % workers
    state[_WORKER_STATES] = [{"next_index": -(-(consumed - w) // workers)}
                             for w in range(workers)]
    state["exhausted"] = [0] * workers
    state["future_states"] = {}
    return state


def restore_iterator_state(iterator: grain.DatasetIterator, state: dict) -> grain.DatasetIterator:
    """Move a freshly built iterator (same paths, seed and sizes) to ``state``; returns it.

    The position is carried over between iterators with different ``num_workers`` (the
    stream does not depend on it), so a run may resume with another worker count.
    """
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict from save_iterator_state, got {type(state)}")
    template = iterator.get_state()
    _batches_consumed(template)  # the fresh iterator's layout must be one we know
    iterator.set_state(_state_at(template, _batches_consumed(state)))
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
        image = read_rgb_float(path)
        height, width = image.shape[:2]
        if height < size or width < size:
            raise ValueError(f"validation image {path} is {height}x{width} (HxW), smaller "
                             f"than the {size}x{size} crop; lower data.val_size")
        top = (height - size) // 2 // scale * scale
        left = (width - size) // 2 // scale * scale
        crops.append(image[top:top + size, left:left + size])
    return np.stack(crops).astype(np.float32)
