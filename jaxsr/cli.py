"""What `python -m jaxsr.main` does in each mode (kept apart from absl so tests can call it)."""
from __future__ import annotations

import os

import jax

from jaxsr import config_lib, predict as predict_lib, train as train_lib
from jaxsr.data import datasets


ACCELERATOR_HELP = """\
this is a paper-scale run ({steps:,} steps at batch {batch}) and JAX is on the CPU backend ({devices}).
It would take months here. Install JAX's accelerator build and check it sees the devices:
  NVIDIA GPU (CUDA 12):  pip install -e '.[cuda12]'
  Cloud TPU VM:          pip install -e '.[tpu]'
  then:                  python -c "import jax; print(jax.devices())"
To train on the CPU anyway, add --config.train.require_accelerator=False."""


def check_backend(cfg, mode: str, backend: str | None = None) -> None:
    """Refuse to *train* a config marked `train.require_accelerator` (the paper variants) on the
    CPU backend; eval and infer are fine on a CPU."""
    backend = backend or jax.default_backend()
    if mode == "train" and cfg.train.get("require_accelerator", False) and backend == "cpu":
        raise SystemExit("error: " + ACCELERATOR_HELP.format(
            steps=int(cfg.train.steps), batch=int(cfg.data.batch_size),
            devices=f"{jax.device_count()} CPU device(s)"))


def train(cfg, workdir: str) -> dict:
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
    predict, source = predict_lib.build(cfg, workdir, official)
    oracle = bool(cfg.eval.get("oracle_kernel", False))  # predict_fn(lr, true kernel): non-blind upper bound
    results = {}
    for folder in cfg.eval.dirs:
        datasets.resolve_image_paths([folder], key="eval.dirs")  # a clear error for a wrong folder
        images = evaluate_lib.load_hr_images(folder)
        spec = config_lib.degradation_spec(cfg)
        result = evaluate_lib.evaluate(predict, images, scale=cfg.scale, protocol=cfg.eval.protocol,
                                       kernel_size=spec.kernel_size, noise=cfg.eval.noise,
                                       bucket=cfg.eval.bucket, max_batch=cfg.eval.max_batch,
                                       oracle_kernel=oracle)
        name = (f"{os.path.basename(os.path.normpath(folder))}_{cfg.eval.protocol}_x{cfg.scale}"
                + ("_gt_kernel" if oracle else ""))
        result["source"] = source
        if jax.process_index() == 0:
            evaluate_lib.save_results(result, os.path.join(workdir, "eval"), name)
            print(f"## {name} ({source})\n")
            print(evaluate_lib.format_markdown(result))
        results[name] = result
    return results


def infer(cfg, workdir: str, inputs: str | None, out_dir: str, official: str | None = None) -> list[str]:
    from jaxsr import infer as infer_lib
    if not inputs:
        raise ValueError("--mode=infer needs --input=FILE|FOLDER|GLOB")
    predict, source = predict_lib.build(cfg, workdir, official)
    written = infer_lib.infer_paths(predict, inputs, out_dir, scale=cfg.scale, tile=cfg.infer.tile,
                                    overlap=cfg.infer.overlap)
    print(f"super-resolved {len(written)} files with {source}")
    print("\n".join(str(w) for w in written))
    return written
