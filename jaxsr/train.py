"""The one training loop for every jaxsr model, top to bottom.

HR patches come from the grain pipeline as uint8; everything else happens inside one jitted,
sharded step: degradation with a PRNG key folded from the step number (`jaxsr.ops.degrade`),
the model's forward pass, its loss, and the Adam update. The model enters only through its
`jaxsr.models.ModelSpec`; nothing here is model-specific. Validation (`jaxsr.validation`) and
the metric files (`jaxsr.metric_writer`) live in modules of their own.

Reproducibility: the step's randomness depends only on (seed, step) and the data iterator's
state is checkpointed, so a run killed at any point and restarted produces the same losses as
an uninterrupted one. SIGTERM / SIGINT (a preemption notice) finish the current step, save a
checkpoint at it and return normally (`jaxsr.preemption`); a damaged latest checkpoint is
skipped for the newest good one (`Checkpointer.restore_latest`).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from jaxsr import checkpoints, experiment, models, platform, preemption, progress, sharding
from jaxsr import io as jio
from jaxsr.data import datasets, pipeline
from jaxsr.metric_writer import MetricWriter
from jaxsr.ops import degrade
from jaxsr.validation import Validator


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key; the step's key is fold_in(rng, step)


class NonFiniteLossError(RuntimeError):
    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step  # the first non-finite step


def log(message: str, *args) -> None:
    """Progress messages on the first host only (library logs stay at absl's WARNING level)."""
    if jax.process_index() == 0:
        print(message % args if args else message, flush=True)


# ----------------------------------------------------------------------------- building blocks

def make_optimizer(cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
    t = cfg.train
    schedule = optax.piecewise_constant_schedule(
        t.learning_rate, {int(m): float(t.lr_gamma) for m in t.lr_milestones})
    parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay)
                 if t.weight_decay > 0 else optax.adam(schedule, b1=t.b1, b2=t.b2))
    return optax.chain(*parts), schedule


def lr_shape(cfg, batch: int) -> tuple[int, int, int, int]:
    return (batch, cfg.data.patch_size, cfg.data.patch_size, 3)


def create_train_state(cfg, spec: models.ModelSpec, model, tx) -> TrainState:
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    # One compiled init instead of one small compilation per parameter's random draw.
    init = platform.jit(lambda rng: spec.init(model, rng, jnp.zeros(lr_shape(cfg, 1), jnp.float32))["params"])
    params = init(init_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=train_rng)


def make_loss_fn(cfg, model_spec: models.ModelSpec, model):
    """loss_fn(params, batch) -> (loss, metrics): the model's training forward (`spec.forward`,
    which for DAN skips the backward pass of unweighted iterations) and its loss; the function
    the training step differentiates (and `benchmarks/models.py` counts the work of)."""

    def loss_fn(params, batch):
        outputs = model_spec.forward(model, {"params": params}, batch, cfg)
        return model_spec.loss(outputs, batch, cfg)

    return loss_fn


def make_train_step(cfg, model_spec: models.ModelSpec, model, tx, schedule, spec: degrade.DegradationSpec):
    """Returns train_step(state, hr_uint8) -> (state, metrics); pure, to be jitted by the caller."""
    loss_fn = make_loss_fn(cfg, model_spec, model)

    def train_step(state: TrainState, hr_u8: jax.Array):
        key = jax.random.fold_in(state.rng, state.step)
        hr = hr_u8.astype(jnp.float32) / 255.0
        lr, kernel, noise_sigma = degrade.degrade(key, hr, spec)
        batch = {"hr": hr, "lr": lr, "kernel": kernel, "noise_sigma": noise_sigma}
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Never let a non-finite step into the state: the host stops at its next check and the
        # last checkpoint (and this state) stay good.
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        new_state = state.replace(step=state.step + ok.astype(state.step.dtype),
                                  params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state))
        out = dict(aux, loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step), finite=ok)
        return new_state, out

    return train_step


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """Everything one compile of the training step needs, built once by `build_program`:
    `python -m jaxsr.main` runs it, `jaxsr.aot` compiles it for a target, the benchmarks and
    tests lower it. Nothing else constructs a training step."""
    exp: experiment.Experiment
    mesh: Any
    model: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    step: Callable            # train_step(state, hr_uint8) -> (state, metrics), pure
    state_sharding: Any       # replicated
    batch_sharding: Any       # the uint8 HR batch split over the `data` mesh axis
    abstract_state: TrainState  # ShapeDtypeStructs with state_sharding
    hr_batch: jax.ShapeDtypeStruct  # the global uint8 HR batch, with batch_sharding
    jitted: Callable          # jaxsr.platform.jit of `step`: shardings, donation, compile options

    @property
    def platform(self) -> str:
        return platform.platform_of(self.mesh)

    def lower(self):
        return self.jitted.lower(self.abstract_state, self.hr_batch)

    def init_state(self) -> TrainState:
        """A fresh TrainState (cfg.seed), on the host's default placement."""
        return create_train_state(self.exp.cfg, self.exp.model_spec, self.model, self.tx)


def hr_batch_shape(cfg, batch: int | None = None) -> tuple[int, int, int, int]:
    """The global uint8 HR batch of one step: (batch, patch * scale, patch * scale, 3)."""
    side = cfg.data.patch_size * cfg.scale
    return (cfg.data.batch_size if batch is None else batch, side, side, 3)


def build_program(exp: experiment.Experiment, devices=None, *, batch: int | None = None,
                  model=None) -> TrainProgram:
    """The training program of `exp` over `devices` (default: all of this job's), for the
    global batch `batch` (default cfg.data.batch_size). `model` replaces the module built for the
    devices' platform (e.g. with every loop unrolled, to count FLOPs)."""
    cfg = exp.cfg
    shape = hr_batch_shape(cfg, batch)
    mesh = sharding.make_mesh(shape[0], devices)
    model = model if model is not None else exp.model(platform.platform_of(mesh))
    tx, schedule = make_optimizer(cfg)
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    step = make_train_step(cfg, exp.model_spec, model, tx, schedule, exp.degradation)
    abstract = platform.eval_shape(lambda: create_train_state(cfg, exp.model_spec, model, tx))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), abstract)
    jitted = platform.jit(step, in_shardings=(repl, batch_sh), out_shardings=(repl, repl), donate_argnums=0)
    return TrainProgram(exp=exp, mesh=mesh, model=model, tx=tx, schedule=schedule, step=step,
                        state_sharding=repl, batch_sharding=batch_sh, abstract_state=abstract,
                        hr_batch=jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=batch_sh), jitted=jitted)


def _progress(step: int, total: int, start_step: int, t0: float, loss: float) -> None:
    rate = (step - start_step) / max(time.time() - t0, 1e-9)  # steps of this run, not of the resumed ones
    progress.show(progress.line(step, total, rate, note=f"loss {loss:.4f}"), sys.stdout)


class _Metrics:
    """The step metrics on the device since the last flush; `flush` fetches their means and
    refuses a non-finite step (the state never took it; the last checkpoint is good)."""

    def __init__(self, batch_size: int, checkpoint_dir: str, latest_step: Callable[[], int | None]):
        self.pending: list[dict] = []
        self.t_log = time.time()
        self.batch_size, self.checkpoint_dir, self.latest_step = batch_size, checkpoint_dir, latest_step

    def flush(self, step: int) -> dict[str, float]:
        fetched, self.pending = jax.device_get(self.pending), []
        for i, m in enumerate(fetched):
            if not bool(m["finite"]):
                bad = step - len(fetched) + i + 1
                raise NonFiniteLossError(
                    f"non-finite loss at step {bad} (loss={float(m['loss'])}); training stopped. The last "
                    f"checkpoint in {self.checkpoint_dir} (step {self.latest_step()}) is intact.", bad)
        if not fetched:
            return {}
        mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k != "finite"}
        dt, self.t_log = time.time() - self.t_log, time.time()
        mean["steps_per_sec"] = len(fetched) / dt
        mean["images_per_sec"] = len(fetched) * self.batch_size / dt
        return mean


def _start_run(exp: experiment.Experiment, program: TrainProgram, workdir: str):
    """The run's folder (config.json), its data (a wrong folder fails before anything is
    compiled), the validator and the checkpointer."""
    cfg, mesh = exp.cfg, program.mesh
    if sharding.data_shards(mesh) < mesh.devices.size:
        log("data.batch_size %d does not split over %d devices: each of %d shards is computed on %d devices "
            "(a batch size that is a multiple of %d uses them all)", cfg.data.batch_size, mesh.devices.size,
            sharding.data_shards(mesh), mesh.devices.size // sharding.data_shards(mesh), mesh.devices.size)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))
    paths = datasets.resolve_image_paths(cfg.data.train_dirs, key="data.train_dirs")
    validator = Validator.for_model(exp, program.model)
    dataset = pipeline.make_train_dataset(  # this host's share of the global batch
        paths, patch_size=cfg.data.patch_size * cfg.scale, batch_size=sharding.local_batch_size(cfg.data.batch_size),
        seed=cfg.seed, shard_index=jax.process_index(), shard_count=jax.process_count(), cache=cfg.data.cache,
        num_threads=cfg.data.num_threads, num_workers=cfg.data.get("num_workers", 0))
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints,
                                    save_every=cfg.train.checkpoint_every, async_save=cfg.train.async_checkpoints)
    return iter(dataset), validator, ckpt


def _restore_or_init(program: TrainProgram, ckpt: checkpoints.Checkpointer, data_iter):
    """(state on the mesh, its step, checkpoint fingerprint): the latest good checkpoint's state
    and data position, else a fresh state."""
    meta = checkpoints.fingerprint(program.exp.cfg, program.abstract_state.params)  # shapes only
    log("model %s: %d parameters", program.exp.name, meta["num_params"])
    restored = ckpt.restore_latest(program.abstract_state, meta, log=log)
    if restored is not None:  # a restart initialises nothing: the checkpoint has every value
        state, data_state, _, _ = restored
        pipeline.restore_iterator_state(data_iter, data_state)  # any data.num_workers
        log("resumed from %s at step %d", ckpt.directory, int(state.step))
    else:
        state = program.init_state()
    return jax.device_put(state, program.state_sharding), int(state.step), meta


def profile_window(cfg) -> tuple[int, int] | None:
    """(first step, step count) of `train.profile_steps` ("START,COUNT", e.g. "10,5"), or None."""
    value = cfg.train.get("profile_steps") or ""
    parts = [p for p in str(value).replace(" ", "").split(",") if p]
    if not parts:
        return None
    try:
        start, count = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"config key train.profile_steps must be 'START,COUNT' (e.g. '10,5'), got {value!r}") from None
    if start < 0 or count < 1:
        raise ValueError(f"config key train.profile_steps must have START >= 0 and COUNT >= 1, got {value!r}")
    return start, count


class _Profiler:
    """An XLA profiler trace of the steps in `train.profile_steps`, into WORKDIR/profile (first host
    only), for TensorBoard's profile plugin / XProf."""

    def __init__(self, cfg, workdir: str):
        window = profile_window(cfg) if jax.process_index() == 0 else None
        self.start, self.stop = (window[0], window[0] + window[1]) if window else (-1, -1)
        self.directory, self.active = os.path.join(workdir, "profile"), False

    def before(self, step: int) -> None:  # `step` is about to run as step + 1
        if step == self.start and not self.active:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, step: int, state) -> None:
        if self.active and (step >= self.stop):
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False
            log("profile of steps %d-%d written to %s", self.start + 1, step, self.directory)

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


class _Loop:
    """The loop's per-step work: the step, logging, validation, checkpoints, preemption, and the
    rollback to the last good checkpoint after a non-finite step."""

    def __init__(self, program: TrainProgram, workdir: str, data_iter, validator, ckpt, meta, start_step: int):
        self.program, self.cfg, self.workdir = program, program.exp.cfg, workdir
        self.data_iter, self.validator, self.ckpt, self.meta = data_iter, validator, ckpt, meta
        self.start_step, self.total = start_step, int(self.cfg.train.steps)
        self.writer = MetricWriter(workdir, start_step)
        self.interactive = sys.stdout.isatty() and jax.process_index() == 0
        self.stop = preemption.StopSignal()
        self.metrics = _Metrics(self.cfg.data.batch_size, ckpt.directory, ckpt.latest_step)
        self.profiler = _Profiler(self.cfg, workdir)
        self.rollbacks, self.last_val, self.t0 = 0, {}, time.time()

    def run(self, state: TrainState) -> dict[str, float]:
        step = self.start_step
        try:
            while step < self.total:
                try:
                    state, step, stopping = self.step(state, step)
                except NonFiniteLossError as err:
                    state, step = self.roll_back(err)
                    continue
                if stopping:
                    break
        finally:
            self.close()
        return self.last_val

    def step(self, state: TrainState, step: int):
        cfg, total = self.cfg, self.total
        hr = sharding.host_to_global(next(self.data_iter)["hr"], self.program.batch_sharding)
        self.profiler.before(step)
        state, m = self.program.jitted(state, hr)
        self.metrics.pending.append(m)
        step += 1
        self.profiler.after(step, state)
        if self.interactive and (step % max(1, cfg.train.log_every // 10) == 0 or step == total):
            _progress(step, total, self.start_step, self.t0, float(m["loss"]))
        if step % cfg.train.log_every == 0 or step == total:
            mean = self.metrics.flush(step)
            self.writer.write(step, mean)
            if not self.interactive:
                log("step %d/%d loss %.5f lr %.2e %.2f steps/s", step, total, mean["loss"],
                    mean["learning_rate"], mean["steps_per_sec"])
        if step % cfg.train.eval_every == 0 or step == total:
            self.metrics.flush(step)
            self.last_val = _validate(self.validator, state, step, self.writer, self.workdir)
        stopping = self.stop(step)
        if stopping or step % cfg.train.checkpoint_every == 0 or step == total:
            if stopping and self.metrics.pending:
                self.writer.write(step, self.metrics.flush(step))
            self.metrics.flush(step)  # never checkpoint past a non-finite step
            # Orbax writes JSON items from the first host only. That suffices: every host's
            # iterator is at the same position.
            self.ckpt.save(step, state, self.data_iter.get_state(), self.meta, force=stopping or step == total)
        if stopping:
            self.ckpt.wait()
            log("\nstopped by %s after step %d/%d; checkpoint saved in %s. Run the same command to resume.",
                self.stop.received, step, total, self.ckpt.directory)
        return state, step, stopping

    def roll_back(self, err: NonFiniteLossError) -> tuple[TrainState, int]:
        """Back to the last good checkpoint (or the initial state), the data iterator left where
        it is so the offending batches are not replayed; past `train.nan_rollbacks` the error
        stands."""
        allowed = int(self.cfg.train.get("nan_rollbacks", 0))
        if self.rollbacks >= allowed:
            raise NonFiniteLossError(f"{err} ({self.rollbacks} of train.nan_rollbacks={allowed} rollbacks used)",
                                     err.step) from None
        self.rollbacks += 1
        self.metrics.pending = []
        self.ckpt.wait()
        restored = self.ckpt.restore_latest(self.program.abstract_state, self.meta, log=log)
        state = restored[0] if restored is not None else self.program.init_state()
        state = jax.device_put(state, self.program.state_sharding)
        good = int(state.step)
        log("%s Rolled back to step %d (rollback %d of %d); the data moves on past the offending batches.",
            err, good, self.rollbacks, allowed)
        self.writer.write(good, {"nan_rollbacks": float(self.rollbacks), "nan_rollback_from_step": float(err.step)})
        return state, good

    def close(self) -> None:
        self.profiler.close()
        self.stop.close()
        if self.interactive:
            sys.stdout.write("\n")
        if hasattr(self.data_iter, "close"):  # stops grain's worker processes, if any
            self.data_iter.close()
        self.ckpt.close()
        self.writer.close()


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train (resuming from the latest checkpoint in `workdir`), validate periodically, and
    return the last validation metrics."""
    exp = experiment.resolve(cfg, num_devices=jax.device_count(), devices_per_host=jax.local_device_count())
    profile_window(exp.cfg)  # a malformed window fails before anything is compiled
    program = build_program(exp)
    data_iter, validator, ckpt = _start_run(exp, program, workdir)
    state, start_step, meta = _restore_or_init(program, ckpt, data_iter)
    return _Loop(program, workdir, data_iter, validator, ckpt, meta, start_step).run(state)


def _validate(validator: Validator, state: TrainState, step: int, writer: MetricWriter, workdir: str) -> dict:
    """Score the held-out set; its metrics and image grid to the metric files and workdir."""
    result, grid = validator(state.params)
    writer.write(step, result)
    writer.write_image(step, "validation", grid)
    if jax.process_index() == 0:
        jio.write_image(os.path.join(workdir, "validation", f"step_{step:08d}.png"), grid)
    log("step %d validation: %s", step, ", ".join(f"{k[4:]} {v:.4g}" for k, v in result.items()))
    return result
