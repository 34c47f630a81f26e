"""DANv1 (NeurIPS'20) and DANv2 (TPAMI): Restorer and Estimator alternated T times.

One parameter set is shared by all iterations: the loop is a single `nn.scan` with the
params broadcast, so T can change at apply time (`num_iters=`) without new parameters.
As in the official code, the Restorer sees the kernel code and the Estimator the SR image
through a stop-gradient, so each iteration is trained only by its own outputs.

Both versions condition the Restorer on a PCA code of the kernel (`pca_matrix`, shape
(k*k, code_length); code = flat(kernel) @ M, kernel = code @ M.T, the `jaxsr.ops.pca`
convention and the orientation of the official `encoder` buffer). DANv1's Estimator predicts
the code; DANv2's predicts the kernel itself (softmax over k*k taps), which is then encoded.

`apply(variables, lr, num_iters=None, train_from=0)` returns a dict with, for every iteration,
`sr` (T, N, sH, sW, C), `kernel` (T, N, k, k) and `code` (T, N, code_length). Differentiated as
it is, every iteration gets a backward pass, whatever the loss weights; a training step should
differentiate `forward` (the spec's), which passes the first iteration the config's loss weights
as `train_from` (README, "Your own training step").
"""
from __future__ import annotations

import functools
import hashlib
import warnings
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsr import losses
from jaxsr.models import ModelSpec, module_from_config
from jaxsr.models.layers import CRB, DPCG, Upsampler, compute_dtype, conv2d, remat_cell, run_blocks, scan_unroll
from jaxsr.ops import _checks, pca
from jaxsr.torch_import import KeyMap, OfficialMap, conv_keys

Array = jax.Array


class FrozenMatrix:
    """Read-only NumPy matrix that hashes and compares by value.

    Flax modules are hashable dataclasses (jit caches on them); a bare ndarray field would
    break `==` and `hash`, so the PCA projection is stored in this holder.
    """

    def __init__(self, array):
        arr = np.array(array, dtype=np.float32, copy=True)
        arr.setflags(write=False)
        self.array = arr
        self._hash = hash((arr.shape, hashlib.sha1(arr.tobytes()).hexdigest()))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def __array__(self, dtype=None, copy=None):
        return self.array if dtype is None else self.array.astype(dtype)

    def __eq__(self, other) -> bool:
        return (isinstance(other, FrozenMatrix) and self._hash == other._hash
                and np.array_equal(self.array, other.array))

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"FrozenMatrix(shape={self.array.shape})"


# ----------------------------------------------------------------------------- DANv1 parts
class RestorerV1(nn.Module):
    """Head conv, CRBs conditioned on the code stretched to LR size, fusion conv, upsampler."""
    scale: int
    channels: int = 3
    features: int = 64
    num_blocks: int = 40
    reduction: int = 16
    scan_blocks: bool = False  # the CRBs as one `lax.scan` body (`layers.run_blocks`)

    @nn.compact
    def __call__(self, lr: Array, code: Array) -> Array:
        n, h, w, _ = lr.shape
        cond = jnp.broadcast_to(code[:, None, None, :], (n, h, w, code.shape[-1]))
        f = conv2d(lr, self.features, 3, name="head")
        names = [f"block_{i}" for i in range(self.num_blocks)]
        f = run_blocks(self, functools.partial(CRB, self.reduction), names, f, cond, scan=self.scan_blocks)
        f = conv2d(f, self.features, 3, name="fusion")
        return Upsampler(self.scale, self.channels, shuffle_at_x1=True, name="upsampler")(f)


class EstimatorV1(nn.Module):
    """LR head (1x1) and HR head (9x9, stride s) -> CRBs (HR features as condition) -> conv -> GAP."""
    scale: int
    features: int = 32
    num_blocks: int = 5
    code_length: int = 10
    reduction: int = 16
    scan_blocks: bool = False

    @nn.compact
    def __call__(self, sr: Array, lr: Array) -> Array:
        f = conv2d(lr, self.features, 1, name="head_lr")
        cond = conv2d(sr, self.features, 9, stride=self.scale, padding=4, name="head_hr")
        names = [f"block_{i}" for i in range(self.num_blocks)]
        f = run_blocks(self, functools.partial(CRB, self.reduction), names, f, cond, scan=self.scan_blocks)
        f = conv2d(f, self.code_length, 3, name="out")
        return jnp.mean(f, axis=(1, 2)).astype(jnp.float32)


# ----------------------------------------------------------------------------- DANv2 parts
class RestorerV2(nn.Module):
    """Image head (3x3) and code head (1x1 on the 1x1 code map) -> DPC groups -> fusion -> upsampler."""
    scale: int
    channels: int = 3
    features: int = 64
    num_blocks: int = 10
    num_groups: int = 5
    group_skip: str = "official"
    scan_blocks: bool = False  # groups, and the blocks in each, as nested `lax.scan` bodies

    @nn.compact
    def __call__(self, lr: Array, code: Array) -> Array:
        f1 = conv2d(lr, self.features, 3, name="head_image")
        # The code stays a 1x1 map; the blocks broadcast it over the LR grid.
        f2 = conv2d(code[:, None, None, :], self.features, 1, name="head_code")
        group = functools.partial(DPCG, self.num_blocks, 3, 1, self.group_skip, self.scan_blocks)
        names = [f"group_{g}" for g in range(self.num_groups)]
        f1, f2 = run_blocks(self, group, names, (f1, f2), scan=self.scan_blocks)
        f = conv2d(f1, self.features, 3, name="fusion")
        return Upsampler(self.scale, self.channels, shuffle_at_x1=False, name="upsampler")(f)


class EstimatorV2(nn.Module):
    """LR head (5x5), HR head ((4s+1)^2, stride s) -> one DPC group -> conv -> GAP -> 1x1 -> softmax kernel."""
    scale: int
    kernel_size: int = 21
    features: int = 32
    num_blocks: int = 5
    group_skip: str = "official"
    scan_blocks: bool = False

    @nn.compact
    def __call__(self, sr: Array, lr: Array) -> Array:
        s = self.scale
        f = conv2d(lr, self.features, 5, name="head_lr")
        cond = conv2d(sr, self.features, 4 * s + 1, stride=s, padding=2 * s, name="head_hr")
        f, _ = DPCG(self.num_blocks, 3, 3, self.group_skip, self.scan_blocks, name="body")(f, cond)
        f = conv2d(f, 2 * self.features, 3, name="tail_conv")
        f = jnp.mean(f, axis=(1, 2), keepdims=True)
        logits = conv2d(f, self.kernel_size ** 2, 1, name="tail_kernel")[:, 0, 0, :]
        kernel = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        return kernel.reshape(-1, self.kernel_size, self.kernel_size)


# ----------------------------------------------------------------------------- the loop
class _DAN(nn.Module):
    """Shared fields and the scanned Restorer -> Estimator loop."""
    scale: int = 4
    pca_matrix: Any = None  # (k*k, code_length); stored as a FrozenMatrix
    channels: int = 3
    kernel_size: int = 21
    code_length: int = 10
    num_iters: int = 4
    remat: bool = False
    scan_unroll: int = 1  # iterations per loop trip; 0 = all (unrolled). Configs: -1 = per platform (models.create)
    # Repeated blocks (CRBs, DPCBs, DPC groups) as one `lax.scan` body each, over their stacked
    # parameters (same parameter tree): far less for XLA to compile. Configs: absent or -1 = per
    # platform (models.create: unrolled for the CPU, scanned for GPU/TPU).
    scan_blocks: bool = False
    dtype: str = "float32"  # compute dtype ("bfloat16" for accelerators); params and outputs stay float32

    def __post_init__(self):
        if self.pca_matrix is not None and not isinstance(self.pca_matrix, FrozenMatrix):
            object.__setattr__(self, "pca_matrix", FrozenMatrix(self.pca_matrix))
        super().__post_init__()

    def _validate(self) -> np.ndarray:
        _checks.check_scale("scale", self.scale)
        _checks.check_odd_size("kernel_size", self.kernel_size)
        if self.pca_matrix is None:
            raise ValueError(f"{type(self).__name__} needs pca_matrix of shape "
                             f"({self.kernel_size ** 2}, {self.code_length}), got None")
        want = (self.kernel_size ** 2, self.code_length)
        if self.pca_matrix.shape != want:
            raise ValueError(f"pca_matrix must have shape {want} for kernel_size={self.kernel_size}, "
                             f"code_length={self.code_length}; got {self.pca_matrix.shape}")
        return self.pca_matrix.array

    def _estimate(self, sr: Array, lr: Array, matrix: Array) -> tuple[Array, Array]:
        """Returns (code, kernel) from the Estimator."""
        raise NotImplementedError("subclasses (DANv1, DANv2) define the Estimator step")

    def __call__(self, lr: Array, num_iters: int | None = None, train_from: int = 0) -> dict[str, Array]:
        """Outputs of every iteration. Iterations before `train_from` run with their parameters
        behind a stop-gradient, so differentiating builds no backward pass for them and keeps
        none of their activations; the values are the same. Training passes the first iteration
        its loss weights (`forward`): each iteration's gradient comes only from its own outputs
        (the stop-gradients between Restorer and Estimator), so an unweighted one adds nothing."""
        matrix = jnp.asarray(self._validate())
        # Eager even under jit, so a concrete `lr` closed over by a jitted function is
        # NaN-checked instead of turning the check into a tracer.
        with jax.ensure_compile_time_eval():
            _checks.check_images("lr", lr, channels=(self.channels,))
        iters = self.num_iters if num_iters is None else num_iters
        if not isinstance(iters, (int, np.integer)) or iters < 1:
            raise ValueError(f"num_iters must be a positive int, got {iters!r}")
        if not isinstance(train_from, (int, np.integer)) or not 0 <= train_from < iters:
            raise ValueError(f"train_from must be an int in [0, {iters - 1}] for {iters} iterations, got {train_from!r}")

        # Dirac initial kernel: its code is the matrix row of the centre tap.
        centre = (self.kernel_size // 2) * (self.kernel_size + 1)
        code0 = jnp.broadcast_to(matrix[centre], (lr.shape[0], self.code_length)).astype(jnp.float32)
        dtype = compute_dtype(self.dtype)  # the networks run in it; codes, kernels and outputs are float32

        def step(mdl, code, lr_in):
            sr = mdl.restorer(lr_in, jax.lax.stop_gradient(code).astype(dtype))
            code, kernel = mdl._estimate(jax.lax.stop_gradient(sr), lr_in, matrix)
            return code, {"sr": sr.astype(jnp.float32), "kernel": kernel, "code": code}

        def loop(length: int, frozen: bool = False):
            unroll = scan_unroll(self.scan_unroll, length)
            cell = remat_cell(step, unroll) if self.remat and not frozen else step
            scanned = nn.scan(cell, variable_broadcast="params", split_rngs={"params": False},
                              in_axes=nn.broadcast, length=length, unroll=unroll)
            if frozen:  # parameters behind a stop-gradient: nothing to differentiate, nothing to keep
                scanned = nn.map_variables(scanned, "params", trans_in_fn=_stop_gradient, init=False)
            return scanned

        lr_in = lr.astype(dtype)
        if train_from == 0 or self.is_initializing():
            return loop(int(iters))(self, code0, lr_in)[1]
        code, early = loop(int(train_from), frozen=True)(self, code0, lr_in)
        _, late = loop(int(iters) - int(train_from))(self, jax.lax.stop_gradient(code), lr_in)
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), early, late)


def _stop_gradient(tree):
    return jax.tree.map(jax.lax.stop_gradient, tree)


class DANv1(_DAN):
    """DANv1: CRB Restorer (40 x 64 ch) and Estimator (5 x 32 ch) that predicts the PCA code."""
    restorer_features: int = 64
    restorer_blocks: int = 40
    estimator_features: int = 32
    estimator_blocks: int = 5
    reduction: int = 16

    def setup(self):
        self.restorer = RestorerV1(self.scale, self.channels, self.restorer_features,
                                   self.restorer_blocks, self.reduction, self.scan_blocks)
        self.estimator = EstimatorV1(self.scale, self.estimator_features, self.estimator_blocks,
                                     self.code_length, self.reduction, self.scan_blocks)

    def _estimate(self, sr, lr, matrix):
        code = self.estimator(sr, lr)
        return code, pca.decode(code, matrix)


class DANv2(_DAN):
    """DANv2: dual-path Restorer (5 groups x 10 DPCBs, 64 ch) and a softmax-kernel Estimator."""
    restorer_features: int = 64
    restorer_blocks: int = 10
    restorer_groups: int = 5
    estimator_features: int = 32
    estimator_blocks: int = 5
    group_skip: str = "official"

    def setup(self):
        self.restorer = RestorerV2(self.scale, self.channels, self.restorer_features,
                                   self.restorer_blocks, self.restorer_groups, self.group_skip, self.scan_blocks)
        self.estimator = EstimatorV2(self.scale, self.kernel_size, self.estimator_features,
                                     self.estimator_blocks, self.group_skip, self.scan_blocks)

    def _estimate(self, sr, lr, matrix):
        kernel = self.estimator(sr, lr)
        return kernel.reshape(kernel.shape[0], -1) @ matrix, kernel


MODELS: dict[str, type[_DAN]] = {"danv1": DANv1, "danv2": DANv2}


# ----------------------------------------------------------------------------- training-loop API
@functools.lru_cache(maxsize=8)
def _load_pca(path: str) -> np.ndarray:
    return pca.load(path)


def pca_matrix_from_config(model_cfg: Mapping[str, Any]) -> np.ndarray | None:
    """`model_cfg.pca_matrix` if given, else the `matrix` array of `model_cfg.pca_path`, else None."""
    matrix = model_cfg.get("pca_matrix", None)
    if matrix is not None:
        return np.asarray(matrix, np.float32)
    path = model_cfg.get("pca_path", None)
    return _load_pca(str(path)) if path else None


def create_model(cfg, pca_matrix=None) -> nn.Module:
    """Builds DANv1/DANv2 from `cfg.scale` and `cfg.model` (`name` plus module fields).

    The PCA matrix is `pca_matrix` if given, else taken from the config.
    """
    name = cfg.model.get("name")
    matrix = pca_matrix if pca_matrix is not None else pca_matrix_from_config(cfg.model)
    if name in MODELS and matrix is None:
        raise ValueError(f"{name} needs a kernel PCA matrix: set cfg.model.pca_path (an .npz with "
                         f"key 'matrix') or cfg.model.pca_matrix")
    return module_from_config(MODELS.get(name, DANv1), cfg, names=tuple(MODELS), drop=("pca_path", "pca_matrix"),
                              pca_matrix=matrix)


def first_weighted_iteration(cfg, num_iters: int) -> int:
    """The first iteration `cfg.loss.iter_weights` gives a non-zero weight (the last by default)."""
    weights = (cfg.get("loss", None) or {}).get("iter_weights", None)
    if weights is None:
        return num_iters - 1
    if len(weights) != num_iters:
        raise ValueError(f"config key loss.iter_weights has {len(weights)} entries but the model runs "
                         f"{num_iters} iterations: {tuple(weights)}")
    return next((t for t, w in enumerate(weights) if float(w) != 0.0), num_iters - 1)


def forward(model: _DAN, variables, batch: Mapping[str, Array], cfg=None) -> dict[str, Array]:
    """Training forward: the iterations before the first one the loss weights run without a
    backward pass (`_DAN.__call__`'s `train_from`). Without a config, all are differentiated."""
    train_from = 0 if cfg is None else first_weighted_iteration(cfg, model.num_iters)
    return model.apply(variables, batch["lr"], train_from=train_from)


def compute_loss(outputs: Mapping[str, Array], batch: Mapping[str, Array], cfg) -> tuple[Array, dict]:
    """L1 on the SR images plus L1 on the kernel code (DANv1) or the kernel (DANv2).

    Per-iteration weights come from `cfg.loss.iter_weights` (default: last iteration only,
    as in the papers); `cfg.loss.kernel_weight` (default 1) scales the kernel term.
    """
    loss_cfg = cfg.get("loss", None) or {}
    weights = loss_cfg.get("iter_weights", None)
    kernel_weight = float(loss_cfg.get("kernel_weight", 1.0))
    num_iters = outputs["sr"].shape[0]

    sr_total, sr_per_iter = losses.iterated_l1(outputs["sr"], batch["hr"], weights)
    if cfg.model.name == "danv1":
        matrix = pca_matrix_from_config(cfg.model)
        if matrix is None:
            raise ValueError("danv1 loss needs cfg.model.pca_path or cfg.model.pca_matrix to encode the GT kernel")
        target = pca.encode(batch["kernel"], jnp.asarray(matrix))
        k_name, k_total, k_per_iter = ("l1_code", *losses.iterated_l1(outputs["code"], target, weights))
    else:
        k_name, k_total, k_per_iter = ("l1_kernel", *losses.iterated_l1(outputs["kernel"], batch["kernel"], weights))

    loss = sr_total + kernel_weight * k_total
    metrics = {"loss": loss, "l1_sr": sr_total, k_name: k_total}
    for t in range(num_iters):
        metrics[f"l1_sr_iter{t}"] = sr_per_iter[t]
        metrics[f"{k_name}_iter{t}"] = k_per_iter[t]
    return loss, metrics


# ----------------------------------------------------------------------------- official checkpoints
def _upsampler_map(torch_prefix: str, flax_prefix: tuple[str, ...], scale: int,
                   sequential_at_x1: bool) -> KeyMap:
    up = flax_prefix + ("upsampler",)
    if scale == 1 and not sequential_at_x1:          # DANv2 x1: a bare conv
        return conv_keys(torch_prefix, up + ("tail",))
    stages = 2 if scale == 4 else 1                  # conv, shuffle[, conv, shuffle], conv
    out: KeyMap = {}
    for i in range(stages):
        out |= conv_keys(f"{torch_prefix}.{2 * i}", up + (f"up_{i}",))
    return out | conv_keys(f"{torch_prefix}.{2 * stages}", up + ("tail",))


def _crb_map(torch_prefix: str, flax_path: tuple[str, ...]) -> KeyMap:
    # official CRB body: [conv, LReLU, conv, CA]; CA body: [conv, LReLU, conv, Sigmoid]
    return (conv_keys(f"{torch_prefix}.body.0", flax_path + ("conv1",))
            | conv_keys(f"{torch_prefix}.body.2", flax_path + ("conv2",))
            | conv_keys(f"{torch_prefix}.body.3.body.0", flax_path + ("ca", "squeeze"))
            | conv_keys(f"{torch_prefix}.body.3.body.2", flax_path + ("ca", "excite")))


def _dpcg_map(torch_prefix: str, flax_path: tuple[str, ...], num_blocks: int) -> KeyMap:
    out: KeyMap = {}
    for b in range(num_blocks):
        t, f = f"{torch_prefix}.body.{b}", flax_path + (f"block_{b}",)
        out |= (conv_keys(f"{t}.body1.0", f + ("main_conv1",)) | conv_keys(f"{t}.body1.2", f + ("main_conv2",))
                | conv_keys(f"{t}.body2.0", f + ("cond_conv1",)) | conv_keys(f"{t}.body2.2", f + ("cond_conv2",)))
    return out


def danv1_key_map(model: DANv1) -> KeyMap:
    r, e = ("restorer",), ("estimator",)
    out = conv_keys("Restorer.head", r + ("head",))
    for i in range(model.restorer_blocks):
        out |= _crb_map(f"Restorer.body.{i}", r + (f"block_{i}",))
    out |= conv_keys("Restorer.fusion", r + ("fusion",))
    out |= _upsampler_map("Restorer.upscale", r, model.scale, sequential_at_x1=True)
    out |= conv_keys("Estimator.head_LR", e + ("head_lr",)) | conv_keys("Estimator.head_HR", e + ("head_hr",))
    for i in range(model.estimator_blocks):
        out |= _crb_map(f"Estimator.body.{i}", e + (f"block_{i}",))
    return out | conv_keys("Estimator.out", e + ("out",))


def danv2_key_map(model: DANv2) -> KeyMap:
    r, e = ("restorer",), ("estimator",)
    out = conv_keys("Restorer.head1", r + ("head_image",)) | conv_keys("Restorer.head2", r + ("head_code",))
    for g in range(model.restorer_groups):
        out |= _dpcg_map(f"Restorer.body.{g}", r + (f"group_{g}",), model.restorer_blocks)
    out |= conv_keys("Restorer.fusion", r + ("fusion",))
    out |= _upsampler_map("Restorer.upscale", r, model.scale, sequential_at_x1=False)
    out |= conv_keys("Estimator.head_LR.0", e + ("head_lr",)) | conv_keys("Estimator.head_HR.0", e + ("head_hr",))
    out |= _dpcg_map("Estimator.body", e + ("body",), model.estimator_blocks)
    return out | conv_keys("Estimator.tail.0", e + ("tail_conv",)) | conv_keys("Estimator.tail.2", e + ("tail_kernel",))


def dan_buffers(model: _DAN) -> dict[str, tuple[int, ...]]:
    """Buffers the official DAN checkpoints store, with their expected shapes."""
    k, n = model.kernel_size, model.code_length
    return {"encoder": (1, k * k, n), "init_kernel": (1, k, k), "init_ker_map": (1, n)}


def dan_extras(buffers: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The PCA projection: the official `encoder` is (1, k*k, n) with code = flat(k) @ encoder,
    i.e. already jaxsr's (k*k, n) orientation; no transpose needed."""
    return {"pca_matrix": np.asarray(buffers["encoder"][0], np.float32)} if "encoder" in buffers else {}


def dan_prepare(model: _DAN, extras: Mapping[str, Any]) -> _DAN:
    """The model to trace parameter shapes with: it gets the checkpoint's PCA when there is one."""
    matrix = extras.get("pca_matrix")
    if matrix is not None and matrix.shape == (model.kernel_size ** 2, model.code_length):
        if model.pca_matrix is not None and not np.allclose(model.pca_matrix.array, matrix, atol=1e-6):
            warnings.warn("the model's pca_matrix differs from the checkpoint's encoder buffer; its outputs "
                          "will not match the official model unless it is rebuilt with extras['pca_matrix']")
        return model.clone(pca_matrix=matrix)
    if model.pca_matrix is None:  # any matrix of the right shape will do for tracing shapes
        return model.clone(pca_matrix=np.zeros((model.kernel_size ** 2, model.code_length), np.float32))
    return model


def _spec(name: str, key_map) -> ModelSpec:
    return ModelSpec(name=name, create=create_model, loss=compute_loss, forward=forward,
                     official=OfficialMap(key_map, dan_buffers, dan_extras, dan_prepare))


SPECS = {"danv1": _spec("danv1", danv1_key_map), "danv2": _spec("danv2", danv2_key_map)}
