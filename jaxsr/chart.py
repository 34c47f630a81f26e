"""A grouped bar chart of an evaluation: PSNR per test kernel, bicubic beside the model.

Drawn with Pillow (already needed to decode images) rather than a plotting library; the
result is a float (H, W, 3) image for `jaxsr.io.write_image`.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BICUBIC_COLOR = (160, 160, 172)  # tinted: never an anti-aliased shade of the black text
MODEL_COLOR = (31, 119, 180)
_ASCII = {"σ": "sigma ", "θ": "theta ", "°": "deg"}  # the default font has no Greek letters


def _ascii(label: str) -> str:
    for symbol, text in _ASCII.items():
        label = label.replace(symbol, text)
    return label.replace(" =", "=")


def _wrap(text: str, font, width: float) -> list[str]:
    """Words of `text` on as few lines as fit `width` pixels (a long word gets its own line)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _tick_step(span: float) -> float:
    for step in (0.5, 1.0, 2.0, 5.0, 10.0, 20.0):
        if span / step <= 8:
            return step
    return 50.0


def psnr_chart(result: dict, title: str) -> np.ndarray:
    """Bars of bicubic and model PSNR (Y) for every test kernel of `result` (what
    `jaxsr.evaluate.evaluate` returns) and their mean, with the gain written above each pair."""
    rows = [(_ascii(r["label"]), r["bicubic_psnr"], r["psnr"]) for r in result["kernels"]]
    rows.append(("mean", result["mean"]["bicubic_psnr"], result["mean"]["psnr"]))
    values = [v for _, b, m in rows for v in (b, m) if v is not None and math.isfinite(v)]
    if not values:
        values = [0.0, 1.0]
    step = _tick_step(max(values) - min(values) + 2.0)
    low = math.floor((min(values) - 1.0) / step) * step  # bars start at `low`, not at 0 dB
    high = math.ceil((max(values) + 0.5) / step) * step

    font = ImageFont.load_default(size=13)
    small = ImageFont.load_default(size=11)
    bar, group = 22, 70
    labels = [_wrap(label, small, group - 6) for label, _, _ in rows]
    left, right, top, plot_h = 64, 24, 64, 260
    bottom = 20 + 13 * max(len(lines) for lines in labels)
    width = max(520, left + right + group * len(rows) + 16)
    height = top + plot_h + bottom
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)

    def y_of(value: float) -> float:
        return top + plot_h * (1.0 - (value - low) / (high - low))

    draw.text((left, 8), title, fill="black", font=font)
    for i, (name, color) in enumerate((("bicubic", BICUBIC_COLOR), ("model", MODEL_COLOR))):
        x = left + i * 110
        draw.rectangle((x, 32, x + 14, 44), fill=color)
        draw.text((x + 20, 31), name, fill="black", font=font)
    draw.text((left + 230, 31), "PSNR on Y (dB); gain above each pair", fill="black", font=small)

    tick = low
    while tick <= high + 1e-9:
        y = y_of(tick)
        draw.line((left, y, width - right, y), fill=(225, 225, 225))
        draw.text((left - 8, y), f"{tick:g}", fill="black", font=small, anchor="rm")
        tick += step
    draw.line((left, top, left, top + plot_h), fill="black")
    draw.line((left, top + plot_h, width - right, top + plot_h), fill="black")

    for g, ((label, bicubic, model), lines) in enumerate(zip(rows, labels)):
        x0 = left + 16 + g * group + (8 if label == "mean" else 0)
        for i, (value, color) in enumerate(((bicubic, BICUBIC_COLOR), (model, MODEL_COLOR))):
            if value is None or not math.isfinite(value):
                continue
            x = x0 + i * (bar + 2)
            draw.rectangle((x, y_of(min(max(value, low), high)), x + bar, top + plot_h), fill=color)
        if None not in (bicubic, model) and math.isfinite(bicubic) and math.isfinite(model):
            draw.text((x0 + bar + 1, y_of(min(max(bicubic, model), high)) - 3), f"{model - bicubic:+.2f}",
                      fill="black", font=small, anchor="mb")
        for n, line in enumerate(lines):
            draw.text((x0 + bar + 1, top + plot_h + 6 + 13 * n), line, fill="black", font=small, anchor="ma")
    if len(rows) > 1:  # the mean is set apart
        x = left + 16 + (len(rows) - 1) * group - 6
        draw.line((x, top, x, top + plot_h), fill=(120, 120, 120))
    return np.asarray(canvas, np.float32) / 255.0
