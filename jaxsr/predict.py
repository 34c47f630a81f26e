"""Trained models as predict functions, from a jaxsr checkpoint or an official PyTorch `.pth`.

Eval (`jaxsr.evaluate`) and infer (`jaxsr.infer`) take a model only as

    predict_fn(lr (N, h, w, 3) in [0, 1], kernel (N, k, k) or None) -> (sr or None, kernel or None)

`build(cfg, workdir, official=None)` makes one for any model in the registry. A kernel
estimator whose spec names a `restorer` (KENet -> USRNet) becomes the two-step blind
pipeline, its restorer loaded from `cfg.pipeline.<restorer>_workdir` (a jaxsr run) or
`cfg.pipeline.<restorer>_official` (a `.pth`). Given a kernel, the function restores with it
(the "true kernel" bound of `eval.oracle_kernel=True`), which only non-blind models can.

This layer sits above the models and the checkpoints; it does not call into the trainer
(`check_config` and `restore_params` here are the eval / infer side's own). Nothing below
imports it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from jaxsr import checkpoints, config_lib, models, platform as platform_lib, torch_import

PredictFn = Callable[..., tuple[Any, Any]]


def check_config(cfg: ml_collections.ConfigDict, num_devices: int | None = None,
                 devices_per_host: int | None = None) -> models.ModelSpec:
    """`config_lib.validate` plus the model name against the registry; returns the model's spec.
    (config_lib may not import the models, so the combined check lives here for eval / infer;
    the trainer makes the same two calls itself.)"""
    config_lib.validate(cfg, num_devices, devices_per_host)
    return models.get(cfg.model.get("name"))


def optional_iters(value) -> int | None:
    """A config's iteration count: a positive int, or -1 / 0 / None for the model's own T."""
    return int(value) if value is not None and int(value) > 0 else None


def load_official(path: str, cfg) -> tuple[Any, dict, dict]:
    """(model, params, extras) from an official `.pth` for `cfg.model.name`.

    The model comes from the spec's `create(cfg)`; a DAN model uses the checkpoint's own PCA
    matrix (its `encoder` buffer) when it carries one, so cfg needs no pca_path then.
    """
    spec = models.get(cfg.model.name)
    if spec.official is None:
        raise ValueError(f"config key model.name: {cfg.model.name!r} has no official checkpoint importer; "
                         f"models with one: {models.with_official_checkpoints()}")
    state_dict = torch_import.read_torch_checkpoint(path)
    matrix = spec.official.extras(state_dict).get("pca_matrix")
    platform = platform_lib.default_platform()
    model = models.create(cfg, platform, **({"pca_matrix": matrix} if matrix is not None else {}))
    params, extras = torch_import.convert_state_dict(state_dict, model, spec.official)
    return model, params, extras


def restore_params(cfg, workdir: str, step: int | None = None) -> tuple[Any, Any, int]:
    """(model, params, step) from the latest (or given) checkpoint in `workdir`: the parameters
    only (`checkpoints.restore_params`), after the config's fingerprint is checked against the
    checkpoint's. No optimizer is built."""
    cfg = config_lib.prepare(cfg)
    config_lib.ensure_pca(cfg)
    spec = models.get(cfg.model.name)
    model = models.create(cfg, platform_lib.default_platform())
    lr = jnp.zeros((1, cfg.data.patch_size, cfg.data.patch_size, 3), jnp.float32)
    abstract = jax.eval_shape(lambda: spec.init(model, jax.random.PRNGKey(0), lr)["params"])
    directory = os.path.join(workdir, "checkpoints")
    try:
        params, step = checkpoints.restore_params(directory, abstract, checkpoints.fingerprint(cfg, abstract), step)
    except checkpoints.NoCheckpointError:
        raise FileNotFoundError(f"no checkpoint found in {directory}; train first "
                                f"or pass --official=PATH.pth") from None
    return model, params, step


def load_model(cfg, workdir: str, official: str | None = None) -> tuple[Any, Any, str]:
    """(model, params, description) from `official` (a .pth) or the latest checkpoint in `workdir`."""
    if official:
        cfg = config_lib.prepare(cfg)
        config_lib.ensure_pca(cfg)  # used when the .pth carries no PCA matrix of its own
        model, params, _ = load_official(official, cfg)
        return model, params, f"official checkpoint {official}"
    model, params, step = restore_params(cfg, workdir)
    return model, params, f"{workdir} step {step}"


def bind(spec: models.ModelSpec, model, params, num_iters: int | None = None, noise: float = 0.0) -> PredictFn:
    """predict_fn(lr, kernel=None) for one model; `noise` ([0, 255] units) is what a non-blind
    model is told the noise level is."""
    run = spec.jit_predict(model, num_iters)

    def predict_fn(lr, kernel=None):
        sigma = jnp.full((lr.shape[0],), noise, jnp.float32) if spec.non_blind else None
        return run(params, lr, kernel, sigma)

    return predict_fn


def two_step(estimate: PredictFn, restore: PredictFn) -> PredictFn:
    """Blind SR from a kernel estimator and a non-blind restorer: (sr, estimated kernel); given a
    kernel, the restorer uses it instead (sr, None)."""

    def predict_fn(lr, kernel=None):
        if kernel is not None:
            return restore(lr, kernel)[0], None
        _, estimated = estimate(lr)
        return restore(lr, estimated)[0], estimated

    return predict_fn


def load_restorer(cfg, name: str) -> tuple[Any, Any, str, dict]:
    """(model, params, description, pipeline settings) of the non-blind model `name` that
    `cfg.pipeline` names: `<name>_workdir` (a jaxsr run; its config.json is read) or
    `<name>_official` (a .pth of the variant `<name>_official_variant`)."""
    pipe = dict(cfg.get("pipeline", None) or {})
    workdir, official = pipe.get(f"{name}_workdir", ""), pipe.get(f"{name}_official", "")
    if bool(workdir) == bool(official):
        raise ValueError(f"the blind-SR pipeline needs exactly one of "
                         f"cfg.pipeline.{name}_workdir (a jaxsr {name} run) and cfg.pipeline.{name}_official "
                         f"(a .pth); got {name}_workdir={workdir!r}, {name}_official={official!r}")
    if official:
        variants = models.get(name).official_variants
        variant = pipe.get(f"{name}_official_variant", "") or next(iter(variants))
        if variant not in variants:
            raise ValueError(f"config key pipeline.{name}_official_variant must be one of {sorted(variants)}, "
                             f"got {variant!r}")
        restorer_cfg = ml_collections.ConfigDict({"scale": int(cfg.scale), "model": {"name": name, **variants[variant]}})
        model, params, _ = load_official(official, restorer_cfg)
        return model, params, f"official {name} {official}", pipe
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cfg.pipeline.{name}_workdir={workdir!r} has no config.json; "
                                f"is it a jaxsr training run?")
    with open(path) as f:
        restorer_cfg = ml_collections.ConfigDict(json.load(f))
    if restorer_cfg.model.name != name:
        raise ValueError(f"cfg.pipeline.{name}_workdir={workdir!r} holds a {restorer_cfg.model.name!r} run, not {name}")
    if int(restorer_cfg.scale) != int(cfg.scale):
        raise ValueError(f"the {name} in {workdir!r} was trained at x{restorer_cfg.scale}, but cfg.scale is {cfg.scale}")
    model, params, step = restore_params(restorer_cfg, workdir)
    return model, params, f"{name} {workdir} step {step}", pipe


def build(cfg, workdir: str, official: str | None = None) -> tuple[PredictFn, str]:
    """(predict_fn, description of where the parameters came from) for eval and infer."""
    spec = models.get(cfg.model.name)
    model, params, source = load_model(cfg, workdir, official)
    noise = float(cfg.eval.get("noise", 0.0))
    predict_fn = bind(spec, model, params, optional_iters(cfg.eval.get("num_iters", -1)), noise)
    if spec.restorer is None:
        return predict_fn, source
    r_model, r_params, r_source, pipe = load_restorer(cfg, spec.restorer)
    restore = bind(models.get(spec.restorer), r_model, r_params,
                   optional_iters(pipe.get(f"{spec.restorer}_num_iters", -1)), noise)
    return two_step(predict_fn, restore), f"{source} -> {r_source}"
