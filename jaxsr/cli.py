"""What `python -m jaxsr.main` does in each mode (kept apart from absl so tests can call it)."""
from __future__ import annotations

import os

import jax

from jaxsr import config_lib, io, predict as predict_lib, train as train_lib
from jaxsr.data import datasets


def train(cfg, workdir: str) -> dict:
    io.check_writable_folder(workdir, "workdir")
    result = train_lib.train_and_evaluate(cfg, workdir)
    if result and "val_psnr" in result and jax.process_index() == 0:
        gain = result["val_psnr"] - result["val_bicubic_psnr"]
        print(f"held-out PSNR (Y): {result['val_psnr']:.2f} dB vs bicubic {result['val_bicubic_psnr']:.2f} dB "
              f"-> gain {gain:+.2f} dB;  SSIM {result['val_ssim']:.4f} vs {result['val_bicubic_ssim']:.4f}")
        print(f"checkpoints, metrics.jsonl and validation grids are in {workdir}")
    return result


def evaluate(cfg, workdir: str, official: str | None = None) -> dict:
    from jaxsr import evaluate as evaluate_lib
    train_lib.check_config(cfg)
    # Every set folder and the output folder are checked before the model is built.
    entries = [cfg.eval.dirs] if isinstance(cfg.eval.dirs, str) else list(cfg.eval.dirs)
    folders = [datasets.resolve_benchmark(entry, key="eval.dirs") for entry in entries]
    for folder in folders:
        datasets.resolve_image_paths([folder], key="eval.dirs")
    out_dir = io.check_writable_folder(os.path.join(workdir, "eval"), "eval output folder")
    predict, source = predict_lib.build(cfg, workdir, official)
    oracle = bool(cfg.eval.get("oracle_kernel", False))  # predict_fn(lr, true kernel): non-blind upper bound
    spec = config_lib.degradation_spec(cfg)
    results = {}
    for entry, folder in zip(entries, folders):
        images = evaluate_lib.load_hr_images(folder)
        try:
            result = evaluate_lib.evaluate(predict, images, scale=cfg.scale, protocol=cfg.eval.protocol,
                                           kernel_size=spec.kernel_size, noise=cfg.eval.noise,
                                           bucket=cfg.eval.bucket, max_batch=cfg.eval.max_batch,
                                           oracle_kernel=oracle)
        except ValueError as error:
            raise ValueError(f"eval.dirs entry {entry!r} ({folder}): {error}") from error
        name = (f"{set_name(entry, folder)}_{cfg.eval.protocol}_x{cfg.scale}"
                + ("_gt_kernel" if oracle else ""))
        result["source"] = source
        if jax.process_index() == 0:
            evaluate_lib.save_results(result, out_dir, name)
            print(f"## {name} ({source})\n")
            print(evaluate_lib.format_markdown(result))
        results[name] = result
    return results


def set_name(entry: str, folder: str) -> str:
    """The name of a set in report file names: "benchmark:DIV2KRK/gt" -> "DIV2KRK_gt", a
    plain folder -> its last component."""
    if entry.startswith(datasets.BENCHMARK + ":"):
        return entry[len(datasets.BENCHMARK) + 1:].strip("/").replace("/", "_")
    return os.path.basename(os.path.normpath(folder))


def infer(cfg, workdir: str, inputs: str | None, out_dir: str, official: str | None = None) -> list[str]:
    from jaxsr import infer as infer_lib
    if not inputs:
        raise ValueError("--mode=infer needs --input=FILE|FOLDER|GLOB")
    train_lib.check_config(cfg)
    infer_lib.expand_inputs(inputs)  # a wrong --input and an unwritable --output fail before the model is built
    io.check_writable_folder(out_dir)
    predict, source = predict_lib.build(cfg, workdir, official)
    written = infer_lib.infer_paths(predict, inputs, out_dir, scale=cfg.scale, tile=cfg.infer.tile,
                                    overlap=cfg.infer.overlap)
    print(f"super-resolved {len(written)} files with {source}")
    print("\n".join(str(w) for w in written))
    return written
