"""A second read-out on the GPT trunk of `models.gpt`: in-context mean and log-variance of y.

`models.gpt.GPT` returns only its scalar read-out, so this module composes it without editing
it: the trunk's final hidden state h^L = LN_f(…) is captured with Flax's
``capture_intermediates`` (the output of the submodule named ``ln_f``), and a second linear head
reads it:

    μ_t       = GPT(tokens)_t                     (the GPT's own read-out Linear(D→1))
    log σ²_t  = v_outᵀ h^L_t + c_out              (the new read-out Linear(D→1), init v = 0, c = 0)

Parameters: {"gpt": <GPT params>, "var_head": {"kernel": [D], "bias": []}}, float32.
Train with `objectives.gaussian_nll(μ, log σ², y)` at the x tokens.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from models.gpt import GPT, GPTConfig, init_params


def init_uq_params(cfg: GPTConfig, key: jax.Array) -> dict[str, Any]:
    """GPT params from ``key`` and a zero variance head (log σ² = 0 at init)."""
    return {"gpt": init_params(cfg, key),
            "var_head": {"kernel": jnp.zeros((cfg.width,), jnp.float32), "bias": jnp.zeros((), jnp.float32)}}


def _is_ln_f(module, method_name: str) -> bool:
    return module.name == "ln_f" and method_name == "__call__"


def apply_uq(model: GPT, params: dict[str, Any], tokens_BxTxd: Float[Array, "B T d"], *,
             x_only: bool = False) -> tuple[Float[Array, "B T"], Float[Array, "B T"]]:
    """(μ [B, T], log σ² [B, T]) from one pass of the GPT trunk ([B, T/2] at the x tokens with
    ``x_only``, see `models.gpt.GPT`)."""
    mean_BxT, state = model.apply(params["gpt"], tokens_BxTxd, x_only, capture_intermediates=_is_ln_f,
                                  mutable=["intermediates"])
    h_BxTxD = state["intermediates"]["ln_f"]["__call__"][0].astype(jnp.float32)
    v = params["var_head"]
    log_var_BxT = jnp.einsum("btd,d->bt", h_BxTxD, v["kernel"]) + v["bias"]
    return mean_BxT, log_var_BxT
