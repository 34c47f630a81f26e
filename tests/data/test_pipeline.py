"""Tests of jaxsr.data: path resolution, bundled photos, the grain patch stream, validation crops.

Patches are traced back to their source with a brute-force search over every position and
every flip/rotation of every source image (tiny random images make matches unambiguous).
"""
from __future__ import annotations

import json
import os

import imageio.v3 as iio
import numpy as np
import pytest

from jaxsr.data import (
    BUNDLED,
    bundled_photo_paths,
    load_validation_set,
    make_train_dataset,
    read_rgb_uint8,
    resolve_image_paths,
    restore_iterator_state,
    save_iterator_state,
    shard_paths,
)

PATCH = 8

# The 8 symmetries of the square, as functions of an (H, W, C) array; index 0 is identity.
SYMMETRIES = [
    lambda a: a,
    lambda a: a[::-1],
    lambda a: a[:, ::-1],
    lambda a: a[::-1, ::-1],
    lambda a: a.transpose(1, 0, 2),
    lambda a: a[::-1].transpose(1, 0, 2),
    lambda a: a[:, ::-1].transpose(1, 0, 2),
    lambda a: a[::-1, ::-1].transpose(1, 0, 2),
]


@pytest.fixture()
def image_folder(tmp_path):
    """Random PNGs of different sizes: colour, gray and one RGBA."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "train"
    folder.mkdir()
    specs = [("a_rgb", (20, 27, 3)), ("b_gray", (16, 23)), ("c_rgba", (25, 18, 4)),
             ("d_rgb", (31, 16, 3)), ("e_gray", (18, 18)), ("f_rgb", (22, 35, 3)),
             ("g_rgb", (17, 21, 3))]
    for name, shape in specs:
        iio.imwrite(folder / f"{name}.png", rng.integers(0, 256, shape, dtype=np.uint8))
    return folder


@pytest.fixture()
def paths(image_folder):
    return resolve_image_paths(str(image_folder))


def take(dataset, count):
    iterator = iter(dataset)
    return [next(iterator)["hr"] for _ in range(count)]


def find_sources(patch, sources):
    """Every (image index, symmetry index) such that the patch is that symmetry applied to
    some crop of that source image."""
    hits = []
    for image_index, image in enumerate(sources):
        for sym_index, symmetry in enumerate(SYMMETRIES):
            moved = np.ascontiguousarray(symmetry(image))
            if moved.shape[0] < patch.shape[0] or moved.shape[1] < patch.shape[1]:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(moved, patch.shape)
            if np.any(np.all(windows == patch, axis=(-3, -2, -1))):
                hits.append((image_index, sym_index))
    return hits


# ---------------------------------------------------------------- paths and bundled photos

def test_resolve_folder_glob_file_relative_dedup(image_folder, tmp_path, monkeypatch):
    everything = resolve_image_paths(str(image_folder))
    assert len(everything) == 7 and everything == sorted(everything)
    assert all(os.path.isabs(p) for p in everything)
    monkeypatch.chdir(tmp_path)
    mixed = resolve_image_paths(["train/*_rgb.png", "train", "train/b_gray.png",
                                 str(image_folder / "a_rgb.png")])
    assert mixed == everything
    assert resolve_image_paths("train/*gray*") == [p for p in everything if "gray" in p]


def test_missing_folder_error_names_folder_and_key(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(ValueError, match="no_such_folder") as error:
        resolve_image_paths([str(missing)], key="data.train_dirs")
    assert "data.train_dirs" in str(error.value)
    with pytest.raises(ValueError, match="data.train_dirs"):
        resolve_image_paths(str(tmp_path / "*.png"), key="data.train_dirs")


def test_bundled_photos_resolve_offline_and_are_disjoint():
    train, val = bundled_photo_paths("train"), bundled_photo_paths("val")
    assert len(train) >= 4 and len(val) >= 2
    assert not set(train) & set(val)
    assert resolve_image_paths(BUNDLED) == sorted(os.path.realpath(p) for p in train)
    assert resolve_image_paths(["bundled:val"]) == sorted(os.path.realpath(p) for p in val)
    for path in train + val:
        stored = iio.imread(path)
        assert stored.ndim == 3 and stored.shape[2] == 3, path  # real colour photos
        assert min(stored.shape[:2]) >= 256, path
    with pytest.raises(ValueError, match="split"):
        bundled_photo_paths("test")


def test_gray_is_replicated_and_alpha_dropped(image_folder):
    gray = iio.imread(image_folder / "b_gray.png")
    rgb = read_rgb_uint8(image_folder / "b_gray.png")
    assert rgb.shape == gray.shape + (3,) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.repeat(gray[..., None], 3, axis=-1))
    rgba = iio.imread(image_folder / "c_rgba.png")
    np.testing.assert_array_equal(read_rgb_uint8(image_folder / "c_rgba.png"), rgba[..., :3])


# ---------------------------------------------------------------- the patch stream

def test_batch_shapes_and_dtype(paths):
    for batch in take(make_train_dataset(paths, patch_size=PATCH, batch_size=5, seed=0), 3):
        assert batch.shape == (5, PATCH, PATCH, 3) and batch.dtype == np.uint8


def test_same_seed_same_stream_other_seed_differs(paths):
    def stream(seed, **kwargs):
        return take(make_train_dataset(paths, patch_size=PATCH, batch_size=4, seed=seed,
                                       **kwargs), 6)

    first, again = stream(3), stream(3, num_threads=0)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    other = stream(4)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
    # Decoding on access yields the very same pixels as the in-memory cache.
    for a, b in zip(first, stream(3, cache=False)):
        np.testing.assert_array_equal(a, b)


def test_restored_iterator_continues_exactly(paths):
    def build():
        return make_train_dataset(paths, patch_size=PATCH, batch_size=3, seed=7, num_threads=2)

    iterator = iter(build())
    for _ in range(3):
        next(iterator)
    state = json.loads(json.dumps(save_iterator_state(iterator)))  # survives a JSON file
    expected = [next(iterator)["hr"] for _ in range(4)]

    restored = restore_iterator_state(iter(build()), state)
    for want in expected:
        np.testing.assert_array_equal(next(restored)["hr"], want)


def test_patches_are_crops_under_all_flips_and_rotations(paths):
    sources = [read_rgb_uint8(p) for p in paths]
    augmented = np.concatenate(take(
        make_train_dataset(paths, patch_size=PATCH, batch_size=16, seed=1), 4))
    used = set()
    for patch in augmented:
        hits = find_sources(patch, sources)
        assert hits, "a patch is not a flipped/rotated crop of any source image"
        used.update(sym for _, sym in hits)
    assert len(used) >= 6  # 64 draws over 8 equally likely symmetries

    plain = np.concatenate(take(make_train_dataset(
        paths, patch_size=PATCH, batch_size=16, seed=1, augment=False), 2))
    for patch in plain:
        assert {sym for _, sym in find_sources(patch, sources)} == {0}


def test_epoch_uses_each_image_equally_and_reshuffles(paths):
    sources = [read_rgb_uint8(p) for p in paths]
    per_image, batch = 3, 7  # one epoch = 7 images x 3 = 21 patches = 3 batches
    dataset = make_train_dataset(paths, patch_size=PATCH, batch_size=batch, seed=5,
                                 augment=False, samples_per_image=per_image)
    patches = np.concatenate(take(dataset, 6))

    def origin(patch):
        (image_index, _), = find_sources(patch, sources)
        return image_index

    epochs = [[origin(p) for p in patches[:21]], [origin(p) for p in patches[21:]]]
    for epoch in epochs:
        assert np.bincount(epoch, minlength=len(paths)).tolist() == [per_image] * len(paths)
    assert epochs[0] != epochs[1]  # a new permutation each epoch
    assert not np.array_equal(patches[:21], patches[21:])


def test_host_shards_are_disjoint_and_cover(paths):
    shards = [shard_paths(paths, seed=11, shard_index=i, shard_count=3) for i in range(3)]
    assert sorted(sum(shards, [])) == paths
    assert all(len(s) >= 2 for s in shards)

    # The stream of host i only ever shows host i's images.
    sources = {p: read_rgb_uint8(p) for p in paths}
    for index, shard in enumerate(shards):
        dataset = make_train_dataset(paths, patch_size=PATCH, batch_size=8, seed=11,
                                     shard_index=index, shard_count=3)
        others = [sources[p] for p in paths if p not in shard]
        for patch in take(dataset, 1)[0]:
            assert find_sources(patch, [sources[p] for p in shard])
            assert not find_sources(patch, others)


def test_fewer_images_than_hosts_share_images_with_different_crops(paths):
    few = paths[:2]
    assert shard_paths(few, seed=0, shard_index=2, shard_count=4) == few
    streams = [take(make_train_dataset(few, patch_size=PATCH, batch_size=4, seed=0,
                                       shard_index=i, shard_count=4), 2) for i in range(4)]
    flat = [np.concatenate(s).tobytes() for s in streams]
    assert len(set(flat)) == 4


def test_too_small_image_error_names_file(image_folder, paths):
    small = image_folder / "tiny_one.png"
    iio.imwrite(small, np.zeros((6, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="tiny_one.png") as error:
        make_train_dataset(paths + [str(small)], patch_size=PATCH, batch_size=2, seed=0)
    assert "6x40" in str(error.value)


@pytest.mark.parametrize("kwargs", [dict(patch_size=0), dict(batch_size=-1), dict(seed=-3),
                                    dict(shard_index=2, shard_count=2)])
def test_bad_arguments_are_named(paths, kwargs):
    arguments = dict(patch_size=PATCH, batch_size=2, seed=0) | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_train_dataset(paths, **arguments)


# ---------------------------------------------------------------- validation crops

def test_validation_set_centre_crops(paths):
    crops = load_validation_set(paths, size=12, scale=3, max_images=4)
    assert crops.shape == (4, 12, 12, 3) and crops.dtype == np.float32
    np.testing.assert_array_equal(crops, load_validation_set(paths, size=12, scale=3,
                                                             max_images=4))
    for crop, path in zip(crops, paths[:4]):
        image = read_rgb_uint8(path).astype(np.float64) / 255.0
        top = (image.shape[0] - 12) // 2 // 3 * 3
        left = (image.shape[1] - 12) // 2 // 3 * 3
        np.testing.assert_allclose(crop, image[top:top + 12, left:left + 12], atol=1e-6)
    assert load_validation_set(paths, size=12, scale=3, max_images=100).shape[0] == len(paths)
    with pytest.raises(ValueError, match="scale"):
        load_validation_set(paths, size=13, scale=3, max_images=2)
