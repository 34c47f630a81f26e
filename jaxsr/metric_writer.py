"""Training metrics: `metrics.jsonl` always, TensorBoard event files alongside."""
from __future__ import annotations

import json
import os

import jax


class MetricWriter:
    """JSONL always (one object per line, `step` included), TensorBoard when tensorboardX is installed."""

    def __init__(self, workdir: str, resume_step: int):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = jax.process_index() == 0
        self.tb = None
        if not self.enabled:
            return
        if os.path.exists(self.path):  # drop lines a killed run wrote after its last checkpoint
            with open(self.path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(kept)
        try:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:
            pass

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in values.items()}}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, float(v), int(step))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
