"""Entry point: `python -m jaxsr.main --config=configs/dan.py[:variant] --workdir=DIR [--mode=train|eval|infer]`.

Any config key can be overridden on the command line, e.g. `--config.train.steps=1000`.
- train: train (resuming from DIR's latest checkpoint), validating periodically.
- eval:  the official test protocol (cfg.eval.protocol) on cfg.eval.dirs, or published LR files
         (protocol "paired": cfg.eval.lr_dir/hr_dir/kernel_dir or DIV2KRK roots in cfg.eval.dirs), with
         a jaxsr checkpoint from DIR or an official PyTorch checkpoint (--official=model.pth); tables in DIR/eval/.
- infer: super-resolve real LR images (--input=file|folder|glob) into --output.
Compiled programs are kept in a persistent compilation cache (--compilation_cache), so a restart
or a second eval loads them instead of compiling again.
"""
from __future__ import annotations

import os

if __name__ == "__main__":  # first of all: the allocator restart re-executes the process, and
    # whatever is imported before it is imported twice (JAX, with the config file: ~2 s a start)
    from jaxsr import cpu, hardware
    cpu.restart_with_malloc_tuning(hardware.accelerator_likely())

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/dan.py:setting1_x4.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "infer"], "What to run.")
_OFFICIAL = flags.DEFINE_string("official", None, "eval/infer: an official PyTorch .pth instead of a jaxsr checkpoint.")
_INPUT = flags.DEFINE_string("input", None, "infer: an LR image, a folder or a glob.")
_OUTPUT = flags.DEFINE_string("output", None, "infer: output folder (default WORKDIR/infer).")
_CACHE = flags.DEFINE_string("compilation_cache", None, "Folder of JAX's persistent compilation cache (a path every "
                             "host can read for multi-host jobs), or 0 for off; default $JAXSR_COMPILATION_CACHE, "
                             "else a per-user folder in jaxsr's cache directory.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax and grain log every save at INFO
    from jaxsr import cache, cli, cpu, hardware, platform, sharding  # after flag parsing, so --help stays fast
    from jaxsr import train as train_lib
    # Before any device or thread starts; only when started as `python -m jaxsr.main`, never when
    # imported. The allocator restart already happened at the top of this file.
    cpu_setup = cpu.setup(restart=False, accelerator=hardware.accelerator_likely()) if __name__ == "__main__" else {}
    platform.skip_absent_tpu()  # no libtpu start-up errors on a machine without a TPU
    cache_folder = cache.enable_compilation_cache(_CACHE.value)  # before anything is compiled
    sharding.maybe_initialize_distributed()
    import jax
    print(f"JAX {jax.__version__} on {jax.default_backend()}: {jax.device_count()} devices over "
          f"{jax.process_count()} processes", flush=True)
    cfg, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
    cli.check_backend(cfg, _MODE.value)
    print(f"compilation cache: {cache_folder or 'off'}", flush=True)
    if cpu_setup and jax.default_backend() == "cpu":
        print(f"XLA:CPU settings: {', '.join(k for k, v in cpu_setup.items() if v) or 'none'}", flush=True)
    try:
        if _MODE.value == "train":
            cli.train(cfg, workdir)
        elif _MODE.value == "eval":
            cli.evaluate(cfg, workdir, official=_OFFICIAL.value)
        else:
            cli.infer(cfg, workdir, _INPUT.value, _OUTPUT.value or os.path.join(workdir, "infer"),
                      official=_OFFICIAL.value)
    except (ValueError, OSError, train_lib.NonFiniteLossError) as error:
        # A bad config, file or folder, or a run that cannot go on: the message names it; the
        # traceback only on request.
        if os.environ.get("JAXSR_TRACEBACK") == "1":
            raise
        raise SystemExit(f"error: {error}\n(JAXSR_TRACEBACK=1 shows where it was raised)") from None


if __name__ == "__main__":
    app.run(main)
