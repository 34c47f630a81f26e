"""Trained models as predict functions, from a jaxsr checkpoint or an official PyTorch `.pth`.

Eval (`jaxsr.evaluate`), infer (`jaxsr.infer`) and the in-loop validation (`jaxsr.validation`)
take a model only as a `PredictFn`:

    predict_fn(lr (N, h, w, 3) in [0, 1], kernel (N, k, k) or None) -> (sr or None, kernel or None)

`build(exp, workdir, official=None)` makes one for any model in the registry from a resolved
`jaxsr.experiment.Experiment` (or a config, resolved once there). A kernel estimator whose spec
names a `restorer` (KENet -> USRNet) becomes the two-step blind pipeline, its restorer loaded from
`cfg.pipeline.<restorer>_workdir` (a jaxsr run) or `cfg.pipeline.<restorer>_official` (a `.pth`).
Given a kernel, the function restores with it (the "true kernel" bound of
`eval.oracle_kernel=True`), which only non-blind models can.

`predictor(spec, model)` is the same function with the parameters as its first argument: the
training loop's validation calls it with the current parameters, `bind` fixes them for eval and
infer, so both run one compiled program per input shape.

`iter_batches` runs a predict function over a stack of equal-shape inputs in batches of one size
(one compile per shape); `group_by_size` sorts images into such stacks, by exact size or (opted
into) by size padded up to a multiple (`pad_to_multiple`); evaluate and infer batch through them.

This layer sits above the models and the checkpoints; it does not call into the trainer.
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxsr import checkpoints, experiment, models, platform as platform_lib, torch_import

PredictFn = Callable[..., tuple[Any, Any]]  # predict_fn(lr, kernel=None) -> (sr or None, kernel or None)


def optional_iters(value) -> int | None:
    """A config's iteration count: a positive int, or -1 / 0 / None for the model's own T."""
    return int(value) if value is not None and int(value) > 0 else None


def _experiment(exp_or_cfg) -> experiment.Experiment:
    """An Experiment as given; a config (e.g. the one a run was trained with) resolved once."""
    if isinstance(exp_or_cfg, experiment.Experiment):
        return exp_or_cfg
    return experiment.resolve(exp_or_cfg)


# --------------------------------------------------------------------------- loading

def load_official(path: str, spec: models.ModelSpec, cfg) -> tuple[Any, dict, dict]:
    """(model, params, extras) from an official `.pth` of the model `spec`.

    `cfg` holds the model's settings (`scale` and the `model` section: a resolved experiment's
    config, or just those two for a converter); the model comes from the spec's `create(cfg)`.
    A DAN model uses the checkpoint's own PCA matrix (its `encoder` buffer) when it carries one,
    so cfg needs no pca_path then.
    """
    if spec.official is None:
        raise ValueError(f"config key model.name: {spec.name!r} has no official checkpoint importer; "
                         f"models with one: {models.with_official_checkpoints()}")
    state_dict = torch_import.read_torch_checkpoint(path)
    matrix = spec.official.extras(state_dict).get("pca_matrix")
    model = models.create(cfg, platform_lib.default_platform(),
                          **({"pca_matrix": matrix} if matrix is not None else {}))
    params, extras = torch_import.convert_state_dict(state_dict, model, spec.official)
    return model, params, extras


def restore_params(exp, workdir: str, step: int | None = None) -> tuple[Any, Any, int]:
    """(model, params, step) from the latest (or given) checkpoint in `workdir`: the parameters
    only (`checkpoints.restore_params`), after the config's fingerprint is checked against the
    checkpoint's. No optimizer is built. `exp`: an Experiment, or a config to resolve."""
    exp = _experiment(exp)
    cfg, spec = exp.cfg, exp.model_spec
    model = exp.model(platform_lib.default_platform())
    lr = jnp.zeros((1, cfg.data.patch_size, cfg.data.patch_size, 3), jnp.float32)
    abstract = platform_lib.eval_shape(lambda: spec.init(model, jax.random.PRNGKey(0), lr)["params"])
    directory = os.path.join(workdir, "checkpoints")
    try:
        params, step = checkpoints.restore_params(directory, abstract, checkpoints.fingerprint(cfg, abstract), step)
    except checkpoints.NoCheckpointError:
        raise FileNotFoundError(f"no checkpoint found in {directory}; train first "
                                f"or pass --official=PATH.pth") from None
    return model, params, step


def load_model(exp, workdir: str, official: str | None = None) -> tuple[Any, Any, str]:
    """(model, params, description) from `official` (a .pth) or the latest checkpoint in `workdir`.
    `exp`: an Experiment, or a config to resolve (its PCA matrix is used when the .pth has none)."""
    exp = _experiment(exp)
    if official:
        model, params, _ = load_official(official, exp.model_spec, exp.cfg)
        return model, params, f"official checkpoint {official}"
    model, params, step = restore_params(exp, workdir)
    return model, params, f"{workdir} step {step}"


def load_restorer(cfg, restorer: models.ModelSpec) -> tuple[Any, Any, str, dict]:
    """(model, params, description, pipeline settings) of the non-blind model `restorer` that
    `cfg.pipeline` names: `<name>_workdir` (a jaxsr run; its config.json is read and resolved) or
    `<name>_official` (a .pth of the variant `<name>_official_variant`)."""
    name = restorer.name
    pipe = dict(cfg.get("pipeline", None) or {})
    workdir, official = pipe.get(f"{name}_workdir", ""), pipe.get(f"{name}_official", "")
    if bool(workdir) == bool(official):
        raise ValueError(f"the blind-SR pipeline needs exactly one of "
                         f"cfg.pipeline.{name}_workdir (a jaxsr {name} run) and cfg.pipeline.{name}_official "
                         f"(a .pth); got {name}_workdir={workdir!r}, {name}_official={official!r}")
    if official:
        variants = restorer.official_variants
        variant = pipe.get(f"{name}_official_variant", "") or next(iter(variants))
        if variant not in variants:
            raise ValueError(f"config key pipeline.{name}_official_variant must be one of {sorted(variants)}, "
                             f"got {variant!r}")
        restorer_cfg = ml_collections.ConfigDict({"scale": int(cfg.scale), "model": {"name": name, **variants[variant]}})
        model, params, _ = load_official(official, restorer, restorer_cfg)
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
    model, params, step = restore_params(experiment.resolve(restorer_cfg), workdir)
    return model, params, f"{name} {workdir} step {step}", pipe


# --------------------------------------------------------------------------- predict functions

def predictor(spec: models.ModelSpec, model, num_iters: int | None = None,
              noise: float = 0.0) -> Callable[..., tuple[Any, Any]]:
    """predict(params, lr, kernel=None) -> (sr, kernel): `model`'s one compiled predict program,
    the parameters passed on every call (the training loop's validation passes the current
    ones). `noise` ([0, 255] units) is what a non-blind model is told the noise level is."""
    run = spec.jit_predict(model, num_iters)

    def predict(params, lr, kernel=None):
        sigma = jnp.full((lr.shape[0],), noise, jnp.float32) if spec.non_blind else None
        return run(params, lr, kernel, sigma)

    return predict


def bind(spec: models.ModelSpec, model, params, num_iters: int | None = None, noise: float = 0.0) -> PredictFn:
    """predict_fn(lr, kernel=None) for one model: `predictor` with its parameters fixed."""
    return functools.partial(predictor(spec, model, num_iters, noise), params)


def two_step(estimate: PredictFn, restore: PredictFn) -> PredictFn:
    """Blind SR from a kernel estimator and a non-blind restorer: (sr, estimated kernel); given a
    kernel, the restorer uses it instead (sr, None)."""

    def predict_fn(lr, kernel=None):
        if kernel is not None:
            return restore(lr, kernel)[0], None
        _, estimated = estimate(lr)
        return restore(lr, estimated)[0], estimated

    return predict_fn


def build(exp, workdir: str, official: str | None = None) -> tuple[PredictFn, str]:
    """(predict_fn, description of where the parameters came from) for eval and infer.
    `exp`: the resolved Experiment (`jaxsr.experiment.resolve`), or a config to resolve."""
    exp = _experiment(exp)
    spec, settings = exp.model_spec, exp.cfg.eval
    model, params, source = load_model(exp, workdir, official)
    noise = float(settings.get("noise", 0.0))
    predict_fn = bind(spec, model, params, optional_iters(settings.get("num_iters", -1)), noise)
    if spec.restorer is None:
        return predict_fn, source
    restorer = models.get(spec.restorer)
    r_model, r_params, r_source, pipe = load_restorer(exp.cfg, restorer)
    restore = bind(restorer, r_model, r_params, optional_iters(pipe.get(f"{restorer.name}_num_iters", -1)), noise)
    return two_step(predict_fn, restore), f"{source} -> {r_source}"


# --------------------------------------------------------------------------- batching

def pad_to_multiple(images: np.ndarray, multiple: int) -> np.ndarray:
    """Mirror-pad an NHWC batch on the bottom/right so H and W become multiples of `multiple`.

    'symmetric' mirroring (edge pixel repeated) is MATLAB imresize's own border rule, and
    NumPy applies it for any pad length, even one longer than the image.
    """
    _, h, w, _ = images.shape
    padded_h, padded_w = padded_size(h, w, multiple)
    if (padded_h, padded_w) == (h, w):
        return images
    return np.pad(images, ((0, 0), (0, padded_h - h), (0, padded_w - w), (0, 0)), mode="symmetric")


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(height, width) rounded up to multiples of `multiple` (1: unchanged)."""
    return height + -height % multiple, width + -width % multiple


def group_by_size(sizes: Sequence[tuple[int, int]], multiple: int = 1) -> dict[tuple[int, int], list[int]]:
    """{(h, w): indices of the `sizes` that run at that size}, sorted by size. With multiple=1
    each image keeps its own size, so a predict function compiles once per distinct size and
    sees no padded pixel; a larger multiple merges sizes (fewer compiles, padded inputs)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (h, w) in enumerate(sizes):
        groups.setdefault(padded_size(h, w, multiple), []).append(index)
    return dict(sorted(groups.items()))


def _fill(chunk: np.ndarray, size: int) -> np.ndarray:
    """`chunk` grown to `size` entries by repeating its last one."""
    return np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)]) if len(chunk) < size else chunk


def iter_batches(predict_fn: PredictFn, inputs: np.ndarray, max_batch: int, kernels: np.ndarray | None = None
                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Run `predict_fn` over `inputs` (M, h, w, C) in batches of one fixed size.

    `inputs` is an array or anything with `.shape` whose slices `inputs[a:b]` are arrays
    (the tiles of a large image are cut batch by batch, see `jaxsr.infer`). With `kernels`
    (M, k, k), each batch is called as predict_fn(lr, its kernels).

    The batch size is min(max_batch, M); the last batch is filled up by repeating its last
    input (and kernel) so `predict_fn` only ever sees one shape. Yields (start, sr, kernel)
    with the filler dropped: sr (b, s*h, s*w, C) and kernel (b, k, k) or None, as NumPy arrays.
    """
    count = inputs.shape[0]
    size = min(max_batch, count)
    for start in range(0, count, size):
        chunk = inputs[start:start + size]
        valid = chunk.shape[0]
        chunk = _fill(chunk, size)
        lr = jnp.asarray(chunk, jnp.float32)
        if kernels is None:
            sr, kernel = predict_fn(lr)
        else:
            sr, kernel = predict_fn(lr, jnp.asarray(_fill(kernels[start:start + size], size), jnp.float32))
        sr = np.asarray(sr)
        if sr.ndim != 4 or sr.shape[0] != size or sr.shape[-1] != chunk.shape[-1]:
            raise ValueError(f"predict_fn returned sr of shape {sr.shape} for input of shape "
                             f"{chunk.shape}; expected (N, s*h, s*w, C)")
        if kernel is not None:
            kernel = np.asarray(kernel)
            if kernel.ndim != 3 or kernel.shape[0] != size:
                raise ValueError(f"predict_fn returned kernel of shape {kernel.shape} for a "
                                 f"batch of {size}; expected (N, k, k) or None")
            kernel = kernel[:valid]
        yield start, sr[:valid], kernel
