"""A loaded config, resolved once into everything derived from it.

    exp = experiment.resolve(cfg)             # or resolve(cfg, num_devices=..., devices_per_host=...)
    exp.cfg            the prepared config (derived fields filled: the DAN models' PCA matrix path)
    exp.degradation    the `jaxsr.ops.degrade.DegradationSpec` of cfg.degradation at cfg.scale
    exp.model_spec     the `jaxsr.models.ModelSpec` of cfg.model.name
    exp.model(p)       the Flax module for programs compiled for platform p ("cpu", "gpu", "tpu")

`resolve` is the one check of a config (`config_lib.validate` plus the model name against the
registry) and the one place a config is prepared; train, eval, infer, `jaxsr.aot` and the
benchmarks call it once and pass the `Experiment` down, so each derived value is computed once
and every entry point builds the same model from it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from jaxsr import config_lib, models
from jaxsr.ops import degrade


@dataclasses.dataclass(frozen=True)
class Experiment:
    cfg: ml_collections.ConfigDict
    degradation: degrade.DegradationSpec
    model_spec: models.ModelSpec

    @property
    def name(self) -> str:
        return self.cfg.model.name

    def model(self, platform: str, **kwargs) -> Any:
        """`cfg.model`'s Flax module for programs compiled for `platform`; `kwargs` go to the
        spec's `create` (e.g. an official checkpoint's `pca_matrix`)."""
        return models.create(self.cfg, platform, **kwargs)

    def with_model(self, **overrides) -> "Experiment":
        """The same experiment with cfg.model fields changed (e.g. remat=True), resolved again."""
        cfg = ml_collections.ConfigDict(self.cfg.to_dict())
        for key, value in overrides.items():
            cfg.model[key] = value
        return resolve(cfg)


def resolve(cfg: ml_collections.ConfigDict, num_devices: int | None = None,
            devices_per_host: int | None = None, *, fit_pca: bool = True) -> Experiment:
    """Check `cfg` (naming the offending key, before anything is compiled; with `num_devices`,
    also that the batch splits over them) and derive everything from it. With `fit_pca`, a
    DAN setting whose PCA matrix is neither shipped nor cached is fitted into the cache first
    (`config_lib.ensure_pca`)."""
    spec = config_lib.validate(cfg, num_devices, devices_per_host)
    model_spec = models.get(cfg.model.get("name"))
    prepared = config_lib.prepare(cfg, spec)
    if fit_pca:
        config_lib.ensure_pca(prepared, spec)
    return Experiment(prepared, spec, model_spec)
