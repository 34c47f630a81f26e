"""Training metrics: `metrics.jsonl` and TensorBoard event files (`tensorboard/`), side by side.

TensorBoard files are written with tensorboardX, a declared dependency that needs neither
TensorFlow nor PyTorch. Every scalar written to `metrics.jsonl` is also written as a
TensorBoard scalar of the same name; `write_image` adds the validation grid as an image
summary.
"""
from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np


def _summary_writer_class(logdir: str):
    """tensorboardX's SummaryWriter, imported on first use (`--mode=eval` never needs it) without
    what jaxsr does not use. tensorboardX imports PyTorch where it is installed, only to accept its
    tensors (~1 s), and boto3, only for s3:// log folders (~0.2 s); each is hidden from that import
    unless already loaded (or, for boto3, the folder is on S3), so tensorboardX takes NumPy arrays
    and local or gs:// folders."""
    hidden = [name for name in ("torch", "boto3") if name not in sys.modules
              and not (name == "boto3" and logdir.startswith("s3://"))]
    for name in hidden:
        sys.modules[name] = None  # makes `import name` fail inside tensorboardX
    try:
        from tensorboardX import SummaryWriter
    finally:
        for name in hidden:
            del sys.modules[name]
    return SummaryWriter


def _step(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a blank line or one torn by a kill."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class MetricWriter:
    """JSONL (one object per line, `step` included) and TensorBoard events, first host only.

    On resume (`resume_step` > 0), lines that a killed run wrote after its last checkpoint are
    dropped from `metrics.jsonl` (the file is rewritten atomically), and TensorBoard is told to
    discard that run's events from step `resume_step + 1` on, so neither shows a step twice.
    """

    def __init__(self, workdir: str, resume_step: int):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = jax.process_index() == 0
        self.tb = None
        if not self.enabled:
            return
        if os.path.exists(self.path):  # drop lines a killed run wrote after its last checkpoint
            with open(self.path) as f:
                kept = [line for line in f if _step(line) is not None and _step(line) <= resume_step]
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)  # never a half-written metrics.jsonl
        self.tb = _summary_writer_class(workdir)(os.path.join(workdir, "tensorboard"),
                                purge_step=resume_step + 1 if resume_step > 0 else None)

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in values.items()}}) + "\n")
        for k, v in values.items():
            self.tb.add_scalar(k, float(v), int(step))
        self.tb.flush()

    def write_image(self, step: int, tag: str, image) -> None:
        """An (H, W, 3) or (H, W) float image in [0, 1] as a TensorBoard image summary."""
        if not self.enabled:
            return
        image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
        if image.ndim == 2:
            image = image[..., None]
        self.tb.add_image(tag, image, int(step), dataformats="HWC")
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
