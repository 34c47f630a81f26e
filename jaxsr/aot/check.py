"""The check: compile a config's training program (and its evaluation predict) for a target,
with advice when the step does not fit."""
from __future__ import annotations

import re
from typing import Any

from jaxsr import experiment, sharding, train
from jaxsr.aot.evalsize import count_programs, eval_lr_size, programs_line
from jaxsr.aot.measure import compile_program, count_flops_cpu, lower_predict
from jaxsr.aot.targets import Target, parse_target, target_devices


def advice(cfg, target: Target) -> list[str]:
    """What would make the step smaller per device, for this config."""
    m = cfg.model
    tips = []
    if "remat" in m and not m.remat:
        tips.append("--config.model.remat=True (recompute each block's activations in the backward pass)")
    if "dtype" in m and m.dtype == "float32":
        tips.append('--config.model.dtype=bfloat16 (half the activation memory; GPU/TPU only)')
    n = target.num_devices
    bigger = re.sub(r"-(\d+)$", lambda g: f"-{int(g.group(1)) * 2}", target.name)
    tips.append(f"more devices, e.g. --target={bigger} (the per-device batch halves)")
    per_device = cfg.data.batch_size // sharding.data_parallelism(cfg.data.batch_size, max(n, 1))
    if per_device > 1:
        tips.append(f"a smaller per-device batch: --config.data.batch_size={cfg.data.batch_size // 2} "
                    f"({per_device // 2} per device instead of {per_device})")
    return tips


def training_program(cfg, devices) -> train.TrainProgram:
    """The program `python -m jaxsr.main` trains `cfg` with, built for `devices` (the same
    `experiment.resolve` and `train.build_program` calls the trainer makes)."""
    exp = experiment.resolve(cfg, num_devices=len(devices), devices_per_host=sharding.devices_per_host(devices))
    return train.build_program(exp, devices)


def check(cfg, target: Target | str, *, predict: bool = True, count_flops: bool = True,
          check_remat: bool = True, eval_lr: tuple[int, int] | None = None, eval_per_device: int = 1,
          devices=None, log=None) -> dict:
    """Compile cfg's training program (`jaxsr.train.build_program`, what `python -m jaxsr.main`
    runs) and its evaluation predict for `target`; the report as a dict (see `format_report`)."""
    log = log or (lambda *_: None)
    target = parse_target(target) if isinstance(target, str) else target
    devices = devices if devices is not None else target_devices(target)
    program = training_program(cfg, devices)
    exp = program.exp
    shards = sharding.data_shards(program.mesh)
    report: dict[str, Any] = {"target": target.name, "platform": target.platform, "num_devices": len(devices),
                              "device_kind": getattr(devices[0], "device_kind", "?"),
                              "memory_bytes": target.memory_bytes, "memory_source": target.memory_source,
                              "model": exp.name, "programs": {}}
    report["settings"] = {k: exp.cfg.model.get(k) for k in ("remat", "dtype") if k in exp.cfg.model}
    report["settings"]["scan_unroll"] = getattr(program.model, "scan_unroll", None)
    report["batch"] = {"global": int(exp.cfg.data.batch_size), "per_device": int(exp.cfg.data.batch_size) // shards,
                       "data_shards": shards, "hr_shape": list(program.hr_batch.shape)}
    log(f"compiling the train step for {target.name} ...")
    step = compile_program(program.lower(), target.memory_bytes, target.platform)
    report["programs"]["train_step"] = step
    if count_flops:
        log("counting FLOPs on the CPU with every loop unrolled ...")
        step["cpu_flops"] = count_flops_cpu(exp, len(devices))
    if predict:
        if eval_lr is None:
            eval_lr, why = eval_lr_size(exp.cfg)
        else:
            why = "given by --eval_lr"
        log(f"compiling predict at LR {eval_lr[0]}x{eval_lr[1]} ...")
        lowered = lower_predict(exp, program.abstract_state.params, devices, eval_lr, eval_per_device, program.model)
        pred = compile_program(lowered, target.memory_bytes, target.platform)
        pred["lr_shape"] = [eval_per_device * len(devices), *eval_lr, 3]
        pred["lr_choice"] = why
        pred["eval_programs"] = programs_line(count_programs(exp.cfg))
        pred["eval_max_batch"] = int(exp.cfg.eval.get("max_batch", 1))
        report["programs"]["predict"] = pred
    if step.get("fits") is False:
        report["advice"] = advice(exp.cfg, target)
        if check_remat and "remat" in exp.cfg.model and not exp.cfg.model.remat:
            log("the step does not fit: compiling again with model.remat=True ...")
            remat = train.build_program(exp.with_model(remat=True), devices)
            report["programs"]["train_step_remat"] = compile_program(remat.lower(), target.memory_bytes,
                                                                     target.platform)
    report["fits"] = all(p.get("fits") is not False for p in report["programs"].values()
                         if p is not report["programs"].get("train_step_remat"))
    report["failed"] = [name for name, p in report["programs"].items() if p.get("error") and not p.get("oom")]
    return report
