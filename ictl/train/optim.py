"""The optimizer the GPT experiments share: Adam with linear warmup, then cosine decay."""
from __future__ import annotations

import optax


def warmup_cosine_schedule(*, lr: float, warmup: int, total_steps: int, lr_end: float) -> optax.Schedule:
    """0 → lr linearly over ``warmup`` steps, then a cosine down to lr·lr_end at ``total_steps``
    (lr_end = 1: constant after warmup, as in Garg et al.)."""
    decay = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1), alpha=lr_end)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def config_optimizer(config, *, total_steps: int | None = None) -> optax.GradientTransformation:
    """Adam on `warmup_cosine_schedule` from config.lr / warmup / lr_end (total_steps: config.train_steps)."""
    steps = config.train_steps if total_steps is None else total_steps
    return optax.adam(warmup_cosine_schedule(lr=config.lr, warmup=config.warmup, total_steps=steps,
                                             lr_end=config.lr_end))
