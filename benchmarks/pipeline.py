"""HR patches per second from the training input pipeline: PNG folder vs in-RAM cache vs store.

    python benchmarks/pipeline.py [--quick] [--images 24] [--batch 16] [--patch 256]
                                  [--threads N] [--keep DIR] [--out FILE.json]

Generates ``--images`` DIV2K-sized PNGs (2040x1356) by upscaling crops of the photos
bundled with scikit-image (nothing is downloaded) into a temporary folder, prepares a store
from them with ``jaxsr.data.prepare.prepare_store``, then times
``jaxsr.data.make_train_dataset`` three ways:

- ``png``    data.cache=False on the PNG folder: one PNG decode per patch
- ``cache``  data.cache=True on the PNG folder: decoded once, held in RAM
- ``store``  the store (data.cache=False): memory-mapped arrays, a crop is a slice

Each mode runs with the training process's default thread settings (``data.num_threads``
and ``data.num_workers`` of ``jaxsr.config_lib.base_config``, prefetch 2 x threads) unless
``--threads`` is given. Reported per mode: build time (file checks, and for ``cache`` the
decoding), the median of ``--repeats`` timed runs of ``--batches`` batches after
``--warmup`` batches plus the prefetch buffer (so no run is served from batches made
ahead during the build), and the process's anonymous resident memory after the runs minus
before the build (page cache, which the store's mappings use, is not counted).
The last line reads ``store vs png speed-up: <X.X>x (store <P> patches/s, png <Q> patches/s)``.
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from jaxsr import config_lib  # noqa: E402
from jaxsr.data import bundled_photo_paths, make_train_dataset, resolve_image_paths  # noqa: E402
from jaxsr.data.prepare import prepare_store  # noqa: E402

SIZE_2K = (1356, 2040)  # DIV2K's most common HR size, (height, width)


def _make_image(job: tuple[int, str, str]) -> None:
    """Image ``index``: a random crop of a bundled photo, upscaled (bicubic) to 2K."""
    from PIL import Image  # noqa: PLC0415

    index, source, path = job
    rng = np.random.default_rng(index)
    with Image.open(source) as photo:
        photo = photo.convert("RGB")
        width, height = photo.size
        crop_w, crop_h = int(width * rng.uniform(0.6, 1.0)), int(height * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
        big = photo.crop((left, top, left + crop_w, top + crop_h)).resize(
            (SIZE_2K[1], SIZE_2K[0]), Image.BICUBIC)
        if index % 2:
            big = big.transpose(Image.FLIP_LEFT_RIGHT)
        big.save(path)  # Pillow's default PNG compression, as DIV2K-like files


def make_2k_pngs(folder: str, count: int) -> list[str]:
    photos = bundled_photo_paths("train")
    jobs = [(i, photos[i % len(photos)], os.path.join(folder, f"{i:04d}.png")) for i in range(count)]
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_make_image, jobs))
    return [path for _, _, path in jobs]


def _rss_anon_bytes() -> int:
    """Anonymous resident memory of this process (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def time_mode(paths, *, cache: bool, args, threads: int, workers: int) -> dict:
    gc.collect()
    memory_before = _rss_anon_bytes()
    start = time.perf_counter()
    dataset = make_train_dataset(paths, patch_size=args.patch, batch_size=args.batch, seed=0,
                                 cache=cache, num_threads=threads, num_workers=workers)
    iterator = iter(dataset)
    build = time.perf_counter() - start
    # Past the batches the threads (and workers) made ahead while nothing was consumed.
    for _ in range(args.warmup + 2 * max(threads, 1) * (1 + workers)):
        batch = next(iterator)
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.batches):
            batch = next(iterator)
        rates.append(args.batches * args.batch / (time.perf_counter() - start))
    assert batch["hr"].shape == (args.batch, args.patch, args.patch, 3)
    memory = _rss_anon_bytes() - memory_before
    if hasattr(iterator, "close"):
        iterator.close()
    del iterator, dataset, batch
    return {"build_s": build, "patches_per_s": statistics.median(rates), "runs": rates,
            "rss_anon_mb": memory / 2**20}


def subimage_decode_ms(png_path: str, size: int = 480, repeats: int = 20) -> float:
    """Median ms to decode one ``size``² PNG sub-image written at compression level 1: the
    per-sample cost of BasicSR-style sub-image records (``extract_subimages`` + LMDB)."""
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    with Image.open(png_path) as image:
        buffer = io.BytesIO()
        image.convert("RGB").crop((0, 0, size, size)).save(buffer, "PNG", compress_level=1)
    data = buffer.getvalue()

    def decode():
        with Image.open(io.BytesIO(data)) as sub:
            np.asarray(sub.convert("RGB"))

    return 1e3 * common.median_seconds(decode, warmup=2, repeats=repeats)


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="8 images, fewer batches (about a minute)")
    p.add_argument("--images", type=int, default=None, help="2K PNGs to generate (default 24; 8 with --quick)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=256, help="HR patch side")
    p.add_argument("--threads", type=int, default=None, help="grain threads (default: data.num_threads)")
    p.add_argument("--workers", type=int, default=None, help="grain processes (default: data.num_workers)")
    p.add_argument("--warmup", type=int, default=None, help="batches before timing (per mode)")
    p.add_argument("--batches", type=int, default=None, help="batches per timed run (fast modes)")
    p.add_argument("--png-batches", type=int, default=None,
                   help="batches per timed run (png mode; default 2 x threads, --quick: threads)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per mode; the median is reported")
    p.add_argument("--keep", default=None, help="generate the PNGs and the store here and keep them")
    p.add_argument("--out", default=None, help="JSON results file")
    args = p.parse_args(argv)
    quick = args.quick
    args.images = args.images or (8 if quick else 24)
    args.warmup = args.warmup if args.warmup is not None else 2
    args.repeats = 3 if quick and args.repeats == 5 else args.repeats
    info = common.print_machine()
    defaults = config_lib.base_config().data
    threads = defaults.num_threads if args.threads is None else args.threads
    workers = defaults.get("num_workers", 0) if args.workers is None else args.workers
    fast_batches = args.batches or (50 if quick else 200)
    # Each thread decodes a whole batch, so PNG batches arrive in bursts of `threads`: a timed
    # run spans one (quick) or two such rounds.
    png_batches = args.png_batches or max(2, threads * (1 if quick else 2) * max(1, workers))
    print(f"# batch {args.batch} x {args.patch}x{args.patch}x3 uint8, {args.images} PNGs of "
          f"{SIZE_2K[1]}x{SIZE_2K[0]}, grain threads {threads}, worker processes {workers}, "
          f"median of {args.repeats} runs after {args.warmup} warm-up batches")
    print(f"# load average before: {_load()} (other processes share these CPUs when it exceeds "
          f"{os.cpu_count()})")

    with tempfile.TemporaryDirectory(prefix="jaxsr_pipeline_bench_") as scratch:
        root = args.keep or scratch
        png_dir, store_dir = os.path.join(root, "png_2k"), os.path.join(root, "store_2k")
        os.makedirs(png_dir, exist_ok=True)
        start = time.perf_counter()
        existing = sorted(f for f in os.listdir(png_dir) if f.endswith(".png"))
        if len(existing) != args.images:
            for name in existing:
                os.unlink(os.path.join(png_dir, name))
            make_2k_pngs(png_dir, args.images)
        print(f"# generated PNGs in {time.perf_counter() - start:.1f} s "
              f"({sum(os.path.getsize(os.path.join(png_dir, f)) for f in os.listdir(png_dir)) / 1e6:.0f} MB)")
        prepared = prepare_store([png_dir], store_dir, progress=False, log=lambda m: None)
        print(f"# prepare: {prepared.written} images converted in {prepared.seconds:.1f} s "
              f"({os.cpu_count()} processes), store {prepared.array_bytes / 1e6:.0f} MB")

        png_paths = resolve_image_paths(png_dir)
        store_paths = resolve_image_paths(store_dir)
        results = {}
        for name, paths, cache in (("png", png_paths, False), ("cache", png_paths, True),
                                   ("store", store_paths, False)):
            run_args = argparse.Namespace(**{**vars(args), "batches": png_batches if name == "png" else fast_batches})
            results[name] = time_mode(paths, cache=cache, args=run_args, threads=threads, workers=workers)
            r = results[name]
            print(f"# {name}: {_rate(r['patches_per_s'])} patches/s "
                  f"(runs {', '.join(_rate(x) for x in r['runs'])}; build {r['build_s']:.2f} s)", flush=True)

        sub_ms = subimage_decode_ms(png_paths[0])
    print(f"# for reference: one 480x480 sub-image PNG (BasicSR LMDB style, compress level 1) "
          f"decodes in {sub_ms:.1f} ms, at most {1e3 / sub_ms:.0f} patches/s per core")

    print(f"# load average after: {_load()}")
    print()
    print("| source | data.cache | build (s) | HR patches/s | batches/s | anon. RSS growth (MB) |")
    print("|---|---|---:|---:|---:|---:|")
    labels = {"png": ("PNG folder", "False"), "cache": ("PNG folder", "True"), "store": ("store (prepare)", "False")}
    for name, r in results.items():
        source, cache = labels[name]
        print(f"| {source} | {cache} | {r['build_s']:.2f} | {_rate(r['patches_per_s'])} | "
              f"{r['patches_per_s'] / args.batch:.1f} | {r['rss_anon_mb']:.0f} |")
    common.write_json(args.out, {"machine": info, "args": vars(args), "threads": threads,
                                 "workers": workers, "results": results,
                                 "subimage_480_png_decode_ms": sub_ms})
    store_rate, png_rate = results["store"]["patches_per_s"], results["png"]["patches_per_s"]
    print(f"store vs png speed-up: {store_rate / png_rate:.1f}x "
          f"(store {_rate(store_rate)} patches/s, png {_rate(png_rate)} patches/s)")


if __name__ == "__main__":
    main()
