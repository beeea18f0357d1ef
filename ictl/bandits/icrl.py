"""What the in-context RL experiments share: config keys, checks, training and online evaluation.

A transformer is trained with `ictl.train.fit` on `pretrain.make_loss` (data drawn inside the
jitted step) and evaluated by `policy.play` on fresh instances that every baseline also plays
(common random numbers), giving cumulative pseudo-regret curves with 95% CIs.
"""
from __future__ import annotations

import pathlib
import time

import jax
import ml_collections

from ictl.bandits import algorithms as alg
from ictl.bandits import envs as bandit_envs
from ictl.bandits import policy, pretrain, rollout as ro
from ictl.config import check, check_ints_at_least_one, check_positive
from ictl.train import TrainState, config_optimizer, fit, make_train_step
from models.gpt import init_params

ATTENTIONS = ("softmax", "relu")


def add_model_keys(c: ml_collections.ConfigDict) -> None:
    """Model and optimiser keys with quick-tier defaults (overridden per experiment)."""
    c.n_layers, c.n_heads, c.width, c.attention, c.readout = 3, 2, 32, "softmax", "dense"
    c.batch, c.lr, c.warmup, c.lr_end, c.train_steps = 32, 1e-3, 100, 0.1, 1500
    c.n_trajectories = 0              # 0: fresh trajectories every step; N: a fixed set of N (paper: 100k)
    c.eval_envs = 256
    c.log_every, c.ckpt_every = 100, 1000


def validate_common(config, *, algorithm_keys=()) -> bandit_envs.BanditSpec:
    """Checks the env and model keys (ConfigError, nothing compiled) and returns the env spec."""
    check(config.env in bandit_envs.ENVS, "env", config.env, f"one of {bandit_envs.ENVS}")
    check_ints_at_least_one(config, "horizon", "n_actions", "d", "n_layers", "n_heads", "width", "batch",
                            "train_steps", "eval_envs", "log_every", "ckpt_every")
    check(isinstance(config.noise_std, (int, float)) and config.noise_std >= 0, "noise_std", config.noise_std,
          "a number >= 0")
    check(config.width % config.n_heads == 0, "width", config.width, f"a multiple of n_heads={config.n_heads}")
    check(config.attention in ATTENTIONS, "attention", config.attention, f"one of {ATTENTIONS}")
    check(config.readout in policy.READOUTS, "readout", config.readout, f"one of {policy.READOUTS}")
    check_positive(config, "lr")
    check(0 <= config.warmup < config.train_steps, "warmup", config.warmup, "0 <= warmup < train_steps")
    check(0 < config.lr_end <= 1, "lr_end", config.lr_end, "a number in (0, 1]")
    check(isinstance(config.n_trajectories, int) and config.n_trajectories >= 0, "n_trajectories",
          config.n_trajectories, "an integer >= 0")
    try:
        spec = env_spec(config)
    except ValueError as e:
        key = str(e).split(":")[0]
        got = config[key] if key in config else None
        check(False, key, got, str(e).split("allowed", 1)[-1].strip())
    for k in algorithm_keys:
        names = config[k] if isinstance(config[k], (tuple, list)) else (config[k],)
        for name in names:
            try:
                alg.check_algorithm(name, spec, alg.params_for(spec))
            except ValueError:
                check(False, k, config[k], f"algorithms from {alg.ALGORITHMS} that run on env {spec.name!r}")
    return spec


def env_spec(config) -> bandit_envs.BanditSpec:
    return bandit_envs.make_spec(config.env, n_actions=config.n_actions, d=config.d, noise_std=float(config.noise_std),
                                 horizon=config.horizon)


def train(config, spec, data: pretrain.DataSpec, workdir: pathlib.Path, *, seed: int, desc: str):
    """Trains one transformer; returns (policy config, params, history, seconds)."""
    pc = policy.model_config(spec, n_layers=config.n_layers, n_heads=config.n_heads, width=config.width,
                             attention=config.attention, readout=config.readout)
    key = jax.random.key(seed)
    tx = config_optimizer(config)
    state = TrainState.create(params=init_params(pc.gpt, jax.random.fold_in(key, 0)), tx=tx)
    loss = pretrain.make_loss(pc, spec, data, batch=config.batch)
    t0 = time.time()
    state, history = fit(state, make_train_step(loss, tx), key=jax.random.fold_in(key, 1),
                         num_steps=config.train_steps, workdir=workdir, log_every=config.log_every,
                         ckpt_every=config.ckpt_every, desc=desc)
    return pc, state.params, history, time.time() - t0


def transformer_curve(pc, params, spec, envs, key) -> ro.RegretCurve:
    """Online play on ``envs`` (sampling its own actions), as a regret curve."""
    actions, _ = policy.play(pc, params, spec, envs, key)
    return ro.regret_curve(ro.regret_of(envs, actions))


def last(history, name: str):
    vals = [h[name] for h in history if name in h]
    return vals[-1] if vals else None
