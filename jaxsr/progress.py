"""jaxsr's one progress line (training, preparing and verifying a store): a bar, the count, the
rate and the time left, rewritten in place. At the bottom of the layers: imports nothing from jaxsr."""
from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def line(done: int, total: int, rate: float, *, label: str = "", unit: str = "it", note: str = "",
         width: int = 30) -> str:
    """`label [#####.....] done/total note, rate unit/s, ETA t` (rate: units per second so far)."""
    filled = int(width * min(done, total) / total) if total > 0 else width
    eta = _duration((total - done) / rate) if rate > 0 else "?"
    parts = [label, f"[{'#' * filled}{'.' * (width - filled)}]", f"{done}/{total}", note]
    return " ".join(p for p in parts if p) + f", {rate:.2f} {unit}/s, ETA {eta}"


def show(text: str, stream: TextIO | None = None) -> None:
    """Rewrite the current terminal line with `text` (stderr by default)."""
    stream = stream or sys.stderr
    stream.write(f"\r{text}  ")
    stream.flush()


class Progress:
    """A progress line for `total` units of work, redrawn at most every `interval` seconds (and
    always at the end); with `enabled=False`, or nothing to do, it draws nothing."""

    def __init__(self, total: int, *, label: str = "", unit: str = "it", enabled: bool = True,
                 interval: float = 0.5, stream: TextIO | None = None):
        self.total, self.label, self.unit, self.interval, self.stream = total, label, unit, interval, stream
        self.enabled = enabled and total > 0
        self.done, self.note = 0, ""
        self.start = time.time()
        self._drawn_at = float("-inf")
        if self.enabled:
            self._draw()

    def update(self, count: int = 1, note: str | None = None) -> None:
        """`count` more units done; `note` (e.g. "3 failed") replaces the previous one. The first
        units and the last are always drawn (the first: the moment work starts to come out)."""
        first = self.done == 0
        self.done += count
        self.note = self.note if note is None else note
        if self.enabled and (first or self.done >= self.total or time.time() - self._drawn_at >= self.interval):
            self._draw()

    def _draw(self) -> None:
        now = time.time()
        self._drawn_at = now
        rate = self.done / max(now - self.start, 1e-9)
        show(line(self.done, self.total, rate, label=self.label, unit=self.unit, note=self.note), self.stream)

    def close(self) -> None:
        if self.enabled:
            self._draw()
            (self.stream or sys.stderr).write("\n")
