"""Tests of the prepared HR store (jaxsr.data.store, python -m jaxsr.data.prepare) and of the
pipeline reading it: same pixels and the same batches as the source folder, crash-safe and
resumable preparation, bad files reported without stopping, damage detected."""
from __future__ import annotations

import json
import os

import imageio.v3 as iio
import numpy as np
import pytest

from jaxsr import files
from jaxsr.data import (
    make_train_dataset,
    read_rgb_uint8,
    resolve_image_paths,
    restore_iterator_state,
    save_iterator_state,
)
from jaxsr.data import prepare as prepare_lib
from jaxsr.data import store as store_lib

PATCH = 8


def _random_pngs(folder, specs, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, shape in specs:
        iio.imwrite(folder / f"{name}.png", rng.integers(0, 256, shape, dtype=np.uint8))
    return folder


@pytest.fixture()
def source(tmp_path):
    return _random_pngs(tmp_path / "hr", [("a_rgb", (20, 27, 3)), ("b_gray", (16, 23)),
                                          ("c_rgba", (25, 18, 4)), ("d_rgb", (31, 16, 3)),
                                          ("e_rgb", (17, 21, 3))])


def _take(dataset, count):
    iterator = iter(dataset)
    return [next(iterator)["hr"] for _ in range(count)]


def test_store_arrays_manifest_and_same_batches_as_the_folder(source, tmp_path):
    store = tmp_path / "store"
    result = prepare_lib.prepare_store([source], store, workers=0, progress=False)
    assert (result.images, result.written, result.skipped, result.failed) == (5, 5, 0, [])

    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["complete"] and manifest["format"] == store_lib.FORMAT
    sources = sorted(str(p) for p in source.iterdir())
    assert [e["source"] for e in manifest["images"]] == sources
    for entry in manifest["images"]:
        assert entry["array"] == f"hr/{os.path.basename(entry['source'])}.npy"
        pixels = np.load(store / entry["array"], mmap_mode="r")  # a plain .npy
        np.testing.assert_array_equal(pixels, read_rgb_uint8(entry["source"]))
        assert pixels.shape == (entry["height"], entry["width"], 3) and pixels.dtype == np.uint8
        assert entry["source_bytes"] == os.path.getsize(entry["source"])
        assert len(entry["source_sha256"]) == len(entry["array_sha256"]) == 64

    arrays = resolve_image_paths([str(store)])
    assert arrays == sorted(str(store / e["array"]) for e in manifest["images"])
    folder = resolve_image_paths([str(source)])
    # Same images in the same order: the store gives the folder's batches bit for bit,
    # mapped (cache=False) or loaded into memory (cache=True).
    kwargs = dict(patch_size=PATCH, batch_size=6, seed=2)
    expected = _take(make_train_dataset(folder, **kwargs), 4)
    for cache in (False, True):
        for got, want in zip(_take(make_train_dataset(arrays, cache=cache, **kwargs), 4),
                             expected):
            np.testing.assert_array_equal(got, want)


def test_store_iterator_restores_exactly_and_workers_change_nothing(source, tmp_path):
    store = tmp_path / "store"
    prepare_lib.prepare_store([source], store, workers=0, progress=False)
    arrays = resolve_image_paths([str(store)])

    def build(workers):
        return make_train_dataset(arrays, patch_size=PATCH, batch_size=3, seed=5, cache=False,
                                  num_threads=1, num_workers=workers)

    plain = iter(build(0))
    expected = [next(plain)["hr"] for _ in range(8)]
    assert save_iterator_state(plain) == {"next_index": 8}
    # A position saved without worker processes continues exactly with two of them ...
    with_workers = restore_iterator_state(iter(build(2)), {"next_index": 3})
    for want in expected[3:5]:
        np.testing.assert_array_equal(next(with_workers)["hr"], want)
    state = json.loads(json.dumps(save_iterator_state(with_workers)))
    with_workers.close()
    assert state != {"next_index": 5}  # grain's own layout for worker processes
    # ... and a position saved with workers continues exactly without them.
    resumed = restore_iterator_state(iter(build(0)), state)
    for want in expected[5:]:
        np.testing.assert_array_equal(next(resumed)["hr"], want)
    with pytest.raises(ValueError, match="unrecognised"):
        restore_iterator_state(iter(build(0)), {"position": 3})


def test_rerun_skips_finished_images_and_redoes_changed_or_missing(source, tmp_path):
    store = tmp_path / "store"
    prepare_lib.prepare_store([source], store, workers=0, progress=False)
    again = prepare_lib.prepare_store([source], store, workers=0, progress=False)
    assert (again.written, again.skipped) == (0, 5)

    # A changed source, a deleted array, a truncated array and a temp file left behind.
    changed = source / "a_rgb.png"
    iio.imwrite(changed, np.full((22, 22, 3), 7, np.uint8))
    os.utime(changed, ns=(1, 1))
    (store / "hr" / "b_gray.png.npy").unlink()
    truncated = store / "hr" / "d_rgb.png.npy"
    truncated.write_bytes(truncated.read_bytes()[:100])
    leftover = store / "hr" / ".e_rgb.png.npy.123-4f5e.tmp"  # the name jaxsr.files.atomic_path writes under
    leftover.write_bytes(b"half")
    redo = prepare_lib.prepare_store([source], store, workers=0, progress=False)
    assert (redo.written, redo.skipped) == (3, 2)
    assert not leftover.exists()
    for path in source.iterdir():
        np.testing.assert_array_equal(np.load(store / "hr" / f"{path.name}.npy"),
                                      read_rgb_uint8(path))

    # A source that is no longer an input leaves the store with its array.
    (source / "e_rgb.png").unlink()
    smaller = prepare_lib.prepare_store([source], store, workers=0, progress=False)
    assert (smaller.images, smaller.removed) == (4, 1)
    assert not (store / "hr" / "e_rgb.png.npy").exists()


def test_interrupted_prepare_is_refused_then_finished_by_a_rerun(source, tmp_path, monkeypatch):
    store = tmp_path / "store"
    real_convert, calls = prepare_lib._convert_task, []

    def convert_then_interrupt(source_path, array_path):
        if len(calls) == 2:  # killed while the third image is being written: no clean-up runs
            with monkeypatch.context() as killed, files.atomic_path(array_path) as temp:
                killed.setattr(files.os, "remove", lambda path: None)
                temp.write_bytes(b"\x93NUMPY half")
                raise KeyboardInterrupt
        calls.append(source_path)
        return real_convert(source_path, array_path)

    monkeypatch.setattr(prepare_lib, "_convert_task", convert_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_lib.prepare_store([source], store, workers=0, progress=False)
    assert len([p for p in (store / "hr").iterdir() if files.is_temporary(p.name)]) == 1
    manifest = json.loads((store / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["images"]) == 2
    with pytest.raises(ValueError, match="incomplete") as error:
        resolve_image_paths([str(store)], key="data.train_dirs")
    assert "data.train_dirs" in str(error.value) and "jaxsr.data.prepare" in str(error.value)

    # An array under its final name that the manifest does not list is not trusted either.
    unlisted = store / "hr" / "e_rgb.png.npy"
    unlisted.write_bytes(b"\x93NUMPY half")

    monkeypatch.setattr(prepare_lib, "_convert_task", real_convert)
    finished = prepare_lib.prepare_store([source], store, workers=0, progress=False)
    assert (finished.written, finished.skipped, finished.images) == (3, 2, 5)
    assert not [p for p in (store / "hr").iterdir() if p.name.startswith(".")]
    for path in resolve_image_paths([str(store)]):
        name = os.path.basename(path)[:-len(".npy")]
        np.testing.assert_array_equal(np.load(path), read_rgb_uint8(source / name))


def test_bad_files_are_listed_by_name_and_the_rest_converted(source, tmp_path, capsys):
    good = (source / "a_rgb.png").read_bytes()
    (source / "truncated.png").write_bytes(good[: len(good) // 2])
    (source / "empty.png").write_bytes(b"")
    (source / "notes.png").write_text("not an image at all\n")
    store = tmp_path / "store"
    # Through the command line, with two decoding processes.
    code = prepare_lib.main(["--output", str(store), "--workers", "2", "--no-progress",
                             str(source)])
    out = capsys.readouterr().out
    assert code == 1
    assert "3 files could not be decoded" in out
    for name in ("truncated.png", "empty.png", "notes.png"):
        assert name in out
    manifest = store_lib.read_manifest(store)
    assert manifest["complete"] and len(manifest["images"]) == 5
    assert sorted(os.path.basename(f["source"]) for f in manifest["failed"]) == [
        "empty.png", "notes.png", "truncated.png"]
    assert len(resolve_image_paths([str(store)])) == 5  # usable without the bad files


def test_damaged_store_is_refused_and_verify_finds_changed_pixels(source, tmp_path, capsys):
    store = tmp_path / "store"
    prepare_lib.prepare_store([source], store, workers=0, progress=False)
    assert prepare_lib.main(["--verify", str(store), "--sources", "--no-progress"]) == 0

    array = store / "hr" / "c_rgba.png.npy"
    data = bytearray(array.read_bytes())
    data[-1] ^= 0xFF
    array.write_bytes(bytes(data))
    problems = prepare_lib.verify_store(store, sources=True, progress=False)
    assert len(problems) == 1 and "c_rgba.png.npy" in problems[0]
    assert prepare_lib.main(["--verify", str(store), "--no-progress"]) == 1

    array.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match="c_rgba.png.npy") as error:
        resolve_image_paths([str(store)])
    assert "damaged" in str(error.value)


def test_output_folder_and_inputs_are_checked(source, tmp_path):
    other = tmp_path / "busy"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="non-empty folder"):
        prepare_lib.prepare_store([source], other, workers=0, progress=False)
    with pytest.raises(ValueError, match="contains source images"):
        prepare_lib.prepare_store([source], source.parent, workers=0, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        prepare_lib.prepare_store([tmp_path / "missing"], tmp_path / "s", workers=0,
                                progress=False)


def test_same_folder_names_get_distinct_labels(tmp_path):
    first = _random_pngs(tmp_path / "a" / "HR", [("x", (12, 12, 3))], seed=1)
    second = _random_pngs(tmp_path / "b" / "HR", [("x", (12, 12, 3))], seed=2)
    store = tmp_path / "store"
    prepare_lib.prepare_store([first, second], store, workers=0, progress=False)
    names = sorted(e["array"] for e in store_lib.read_manifest(store)["images"])
    assert names == ["HR-2/x.png.npy", "HR/x.png.npy"]
    # Re-running with the inputs in the other order keeps every name.
    again = prepare_lib.prepare_store([second, first], store, workers=0, progress=False)
    assert again.skipped == 2
    assert sorted(e["array"] for e in store_lib.read_manifest(store)["images"]) == names


def test_array_reader_keeps_a_bounded_number_of_maps(source, tmp_path):
    store = tmp_path / "store"
    prepare_lib.prepare_store([source], store, workers=0, progress=False)
    arrays = resolve_image_paths([str(store)])
    reader = store_lib.ArrayReader(max_open=2)
    for _ in range(2):
        for path in arrays:
            np.testing.assert_array_equal(reader(path), np.load(path))
    assert len(reader._maps) == 2
    # A view of the file's memory map, not a copy in this process's memory.
    import mmap
    owner = reader(arrays[0])
    while isinstance(owner, np.ndarray):
        owner = owner.base
    assert isinstance(owner, memoryview) and isinstance(owner.obj, mmap.mmap)
    import pickle
    clone = pickle.loads(pickle.dumps(reader))  # no mappings travel
    assert clone.max_open == 2 and not clone._maps
