"""General-purpose in-context learning tasks (Kirsch, Harrison, Sohl-Dickstein & Metz 2022).

A task turns a fixed classification data set {(x_i, y_i)} (z-normalised, x_i ∈ R^{N_x}, C
classes) into a new problem by a random linear projection and a random label permutation:

    A ∈ R^{D_p × N_x},  A_ij ~ N(0, 1/N_x)          x̃ = A x   (variance 1/N_x: E‖Ax‖² ≈ D_p)
    π: {0..C−1} → {0..n_labels−1}, injective         ỹ = π(y)  (the first C of a permutation of n_labels)

A sequence holds L examples of one task drawn without replacement from the data set, and token
t is [A x_t, one_hot(ỹ_{t−1})] (zeros at t = 1), so the model predicts ỹ_t from x̃_t and the
t − 1 labelled examples before it; the loss is the cross-entropy at every position.

Task distributions (`sample_sequences`):
  log2_tasks = k ≥ 0   a pool of 2^k tasks: the prompt picks an id m ~ U{0..2^k − 1} and the task
                       is drawn from fold_in(pool_key, m) — the "k-bit seed" — so the pool needs no
                       storage and the same id always gives the same (A, π);
  log2_tasks = None    a fresh task per prompt (from the step key; 2^k → ∞);
  fixed_perm_frac = f  the first round(f·B) prompts keep the identity permutation π(c) = c (a
                       biased task distribution, Kirsch et al.'s plateau remedy).
Everything is pure jnp sampled from explicit keys inside the jitted step, from a data set that
lives on the device (x_PxF, y_P).

Shapes: B prompts, L sequence length, P data-set rows, F = N_x input features, D_p projected
width, C classes, V = n_labels label slots (V ≥ C; 10 for digits and MNIST).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

MAX_LOG2_TASKS = 30  # ids are int32 (randint's upper bound 2^30 < 2^31)


class Sequences(NamedTuple):
    tokens: Float[Array, "B L T"]     # T = D_p + V: [A x_t, one_hot(ỹ_{t−1})]
    labels: Int[Array, "B L"]         # ỹ_t
    x: Float[Array, "B L Dp"]         # A x_t (what the in-sequence baselines see)
    rows: Int[Array, "B L"]           # the data-set rows used (distinct within a sequence)


def znormalise(x_train_PxF: np.ndarray, *others: np.ndarray, per_feature: bool = True,
               eps: float = 1e-6) -> tuple[np.ndarray, ...]:
    """Standardised with the train split's statistics; returns (train, *others) in float32.

    per_feature=True (tabular sets): each feature by its own mean and std (std < eps → 1: a
    constant feature stays 0). per_feature=False (images): one mean and std over all pixels, as
    is usual for MNIST — per-pixel scaling would blow up rare pixels (digits: |z| up to 42).
    """
    x = np.asarray(x_train_PxF, np.float64)
    mu, sd = (x.mean(axis=0), x.std(axis=0)) if per_feature else (x.mean(), x.std())
    sd = np.where(sd < eps, 1.0, sd)
    return tuple(((np.asarray(a, np.float64) - mu) / sd).astype(np.float32) for a in (x_train_PxF, *others))


def check_log2_tasks(log2_tasks) -> None:
    if log2_tasks is None:
        return
    if isinstance(log2_tasks, bool) or not isinstance(log2_tasks, int) or not 0 <= log2_tasks <= MAX_LOG2_TASKS:
        raise ValueError(f"log2_tasks: got {log2_tasks!r}; allowed None (fresh tasks) or an integer in "
                         f"0..{MAX_LOG2_TASKS}")


def task_from_key(key: jax.Array, *, n_in: int, d_proj: int, n_classes: int,
                  n_labels: int) -> tuple[Float[Array, "Dp F"], Int[Array, "C"]]:
    """One task (A [D_p, N_x] with A_ij ~ N(0, 1/N_x), π [C] = the first C of a permutation of V)."""
    k_a, k_p = jax.random.split(key)
    a_DpxF = jax.random.normal(k_a, (d_proj, n_in), jnp.float32) / np.sqrt(n_in)
    perm_C = jax.random.permutation(k_p, n_labels)[:n_classes].astype(jnp.int32)
    return a_DpxF, perm_C


def task_keys(key: jax.Array, pool_key: jax.Array, *, batch: int, log2_tasks: int | None) -> jax.Array:
    """[B] task keys: fold_in(pool_key, m) for ids m ~ U{0..2^k − 1}, or B fresh keys (k = None)."""
    check_log2_tasks(log2_tasks)
    if log2_tasks is None:
        return jax.random.split(key, batch)
    ids_B = jax.random.randint(key, (batch,), 0, 2**log2_tasks, dtype=jnp.int32)
    return pool_task_keys(pool_key, ids_B)


def pool_task_keys(pool_key: jax.Array, ids_B: Int[Array, "B"]) -> jax.Array:
    """The task keys of given pool ids (e.g. to evaluate on specific seen tasks)."""
    return jax.vmap(lambda m: jax.random.fold_in(pool_key, m))(jnp.asarray(ids_B, jnp.int32))


def sequences_from_task_keys(key: jax.Array, tkeys_B: jax.Array, x_PxF: Float[Array, "P F"], y_P: Int[Array, "P"], *,
                             seq_len: int, d_proj: int, n_classes: int, n_labels: int,
                             fixed_perm_frac: float = 0.0) -> Sequences:
    """B sequences of L examples (rows without replacement) under the given tasks."""
    P, F = x_PxF.shape
    B = tkeys_B.shape[0]
    if not 2 <= seq_len <= P:
        raise ValueError(f"seq_len: got {seq_len!r}; allowed 2..{P} (the data set's rows)")
    if n_labels < n_classes:
        raise ValueError(f"n_labels: got {n_labels}; allowed >= n_classes={n_classes}")
    a_BxDpxF, perm_BxC = jax.vmap(lambda k: task_from_key(k, n_in=F, d_proj=d_proj, n_classes=n_classes,
                                                           n_labels=n_labels))(tkeys_B)
    n_fixed = int(round(fixed_perm_frac * B))
    if n_fixed:
        ident_C = jnp.arange(n_classes, dtype=jnp.int32)
        perm_BxC = jnp.where((jnp.arange(B) < n_fixed)[:, None], ident_C[None], perm_BxC)
    # L distinct rows per prompt: the L smallest of P uniform scores (a random subset, random order)
    scores_BxP = jax.random.uniform(key, (B, P))
    _, rows_BxL = jax.lax.top_k(-scores_BxP, seq_len)
    xr_BxLxF = x_PxF[rows_BxL]
    xp_BxLxDp = jnp.einsum("bpf,blf->blp", a_BxDpxF, xr_BxLxF)
    lab_BxL = jnp.take_along_axis(perm_BxC, y_P[rows_BxL], axis=1)
    prev_BxLxV = jax.nn.one_hot(lab_BxL[:, :-1], n_labels, dtype=jnp.float32)
    prev_BxLxV = jnp.concatenate([jnp.zeros((B, 1, n_labels), jnp.float32), prev_BxLxV], axis=1)
    return Sequences(tokens=jnp.concatenate([xp_BxLxDp, prev_BxLxV], axis=-1), labels=lab_BxL, x=xp_BxLxDp,
                     rows=rows_BxL)


def sample_sequences(key: jax.Array, pool_key: jax.Array, x_PxF: Float[Array, "P F"], y_P: Int[Array, "P"], *,
                     batch: int, seq_len: int, d_proj: int, n_classes: int, n_labels: int,
                     log2_tasks: int | None, fixed_perm_frac: float = 0.0) -> Sequences:
    """B sequences from the task distribution (a pool of 2^k tasks or fresh tasks); see the module doc."""
    if not 0.0 <= fixed_perm_frac <= 1.0:
        raise ValueError(f"fixed_perm_frac: got {fixed_perm_frac!r}; allowed 0 <= f <= 1")
    k_task, k_rows = jax.random.split(key)
    tkeys = task_keys(k_task, pool_key, batch=batch, log2_tasks=log2_tasks)
    return sequences_from_task_keys(k_rows, tkeys, x_PxF, y_P, seq_len=seq_len, d_proj=d_proj, n_classes=n_classes,
                                    n_labels=n_labels, fixed_perm_frac=fixed_perm_frac)


def token_width(d_proj: int, n_labels: int) -> int:
    return d_proj + n_labels


def cross_entropy(logits_BxLxV: Float[Array, "B L V"], labels_BxL: Int[Array, "B L"]) -> Float[Array, "B L"]:
    """−log softmax(logits)[label] at every position."""
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp_BxLxV, labels_BxL[..., None], axis=-1)[..., 0]


def accuracy(logits_BxLxV: Float[Array, "B L V"], labels_BxL: Int[Array, "B L"]) -> Float[Array, "B L"]:
    """1[argmax logits = label] at every position (ties → the first maximum)."""
    return (jnp.argmax(logits_BxLxV, axis=-1) == labels_BxL).astype(jnp.float32)
