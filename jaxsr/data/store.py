"""A prepared HR store: every training image decoded once into a raw uint8 array on disk.

Layout of a store directory::

    STORE/manifest.json                 what is in the store ("complete": true once prepare is done)
    STORE/<folder>/<file name>.npy      one (H, W, 3) uint8 array per source image

``<folder>`` is the name of the folder the source image came from (``DIV2K_train_HR``, ...),
with ``-2``, ``-3``, ... appended when two source folders share a name. Each ``.npy`` is a
plain NumPy file, so ``np.load(path, mmap_mode="r")`` opens it; the training pipeline maps
it and a random crop is a slice of the mapping: nothing is decoded while training.

Why one ``.npy`` per image rather than fixed-size sub-images in records (BasicSR's
``extract_subimages`` + LMDB): a crop can start anywhere in the full image (the same
patches a PNG folder gives, bit for bit), finishing or redoing one image is one atomic
file rename, any tool can read the arrays, and reading a crop costs a slice copy
(``benchmarks/pipeline.py`` measures it). The price is disk space: raw pixels are about
2-3 times the size of the PNGs (DIV2K + Flickr2K: about 28 GB).

Writing is ``jaxsr.data.prepare`` (the command and ``prepare_store``); this module reads.
Crash safety of ``prepare_store``: an array is written under a temporary name, flushed
to disk, then renamed into place, so a file under its final name is always complete; the
manifest is rewritten the same way (temporary file, fsync, ``os.replace``) every few
seconds and at the end, and an image counts as done only once the manifest lists it. A
run that is interrupted leaves ``"complete": false`` in the manifest (training refuses
the store until it is finished); running the same command again skips every image the
manifest lists whose source file is unchanged (same size and modification time) and
whose array has the recorded size, and redoes the rest.
"""
from __future__ import annotations

import collections
import json
import mmap
import os
import threading

import numpy as np

MANIFEST = "manifest.json"
FORMAT = "jaxsr-hr-store"
VERSION = 1
ARRAY_SUFFIX = ".npy"


def is_store(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding a store manifest."""
    return os.path.isfile(os.path.join(os.fspath(path), MANIFEST))


def _prepare_hint(store: str) -> str:
    return (f"re-run `python -m jaxsr.data.prepare --output {store} SOURCE_DIR [...]` "
            f"with the same source folders to finish or repair it")


def read_manifest(store: str | os.PathLike) -> dict:
    """The parsed manifest of ``store`` (format and version checked, nothing else)."""
    store = os.fspath(store)
    path = os.path.join(store, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{store} is not a jaxsr store: it has no {MANIFEST}") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"the store manifest {path} cannot be read ({error}); "
                         f"{_prepare_hint(store)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a jaxsr store manifest (no \"format\": \"{FORMAT}\")")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{path} has store version {manifest.get('version')!r}; this jaxsr "
                         f"reads version {VERSION}; prepare the store again")
    return manifest


def store_array_paths(store: str | os.PathLike) -> list[str]:
    """Absolute paths of the arrays of a finished store, sorted.

    Cheap checks only (one ``stat`` per array): the manifest says the store is complete,
    and every array exists with the size the manifest recorded. A failure raises
    ``ValueError`` naming the store and up to ten bad arrays.
    """
    store = os.path.abspath(os.fspath(store))
    manifest = read_manifest(store)
    if not manifest.get("complete"):
        raise ValueError(f"the store {store} is incomplete (its prepare run was interrupted); "
                         f"{_prepare_hint(store)}")
    images = manifest.get("images") or []
    if not images:
        raise ValueError(f"the store {store} holds no images")
    paths, problems = [], []
    for entry in images:
        path = os.path.join(store, entry["array"])
        try:
            size = os.stat(path).st_size
        except OSError:
            problems.append(f"{path}: missing")
            continue
        if size != entry["array_bytes"]:
            problems.append(f"{path}: {size} bytes, the manifest says {entry['array_bytes']}")
        paths.append(path)
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ValueError(f"the store {store} is damaged ({len(problems)} of {len(images)} "
                         f"arrays):\n  {shown}{more}\n{_prepare_hint(store)}")
    return sorted(paths)


def read_array_header(path: str | os.PathLike) -> tuple[int, tuple[int, ...], np.dtype]:
    """(byte offset of the pixels, shape, dtype) of a ``.npy`` file, from its header."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif major == 2:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"{path}: unsupported .npy version {major}")
        offset = f.tell()
    if fortran:
        raise ValueError(f"{path}: a Fortran-ordered array; expected a C-ordered image")
    return offset, tuple(shape), np.dtype(dtype)


def _check_image_array(path, shape, dtype) -> None:
    if dtype != np.uint8 or len(shape) != 3 or shape[2] != 3 or 0 in shape:
        raise ValueError(f"{path}: a store array must be uint8 (H, W, 3), found {dtype} "
                         f"{shape}")


def array_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of a store array, from its header."""
    _, shape, dtype = read_array_header(path)
    _check_image_array(path, shape, dtype)
    return int(shape[0]), int(shape[1])


def load_array(path: str | os.PathLike) -> np.ndarray:
    """A whole store array in memory (uint8 (H, W, 3))."""
    image = np.load(path, allow_pickle=False)
    _check_image_array(path, image.shape, image.dtype)
    return image


def _open_file_limit() -> int:
    try:
        import resource  # noqa: PLC0415  (POSIX only)

        limit = int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        return limit if limit > 0 else 1024
    except (ImportError, ValueError, OSError):  # pragma: no cover
        return 1024


class ArrayReader:
    """Memory-maps store arrays on demand and keeps the most recently used ones mapped.

    A crop of a mapped array is a NumPy view; copying it reads only the pages it covers
    (from the page cache, or the disk the first time). Python keeps one file descriptor
    per mapping, so at most ``max_open`` arrays stay mapped (default: a quarter of the
    process's open-file limit, at most 4096). Thread-safe; pickles without its mappings,
    so grain can ship it to worker processes.
    """

    def __init__(self, max_open: int | None = None):
        if max_open is None:
            max_open = min(4096, max(16, _open_file_limit() // 4))
        self.max_open = int(max_open)
        self._init_caches()

    def _init_caches(self):
        self._headers: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._maps: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"max_open": self.max_open}

    def __setstate__(self, state):
        self.max_open = state["max_open"]
        self._init_caches()

    def __call__(self, path: str) -> np.ndarray:
        with self._lock:
            image = self._maps.get(path)
            if image is not None:
                self._maps.move_to_end(path)
                return image
        header = self._headers.get(path)
        if header is None:
            offset, shape, dtype = read_array_header(path)
            _check_image_array(path, shape, dtype)
            header = self._headers[path] = (offset, shape)
        offset, shape = header
        # A plain ndarray over the mapping (np.memmap's subclass slows every slice down);
        # the mapping lives as long as any view of it does.
        with open(path, "rb") as f:
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        count = shape[0] * shape[1] * shape[2]
        if len(mapping) < offset + count:
            raise ValueError(f"{path}: truncated store array ({len(mapping)} bytes, "
                             f"{offset + count} expected); re-run prepare")
        image = np.frombuffer(mapping, np.uint8, count=count, offset=offset).reshape(shape)
        with self._lock:
            self._maps[path] = image
            while len(self._maps) > self.max_open:
                self._maps.popitem(last=False)
        return image
