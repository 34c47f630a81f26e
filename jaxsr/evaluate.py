"""The test protocols: degrade HR images (or read published LR files), super-resolve, score.

A model enters only as a *predict function* (`jaxsr.predict.PredictFn`)::

    predict_fn(lr: (N, h, w, 3) float32 in [0, 1]) -> (sr: (N, s*h, s*w, 3), kernel: (N, k, k) | None)

Protocols (`PROTOCOLS`):

* ``"gaussian8"``: setting 1 of IKC/DAN. For each of the 8 Gaussian8 kernels of the scale:
  mod-crop HR to a multiple of s, blur (reflect padding), MATLAB bicubic x1/s, LR rounded to
  uint8 levels.
* ``"setting2"``: one random anisotropic setting-2 kernel per image (`degrade.setting2`),
  drawn from `seed` and the image's index, so a run is reproducible; bicubic x1/s, uint8.
  (This mimics DIV2KRK's recipe; it is not the DIV2KRK files.)
* ``"kxnet"``: KXNet's 8 anisotropic test kernels, s-fold downsampling (keep the top-left
  pixel of every s x s block), AWGN of level `noise` in [0, 255] units drawn from `seed`,
  uint8.

`noise` may be given for any protocol; it is added after downsampling, before rounding.

``"paired"`` (`evaluate_paired`) reads published LR files beside their HR files (and kernels
when shipped, e.g. DIV2KRK; matched by `jaxsr.paired`); the HR, mod-cropped to a multiple of s,
must be s times the LR. Its table has one row, "paired"; the scores are the same as below.

Scores (per kernel x image): PSNR / SSIM on MATLAB's Y channel with `scale` border pixels
cropped (`jaxsr.ops.metrics`), for the model and for the bicubic baseline
``imresize(lr, scale)`` on the same LR. Gray HR images (1 channel) are degraded and scored on
their one channel; the model gets the LR replicated to RGB and its SR is turned back to gray
as the mean of its channels. Load benchmark sets with ``mode="keep"`` (`load_hr_images`) so a
gray image is scored as gray, not as the luma of a replicated RGB image.

Kernel error, when predict_fn returns kernels (k_est against the true k, both (k, k); a
smaller one is zero-padded around its centre to the larger size):

* ``kernel_mae``  = mean |k_est - k| over the taps;
* ``kernel_psnr`` = 10 log10(1 / mean((k_est - k)^2)) on the raw sum-to-one kernels, i.e.
  peak 1. This is the kernel PSNR of FKP/DIPFKP, which KENet compares against; its tables'
  values (46-61 dB) are on this scale;
* ``kernel_psnr_max`` = the same after dividing both kernels by max(k) (peak 1 = the true
  kernel's peak); stricter and independent of the kernel size.

Inputs and compiles (`input_mode`). The default (bucket=1, max_batch=1) is *exact*: every LR
reaches predict_fn alone at its own size, so each score is bit for bit that of running the model
image by image, as the official scripts do. Pairs are grouped by exact LR size (sorted), so
predict_fn compiles one program per distinct size (`num_compiled_shapes`); a size met before in
the process or in JAX's persistent compilation cache is not compiled again. Opt-in, and named
in the result's `deviation`: max_batch > 1 ("batched": the same pixels, but XLA may round
differently at another batch size) and bucket > 1 ("padded": LR mirror-padded on the
bottom/right to a multiple of `bucket`, SR cropped back; fewer sizes, but the network and a
pooling kernel estimator see the padded pixels).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from numbers import Real
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import chart, io, paired, platform, progress
from jaxsr.ops import _checks, degrade, metrics
from jaxsr.ops.metrics import kernel_errors  # noqa: F401 - the kernel error, part of this module's interface
from jaxsr.ops.imresize import imresize
from jaxsr.predict import PredictFn, group_by_size, iter_batches, pad_to_multiple

Protocol = Literal["gaussian8", "setting2", "kxnet"]
PROTOCOLS: tuple[str, ...] = ("gaussian8", "setting2", "kxnet")  # degrade HR images (`evaluate`)
PAIRED = "paired"  # published LR files (`evaluate_paired`)
METRICS = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "kernel_mae", "kernel_psnr",
           "kernel_psnr_max")
_KXNET_KERNEL_SIZE = {2: 11, 3: 15, 4: 21}


# --------------------------------------------------------------------------- protocols

@dataclasses.dataclass(frozen=True)
class _Setup:
    """What one protocol does: how to degrade, and which kernels (rows of the table)."""
    spec: degrade.DegradationSpec
    labels: tuple[str, ...]
    params: tuple[dict, ...]
    fixed_kernels: np.ndarray | None  # (K, k, k) shared by all images, or None: one per image
    seed: int

    def kernels_for(self, image_index: int) -> np.ndarray:
        if self.fixed_kernels is not None:
            return self.fixed_kernels
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), 0), image_index)
        return np.asarray(degrade.sample_kernels(key, 1, self.spec))


def _setup(protocol: str, scale: int, kernel_size: int | None, seed: int) -> _Setup:
    if protocol == "gaussian8":
        size = kernel_size or 21
        sigmas = degrade.gaussian8_sigmas(scale)
        spec = degrade.DegradationSpec(scale=scale, kernel_size=size, kernel_type="iso",
                                       downsampler="bicubic", quantize=True)
        return _Setup(spec, tuple(f"σ={s:.2f}" for s in sigmas),
                      tuple({"sigma": float(s)} for s in sigmas),
                      np.asarray(degrade.gaussian8_kernels(scale, size)), seed)
    if protocol == "setting2":
        spec = dataclasses.replace(degrade.setting2(scale, kernel_size), quantize=True)
        return _Setup(spec, (f"random aniso (seed {seed})",), ({"seed": seed},), None, seed)
    if protocol == "kxnet":
        size = kernel_size or _KXNET_KERNEL_SIZE[scale]
        spec = degrade.DegradationSpec(scale=scale, kernel_size=size, kernel_type="aniso",
                                       downsampler="sfold", quantize=True)
        pairs = [(0.8, 1.6), (2.0, 4.0)]  # the order of degrade.kxnet_test_kernels
        thetas = [0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4]
        params = tuple({"sigma_x": a, "sigma_y": b, "theta": t} for a, b in pairs for t in thetas)
        labels = tuple(f"({p['sigma_x']}, {p['sigma_y']}), θ={round(math.degrees(p['theta']))}°"
                       for p in params)
        return _Setup(spec, labels, params, np.asarray(degrade.kxnet_test_kernels(size)), seed)
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


@functools.partial(platform.jit, static_argnames=("spec",))
def _degrade(hr, kernels, spec, noise_sigma, rng):
    return degrade.apply_degradation(hr, kernels, spec, noise_sigma, rng)


@functools.partial(platform.jit, static_argnames=("spec",))
def _degrade_clean(hr, kernels, spec):
    return degrade.apply_degradation(hr, kernels, spec)


# --------------------------------------------------------------------------- scores

@functools.partial(platform.jit, static_argnames=("scale",))
def scores(sr, hr, scale: int):
    """(PSNR, SSIM) on Y with `scale` border pixels cropped, of one image or per image of a
    batch: the scores of every protocol here and of the training loop's validation."""
    return metrics.psnr(sr, hr, crop_border=scale), metrics.ssim(sr, hr, crop_border=scale)


_upscale = platform.jit(imresize, static_argnums=1)


def bicubic(lr, scale: int) -> jax.Array:
    """The bicubic baseline: MATLAB's imresize of the LR (N, h, w, C) by `scale`."""
    return _upscale(jnp.asarray(lr), float(scale))


# --------------------------------------------------------------------------- kernel error

# --------------------------------------------------------------------------- evaluation

def load_hr_images(folder: str | Path, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """(name, image) pairs of a benchmark folder, gray images kept as 1 channel."""
    files = io.list_images(folder)[:limit]
    return [(f.stem, io.read_image(f, mode="keep")) for f in files]


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """Models take RGB: a gray LR is replicated to 3 channels."""
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _mean(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def _stack_kernels(kernels: Sequence[np.ndarray]) -> np.ndarray:
    """(N, k, k): kernels of different odd sizes zero-padded around their centre to the largest."""
    size = max(k.shape[0] for k in kernels)
    return np.stack([np.pad(k, (size - k.shape[0]) // 2) for k in kernels])


@dataclasses.dataclass
class Case:
    """One (test kernel, image) pair: the HR target, the LR the model sees, the true kernel."""
    row: int                    # index of the test kernel (row of the table)
    label: str
    image: str
    hr: np.ndarray              # (H, W, 1 | 3), mod-cropped
    lr: np.ndarray              # (H/s, W/s, 1 | 3)
    kernel: np.ndarray | None   # (k, k), None when unknown
    sr: np.ndarray | None = None
    estimated_kernel: np.ndarray | None = None


def _check_hr(i: int, name: str, image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"hr_images[{i}] ({name!r}) must be (H, W, 1 | 3), got {image.shape}")
    _checks.check_float(f"hr_images[{i}]", image)
    _checks.check_finite(f"hr_images[{i}]", image)
    return image


def degrade_cases(setup: _Setup, hr_images: Sequence[tuple[str, np.ndarray]], scale: int,
                  noise: float = 0.0, seed: int = 0, only: Sequence[int] | None = None) -> list[Case]:
    """Step 1: every image (or the images at the indices `only`) degraded with every test kernel
    of the protocol; an image's kernels and noise depend on its index alone. `hr_images` as
    `evaluate` checked them ((H, W, 1 | 3), finite float)."""
    cases = []
    noise_key = jax.random.fold_in(jax.random.key(seed), 1)
    for i in range(len(hr_images)) if only is None else only:
        name, image = hr_images[i]
        kernels = setup.kernels_for(i)
        try:
            hr = io.mod_crop(image.astype(np.float32), scale)
            batch = jnp.broadcast_to(jnp.asarray(hr), (len(kernels), *hr.shape))
            if noise > 0:
                sigma = jnp.full((len(kernels),), noise, jnp.float32)
                lr = _degrade(batch, jnp.asarray(kernels), setup.spec, sigma, jax.random.fold_in(noise_key, i))
            else:
                lr = _degrade_clean(batch, jnp.asarray(kernels), setup.spec)
        except ValueError as error:  # e.g. an image smaller than the kernel: name it
            raise ValueError(f"hr_images[{i}] ({name!r}, {image.shape[0]}x{image.shape[1]}): {error}") from error
        lr = np.asarray(lr)
        cases += [Case(k, setup.labels[k], name, hr, lr[k], kernels[k]) for k in range(len(kernels))]
    return cases


def run_cases(predict_fn: PredictFn, cases: list[Case], scale: int, bucket: int, max_batch: int,
              oracle_kernel: bool = False, bar: progress.Progress | None = None) -> set[tuple[int, ...]]:
    """Step 2: the model on every case's LR, one group of equal (exact, or with bucket > 1
    padded) LR size at a time, in sorted order; fills `case.sr` (cropped back when padded, gray
    again for gray images) and `case.estimated_kernel`, counting each SR image on `bar`. Returns
    the set of compiled input shapes."""
    shapes = set()
    for indices in group_by_size([case.lr.shape[:2] for case in cases], bucket).values():
        group = [cases[i] for i in indices]
        inputs = np.stack([pad_to_multiple(_to_rgb(case.lr)[None], bucket)[0] for case in group])
        shapes.add((min(max_batch, len(group)), *inputs.shape[1:]))
        true_kernels = None
        if oracle_kernel:
            missing = [f"{c.image} ({c.label})" for c in group if c.kernel is None]
            if missing:
                raise ValueError(f"oracle_kernel=True needs the true kernel of every image; none for {missing}")
            true_kernels = _stack_kernels([c.kernel for c in group])
        for start, sr_batch, kernel_batch in iter_batches(predict_fn, inputs, max_batch, true_kernels):
            for j, sr in enumerate(sr_batch):
                case = group[start + j]
                h, w, channels = case.lr.shape
                if sr.shape[:2] != (scale * inputs.shape[1], scale * inputs.shape[2]):
                    raise ValueError(f"predict_fn returned sr of size {sr.shape[:2]} for LR "
                                     f"input {inputs.shape[1:3]} at scale {scale}")
                sr = sr[:scale * h, :scale * w]
                case.sr = sr.mean(axis=-1, keepdims=True) if channels == 1 else sr
                case.estimated_kernel = None if kernel_batch is None else kernel_batch[j]
            if bar is not None:
                bar.update(len(sr_batch))
    return shapes


def _image_bar(total: int, label: str | None) -> progress.Progress:  # drawn only with a label
    return progress.Progress(total, label=label or "", unit="img", enabled=label is not None)


def score_case(case: Case, scale: int) -> dict:
    """Step 3: PSNR/SSIM of the model and of bicubic on Y (border = scale), and the kernel error."""
    baseline = np.asarray(bicubic(case.lr[None], scale))[0]
    bicubic_psnr, bicubic_ssim = scores(baseline, case.hr, scale)
    psnr, ssim = scores(jnp.asarray(case.sr, jnp.float32), case.hr, scale)
    record = {"kernel": case.label, "image": case.image, "bicubic_psnr": float(bicubic_psnr),
              "bicubic_ssim": float(bicubic_ssim), "psnr": float(psnr), "ssim": float(ssim)}
    if case.estimated_kernel is not None and case.kernel is not None:
        record.update(kernel_errors(case.estimated_kernel, case.kernel))
    else:
        record.update(kernel_mae=None, kernel_psnr=None, kernel_psnr_max=None)
    return record


def summarize(records: list[dict], cases: list[Case], labels: Sequence[str], params: Sequence[dict]) -> dict:
    """Per-kernel rows and the overall mean of the per-case records."""
    rows = []
    for k, (label, row_params) in enumerate(zip(labels, params)):
        mine = [r for r, c in zip(records, cases) if c.row == k]
        rows.append({"label": label, "params": row_params, **{m: _mean(mine, m) for m in METRICS}})
    return {"kernels": rows, "mean": {m: _mean(records, m) for m in METRICS}}


def _check_settings(scale, kernel_size, bucket, max_batch, noise) -> int:
    scale = _checks.check_scale("scale", scale, allowed=(2, 3, 4))
    if kernel_size is not None:
        _checks.check_odd_size("kernel_size", kernel_size)
    for name, value in (("bucket", bucket), ("max_batch", max_batch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(noise, bool) or not isinstance(noise, Real) or not 0 <= noise <= 255:
        raise ValueError(f"noise must be in [0, 255] ([0, 255] units), got {noise!r}")
    return scale


def input_mode(bucket: int, max_batch: int) -> tuple[str, str | None]:
    """("exact" | "batched" | "padded", how scores may differ from an image-by-image run or None)."""
    batched = (f"images of one size ran in batches of up to {max_batch} (eval.max_batch): the same pixels, but "
               f"XLA may round differently at another batch size, so scores can differ in the last digits")
    if bucket > 1:
        return "padded", (f"scores from padded inputs: every LR was mirror-padded on the bottom/right to a multiple "
                          f"of {bucket} (eval.bucket) and the SR cropped back; the network and its kernel estimator "
                          f"saw padded pixels, so scores differ from each image at its own size"
                          + ("; " + batched if max_batch > 1 else ""))
    return ("batched", batched) if max_batch > 1 else ("exact", None)


def _run_info(bucket: int, max_batch: int, shapes: set) -> dict:
    mode, deviation = input_mode(bucket, max_batch)
    return {"bucket": bucket, "max_batch": max_batch, "input_mode": mode, "deviation": deviation,
            "num_compiled_shapes": len(shapes), "compiled_shapes": [list(s) for s in sorted(shapes)]}


def evaluate(predict_fn: PredictFn, hr_images: Sequence[tuple[str, np.ndarray]], *, scale: int,
             protocol: Protocol, kernel_size: int | None = None, noise: float = 0.0,
             bucket: int = 1, max_batch: int = 1, seed: int = 0, oracle_kernel: bool = False,
             progress_label: str | None = None) -> dict:
    """Score `predict_fn` on `hr_images` ((name, (H, W, 1 | 3) float [0, 1]) pairs).

    kernel_size: None for the protocol's own (21 for gaussian8; 11 at x2 else 21 for
                 setting2; 11/15/21 at x2/x3/x4 for kxnet).
    noise:       AWGN level in [0, 255] units added to the LR (fixed seed).
    oracle_kernel: call `predict_fn(lr, kernel)` with the true (N, k, k) kernels, e.g. for the
                 "ground-truth kernel + non-blind model" upper bound.
    bucket, max_batch: 1, 1 (default) is exact; larger values: the faster modes of the module doc.
    progress_label: with a label, a progress line of the SR images done on stderr (`jaxsr.progress`).
    Returns a JSON-ready dict: settings, `input_mode` and `deviation` (None when exact),
    `num_compiled_shapes` (programs: distinct predict input shapes), `compiled_shapes`,
    `kernels` (one row per test kernel: label, params and mean metrics), `per_image`
    (one record per kernel x image) and `mean` (over all records). Kernel metrics are None
    when predict_fn returns no kernel.
    """
    if protocol == PAIRED:
        raise ValueError(f"protocol {PAIRED!r} scores LR files, it degrades no HR images: use "
                         f"evaluate_paired(predict_fn, jaxsr.paired.find_pairs(hr_dir, lr_dir, kernel_dir), ...)")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    scale = _check_settings(scale, kernel_size, bucket, max_batch, noise)
    if len(hr_images) == 0:
        raise ValueError("hr_images is empty")
    setup = _setup(protocol, scale, kernel_size, seed)
    hr_images = [(name, _check_hr(i, name, image)) for i, (name, image) in enumerate(hr_images)]
    per_image = 1 if setup.fixed_kernels is None else len(setup.fixed_kernels)
    bar = _image_bar(per_image * len(hr_images), progress_label)
    # Degraded one LR size group at a time, just before the model runs on it: the first SR
    # images come after one group's degradation, not the whole set's. Same cases, same batches.
    by_image, shapes = {}, set()
    lr_sizes = [(image.shape[0] // scale, image.shape[1] // scale) for _, image in hr_images]
    for indices in group_by_size(lr_sizes, bucket).values():
        group = degrade_cases(setup, hr_images, scale, noise, seed, only=indices)
        shapes |= run_cases(predict_fn, group, scale, bucket, max_batch, oracle_kernel, bar)
        by_image.update((i, group[j * per_image:(j + 1) * per_image]) for j, i in enumerate(indices))
    bar.close()
    cases = [case for i in sorted(by_image) for case in by_image[i]]
    order = sorted(range(len(cases)), key=lambda n: (cases[n].row, n))  # kernel-major, as the tables read
    cases = [cases[n] for n in order]
    records = []
    for case in cases:
        try:
            records.append(score_case(case, scale))
        except ValueError as error:  # e.g. too small for SSIM once the border is cropped
            raise ValueError(f"image {case.image!r} ({case.hr.shape[0]}x{case.hr.shape[1]}): {error}") from error
    return {
        "protocol": protocol, "scale": scale, "kernel_size": setup.spec.kernel_size,
        "noise": float(noise), "seed": seed, **_run_info(bucket, max_batch, shapes),
        "oracle_kernel": bool(oracle_kernel),
        "images": [name for name, _ in hr_images],
        "per_image": records,
        **summarize(records, cases, setup.labels, setup.params),
    }


# --------------------------------------------------------------------------- paired files

def paired_cases(pairs: Sequence[paired.Pair], scale: int, label: str = PAIRED) -> list[Case]:
    """Step 1 of the paired protocol: the files of every pair read as a Case (row 0) by
    `jaxsr.paired.read_pair`."""
    return [Case(0, label, pair.name, *paired.read_pair(pair, scale)) for pair in pairs]


def evaluate_paired(predict_fn: PredictFn, pairs: Sequence[paired.Pair], *, scale: int, bucket: int = 1,
                    max_batch: int = 1, oracle_kernel: bool = False, progress_label: str | None = None) -> dict:
    """Score `predict_fn` on published LR files (`pairs` from `jaxsr.paired.find_pairs`).

    The same steps and scores as `evaluate` with the paired protocol as step 1: PSNR/SSIM on Y
    (border = scale) of the model and of bicubic on the stored LR, and the kernel error against
    the pair's ground-truth kernel when there is one (sizes may differ: the smaller is
    zero-padded). oracle_kernel: feed the ground-truth kernels to predict_fn(lr, kernel); every
    pair must have one. Every size is checked from the file headers before the model runs;
    the images are then read one group of equal LR size at a time (exact by default; bucket and
    max_batch and progress_label as in `evaluate`).
    Returns the dict of `evaluate` (protocol "paired", one row "paired") with the folders, the files
    of every record, and `kernel_size` (None when there are no kernels or several sizes).
    """
    scale = _check_settings(scale, None, bucket, max_batch, 0.0)
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs is empty")
    if oracle_kernel:
        missing = [p.lr.name for p in pairs if p.kernel is None]
        if missing:
            raise ValueError(f"oracle_kernel=True needs the ground-truth kernel of every image; there is none for "
                             f"{len(missing)} LR file(s): {missing[:20]}")
    records: list[dict] = [{} for _ in pairs]
    shapes: set[tuple[int, ...]] = set()
    kernel_sizes: set[int] = set()
    bar = _image_bar(len(pairs), progress_label)
    # one group in memory at a time (DIV2KRK's HR images are 2K)
    for indices in group_by_size(paired.check_files(pairs, scale), bucket).values():
        cases = paired_cases([pairs[i] for i in indices], scale)
        shapes |= run_cases(predict_fn, cases, scale, bucket, max_batch, oracle_kernel, bar)
        for i, case in zip(indices, cases):
            pair = pairs[i]
            records[i] = {**score_case(case, scale), "hr_file": str(pair.hr), "lr_file": str(pair.lr),
                          "kernel_file": None if pair.kernel is None else str(pair.kernel)}
            if case.kernel is not None:
                kernel_sizes.add(int(case.kernel.shape[0]))
    bar.close()

    def folders(attr: str) -> list[str]:
        return sorted({str(getattr(p, attr).parent) for p in pairs if getattr(p, attr) is not None})

    means = {m: _mean(records, m) for m in METRICS}
    return {
        "protocol": PAIRED, "scale": scale,
        "kernel_size": next(iter(kernel_sizes)) if len(kernel_sizes) == 1 else None,
        "kernel_sizes": sorted(kernel_sizes), **_run_info(bucket, max_batch, shapes),
        "oracle_kernel": bool(oracle_kernel),
        "hr_dirs": folders("hr"), "lr_dirs": folders("lr"), "kernel_dirs": folders("kernel"),
        "images": [p.name for p in pairs],
        "per_image": records,
        "kernels": [{"label": PAIRED, "params": {}, **means}],
        "mean": dict(means),
    }


# --------------------------------------------------------------------------- reports

def _cell(value: float | None, digits: int, scientific: bool = False) -> str:
    if value is None or math.isinf(value):
        return "–" if value is None else "inf"
    return f"{value:.{digits}e}" if scientific else f"{value:.{digits}f}"


def format_markdown(result: dict) -> str:
    """A Markdown table: one row per test kernel plus the mean; bicubic and model PSNR/SSIM
    (Y channel, border = scale) and the kernel error."""
    if result["protocol"] == PAIRED:
        size = result.get("kernel_size")
        kernels = (f"ground-truth kernels {size}x{size}" if size else
                   "ground-truth kernels of several sizes" if result.get("kernel_sizes") else "no ground-truth kernels")
        lr_dirs = ", ".join(Path(d).name for d in result.get("lr_dirs", ()))
        title = (f"**{PAIRED}** x{result['scale']}, {len(result['images'])} image pair(s), LR files from "
                 f"{lr_dirs}, {kernels}")
    else:
        title = (f"**{result['protocol']}** x{result['scale']}, kernel {result['kernel_size']}x"
                 f"{result['kernel_size']}, noise {result['noise']:g}, {len(result['images'])} image(s)")
    mode = result.get("input_mode", "exact")
    title += (f", {result['num_compiled_shapes']} predict program(s) (one per LR input shape), {mode}"
              + (": every image alone at its own size" if mode == "exact" else "")
              + (", true kernel given to the model" if result.get("oracle_kernel") else ""))
    header = ("| kernel | bicubic PSNR | bicubic SSIM | PSNR | SSIM | kernel MAE | kernel PSNR |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")

    def row(label: str, m: dict) -> str:
        cells = [label, _cell(m["bicubic_psnr"], 2), _cell(m["bicubic_ssim"], 4),
                 _cell(m["psnr"], 2), _cell(m["ssim"], 4),
                 _cell(m["kernel_mae"], 3, scientific=True), _cell(m["kernel_psnr"], 2)]
        return "| " + " | ".join(cells) + " |"

    lines = [title, "", header]
    lines += [row(r["label"], r) for r in result["kernels"]]
    lines.append(row("**mean**", result["mean"]))
    lines += ["", "PSNR/SSIM on the Y channel, border = scale. Kernel MAE and PSNR compare the "
              "estimated with the true sum-to-one kernel; kernel PSNR = 10 log10(1 / MSE)."]
    if result.get("deviation"):
        lines += ["", f"**Not image by image:** {result['deviation']}."]
    return "\n".join(lines) + "\n"


def chart_title(result: dict, name: str) -> str:
    return (f"{name}: {result['protocol']} x{result['scale']}, {len(result['images'])} image(s)"
            + (", true kernel given" if result.get("oracle_kernel") else ""))


def save_results(result: dict, workdir: str | Path, name: str) -> tuple[Path, Path, Path]:
    """Write `<workdir>/<name>.md` (the table), `<workdir>/<name>.json` (everything) and
    `<workdir>/<name>.png` (PSNR per test kernel, model vs bicubic; `jaxsr.chart`). Each file
    appears only complete."""
    workdir = Path(workdir)
    md_path, json_path, png_path = (workdir / f"{name}{ext}" for ext in (".md", ".json", ".png"))
    with io.atomic_path(md_path) as tmp:
        tmp.write_text(format_markdown(result), encoding="utf-8")
    io.write_json(json_path, result)
    io.write_image(png_path, chart.psnr_chart(result, chart_title(result, name)))
    return md_path, json_path, png_path
