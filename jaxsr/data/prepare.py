"""Decode HR training images once into a store that training reads without decoding.

    python -m jaxsr.data.prepare --output STORE DIR [DIR ...] [--workers N] [--no-progress]
    python -m jaxsr.data.prepare --verify STORE [--sources]

DIR entries are what ``data.train_dirs`` accepts: folders, globs or image files. Then train
with ``--config.data.train_dirs="('STORE',)"`` (see ``jaxsr.data.store`` for the format).

The conversion runs in ``--workers`` processes (default: one per CPU) with a progress bar.
A file that cannot be decoded is reported and left out; the others are still converted,
and the run ends with the list of failed files and exit status 1. Interrupt it at any
time: running the same command again skips the finished images. ``--verify`` re-hashes
every array (and with ``--sources`` every source file) against the manifest.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from jaxsr import __version__
from jaxsr.data import store as store_lib
from jaxsr.data.datasets import read_rgb_uint8, resolve_image_paths
from jaxsr.data.filecheck import check_image_file
from jaxsr.data.store import ARRAY_SUFFIX, FORMAT, MANIFEST, VERSION, is_store, read_manifest
from jaxsr.files import atomic_path, is_temporary
from jaxsr.progress import Progress

_MANIFEST_EVERY_S = 5.0  # how often a running prepare rewrites the manifest


@dataclass
class PrepareResult:
    store: str
    images: int                      # arrays in the finished store
    written: int                     # decoded and written by this run
    skipped: int                     # already complete from an earlier run
    removed: int                     # dropped because their source is no longer an input
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source path, reason)
    seconds: float = 0.0
    array_bytes: int = 0


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_stamp(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return int(info.st_size), int(info.st_mtime_ns)


def _convert_one(source: str, array_path: str) -> dict:
    """Decode one image and write its array (runs in a worker process). Returns the
    manifest fields that describe the result; raises on any failure."""
    size, mtime_ns = _source_stamp(source)
    _, reason = check_image_file(source)  # what training would refuse, in its words
    if reason is not None:
        raise ValueError(reason)
    source_sha = _sha256_file(source)
    image = np.ascontiguousarray(read_rgb_uint8(source))
    with atomic_path(array_path, durable=True) as temp, open(temp, "wb") as f:
        np.lib.format.write_array(f, image, allow_pickle=False)
    return {"height": int(image.shape[0]), "width": int(image.shape[1]),
            "source_bytes": size, "source_mtime_ns": mtime_ns, "source_sha256": source_sha,
            "array_bytes": os.stat(array_path).st_size,
            "array_sha256": hashlib.sha256(image.data).hexdigest()}


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C is the parent's to handle (it saves the manifest)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _convert_task(source: str, array_path: str) -> tuple[str, dict | None, str | None]:
    try:
        return source, _convert_one(source, array_path), None
    except Exception as error:  # noqa: BLE001  every failure is reported, none stops the run
        text = str(error).replace(f"could not read {source} as an image: ", "")
        return source, None, text.replace(f" '{source}'", "") or type(error).__name__


def _source_groups(inputs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(folder, sorted image paths) for every distinct folder the inputs name images in."""
    groups: dict[str, list[str]] = {}
    for entry in inputs:
        if os.path.isdir(entry) and is_store(entry):
            raise ValueError(f"{entry} is already a store; give the folders of source images")
        for path in resolve_image_paths([entry], key="prepare input"):
            groups.setdefault(os.path.dirname(path), []).append(path)
    return [(folder, sorted(set(paths))) for folder, paths in sorted(groups.items())]


def _assign_names(groups, known: dict[str, str]) -> dict[str, str]:
    """Array name (relative to the store) for every source; names from an earlier run are
    kept, new ones are ``<folder name>[-k]/<file name>.npy``."""
    taken = set(known.values())
    folder_labels: dict[str, str] = {}
    # Folders already in the store keep their label.
    for source, name in known.items():
        folder_labels.setdefault(os.path.dirname(source), name.split("/", 1)[0])
    used_labels = set(folder_labels.values())
    names = {}
    for folder, sources in groups:
        label = folder_labels.get(folder)
        if label is None:
            base = os.path.basename(folder.rstrip(os.sep)) or "images"
            label, k = base, 1
            while label in used_labels:
                k += 1
                label = f"{base}-{k}"
            folder_labels[folder] = label
            used_labels.add(label)
        for source in sources:
            name = known.get(source)
            if name is None:
                name = f"{label}/{os.path.basename(source)}{ARRAY_SUFFIX}"
                stem, k = name[:-len(ARRAY_SUFFIX)], 1
                while name in taken:  # only possible for a folder renamed between runs
                    k += 1
                    name = f"{stem}-{k}{ARRAY_SUFFIX}"
                taken.add(name)
            names[source] = name
    return names


def _is_done(store: str, entry: dict | None) -> bool:
    if not entry:
        return False
    try:
        if _source_stamp(entry["source"]) != (entry["source_bytes"], entry["source_mtime_ns"]):
            return False
        return os.stat(os.path.join(store, entry["array"])).st_size == entry["array_bytes"]
    except (OSError, KeyError):
        return False


def _remove_temp_files(store: str) -> None:
    """Temporary files an interrupted run left behind (never taken for arrays)."""
    for folder, _, files in os.walk(store):
        for name in files:
            if is_temporary(name):
                try:
                    os.unlink(os.path.join(folder, name))
                except OSError:
                    pass


def _write_manifest(store: str, inputs, entries: dict[str, dict], failed, complete: bool):
    manifest = {
        "format": FORMAT, "version": VERSION, "complete": bool(complete),
        "written_by": f"jaxsr {__version__}", "inputs": list(inputs),
        "images": sorted(entries.values(), key=lambda e: e["array"]),
        "failed": [{"source": s, "error": e} for s, e in sorted(failed)],
    }
    with atomic_path(os.path.join(store, MANIFEST), durable=True) as temp:
        temp.write_bytes(json.dumps(manifest, indent=1).encode())


def _check_arguments(inputs, output, workers) -> tuple[list[str], str, int]:
    """(absolute inputs, absolute store folder, worker count), or a ValueError."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [os.path.abspath(os.path.expanduser(os.fspath(i))) for i in inputs]
    if not inputs:
        raise ValueError("no source folders given")
    store = os.path.abspath(os.path.expanduser(os.fspath(output)))
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    return inputs, store, workers


def _check_store_folder(store: str, sources: list[str]) -> None:
    """The output folder may be new, empty or a store, and must not hold source images."""
    if any(os.path.commonpath([store, s]) == store for s in sources):
        raise ValueError(f"--output {store} contains source images; give another folder")
    if os.path.exists(store) and not os.path.isdir(store):
        raise ValueError(f"--output {store} exists and is not a folder")
    if os.path.isdir(store) and os.listdir(store) and not is_store(store):
        raise ValueError(f"--output {store} is a non-empty folder without a {MANIFEST}; "
                         f"refusing to write a store into it (give a new or empty folder)")


def _plan(store: str, groups, sources: list[str]):
    """(array names, entries already done, sources to convert, stale entries) against the
    store's manifest; the arrays of sources that are no longer inputs are deleted."""
    old = read_manifest(store) if is_store(store) else {"images": []}
    old_entries = {e["source"]: e for e in old.get("images", []) if "source" in e}
    names = _assign_names(groups, {s: e["array"] for s, e in old_entries.items()})
    entries: dict[str, dict] = {}
    todo = []
    for source in sources:
        entry = old_entries.get(source)
        if entry and entry["array"] == names[source] and _is_done(store, entry):
            entries[source] = entry
        else:
            todo.append(source)
    stale = [e for s, e in old_entries.items() if s not in names]
    for entry in stale:  # sources that are no longer inputs: their arrays go too
        try:
            os.unlink(os.path.join(store, entry["array"]))
        except OSError:
            pass
    return names, entries, todo, stale


def _convert_all(jobs: list[tuple[str, str]], workers: int, record: Callable) -> None:
    """Convert every (source, array path) job, in this process or a pool of `workers`, and
    `record(source, fields, error)` each result as it finishes (also those finished when
    interrupted)."""
    if workers == 0 or len(jobs) <= 1:
        for job in jobs:
            record(*_convert_task(*job))
        return
    # "spawn": the parent may hold threads (grain, JAX) that fork would copy badly.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
            min(workers, len(jobs)), mp_context=context,
            initializer=_ignore_sigint) as pool:
        futures = {pool.submit(_convert_task, *job): job[0] for job in jobs}
        pending = set(futures)

        def harvest(future):
            pending.discard(future)
            try:
                record(*future.result())
            except Exception as error:  # noqa: BLE001  (a worker died: OOM, signal)
                record(futures[future], None, f"{type(error).__name__}: {error}")

        try:
            for future in concurrent.futures.as_completed(futures):
                harvest(future)
        except BaseException:
            # Interrupted: drop what has not started, let the running images finish
            # (one per worker), and keep every finished one in the manifest.
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            for future in list(pending):
                if future.done() and not future.cancelled():
                    harvest(future)
            raise


def prepare_store(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, *,
                  workers: int | None = None, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> PrepareResult:
    """Decode every image of ``inputs`` (folders, globs or files, as in ``data.train_dirs``)
    into the store folder ``output``; see the module docstring for the layout and the
    crash safety.

    workers: decoding processes (default: one per CPU; 0 decodes in this process).
    A file that cannot be decoded is listed in the result (and the manifest's ``failed``)
    and left out of the store; the others are still converted.
    """
    start = time.time()
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    inputs, store, workers = _check_arguments(inputs, output, workers)
    groups = _source_groups(inputs)
    sources = [s for _, paths in groups for s in paths]
    _check_store_folder(store, sources)

    os.makedirs(store, exist_ok=True)
    names, entries, todo, stale = _plan(store, groups, sources)
    _remove_temp_files(store)
    failed: list[tuple[str, str]] = []
    # Written before any array: a store folder always has a manifest, "complete": false
    # until the end.
    _write_manifest(store, inputs, entries, failed, complete=False)
    if entries:
        log(f"{store}: {len(entries)} of {len(sources)} images already prepared; "
            f"converting the other {len(todo)}")
    if stale:
        log(f"{store}: removed {len(stale)} arrays whose sources are no longer inputs")

    bar = Progress(len(todo), label="prepare", unit="img", enabled=progress)
    last_save = time.time()

    def record(source, fields, error):
        nonlocal last_save
        if error is None:
            entries[source] = {"array": names[source], "source": source, **fields}
        else:
            failed.append((source, error))
        bar.update(note=f"{len(failed)} failed" if failed else "")
        if time.time() - last_save > _MANIFEST_EVERY_S:
            _write_manifest(store, inputs, entries, failed, complete=False)
            last_save = time.time()

    try:
        _convert_all([(s, os.path.join(store, names[s])) for s in todo], workers, record)
    except BaseException:
        bar.close()
        _write_manifest(store, inputs, entries, failed, complete=False)
        log(f"\ninterrupted: {len(entries)} of {len(sources)} images are in {store}; run the "
            f"same command again to convert the rest")
        raise
    bar.close()
    _write_manifest(store, inputs, entries, failed, complete=True)
    return PrepareResult(
        store=store, images=len(entries), written=len(entries) - (len(sources) - len(todo)),
        skipped=len(sources) - len(todo), removed=len(stale), failed=sorted(failed),
        seconds=time.time() - start,
        array_bytes=sum(int(e["array_bytes"]) for e in entries.values()))


def verify_store(store: str | os.PathLike, *, sources: bool = False,
                 progress: bool = True) -> list[str]:
    """Re-hash every array of ``store`` (and, with ``sources=True``, every source file
    that still exists) against the manifest. Returns a list of problems (empty: intact)."""
    store = os.path.abspath(os.fspath(store))
    manifest = read_manifest(store)
    problems = [] if manifest.get("complete") else [f"{store}: incomplete (prepare interrupted)"]
    images = manifest.get("images", [])
    bar = Progress(len(images), label="verify", unit="img", enabled=progress)
    for entry in images:
        path = os.path.join(store, entry["array"])
        try:
            offset, shape, dtype = store_lib.read_array_header(path)
            store_lib._check_image_array(path, shape, dtype)
            pixels = np.ascontiguousarray(np.load(path, mmap_mode="r"))
            if hashlib.sha256(pixels.data).hexdigest() != entry["array_sha256"]:
                problems.append(f"{path}: pixels differ from the manifest's checksum")
            if shape[:2] != (entry["height"], entry["width"]):
                problems.append(f"{path}: shape {shape}, the manifest says "
                                f"{entry['height']}x{entry['width']}")
        except (OSError, ValueError) as error:
            problems.append(f"{path}: {error}")
        if sources and os.path.isfile(entry["source"]) \
                and _sha256_file(entry["source"]) != entry["source_sha256"]:
            problems.append(f"{entry['source']}: changed since it was prepared")
        bar.update()
    bar.close()
    return problems


# ----------------------------------------------------------------------------- command line

def _gigabytes(count: int) -> str:
    return f"{count / 1e9:.2f} GB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxsr.data.prepare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", metavar="DIR",
                        help="HR image folders, globs or files")
    parser.add_argument("--output", "-o", metavar="STORE", help="store folder to write")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: one per CPU; 0: this process)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--verify", metavar="STORE",
                        help="check an existing store against its manifest instead")
    parser.add_argument("--sources", dest="verify_sources", action="store_true",
                        help="with --verify: also re-hash the source files that still exist")
    args = parser.parse_args(argv)

    if args.verify:
        if args.sources or args.output:
            parser.error("--verify takes no DIR and no --output")
        try:
            problems = verify_store(args.verify, sources=args.verify_sources,
                                              progress=not args.no_progress)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        for problem in problems:
            print(problem)
        print(f"{args.verify}: {'intact' if not problems else f'{len(problems)} problems'}")
        return 1 if problems else 0

    if not args.output or not args.sources:
        parser.error("give --output STORE and at least one DIR")
    try:
        result = prepare_store(args.sources, args.output, workers=args.workers,
                                         progress=not args.no_progress)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(f"{result.store}: {result.images} images ({_gigabytes(result.array_bytes)}); "
          f"{result.written} converted in {result.seconds:.1f} s, {result.skipped} already "
          f"there" + (f", {result.removed} removed" if result.removed else ""))
    if result.failed:
        print(f"{len(result.failed)} files could not be decoded and are not in the store:")
        for source, reason in result.failed:
            print(f"  {source}: {reason}")
        return 1
    print(f"train on it with: --config.data.train_dirs=\"('{result.store}',)\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
