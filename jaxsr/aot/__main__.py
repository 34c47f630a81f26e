"""`python -m jaxsr.aot --config=configs/dan.py:setting1_x4 --target=v5e-8 [--config.KEY=VALUE ...]`

Exit status 0: fits; 1: does not fit (with advice, and the remat remedy checked); 2: the target
cannot be compiled for here (no libtpu / no CUDA plugin) or compilation failed otherwise.
"""
from __future__ import annotations

import json
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from jaxsr import cache
from jaxsr.aot.check import check
from jaxsr.aot.report import exit_code, format_report
from jaxsr.aot.targets import TargetUnavailable, parse_target


def _define_flags():
    f = {}
    f["config"] = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/dan.py:setting1_x4.",
                                                  lock_config=False)
    f["target"] = flags.DEFINE_string("target", None, "v4-N, v5e-N, v5p-N, v6e-N, h100-N, h200-N, a100-40g-N or "
                                                      "a100-80g-N, e.g. v5e-8.")
    f["memory_gib"] = flags.DEFINE_float("memory_gib", None, "Per-device memory budget in GiB instead of the "
                                                             "target's (e.g. a share of the device).")
    f["predict"] = flags.DEFINE_bool("predict", True, "Also compile the evaluation predict function.")
    f["count_flops"] = flags.DEFINE_bool("count_flops", True, "Also compile the step for one CPU device with every "
                                                              "loop unrolled, to count the FLOPs of every iteration.")
    f["check_remat"] = flags.DEFINE_bool("check_remat", True, "When the step does not fit, compile it again with "
                                                              "model.remat=True and report.")
    f["eval_lr"] = flags.DEFINE_string("eval_lr", None, "LR size HxW for the predict check (default: the largest "
                                                        "evaluation image found, else ceil(512/scale)).")
    f["eval_per_device"] = flags.DEFINE_integer("eval_per_device", 1, "LR images per device in the predict check.")
    f["json"] = flags.DEFINE_string("json", None, "Also write the report as JSON to this path.")
    flags.mark_flags_as_required(["config", "target"])
    return f


def main(argv) -> int:
    """`python -m jaxsr.aot ...`; returns 0 (fits), 1 (does not fit), 2 (could not check)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = _FLAGS["config"].value
    try:
        target = parse_target(_FLAGS["target"].value, _FLAGS["memory_gib"].value)
        eval_lr = None
        if _FLAGS["eval_lr"].value:
            h, _, w = _FLAGS["eval_lr"].value.lower().partition("x")
            eval_lr = (int(h), int(w or h))
        report = check(cfg, target, predict=_FLAGS["predict"].value, count_flops=_FLAGS["count_flops"].value,
                       check_remat=_FLAGS["check_remat"].value, eval_lr=eval_lr,
                       eval_per_device=_FLAGS["eval_per_device"].value,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    except TargetUnavailable as e:
        print(f"cannot compile for this target here: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report, title=_config_name()), flush=True)
    if _FLAGS["json"].value:
        with open(_FLAGS["json"].value, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return exit_code(report)


def _config_name() -> str:
    for arg in sys.argv[1:]:
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return ""


_FLAGS: dict = {}


def run(argv=None) -> None:
    """Parse flags and exit with main's status."""
    if not os.environ.get("JAX_PLATFORMS"):  # compile-only devices need no backend; never grab a chip
        jax.config.update("jax_platforms", "cpu")
    cache.enable_compilation_cache()  # a repeated check loads its programs ($JAXSR_COMPILATION_CACHE=0: off)
    if not _FLAGS:
        _FLAGS.update(_define_flags())
    app.run(lambda a: sys.exit(main(a)), argv=argv)


if __name__ == "__main__":
    run()
