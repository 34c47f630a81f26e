"""The evaluation image size `jaxsr.aot` checks the predict function at, and how many predict
programs a configured evaluation compiles."""
from __future__ import annotations

import glob
import math
import os

from PIL import Image

from jaxsr import paired
from jaxsr.data import datasets
from jaxsr.predict import group_by_size, padded_size

DEFAULT_EVAL_HR = 512  # HR side of the fallback evaluation image (Set5's largest, baby, is 512x512)
CASES_PER_IMAGE = {"gaussian8": 8, "kxnet": 8, "setting2": 1, "paired": 1}  # LR inputs one image makes


def _image_sizes(folder: str) -> list[tuple[int, int, str]]:
    sizes = []
    for path in sorted(glob.glob(os.path.join(folder, "*"))):
        if os.path.splitext(path)[1].lower() not in datasets.IMAGE_SUFFIXES:
            continue
        try:
            with Image.open(path) as im:
                w, h = im.size
        except OSError:
            continue
        sizes.append((h, w, path))
    return sizes


def eval_lr_sizes(cfg) -> list[list[tuple[int, int, str]]]:
    """The (h, w, file) of every LR image the config's evaluation feeds the model, one list per
    set; [] when the images are not on this machine. HR // scale for the degrading protocols;
    the lr_x<scale>/ files of a DIV2KRK-style root, or eval.lr_dir, for "paired"."""
    scale = int(cfg.scale)
    dirs = [cfg.eval.dirs] if isinstance(cfg.eval.dirs, str) else list(cfg.eval.dirs)
    try:
        if cfg.eval.get("protocol", "gaussian8") == "paired":
            folders = [cfg.eval.lr_dir] if cfg.eval.get("lr_dir") else [
                paired.div2krk_dirs(datasets.resolve_benchmark(d, "eval.dirs"), scale)[1] for d in dirs]
            sets = [_image_sizes(str(folder)) for folder in folders]
        else:
            sets = [[(h // scale, w // scale, p) for h, w, p in _image_sizes(datasets.resolve_benchmark(d, "eval.dirs"))]
                    for d in dirs]
    except (ValueError, OSError):
        return []
    return [s for s in sets if s]


def _settings(cfg) -> tuple[int, int]:
    return int(cfg.eval.get("bucket", 1) or 1), int(cfg.eval.get("max_batch", 1) or 1)


def count_programs(cfg, sets: list[list[tuple[int, int, str]]] | None = None) -> dict | None:
    """How many predict programs `jaxsr.evaluate` compiles for the config's evaluation: its
    distinct input shapes (batch, h, w) over all sets (a shape repeated across sets compiles
    once in a process), as `run_cases` forms them from eval.bucket and eval.max_batch. Also the
    number of images and of distinct exact LR sizes. None when the images are not here."""
    sets = eval_lr_sizes(cfg) if sets is None else sets
    if not sets:
        return None
    bucket, max_batch = _settings(cfg)
    per_image = CASES_PER_IMAGE.get(cfg.eval.get("protocol", "gaussian8"), 1)
    shapes = set()
    for images in sets:
        for size, members in group_by_size([(h, w) for h, w, _ in images], bucket).items():
            shapes.add((min(max_batch, per_image * len(members)), *size))
    exact = {(h, w) for images in sets for h, w, _ in images}
    return {"programs": len(shapes), "lr_sizes": len(exact), "images": sum(map(len, sets)), "sets": len(sets),
            "bucket": bucket, "max_batch": max_batch}


def programs_line(counted: dict | None) -> str:
    """The count of `count_programs` in words, for the report."""
    if counted is None:
        return "evaluation images not found here: the number of eval programs is unknown"
    mode = ("exact: each image alone at its own size" if counted["bucket"] == 1 and counted["max_batch"] == 1 else
            f"eval.bucket={counted['bucket']}, eval.max_batch={counted['max_batch']}: not image-by-image scores")
    return (f"a configured evaluation compiles {counted['programs']} predict program(s): {counted['images']} "
            f"image(s) in {counted['sets']} set(s), {counted['lr_sizes']} distinct LR size(s); {mode}")


def eval_lr_size(cfg) -> tuple[tuple[int, int], str]:
    """((h, w), why): the largest LR image the config's evaluation feeds the model (padded to a
    multiple of cfg.eval.bucket when that opt-in is set, as `jaxsr.evaluate` pads it), from the
    images of `eval_lr_sizes`; without them an HR image of 512x512 (Set5's largest) is assumed,
    i.e. an LR of ceil(512 / scale) on each side."""
    bucket, _ = _settings(cfg)
    padding = f", padded to a multiple of eval.bucket={bucket}" if bucket > 1 else ", its own size"
    candidates = [c for images in eval_lr_sizes(cfg) for c in images]
    if candidates:
        h, w, path = max(candidates, key=lambda c: (math.prod(padded_size(c[0], c[1], bucket)), c[0], c[1]))
        return padded_size(h, w, bucket), f"largest evaluation LR: {os.path.basename(path)} ({h}x{w}{padding})"
    side = math.ceil(DEFAULT_EVAL_HR / int(cfg.scale))
    return padded_size(side, side, bucket), (
        f"evaluation images not found here: LR ceil({DEFAULT_EVAL_HR}/{cfg.scale})={side} "
        f"(a {DEFAULT_EVAL_HR}x{DEFAULT_EVAL_HR} HR image, Set5's largest{padding})")
