"""Published test files: LR images beside their HR images, optionally with ground-truth kernels.

This module only finds and reads files; `jaxsr.evaluate.evaluate_paired` scores a model on them.
`paired_sets` finds the sets an `eval` config section names (`eval.protocol=paired`), `check_files`
checks every pair's sizes from the file headers, and `read_pair` reads one pair for scoring.

**Matching rule.** Every file gets a *name key*: its stem in lower case with scale and role tags
stripped, repeatedly, from the end (``x2`` / ``x3`` / ``x4`` with or without a ``_`` / ``-`` / ``.``
before it; ``_gt``, ``_hr``, ``_lr``, ``_lq``, ``_kernel``, ``_bicubic`` only after such a separator)
and role tags from the start (``gt_``, ``hr_``, ``lr_``, ``lq_``, ``kernel_``). So ``baby.png``,
``baby_x4.png``, ``babyx4.png`` and ``baby_LR.png`` all have the key ``baby``, and DIV2K's
``0801.png`` / ``0801x4.png`` the key ``0801``.

1. If the name keys are unique in every folder and the same set in all of them, files pair by name key.
2. Otherwise, if every file's name key contains digits and these *numbers* are unique in every folder,
   files pair by number: the longest run of digits in the name key (the last one on a tie), read as
   an integer, so ``img_1_gt.png``, ``im_1.png``, ``img_001.png`` and ``kernel_1.mat`` are all image 1.
3. Otherwise, or when some file has no partner, the error lists every unmatched file of every folder.

Pairs come out ordered by number (rule 2) or by the HR file name (rule 1).

**DIV2KRK** (KernelGAN, Bell-Kligler et al., NeurIPS 2019). Its public zip (README in the zip and the
public scripts that read it) holds, under one root folder:

    gt/        100 DIV2K validation HR images, img_1_gt.png ... img_100_gt.png
    lr_x2/     the HR images downscaled x2 with their own random kernels, im_1.png ... im_100.png
    lr_x4/     the same at x4
    gt_k_x2/   the x2 kernels, kernel_1.mat ... kernel_100.mat (11 x 11; MATLAB variable "Kernel")
    gt_k_x4/   the x4 kernels (31 x 31)

`div2krk_dirs(root, scale)` picks the three folders for a scale from that root (or from
``root/DIV2KRK`` when the zip's top folder was kept). Only the folder names ``gt``, ``lr_x<s>`` and
``gt_k_x<s>`` are relied on; the file names are matched by the rule above. The kernels are used as
shipped: KernelGAN's generator shifts each kernel's centre of mass by (s - 1)/2 pixels off the
geometric centre (to match its downsampler), and no re-centring is done here.

**Kernel files** (`read_kernel`): ``.mat`` (scipy.io.loadmat; MATLAB v7.3 / HDF5 files are not
supported) -- the variable ``Kernel`` (DIV2KRK's), else ``kernel``, ``K`` or ``k``, else the only
variable holding a 2-D numeric array; ``.npy`` (a 2-D array, or one with extra axes of length 1);
``.png`` and the other image formats (read as gray). Every kernel must be square with an odd size,
finite, with a positive sum, and is divided by its sum (sum 1).
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from jaxsr import io
from jaxsr.data import datasets

KERNEL_SUFFIXES = (".mat", ".npy", *io.IMAGE_SUFFIXES)
MAT_KERNEL_KEYS = ("Kernel", "kernel", "K", "k")

_TAIL_SCALE = re.compile(r"[_\-. ]?x[234]$")
_TAIL_TAG = re.compile(r"[_\-. ](?:gt|hr|lr|lq|kernel|bicubic)$")
_HEAD_TAG = re.compile(r"^(?:gt|hr|lr|lq|kernel)[_\-. ]")
_MAX_LISTED = 20


@dataclasses.dataclass(frozen=True)
class Pair:
    """One test image: its HR file, its LR file and its ground-truth kernel file (or None)."""
    name: str                # the HR file's stem
    hr: Path
    lr: Path
    kernel: Path | None = None


def name_key(stem: str) -> str:
    """The stem in lower case without scale / role tags (see the module doc)."""
    key = stem.lower()
    while True:
        stripped = _HEAD_TAG.sub("", _TAIL_TAG.sub("", _TAIL_SCALE.sub("", key)))
        if stripped == key or not stripped:
            return key
        key = stripped


def number_key(stem: str) -> int | None:
    """The longest run of digits in `name_key(stem)` (the last on a tie) as an int, or None."""
    runs = re.findall(r"\d+", name_key(stem))
    if not runs:
        return None
    return int(max(reversed(runs), key=len))


def _listing(paths) -> str:
    names = [p.name for p in paths]
    more = f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more


def _match(sides: dict[str, tuple[Path, list[Path]]]) -> list[dict[str, Path]]:
    """Pair the files of every side ({side: (folder, files)}) by name key, else by number."""
    def index(key_fn):
        table = {}
        for side, (_, files) in sides.items():
            keyed: dict = {}
            for f in files:
                keyed.setdefault(key_fn(f.stem), []).append(f)
            table[side] = keyed
        return table

    by_name = index(name_key)
    unique = all(len(v) == 1 for keyed in by_name.values() for v in keyed.values())
    if unique and len({frozenset(keyed) for keyed in by_name.values()}) == 1:
        hr = sides["HR"][1]
        return [{side: by_name[side][name_key(f.stem)][0] for side in sides} for f in hr]

    by_number = index(number_key)
    numbered = all(None not in keyed and all(len(v) == 1 for v in keyed.values())
                   for keyed in by_number.values())
    table = by_number if numbered else by_name
    rule = "image number" if numbered else "name"
    problems = []
    if not numbered and not unique:
        for side, keyed in by_name.items():
            clashes = [f for v in keyed.values() if len(v) > 1 for f in v]
            if clashes:
                problems.append(f"{side} files in {sides[side][0]} share a name after stripping scale tags "
                                f"and carry no unique image number: {_listing(clashes)}")
    common = set.intersection(*(set(keyed) for keyed in table.values()))
    for side, keyed in table.items():
        lonely = sorted(f for key, v in keyed.items() if key not in common for f in v)
        if lonely:
            others = " / ".join(s for s in sides if s != side)
            problems.append(f"{side} files in {sides[side][0]} with no {others} partner (matched by {rule}): "
                            f"{_listing(lonely)}")
    if problems:
        raise ValueError("paired evaluation: the files do not pair up (see jaxsr.paired for the matching "
                         "rule):\n  " + "\n  ".join(problems))
    return [{side: table[side][key][0] for side in sides} for key in sorted(common)]


def list_kernels(folder: str | Path) -> list[Path]:
    """Kernel files (.mat, .npy, images) in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"kernel folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in KERNEL_SUFFIXES)
    if not files:
        raise ValueError(f"no kernel files ({', '.join(KERNEL_SUFFIXES)}) in {folder}")
    return files


def find_pairs(hr_dir: str | Path, lr_dir: str | Path, kernel_dir: str | Path | None = None) -> list[Pair]:
    """The (HR, LR, kernel) files of the folders, matched by the module's rule; an error lists
    the files without a partner."""
    sides = {"HR": (Path(hr_dir), io.list_images(hr_dir)), "LR": (Path(lr_dir), io.list_images(lr_dir))}
    if kernel_dir:
        sides["kernel"] = (Path(kernel_dir), list_kernels(kernel_dir))
    return [Pair(m["HR"].stem, m["HR"], m["LR"], m.get("kernel")) for m in _match(sides)]


def _div2krk_base(root: Path) -> Path | None:
    for base in (root, root / "DIV2KRK"):
        if (base / "gt").is_dir() and any(base.glob("lr_x[0-9]")):
            return base
    return None


def div2krk_dirs(root: str | Path, scale: int) -> tuple[Path, Path, Path | None]:
    """(HR folder, LR folder, kernel folder or None) of a DIV2KRK root for `scale`."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"DIV2KRK folder {root} does not exist")
    base = _div2krk_base(root)
    if base is None:
        found = sorted(p.name + "/" for p in root.iterdir() if p.is_dir())
        raise ValueError(f"{root} is not in DIV2KRK's layout: expected gt/ and lr_x{scale}/ (and gt_k_x{scale}/ "
                         f"for the kernels) in it; found {found or 'no folders'}")
    lr = base / f"lr_x{scale}"
    if not lr.is_dir():
        found = sorted(p.name + "/" for p in base.glob("lr_x[0-9]"))
        raise FileNotFoundError(f"{base} has no lr_x{scale}/ folder for scale {scale} (DIV2KRK ships x2 and x4); "
                                f"found {found}")
    kernels = base / f"gt_k_x{scale}"
    return base / "gt", lr, (kernels if kernels.is_dir() else None)


def _mat_kernel(path: Path) -> np.ndarray:
    import scipy.io

    try:
        variables = scipy.io.loadmat(path)
    except NotImplementedError as error:  # MATLAB v7.3 (HDF5)
        raise ValueError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save with -v7 ({error})") from None
    except Exception as error:
        raise ValueError(f"could not read {path} as a MATLAB file: {error}") from error
    data = {k: v for k, v in variables.items() if not k.startswith("__")}
    for key in MAT_KERNEL_KEYS:
        if key in data:
            return np.asarray(data[key])
    arrays = [k for k, v in data.items()
              if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.number) and np.squeeze(v).ndim == 2]
    if len(arrays) == 1:
        return np.asarray(data[arrays[0]])
    raise ValueError(f"{path}: no kernel variable; expected one of {MAT_KERNEL_KEYS} or a single 2-D array, "
                     f"found variables {sorted(data)}")


def read_kernel(path: str | Path) -> np.ndarray:
    """A ground-truth kernel file as a float32 (k, k) array with sum 1 (formats: module doc)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no kernel file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".mat":
        kernel = _mat_kernel(path)
    elif suffix == ".npy":
        try:
            kernel = np.load(path, allow_pickle=False)
        except Exception as error:
            raise ValueError(f"could not read {path} as a NumPy array: {error}") from error
    elif suffix in io.IMAGE_SUFFIXES:
        kernel = io.read_image(path, mode="gray")
    else:
        raise ValueError(f"{path}: unsupported kernel file type; use one of {KERNEL_SUFFIXES}")
    kernel = np.squeeze(np.asarray(kernel))
    if not np.issubdtype(kernel.dtype, np.number) or kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] \
            or kernel.shape[0] % 2 == 0:
        raise ValueError(f"{path}: a kernel must be a square 2-D array with an odd size, got shape "
                         f"{kernel.shape} ({kernel.dtype})")
    kernel = kernel.astype(np.float64)
    total = float(kernel.sum())
    if not np.all(np.isfinite(kernel)) or not total > 0:
        raise ValueError(f"{path}: a kernel must be finite with a positive sum, got sum {total}")
    return (kernel / total).astype(np.float32)


# --------------------------------------------------------------------------- sets of a config

def set_name(entry: str, folder: str | Path) -> str:
    """The name of a set in report file names: "benchmark:DIV2KRK/gt" -> "DIV2KRK_gt", a
    plain folder -> its last component."""
    if entry.startswith(datasets.BENCHMARK + ":"):
        return entry[len(datasets.BENCHMARK) + 1:].strip("/").replace("/", "_")
    return os.path.basename(os.path.normpath(folder))


def _explicit_set(settings: Mapping, need_kernels: bool) -> tuple[str, list[Pair]]:
    for key in ("lr_dir", "hr_dir", "kernel_dir"):  # config_lib.PAIRED_KEYS
        if settings.get(key) and not os.path.isdir(settings[key]):
            raise FileNotFoundError(f"config key eval.{key}: folder {settings[key]!r} does not exist")
    if need_kernels and not settings.get("kernel_dir"):
        raise ValueError("config key eval.kernel_dir is empty, but eval.oracle_kernel=True gives the model the "
                         "ground-truth kernels; set eval.kernel_dir or eval.oracle_kernel=False")
    name = os.path.basename(os.path.normpath(settings["lr_dir"]))
    return name, find_pairs(settings["hr_dir"], settings["lr_dir"], settings.get("kernel_dir") or None)


def paired_sets(settings: Mapping, scale: int) -> list[tuple[str, list[Pair]]]:
    """(set name, pairs) of `eval.protocol=paired`; `settings` is a config's `eval` section.

    `eval.lr_dir` + `eval.hr_dir` (+ `eval.kernel_dir`) are one set named after the LR folder;
    otherwise every entry of `eval.dirs` is a root in DIV2KRK's layout, named after the root.
    Files are matched here, before any model is loaded, so a missing or unmatched file fails
    fast; `eval.oracle_kernel` needs every set to ship its kernels."""
    need_kernels = bool(settings.get("oracle_kernel", False))
    if settings.get("lr_dir"):
        return [_explicit_set(settings, need_kernels)]
    if not settings.get("dirs"):
        raise ValueError("config key eval.dirs is empty; eval.protocol=paired needs eval.lr_dir and eval.hr_dir, "
                         "or DIV2KRK-style roots in eval.dirs")
    sets = []
    for entry in settings["dirs"]:
        root = datasets.resolve_benchmark(entry, key="eval.dirs")
        try:
            hr_dir, lr_dir, kernel_dir = div2krk_dirs(root, scale)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"config key eval.dirs: {error}. With eval.protocol=paired an entry of eval.dirs is a "
                              f"DIV2KRK-style root; for other layouts set eval.lr_dir and eval.hr_dir") from None
        if need_kernels and kernel_dir is None:
            raise ValueError(f"config key eval.oracle_kernel=True needs ground-truth kernels, but {root} has no "
                             f"gt_k_x{scale}/ folder")
        sets.append((set_name(entry, root), find_pairs(hr_dir, lr_dir, kernel_dir)))
    return sets


# --------------------------------------------------------------------------- reading for scoring

def stored_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    try:
        shape = iio.improps(path, index=0).shape
    except Exception as error:  # imageio raises several types depending on the plugin
        raise ValueError(f"could not read {path} as an image: {error}") from error
    return int(shape[0]), int(shape[1])


def _check_sizes(pair: Pair, hr_size: tuple[int, int], lr_size: tuple[int, int], scale: int) -> None:
    (big_h, big_w), (h, w) = hr_size, lr_size
    cropped = (big_h - big_h % scale, big_w - big_w % scale)
    if cropped != (scale * h, scale * w):
        raise ValueError(f"LR file {pair.lr} is {h}x{w} but HR file {pair.hr} is {big_h}x{big_w} "
                         f"(mod-cropped {cropped[0]}x{cropped[1]}); at x{scale} the LR must be "
                         f"{cropped[0] // scale}x{cropped[1] // scale}")


def check_files(pairs: Sequence[Pair], scale: int) -> list[tuple[int, int]]:
    """The LR (height, width) of every pair, each HR size checked against it (mod-cropped to a
    multiple of `scale`, it must be exactly `scale` times the LR) and every kernel file found,
    all from the file headers: a bad file fails before a model runs or a pixel is decoded."""
    sizes = []
    for pair in pairs:
        lr_size = stored_size(pair.lr)
        _check_sizes(pair, stored_size(pair.hr), lr_size, scale)
        if pair.kernel is not None and not pair.kernel.is_file():
            raise FileNotFoundError(f"no kernel file at {pair.kernel}")
        sizes.append(lr_size)
    return sizes


def _same_channels(pair: Pair, hr: np.ndarray, lr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A gray image stored as RGB (equal channels) is reduced to gray to match its partner."""
    if hr.shape[-1] == lr.shape[-1]:
        return hr, lr

    def gray(image, path):
        if np.array_equal(image[..., :1], image[..., 1:2]) and np.array_equal(image[..., :1], image[..., 2:]):
            return image[..., :1]
        raise ValueError(f"{pair.hr} has {hr.shape[-1]} channel(s) and {pair.lr} has {lr.shape[-1]}; "
                         f"{path} is not gray, so they cannot be compared")

    return (gray(hr, pair.hr), lr) if hr.shape[-1] == 3 else (hr, gray(lr, pair.lr))


def read_pair(pair: Pair, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(HR, LR, kernel or None) of one pair: the HR mod-cropped and checked against the LR size,
    a gray image stored as RGB matched to its gray partner, the kernel read with sum 1."""
    hr = io.read_image(pair.hr, mode="keep")
    lr = io.read_image(pair.lr, mode="keep")
    _check_sizes(pair, hr.shape[:2], lr.shape[:2], scale)
    hr, lr = _same_channels(pair, io.mod_crop(hr, scale), lr)
    kernel = None if pair.kernel is None else read_kernel(pair.kernel)
    return hr, lr, kernel
