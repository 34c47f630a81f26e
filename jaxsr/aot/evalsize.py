"""The evaluation image size `jaxsr.aot` checks the predict function at."""
from __future__ import annotations

import glob
import math
import os

from PIL import Image

from jaxsr.data import datasets

DEFAULT_EVAL_HR = 512  # HR side of the fallback evaluation image (Set5's largest, baby, is 512x512)


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


def eval_lr_size(cfg) -> tuple[tuple[int, int], str]:
    """((h, w), why): the largest LR image the config's evaluation feeds the model, padded to a
    multiple of cfg.eval.bucket as `jaxsr.evaluate` pads it.

    The evaluation images are read from cfg.eval.dirs when they are on this machine (HR // scale
    for the degrading protocols; the lr_x<scale>/ files of a DIV2KRK-style root or eval.lr_dir
    for "paired"); otherwise an HR image of 512x512 (Set5's largest) is assumed, i.e. an LR of
    ceil(512 / scale) on each side."""
    scale = int(cfg.scale)
    bucket = int(cfg.eval.get("bucket", 16) or 1)
    protocol = cfg.eval.get("protocol", "gaussian8")
    candidates: list[tuple[int, int, str]] = []
    try:
        if protocol == "paired":
            folders = [cfg.eval.lr_dir] if cfg.eval.get("lr_dir") else [
                os.path.join(datasets.resolve_benchmark(d, "eval.dirs"), f"lr_x{scale}") for d in cfg.eval.dirs]
            for folder in folders:
                candidates += _image_sizes(folder)
        else:
            for d in cfg.eval.dirs:
                candidates += [(h // scale, w // scale, p) for h, w, p in _image_sizes(datasets.resolve_benchmark(d, "eval.dirs"))]
    except (ValueError, OSError):
        candidates = []
    pad = lambda n: n + -n % bucket
    if candidates:
        h, w, path = max(candidates, key=lambda c: (pad(c[0]) * pad(c[1]), c[0], c[1]))
        return (pad(h), pad(w)), (f"largest evaluation LR: {os.path.basename(path)} ({h}x{w}, padded to a multiple "
                                  f"of eval.bucket={bucket})")
    side = math.ceil(DEFAULT_EVAL_HR / scale)
    return (pad(side), pad(side)), (f"evaluation images not found here: LR ceil({DEFAULT_EVAL_HR}/{scale})={side} "
                                    f"(a {DEFAULT_EVAL_HR}x{DEFAULT_EVAL_HR} HR image, Set5's largest), padded to "
                                    f"a multiple of eval.bucket={bucket}")
