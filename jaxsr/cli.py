"""What `python -m jaxsr.main` does in each mode (kept apart from absl so tests can call it)."""
from __future__ import annotations

import os

import jax

from jaxsr import config_lib, io, predict as predict_lib, train as train_lib
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
    result = train_lib.train_and_evaluate(cfg, workdir)
    if result and "val_psnr" in result and jax.process_index() == 0:
        gain = result["val_psnr"] - result["val_bicubic_psnr"]
        print(f"held-out PSNR (Y): {result['val_psnr']:.2f} dB vs bicubic {result['val_bicubic_psnr']:.2f} dB "
              f"-> gain {gain:+.2f} dB;  SSIM {result['val_ssim']:.4f} vs {result['val_bicubic_ssim']:.4f}")
        print(f"checkpoints, metrics.jsonl and validation grids are in {workdir}")
    return result


def paired_sets(cfg) -> list[tuple[str, list]]:
    """(set name, `jaxsr.paired.Pair`s) of `eval.protocol=paired`: `eval.lr_dir` + `eval.hr_dir`
    (+ `eval.kernel_dir`) as one set named after the LR folder, else every entry of `eval.dirs` as
    a root in DIV2KRK's layout, named after the root. Files are matched here, before any model
    is loaded, so a missing or unmatched file fails fast."""
    from jaxsr import paired
    e = cfg.eval
    oracle = bool(e.get("oracle_kernel", False))
    if e.get("lr_dir"):
        for key in config_lib.PAIRED_KEYS:
            if e.get(key) and not os.path.isdir(e[key]):
                raise FileNotFoundError(f"config key eval.{key}: folder {e[key]!r} does not exist")
        if oracle and not e.get("kernel_dir"):
            raise ValueError("config key eval.kernel_dir is empty, but eval.oracle_kernel=True gives the model the "
                             "ground-truth kernels; set eval.kernel_dir or eval.oracle_kernel=False")
        name = os.path.basename(os.path.normpath(e.lr_dir))
        return [(name, paired.find_pairs(e.hr_dir, e.lr_dir, e.get("kernel_dir") or None))]
    if not e.dirs:
        raise ValueError("config key eval.dirs is empty; eval.protocol=paired needs eval.lr_dir and eval.hr_dir, "
                         "or DIV2KRK-style roots in eval.dirs")
    sets = []
    for entry in e.dirs:
        root = datasets.resolve_benchmark(entry, key="eval.dirs")
        try:
            hr_dir, lr_dir, kernel_dir = paired.div2krk_dirs(root, cfg.scale)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"config key eval.dirs: {error}. With eval.protocol=paired an entry of eval.dirs is a "
                              f"DIV2KRK-style root; for other layouts set eval.lr_dir and eval.hr_dir") from None
        if oracle and kernel_dir is None:
            raise ValueError(f"config key eval.oracle_kernel=True needs ground-truth kernels, but {root} has no "
                             f"gt_k_x{cfg.scale}/ folder")
        sets.append((set_name(entry, root), paired.find_pairs(hr_dir, lr_dir, kernel_dir)))
    return sets


def evaluate(cfg, workdir: str, official: str | None = None) -> dict:
    from jaxsr import evaluate as evaluate_lib
    predict_lib.check_config(cfg)
    protocol = cfg.eval.protocol
    oracle = bool(cfg.eval.get("oracle_kernel", False))  # predict_fn(lr, true kernel): non-blind upper bound
    # Every set and the output folder are checked before the model is built.
    if protocol == evaluate_lib.PAIRED:
        sets = paired_sets(cfg)
    else:
        entries = [cfg.eval.dirs] if isinstance(cfg.eval.dirs, str) else list(cfg.eval.dirs)
        folders = [datasets.resolve_benchmark(entry, key="eval.dirs") for entry in entries]
        for folder in folders:
            datasets.resolve_image_paths([folder], key="eval.dirs")
        sets = [(set_name(entry, folder), (entry, folder)) for entry, folder in zip(entries, folders)]
    out_dir = io.check_writable_folder(os.path.join(workdir, "eval"), "eval output folder")
    predict, source = predict_lib.build(cfg, workdir, official)
    spec = config_lib.degradation_spec(cfg)
    results = {}
    for base_name, item in sets:
        if protocol == evaluate_lib.PAIRED:
            result = evaluate_lib.evaluate_paired(predict, item, scale=cfg.scale, bucket=cfg.eval.bucket,
                                                  max_batch=cfg.eval.max_batch, oracle_kernel=oracle)
        else:
            entry, folder = item
            images = evaluate_lib.load_hr_images(folder)
            try:
                result = evaluate_lib.evaluate(predict, images, scale=cfg.scale, protocol=protocol,
                                               kernel_size=spec.kernel_size, noise=cfg.eval.noise,
                                               bucket=cfg.eval.bucket, max_batch=cfg.eval.max_batch,
                                               oracle_kernel=oracle)
            except ValueError as error:
                raise ValueError(f"eval.dirs entry {entry!r} ({folder}): {error}") from error
        name = f"{base_name}_{protocol}_x{cfg.scale}" + ("_gt_kernel" if oracle else "")
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
    predict_lib.check_config(cfg)
    infer_lib.expand_inputs(inputs)  # a wrong --input and an unwritable --output fail before the model is built
    io.check_writable_folder(out_dir)
    predict, source = predict_lib.build(cfg, workdir, official)
    written = infer_lib.infer_paths(predict, inputs, out_dir, scale=cfg.scale, tile=cfg.infer.tile,
                                    overlap=cfg.infer.overlap)
    print(f"super-resolved {len(written)} files with {source}")
    print("\n".join(str(w) for w in written))
    return written
