"""Supervised pretraining of the bandit transformer: data drawn inside the jitted step, CE loss.

Each step draws B instances, rolls out the offline algorithm (mixed with uniform play at rate
``uniform_share``) with `lax.scan`, labels every step with the expert's action on the same
history (AD: the action itself; DPT: the optimal action; general: another algorithm), builds the
interleaved tokens and takes the whole-trajectory cross-entropy

    L(θ) = −(1/(B·T)) Σ_b Σ_t log π_θ(label_{b,t} | s_1, e_1, …, s_t).

Why inside the step, not in chunks: the rollout is a scan over T of d×d solves on B instances,
a few per cent of the transformer's forward/backward (measured in docs/icrl.md), the data
need no storage, every step sees fresh trajectories, and a resumed run regenerates exactly the
same batches because they depend only on fold_in(key, step). ``n_trajectories`` > 0 turns the
stream into a fixed data set of that many trajectories (Lin et al.: 100k): the step draws B
indices i ∈ [0, N) and regenerates trajectory i from fold_in(data_key, i), so a finite data set
costs no memory either.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ictl.bandits import algorithms as alg
from ictl.bandits import policy, rollout as ro
from ictl.bandits.envs import BanditSpec, sample_bandit


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where the pretraining trajectories come from (hashable)."""

    offline: str                  # the algorithm that generates the data
    expert: str = "same"          # "same" (AD) | "optimal" (DPT) | an algorithm name (general)
    uniform_share: float = 0.0    # per-step probability of a uniform action instead of `offline`
    n_trajectories: int = 0       # 0: a fresh stream; N > 0: a fixed data set of N trajectories
    hp: alg.AlgoParams = alg.AlgoParams()


def check_data(spec: BanditSpec, data: DataSpec) -> None:
    alg.check_algorithm(data.offline, spec, data.hp)
    ro.check_expert(data.expert, spec, data.hp)
    if not 0 <= data.uniform_share <= 1:
        raise ValueError(f"uniform_share: got {data.uniform_share!r}; allowed a number in [0, 1]")
    if not isinstance(data.n_trajectories, int) or data.n_trajectories < 0:
        raise ValueError(f"n_trajectories: got {data.n_trajectories!r}; allowed an integer >= 0")


def sample_batch(spec: BanditSpec, data: DataSpec, key: jax.Array, batch: int):
    """(instances, trajectories) of one training batch; trajectory id i ↦ key fold_in(key_data, i)."""
    if data.n_trajectories > 0:
        k_idx, k_data = jax.random.split(key)
        ids_B = jax.random.randint(k_idx, (batch,), 0, data.n_trajectories)
        keys_B = jax.vmap(lambda i: jax.random.fold_in(k_data, i))(ids_B)
    else:
        keys_B = jax.random.split(key, batch)
    env_keys, traj_keys = jax.vmap(lambda k: tuple(jax.random.split(k)))(keys_B)
    envs = jax.vmap(lambda k: sample_bandit(k, spec))(env_keys)
    a, r, lab = jax.vmap(lambda e, k: ro.trajectory(spec, e, k, data.offline, data.uniform_share, data.expert,
                                                    data.hp))(envs, traj_keys)
    return envs, ro.Trajectories(a, r, lab)


def cross_entropy(logits_BxTxA: Float[Array, "B T A"], labels_BxT) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Mean CE and the accuracy of the argmax."""
    logp = jax.nn.log_softmax(logits_BxTxA, axis=-1)
    ce = -jnp.mean(jnp.take_along_axis(logp, labels_BxT[..., None], axis=-1))
    acc = jnp.mean(jnp.argmax(logits_BxTxA, axis=-1) == labels_BxT)
    return ce, acc


def make_loss(pc: policy.PolicyConfig, spec: BanditSpec, data: DataSpec, *, batch: int):
    """loss_fn(params, key) -> (CE, {"acc"}) on a fresh batch (for `ictl.train.make_train_step`)."""
    check_data(spec, data)
    policy.check_compatible(pc, spec)

    def loss_fn(params, key):
        envs, tr = sample_batch(spec, data, key, batch)
        toks = jax.lax.stop_gradient(policy.tokens(envs.feats, tr.actions, tr.rewards))
        ce, acc = cross_entropy(policy.action_logits(pc, params, toks, envs.feats), tr.labels)
        return ce, {"acc": acc}

    return loss_fn
