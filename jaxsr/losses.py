"""L1 losses shared by the models, including the per-iteration weighting of unfolded nets."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def l1(pred: Array, target: Array) -> Array:
    """Mean absolute error (`torch.nn.L1Loss()` with its default mean reduction)."""
    if pred.shape != target.shape:
        raise ValueError(f"l1: pred shape {pred.shape} != target shape {target.shape}")
    return jnp.mean(jnp.abs(pred - target))


def iteration_weights(weights: Sequence[float] | None, num_iters: int) -> Array:
    """(T,) weights; None means only the last iteration counts (weight 1)."""
    if weights is None:
        return jnp.zeros((num_iters,), jnp.float32).at[-1].set(1.0)
    weights = tuple(float(w) for w in weights)
    if len(weights) != num_iters:
        raise ValueError(f"iter_weights has {len(weights)} entries but the model ran "
                         f"{num_iters} iterations: {weights}")
    return jnp.asarray(weights, jnp.float32)


def iterated_l1(preds: Array, target: Array, weights: Sequence[float] | None = None) -> tuple[Array, Array]:
    """L1 of every iteration's prediction `preds[t]` against one `target`.

    Returns (weighted sum over iterations, per-iteration L1 of shape (T,)).
    """
    if preds.shape[1:] != target.shape:
        raise ValueError(f"iterated_l1: preds shape {preds.shape} must be (T, *{target.shape})")
    per_iter = jnp.mean(jnp.abs(preds - target[None]), axis=tuple(range(1, preds.ndim)))
    w = iteration_weights(weights, preds.shape[0])
    return jnp.sum(w * per_iter), per_iter
