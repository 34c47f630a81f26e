"""What `python -m jaxsr.main` does in each mode (kept apart from absl so tests can call it).

Each mode resolves the config once (`jaxsr.experiment.resolve`), checks its folders, builds the
predict function (`jaxsr.predict.build`) and hands it to `jaxsr.evaluate` or `jaxsr.infer`."""
from __future__ import annotations

import os

import jax

from jaxsr import evaluate as evaluate_lib, experiment, infer as infer_lib, io, paired, predict as predict_lib
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
    io.check_writable_folder(workdir, "workdir")
    from jaxsr import train as train_lib  # here, not at the top: eval and infer start 0.2 s sooner without it
    result = train_lib.train_and_evaluate(cfg, workdir)
    if result and "val_psnr" in result and jax.process_index() == 0:
        gain = result["val_psnr"] - result["val_bicubic_psnr"]
        print(f"held-out PSNR (Y): {result['val_psnr']:.2f} dB vs bicubic {result['val_bicubic_psnr']:.2f} dB "
              f"-> gain {gain:+.2f} dB;  SSIM {result['val_ssim']:.4f} vs {result['val_bicubic_ssim']:.4f}")
        print(f"checkpoints, metrics.jsonl and validation grids are in {workdir}")
    return result


def _benchmark_sets(cfg) -> list[tuple[str, tuple[str, str]]]:
    """(set name, (eval.dirs entry, its folder)) of a degrading protocol, every folder checked."""
    entries = [cfg.eval.dirs] if isinstance(cfg.eval.dirs, str) else list(cfg.eval.dirs)
    folders = [datasets.resolve_benchmark(entry, key="eval.dirs") for entry in entries]
    for folder in folders:
        datasets.resolve_image_paths([folder], key="eval.dirs")
    return [(paired.set_name(entry, folder), (entry, folder)) for entry, folder in zip(entries, folders)]


def _evaluate_set(predict, item, exp: experiment.Experiment, oracle: bool, label: str | None) -> dict:
    """One set's result under cfg.eval's protocol: published LR files (paired) or degraded HR
    images; with a `label`, a progress line of its SR images."""
    cfg = exp.cfg
    settings = dict(scale=cfg.scale, bucket=cfg.eval.bucket, max_batch=cfg.eval.max_batch, oracle_kernel=oracle,
                    progress_label=label)
    if cfg.eval.protocol == evaluate_lib.PAIRED:
        return evaluate_lib.evaluate_paired(predict, item, **settings)
    entry, folder = item
    try:
        return evaluate_lib.evaluate(predict, evaluate_lib.load_hr_images(folder), protocol=cfg.eval.protocol,
                                     kernel_size=exp.degradation.kernel_size, noise=cfg.eval.noise, **settings)
    except ValueError as error:
        raise ValueError(f"eval.dirs entry {entry!r} ({folder}): {error}") from error


def evaluate(cfg, workdir: str, official: str | None = None) -> dict:
    exp = experiment.resolve(cfg)
    cfg, protocol = exp.cfg, exp.cfg.eval.protocol
    oracle = bool(cfg.eval.get("oracle_kernel", False))  # predict_fn(lr, true kernel): non-blind upper bound
    # Every set and the output folder are checked before the model is built.
    sets = paired.paired_sets(cfg.eval, cfg.scale) if protocol == evaluate_lib.PAIRED else _benchmark_sets(cfg)
    out_dir = io.check_writable_folder(os.path.join(workdir, "eval"), "eval output folder")
    predict, source = predict_lib.build(exp, workdir, official)
    results = {}
    for base_name, item in sets:
        result = _evaluate_set(predict, item, exp, oracle, base_name if jax.process_index() == 0 else None)
        name = f"{base_name}_{protocol}_x{cfg.scale}" + ("_gt_kernel" if oracle else "")
        result["source"] = source
        if jax.process_index() == 0:
            evaluate_lib.save_results(result, out_dir, name)
            print(f"## {name} ({source})\n")
            print(evaluate_lib.format_markdown(result))
        results[name] = result
    if jax.process_index() == 0:
        print(programs_summary(results))
    return results


def programs_summary(results: dict) -> str:
    """One line: how many predict programs the sets needed together (a shape repeated across
    sets is compiled once) and whether the scores are exact."""
    shapes = {tuple(s) for r in results.values() for s in r["compiled_shapes"]}
    modes = sorted({r.get("input_mode", "exact") for r in results.values()})
    exact = modes == ["exact"]
    return (f"{len(shapes)} distinct predict program(s) (LR input shapes) over {len(results)} set(s); "
            + ("exact: every image alone at its own size" if exact else
               f"{'/'.join(modes)} inputs (eval.bucket / eval.max_batch > 1), not image-by-image scores"))


def infer(cfg, workdir: str, inputs: str | None, out_dir: str, official: str | None = None) -> list[str]:
    if not inputs:
        raise ValueError("--mode=infer needs --input=FILE|FOLDER|GLOB")
    exp = experiment.resolve(cfg)
    infer_lib.expand_inputs(inputs)  # a wrong --input and an unwritable --output fail before the model is built
    io.check_writable_folder(out_dir)
    predict, source = predict_lib.build(exp, workdir, official)
    cfg = exp.cfg
    written = infer_lib.infer_paths(predict, inputs, out_dir, scale=cfg.scale, tile=cfg.infer.tile,
                                    overlap=cfg.infer.overlap)
    print(f"super-resolved {len(written)} files with {source}")
    print("\n".join(str(w) for w in written))
    return written
