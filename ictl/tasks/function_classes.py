"""The function classes of Garg et al. (2022), their curriculum, and the interleaved tokens.

A task is a pair of pure functions in `TASKS[name]`:

    params = spec.sample(key, batch=B, d=d, d_active=…)   one random function per prompt
    y_BxN  = spec.apply(params, x_BxNxd)                   its values at the inputs

and `sample_prompts(key, name, batch=B, n_points=N, d=d)` draws x_i ~ N(0, I_d) and returns
`FunctionPrompts(x, y, params)`. The five classes (all with x ~ N(0, I_d)):

    linear         y = wᵀx,                       w ~ N(0, I_d)                      E y² = d
    sparse_linear  y = wᵀx, w ~ N(0, I_d) restricted to s = 3 random coordinates     E y² = s
    relu_2nn       y = √(2/h) Σ_j a_j relu(W_jᵀ x), W_j ~ N(0, I_d), a_j ~ N(0, 1), h = 100   E y² = d
    decision_tree  depth-4 binary tree, node coordinate ~ U{0..d−1}, go right iff x_c > 0,
                   leaf values ~ N(0, 1)                                          E y² = 1
    noisy_linear   y = wᵀx + ε, ε ~ N(0, σ²), σ = 1 by default                   E y² = d + σ²

`NORMALIZERS[name](d)` is the number the squared error is divided by in the figures (Garg:
d, the sparsity s, d, 1, d). Curriculum (Garg): active dims 5→20 (+1 / 2000 steps) and
points 11→41 (+2 / 2000); shapes stay static, the unused dims of x are zeroed and the
unused points masked out of the loss (`curriculum_masks`). Another task plugs in by adding a
`TaskSpec(sample, apply)` with the same signatures.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int
from ictl import rng


class TaskSpec(NamedTuple):
    sample: Callable[..., Any]   # (key, *, batch, d, d_active) -> params pytree with leading B
    apply: Callable[..., Any]    # (params, x_BxNxd) -> y_BxN


class FunctionPrompts(NamedTuple):
    x: Float[Array, "B N d"]
    y: Float[Array, "B N"]
    params: Any                  # the sampled functions (w, trees, networks), leading axis B


def _active(d: int, d_active) -> Float[Array, "d"]:
    """1.0 on the first d_active coordinates (d_active may be traced), else 0."""
    d_active = d if d_active is None else d_active
    return (jnp.arange(d) < d_active).astype(jnp.float32)


# ----------------------------------------------------------------------------- linear
def sample_linear(key, *, batch: int, d: int, d_active=None, scale: float = 1.0, dtype=jnp.float32):
    """w ~ N(0, scale² I) on the active dims (zero elsewhere); params = {"w": [B, d]}."""
    w_Bxd = scale * rng.normal(key, (batch, d), dtype) * _active(d, d_active).astype(dtype)[None, :]
    return {"w": w_Bxd}


def apply_linear(params, x_BxNxd: Float[Array, "B N d"]) -> Float[Array, "B N"]:
    return jnp.einsum("bnd,bd->bn", x_BxNxd, params["w"])


def sample_sparse_linear(key, *, batch: int, d: int, d_active=None, sparsity: int = 3, dtype=jnp.float32):
    """w ~ N(0, I) kept on ``sparsity`` coordinates drawn uniformly among the active ones."""
    if sparsity > d:
        raise ValueError(f"sparsity: got {sparsity}; allowed 1..d={d}")
    k_w, k_s = jax.random.split(key)
    w_Bxd = rng.normal(k_w, (batch, d), dtype)
    score_Bxd = rng.uniform(k_s, (batch, d)) + 2.0 * _active(d, d_active)[None, :]  # active first
    _, idx_Bxs = jax.lax.top_k(score_Bxd, sparsity)
    keep_Bxd = jnp.zeros((batch, d), dtype).at[jnp.arange(batch)[:, None], idx_Bxs].set(1)
    return {"w": w_Bxd * keep_Bxd}


# ----------------------------------------------------------------------------- ReLU network
def sample_relu_2nn(key, *, batch: int, d: int, d_active=None, hidden: int = 100, dtype=jnp.float32):
    """W1 ~ N(0, 1)^{d×h} (inactive rows zero), a ~ N(0, 1)^h."""
    k1, k2 = jax.random.split(key)
    w1_BxdxH = rng.normal(k1, (batch, d, hidden), dtype) * _active(d, d_active).astype(dtype)[None, :, None]
    a_BxH = rng.normal(k2, (batch, hidden), dtype)
    return {"w1": w1_BxdxH, "a": a_BxH}


def apply_relu_2nn(params, x_BxNxd: Float[Array, "B N d"]) -> Float[Array, "B N"]:
    h = params["a"].shape[-1]
    act_BxNxH = jax.nn.relu(jnp.einsum("bnd,bdh->bnh", x_BxNxd, params["w1"]))
    return jnp.sqrt(2.0 / h) * jnp.einsum("bnh,bh->bn", act_BxNxH, params["a"])


# ----------------------------------------------------------------------------- decision tree
def sample_decision_tree(key, *, batch: int, d: int, d_active=None, depth: int = 4, dtype=jnp.float32):
    """Heap-ordered tree: node i has children 2i+1 (x_c ≤ 0) and 2i+2 (x_c > 0).

    params = {"coord": [B, 2^depth − 1] ints in [0, d_active), "leaf": [B, 2^depth] ~ N(0, 1)}.
    """
    k_c, k_l = jax.random.split(key)
    n_inner = 2**depth - 1
    hi = d if d_active is None else d_active
    coord_BxI = rng.randint(k_c, (batch, n_inner), 0, hi)
    leaf_BxL = rng.normal(k_l, (batch, 2**depth), dtype)
    return {"coord": coord_BxI, "leaf": leaf_BxL}


def tree_leaf_index(coord_I: Int[Array, "I"], x_Nxd: Float[Array, "N d"]) -> Int[Array, "N"]:
    """Leaf index in [0, 2^depth) reached by each x (one tree)."""
    n_inner = coord_I.shape[0]
    depth = (n_inner + 1).bit_length() - 1
    node_N = jnp.zeros(x_Nxd.shape[0], jnp.int32)
    for _ in range(depth):
        c_N = coord_I[node_N]
        right_N = jnp.take_along_axis(x_Nxd, c_N[:, None], axis=1)[:, 0] > 0
        node_N = 2 * node_N + 1 + right_N.astype(jnp.int32)
    return node_N - n_inner


def apply_decision_tree(params, x_BxNxd: Float[Array, "B N d"]) -> Float[Array, "B N"]:
    leaf_BxN = jax.vmap(tree_leaf_index)(params["coord"], x_BxNxd)
    return jnp.take_along_axis(params["leaf"], leaf_BxN, axis=1)


TASKS: dict[str, TaskSpec] = {
    "linear": TaskSpec(sample_linear, apply_linear),
    "sparse_linear": TaskSpec(sample_sparse_linear, apply_linear),
    "relu_2nn": TaskSpec(sample_relu_2nn, apply_relu_2nn),
    "decision_tree": TaskSpec(sample_decision_tree, apply_decision_tree),
    "noisy_linear": TaskSpec(sample_linear, apply_linear),
}
NORMALIZERS: dict[str, Callable[[int], float]] = {
    "linear": lambda d: float(d),
    "sparse_linear": lambda d: 3.0,
    "relu_2nn": lambda d: float(d),
    "decision_tree": lambda d: 1.0,
    "noisy_linear": lambda d: float(d),
}
DEFAULT_NOISE = {"noisy_linear": 1.0}


def sample_prompts(
    key: jax.Array,
    task: str,
    *,
    batch: int,
    n_points: int,
    d: int,
    d_active=None,
    noise_std: float | None = None,
    x: Float[Array, "B N d"] | None = None,
    task_kwargs: dict | None = None,
) -> FunctionPrompts:
    """B prompts of N points: x ~ N(0, I_d) with dims ≥ d_active zeroed, y = f(x) + σ ε.

    ``x`` replaces the Gaussian inputs (OOD suites); ``noise_std`` defaults to 1 for
    ``noisy_linear`` and 0 otherwise; ``task_kwargs`` go to the task's sampler.
    """
    if task not in TASKS:
        raise ValueError(f"task: got {task!r}; allowed {tuple(TASKS)}")
    if batch < 1 or n_points < 1 or d < 1:
        raise ValueError(f"batch/n_points/d: got {batch}/{n_points}/{d}; allowed positive integers")
    spec = TASKS[task]
    k_f, k_x, k_e = jax.random.split(key, 3)
    params = spec.sample(k_f, batch=batch, d=d, d_active=d_active, **(task_kwargs or {}))
    if x is None:
        x = rng.normal(k_x, (batch, n_points, d)) * _active(d, d_active)[None, None, :]
    y = spec.apply(params, x)
    sigma = DEFAULT_NOISE.get(task, 0.0) if noise_std is None else noise_std
    if sigma:
        y = y + sigma * rng.normal(k_e, y.shape, y.dtype)
    return FunctionPrompts(x, y, params)


# ----------------------------------------------------------------------------- curriculum
class Schedule(NamedTuple):
    start: int
    end: int
    inc: int
    every: int

    def at(self, step) -> Int[Array, ""]:
        """min(start + inc · ⌊step / every⌋, end); ``step`` may be traced."""
        return jnp.minimum(self.start + self.inc * (jnp.asarray(step) // self.every), self.end)


GARG_DIMS = Schedule(5, 20, 1, 2000)
GARG_POINTS = Schedule(11, 41, 2, 2000)


def curriculum_masks(step, *, d: int, n_points: int, dims: Schedule = GARG_DIMS, points: Schedule = GARG_POINTS):
    """(d_active, n_active, dim_mask [d], point_mask [N]) at ``step`` (static shapes d, N).

    Pass ``d_active`` to `sample_prompts` (x zeroed beyond it) and weight the per-point loss
    by ``point_mask`` (the model is causal, so masked later points change no earlier output).
    """
    if dims.end > d or points.end > n_points:
        raise ValueError(f"curriculum: ends {dims.end} dims / {points.end} points exceed d={d} / n_points={n_points}")
    d_active, n_active = dims.at(step), points.at(step)
    return d_active, n_active, _active(d, d_active), (jnp.arange(n_points) < n_active).astype(jnp.float32)


# ----------------------------------------------------------------------------- tokens
def interleave(x_BxNxd: Float[Array, "B N d"], y_BxN: Float[Array, "B N"]) -> Float[Array, "B T d"]:
    """Tokens (x_1, ỹ_1, …, x_N, ỹ_N) with ỹ_i = (y_i, 0, …, 0): T = 2N."""
    B, N, d = x_BxNxd.shape
    ypad_BxNxd = jnp.zeros_like(x_BxNxd).at[..., 0].set(y_BxN.astype(x_BxNxd.dtype))
    return jnp.stack([x_BxNxd, ypad_BxNxd], axis=2).reshape(B, 2 * N, d)


def predictions_at_x(out_BxT: Float[Array, "B T"]) -> Float[Array, "B N"]:
    """The model's outputs at the x tokens: entry i predicts y_i from i examples."""
    return out_BxT[:, ::2]
