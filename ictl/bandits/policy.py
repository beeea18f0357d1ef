"""The transformer bandit policy: interleaved tokens, the GPT, online play from its own logits.

Tokens (width W = A·d + d + A + 3), two per step t as in Lin, Bai, Mei:

    action-set token   s_t = [vec(x_1..x_A), 0_d,  0_A,  0,   1, 0]     at position 2t
    action-reward      e_t = [0_{A·d},       x_{a_t}, e_{a_t}, r_t, 0, 1]   at position 2t + 1

The GPT (`models.gpt.GPT`) reads logits over the A actions at every action-set token; the causal
mask makes the logits at 2t a function of (s_1, e_1, …, s_t) only, i.e. of the history before
a_t. Read-outs (`READOUTS`) of the final hidden state h_t:

    "dense"      ℓ_t = W h_t ∈ R^A                         (``out_dim`` = A; any action set)
    "quadratic"  ℓ_{t,a} = ⟨u_t, x_a⟩ + x_aᵀ M_t x_a,  (u_t, M_t) = W h_t ∈ R^{d + d²}

"quadratic" scores each shown action by its features, the form of LinUCB's index
⟨θ̂, x⟩ + α‖x‖_{V⁻¹} up to the square root; with one-hot features it is "dense" again. `play` runs the policy online on fresh instances: at each step it
feeds s_t, samples a_t ~ softmax(logits) (or takes the argmax), draws r_t from the instance and
feeds e_t, all inside one jitted `lax.scan` over t with a key/value cache
(`models.gpt_decode`), so the cost per step does not grow with the prefix.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ictl.bandits.envs import Bandit, BanditSpec, reward
from models.gpt import GPT, GPTConfig
from models.gpt_decode import DECODE_BACKENDS, decode_step, init_cache


def token_width(spec: BanditSpec) -> int:
    A, d = spec.n_actions, spec.d
    return A * d + d + A + 3


def set_token(feats_Axd: Float[Array, "A d"]) -> Float[Array, "W"]:
    A, d = feats_Axd.shape
    return jnp.concatenate([feats_Axd.reshape(-1), jnp.zeros(d + A + 1, feats_Axd.dtype),
                            jnp.array([1.0, 0.0], feats_Axd.dtype)])


def action_reward_token(feats_Axd: Float[Array, "A d"], a: Int[Array, ""], r: Float[Array, ""]) -> Float[Array, "W"]:
    A, d = feats_Axd.shape
    dt = feats_Axd.dtype
    return jnp.concatenate([jnp.zeros(A * d, dt), feats_Axd[a], jax.nn.one_hot(a, A, dtype=dt),
                            jnp.reshape(r, (1,)).astype(dt), jnp.array([0.0, 1.0], dt)])


def tokens(feats_BxAxd: Float[Array, "B A d"], actions_BxT: Int[Array, "B T"],
           rewards_BxT: Float[Array, "B T"]) -> Float[Array, "B 2T W"]:
    """The interleaved sequence s_1, e_1, …, s_T, e_T of every trajectory."""

    def one(feats_Axd, a_T, r_T):
        s_W = set_token(feats_Axd)
        e_TxW = jax.vmap(lambda a, r: action_reward_token(feats_Axd, a, r))(a_T, r_T)
        s_TxW = jnp.broadcast_to(s_W, e_TxW.shape)
        return jnp.stack([s_TxW, e_TxW], axis=1).reshape(2 * a_T.shape[0], -1)

    return jax.vmap(one)(feats_BxAxd, actions_BxT, rewards_BxT)


READOUTS = ("dense", "quadratic")


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """The GPT and its read-out; ``n_actions`` and ``d`` fix the environments it can play."""

    gpt: GPTConfig
    readout: str
    n_actions: int
    d: int


def model_config(spec: BanditSpec, *, n_layers: int, n_heads: int, width: int, attention: str = "softmax",
                 readout: str = "dense", mlp_ratio: int = 4) -> PolicyConfig:
    """The policy for ``spec``: token width `token_width`, 2T positions, A logits."""
    if attention not in DECODE_BACKENDS:
        raise ValueError(f"attention: got {attention!r}; allowed {DECODE_BACKENDS}")
    if readout not in READOUTS:
        raise ValueError(f"readout: got {readout!r}; allowed {READOUTS}")
    A, d = spec.n_actions, spec.d
    out = A if readout == "dense" else d + d * d
    gpt = GPTConfig(d_in=token_width(spec), max_tokens=2 * spec.horizon, n_layers=n_layers, n_heads=n_heads,
                    width=width, mlp_ratio=mlp_ratio, attention_backend=attention, out_dim=out)
    return PolicyConfig(gpt, readout, A, d)


def read_logits(pc: PolicyConfig, out_xo, feats_xAxd) -> Float[Array, "... A"]:
    """Logits from GPT outputs [..., o] and the shown features [..., A, d] (leading axes broadcast)."""
    if pc.readout == "dense":
        return out_xo
    d = pc.d
    u_xd = out_xo[..., :d]
    M_xdxd = out_xo[..., d:].reshape(*out_xo.shape[:-1], d, d)
    return (jnp.einsum("...ad,...d->...a", feats_xAxd, u_xd)
            + jnp.einsum("...ad,...de,...ae->...a", feats_xAxd, M_xdxd, feats_xAxd))


def action_logits(pc: PolicyConfig, params, toks_BxTTxW, feats_BxAxd) -> Float[Array, "B T A"]:
    """Logits at the action-set tokens (even positions)."""
    out = GPT(pc.gpt).apply(params, toks_BxTTxW)[:, 0::2]
    if pc.gpt.out_dim == 1:
        out = out[..., None]
    return read_logits(pc, out, feats_BxAxd[:, None])


def check_compatible(pc: PolicyConfig, spec: BanditSpec) -> None:
    if pc.n_actions != spec.n_actions or pc.d != spec.d or pc.gpt.d_in != token_width(spec):
        raise ValueError(f"spec: got env {spec.name!r} with n_actions={spec.n_actions}, d={spec.d}; allowed the "
                         f"model's n_actions={pc.n_actions}, d={pc.d}")
    if 2 * spec.horizon > pc.gpt.max_tokens:
        raise ValueError(f"spec.horizon: got {spec.horizon}; allowed <= {pc.gpt.max_tokens // 2} (the model's "
                         "positions)")


@functools.partial(jax.jit, static_argnames=("pc", "spec", "greedy"))
def play(pc: PolicyConfig, params: Any, spec: BanditSpec, envs: Bandit, key: jax.Array, *,
         greedy: bool = False) -> tuple[Int[Array, "B T"], Float[Array, "B T"]]:
    """Online play of the transformer on B instances: actions and rewards [B, T].

    Step t samples a_t from the logits with fold_in(key, t) (``greedy``: argmax)."""
    check_compatible(pc, spec)
    cfg = pc.gpt
    B = envs.feats.shape[0]
    set_BxW = jax.vmap(set_token)(envs.feats)

    def step(cache, t):
        out_Bxo, cache = decode_step(cfg, params, cache, set_BxW, 2 * t)
        logits_BxA = read_logits(pc, out_Bxo if cfg.out_dim > 1 else out_Bxo[:, None], envs.feats)
        if greedy:
            a_B = jnp.argmax(logits_BxA, axis=-1).astype(jnp.int32)
        else:
            a_B = jax.random.categorical(jax.random.fold_in(key, t), logits_BxA, axis=-1).astype(jnp.int32)
        r_B = jax.vmap(lambda e, a: reward(spec, e, t, a))(envs, a_B)
        e_BxW = jax.vmap(action_reward_token)(envs.feats, a_B, r_B)
        _, cache = decode_step(cfg, params, cache, e_BxW, 2 * t + 1)
        return cache, (a_B, r_B)

    _, (a_TxB, r_TxB) = jax.lax.scan(step, init_cache(cfg, B), jnp.arange(spec.horizon))
    return a_TxB.T, r_TxB.T
