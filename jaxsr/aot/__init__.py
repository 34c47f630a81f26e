"""Deviceless ahead-of-time (AOT) compile checks: does a config train (and evaluate) on a TPU
slice or a GPU node, before any machine is rented?

    python -m jaxsr.aot --config=configs/dan.py:setting1_x4 --target=v5e-8 [--config.KEY=VALUE ...]

For TARGET it builds, without the hardware, the devices XLA would compile for
(`jax.experimental.topologies.get_topology_desc`: libtpu for TPUs, the CUDA plugin plus a shipped
device description for GPUs) and compiles

1. the training program itself: `jaxsr.train.build_program`, the builder `python -m jaxsr.main`
   trains with (config resolved by `jaxsr.experiment.resolve`, the model for the target's
   platform, the optimizer, the abstract TrainState, the loop's shardings and donation, compiled
   through `jaxsr.platform` as training compiles it);
2. the evaluation's predict function (`ModelSpec.jit_predict`, as `jaxsr.predict` binds it) for
   one LR per device of the largest evaluation image (see `evalsize.eval_lr_size`), sharded on
   `data`.

It prints, per device, the argument / temporary / output (aliased) memory of
`compiled.memory_analysis()`, their total against the device's memory, the FLOPs per step, the
compile time, and `fits` / `does not fit`. When the step does not fit (or the compiler itself
refuses with RESOURCE_EXHAUSTED) it says what would help, compiles again with `model.remat=True`
to check that remedy, and exits with status 1. Status 2: the target cannot be compiled for here
(no libtpu / no CUDA plugin) or compilation failed for another reason.

FLOPs: XLA's `cost_analysis()` counts a while loop's body once (a rolled `nn.scan` of T
iterations is undercounted T-fold) and the GPU compiler reports none, so besides XLA's number
for the target (labelled as such) the step is compiled once more for one CPU device at the
per-device batch with every scan iteration unrolled (`scan_unroll=0`) and that program's
`cost_analysis()` FLOPs are reported as "XLA CPU count, loops unrolled, per device"
(`--count_flops=False` skips it).

Targets: TPU `v4-N`, `v5p-N` (N TensorCores: v4-8 / v5p-8 are 4 chips, one megacore device
each), `v5e-N`, `v6e-N` (N chips); GPU `h100-N`, `h200-N`, `a100-40g-N`, `a100-80g-N` (N GPUs of
one host). A multi-host slice (e.g. v5e-32) compiles as one program over all its chips, as each
of its hosts would run it.

Modules: `targets` (the catalogue and compile-only devices), `measure` (compile and measure a
lowered program; the predict and FLOP-count programs), `evalsize` (the evaluation image size),
`check` (the check and its advice), `report` (text and exit status), `__main__` (the command).
"""
from __future__ import annotations

from jaxsr.aot.check import advice, check, training_program  # noqa: F401
from jaxsr.aot.evalsize import eval_lr_size  # noqa: F401
from jaxsr.aot.measure import (  # noqa: F401
    compile_program, count_flops_cpu, cpu_only_calls, custom_call_targets, host_peak_rss, lower_predict,
    memory_figures, oom_figures, xla_flops)
from jaxsr.aot.report import exit_code, format_report  # noqa: F401
from jaxsr.aot.targets import (  # noqa: F401
    GIB, GPU_DEFAULT_MEM_FRACTION, GPU_FAMILIES, TARGETS_DIR, TPU_FAMILIES, Target, TargetUnavailable, gpu_memory_size,
    parse_target, prepare_libtpu, target_devices)
from jaxsr.platform import cuda_plugin_installed, libtpu_installed  # noqa: F401
