"""The one training loop for every jaxsr model, top to bottom.

HR patches come from the grain pipeline as uint8; everything else happens inside one jitted,
sharded step: degradation with a PRNG key folded from the step number (`jaxsr.ops.degrade`),
the model's forward pass, its loss (from the model's own file), and the Adam update. The model
file is found through `jaxsr.models.REGISTRY`; nothing here is model-specific.

Reproducibility: the step's randomness depends only on (seed, step) and the data iterator's
state is checkpointed, so a run killed at any point and restarted produces the same losses as
an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from jaxsr import checkpoints, config_lib, models, sharding
from jaxsr.data import datasets, pipeline
from jaxsr.ops import degrade, imresize, metrics, pca


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key; the step's key is fold_in(rng, step)


class NonFiniteLossError(RuntimeError):
    pass


def log(message: str, *args) -> None:
    """Progress messages on the first host only (library logs stay at absl's WARNING level)."""
    if jax.process_index() == 0:
        print(message % args if args else message, flush=True)


# ----------------------------------------------------------------------------- building blocks

def prepare_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fill derived fields (the shipped PCA matrix for DANv1) so every entry point agrees."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    if "pca_path" in cfg.model and not cfg.model.pca_path:
        cfg.model.pca_path = pca.default_matrix_path(config_lib.degradation_spec(cfg),
                                                     cfg.model.get("code_length", 10))
    return cfg


def build_model(cfg):
    lib = models.get(cfg.model.name)
    return lib, lib.create_model(cfg)


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


# Optional hooks a model file may define when "apply the module to the LR batch" is not enough
# (a non-blind model that also takes the kernel, an estimator that returns no image):
#   init(model, rng, lr) -> variables;  forward(model, variables, batch) -> outputs;
#   predict(model, variables, lr, num_iters) -> (sr or None, kernel or None)

def _init(model_lib, model, rng, lr):
    if hasattr(model_lib, "init"):
        return model_lib.init(model, rng, lr)
    return model.init(rng, lr)


def _forward(model_lib, model, variables, batch):
    if hasattr(model_lib, "forward"):
        return model_lib.forward(model, variables, batch)
    return model.apply(variables, batch["lr"])


def _predict(model_lib, model, variables, lr, num_iters=None, kernel=None):
    if hasattr(model_lib, "predict"):
        if kernel is not None:  # a non-blind model (NON_BLIND = True in its file) restores with the true kernel
            return model_lib.predict(model, variables, lr, num_iters, kernel=kernel)
        return model_lib.predict(model, variables, lr, num_iters)
    out = model.apply(variables, lr, num_iters=num_iters)
    return out["sr"][-1], (out["kernel"][-1] if "kernel" in out else None)


def create_train_state(cfg, model, tx, model_lib=None) -> TrainState:
    model_lib = model_lib or models.get(cfg.model.name)
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    # One compiled init instead of one small compilation per parameter's random draw.
    init = jax.jit(lambda rng: _init(model_lib, model, rng, jnp.zeros(lr_shape(cfg, 1), jnp.float32))["params"])
    params = init(init_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=train_rng)


def make_train_step(cfg, model, model_lib, tx, schedule, spec):
    """Returns train_step(state, hr_uint8) -> (state, metrics); pure, to be jitted by the caller."""

    def train_step(state: TrainState, hr_u8: jax.Array):
        key = jax.random.fold_in(state.rng, state.step)
        hr = hr_u8.astype(jnp.float32) / 255.0
        lr, kernel, noise_sigma = degrade.degrade(key, hr, spec)
        batch = {"hr": hr, "lr": lr, "kernel": kernel, "noise_sigma": noise_sigma}

        def loss_fn(params):
            outputs = _forward(model_lib, model, {"params": params}, batch)
            return model_lib.compute_loss(outputs, batch, cfg)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
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


def make_predict_fn(model_lib, model, num_iters: int | None = None):
    """predict(params, lr, kernel=None) -> (last SR or None, last kernel or None), jitted."""
    return jax.jit(lambda params, lr, kernel=None: _predict(model_lib, model, {"params": params}, lr, num_iters,
                                                             kernel))


# ----------------------------------------------------------------------------- validation

class Validator:
    """A fixed, small held-out set: the same LR images (fixed kernels) every time, so numbers
    are comparable across steps; one compiled shape."""

    def __init__(self, cfg, spec, model):
        paths = datasets.resolve_image_paths(cfg.data.val_dirs, key="data.val_dirs")
        hr = pipeline.load_validation_set(paths, size=cfg.data.val_size, scale=cfg.scale,
                                          max_images=cfg.data.val_images)
        self.scale = cfg.scale
        self.hr = jnp.asarray(hr)
        val_spec = degrade.DegradationSpec(**{**spec.__dict__, "quantize": True})
        self.lr, self.kernel, _ = degrade.degrade(jax.random.PRNGKey(cfg.seed + 12345), self.hr, val_spec)
        self.bicubic = jnp.clip(imresize.imresize(self.lr, float(cfg.scale)), 0, 1)
        self.bicubic_psnr = float(jnp.mean(metrics.psnr(self.bicubic, self.hr, cfg.scale)))
        self.bicubic_ssim = float(jnp.mean(metrics.ssim(self.bicubic, self.hr, cfg.scale)))
        model_lib = models.get(cfg.model.name)
        self.predict = make_predict_fn(model_lib, model)
        self.non_blind = getattr(model_lib, "NON_BLIND", False)

    def __call__(self, params) -> tuple[dict[str, float], np.ndarray]:
        if self.non_blind:
            sr, kernel = self.predict(params, self.lr, self.kernel)
        else:
            sr, kernel = self.predict(params, self.lr)
        result = {"val_bicubic_psnr": self.bicubic_psnr, "val_bicubic_ssim": self.bicubic_ssim}
        if sr is not None:  # a pure kernel estimator returns no image
            sr = jnp.clip(sr, 0, 1)
            result["val_psnr"] = float(jnp.mean(metrics.psnr(sr, self.hr, self.scale)))
            result["val_ssim"] = float(jnp.mean(metrics.ssim(sr, self.hr, self.scale)))
        if kernel is not None:
            result["val_kernel_l1"] = float(jnp.mean(jnp.abs(kernel - self.kernel)))
        sr_np = np.asarray(self.bicubic if sr is None else sr)
        return result, self.grid(sr_np, None if kernel is None else np.asarray(kernel))

    def grid(self, sr: np.ndarray, kernel: np.ndarray | None) -> np.ndarray:
        """Rows of LR (nearest-upsampled) | bicubic | SR | HR | true kernel | estimated kernel."""
        s, hr = self.scale, np.asarray(self.hr)
        size = hr.shape[1]
        lr_up = np.repeat(np.repeat(np.asarray(self.lr), s, axis=1), s, axis=2)

        def kernel_tile(k):
            k = k / max(k.max(), 1e-8)
            rep = max(size // k.shape[0], 1)
            tile = np.zeros((size, size), np.float32)
            big = np.kron(k, np.ones((rep, rep)))
            tile[:big.shape[0], :big.shape[1]] = big
            return np.repeat(tile[..., None], 3, axis=-1)

        rows = []
        for i in range(hr.shape[0]):
            cols = [lr_up[i], np.asarray(self.bicubic[i]), sr[i], hr[i], kernel_tile(np.asarray(self.kernel[i]))]
            if kernel is not None:
                cols.append(kernel_tile(kernel[i]))
            rows.append(np.concatenate(cols, axis=1))
        return np.clip(np.concatenate(rows, axis=0), 0, 1)


# ----------------------------------------------------------------------------- logging

class MetricWriter:
    """JSONL always (one object per line, `step` included), TensorBoard when tensorboardX is installed."""

    def __init__(self, workdir: str, resume_step: int):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = jax.process_index() == 0
        self.tb = None
        if not self.enabled:
            return
        if os.path.exists(self.path):  # drop lines a killed run wrote after its last checkpoint
            with open(self.path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(kept)
        try:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        except ImportError:
            pass

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in values.items()}}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, float(v), int(step))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _progress(step: int, total: int, start_step: int, t0: float, loss: float) -> None:
    done = step - start_step
    rate = done / max(time.time() - t0, 1e-9)
    eta = (total - step) / rate if rate > 0 else float("inf")
    width = 30
    filled = int(width * step / total)
    sys.stdout.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {step}/{total} loss {loss:.4f} "
                     f"{rate:.2f} it/s ETA {eta / 60:.1f} min ")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- the loop

def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train (resuming from the latest checkpoint in `workdir`), validate periodically, and
    return the last validation metrics."""
    mesh = sharding.make_mesh()
    config_lib.validate(cfg, num_devices=mesh.devices.size)
    cfg = prepare_config(cfg)
    spec = config_lib.degradation_spec(cfg)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))

    # Data first: a wrong folder fails before anything is compiled.
    paths = datasets.resolve_image_paths(cfg.data.train_dirs, key="data.train_dirs")
    datasets.resolve_image_paths(cfg.data.val_dirs, key="data.val_dirs")

    model_lib, model = build_model(cfg)
    tx, schedule = make_optimizer(cfg)
    state = create_train_state(cfg, model, tx, model_lib)
    meta = checkpoints.fingerprint(cfg, state.params)
    log("model %s: %d parameters", cfg.model.name, meta["num_params"])

    # This host's share of the global batch.
    local_batch = sharding.local_batch_size(cfg.data.batch_size)
    dataset = pipeline.make_train_dataset(
        paths, patch_size=cfg.data.patch_size * cfg.scale, batch_size=local_batch, seed=cfg.seed,
        shard_index=jax.process_index(), shard_count=jax.process_count(), cache=cfg.data.cache,
        num_threads=cfg.data.num_threads, num_workers=cfg.data.get("num_workers", 0))
    data_iter = iter(dataset)

    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints,
                                    save_every=cfg.train.checkpoint_every, async_save=cfg.train.async_checkpoints)
    repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    start_step = 0
    latest = ckpt.latest_step()
    if latest is not None:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), state)
        state, data_state, _ = ckpt.restore(latest, abstract, meta)
        pipeline.restore_iterator_state(data_iter, data_state)  # any data.num_workers
        start_step = int(state.step)
        log("resumed from %s at step %d", ckpt.directory, start_step)

    state = jax.device_put(state, repl)
    step_fn = jax.jit(make_train_step(cfg, model, model_lib, tx, schedule, spec),
                      in_shardings=(repl, batch_sh), out_shardings=(repl, repl), donate_argnums=0)
    validator = Validator(cfg, spec, model)
    writer = MetricWriter(workdir, start_step)
    interactive = sys.stdout.isatty() and jax.process_index() == 0

    pending: list[dict] = []
    last_val: dict[str, float] = {}
    t0 = t_log = time.time()
    step = start_step
    total = int(cfg.train.steps)

    def flush_metrics(step: int) -> dict[str, float]:
        """Fetch the device metrics since the last flush; stop on a non-finite loss."""
        nonlocal pending, t_log
        fetched = jax.device_get(pending)
        pending = []
        for i, m in enumerate(fetched):
            if not bool(m["finite"]):
                bad = step - len(fetched) + i + 1
                raise NonFiniteLossError(
                    f"non-finite loss at step {bad} (loss={float(m['loss'])}); training stopped. The last "
                    f"checkpoint in {ckpt.directory} (step {ckpt.latest_step()}) is intact.")
        if not fetched:
            return {}
        mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k != "finite"}
        dt = time.time() - t_log
        t_log = time.time()
        mean["steps_per_sec"] = len(fetched) / dt
        mean["images_per_sec"] = len(fetched) * cfg.data.batch_size / dt
        return mean

    try:
        while step < total:
            batch = next(data_iter)
            hr = sharding.host_to_global(batch["hr"], batch_sh)
            state, m = step_fn(state, hr)
            pending.append(m)
            step += 1
            if interactive and (step % max(1, cfg.train.log_every // 10) == 0 or step == total):
                _progress(step, total, start_step, t0, float(m["loss"]))
            if step % cfg.train.log_every == 0 or step == total:
                mean = flush_metrics(step)
                writer.write(step, mean)
                if not interactive:
                    log("step %d/%d loss %.5f lr %.2e %.2f steps/s", step, total, mean["loss"],
                                 mean["learning_rate"], mean["steps_per_sec"])
            if step % cfg.train.eval_every == 0 or step == total:
                flush_metrics(step)
                last_val, grid = validator(state.params)
                writer.write(step, last_val)
                if jax.process_index() == 0:
                    from jaxsr import io as jio
                    jio.write_image(os.path.join(workdir, "validation", f"step_{step:08d}.png"), grid)
                log("step %d validation: %s", step, ", ".join(f"{k[4:]} {v:.4g}" for k, v in last_val.items()))
            if step % cfg.train.checkpoint_every == 0 or step == total:
                flush_metrics(step)  # never checkpoint past a non-finite step
                # Orbax writes JSON items from the first host only. That suffices: every host's
                # iterator is at the same position ({"next_index": step * local_batch}).
                ckpt.save(step, state, data_iter.get_state(), meta, force=step == total)
    finally:
        if interactive:
            sys.stdout.write("\n")
        if hasattr(data_iter, "close"):  # stops grain's worker processes, if any
            data_iter.close()
        ckpt.close()
        writer.close()
    return last_val


def restore_params(cfg, workdir: str, step: int | None = None):
    """(model, params) from the latest (or given) checkpoint in `workdir`, for eval / infer."""
    cfg = prepare_config(cfg)
    _, model = build_model(cfg)
    tx, _ = make_optimizer(cfg)
    abstract = jax.eval_shape(lambda: create_train_state(cfg, model, tx, models.get(cfg.model.name)))
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint found in {os.path.join(workdir, 'checkpoints')}; train first "
                                f"or pass --official=PATH.pth")
    meta = checkpoints.fingerprint(cfg, abstract.params)
    state, _, _ = ckpt.restore(step, abstract, meta)
    ckpt.close()
    return model, state.params, step
