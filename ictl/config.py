"""Experiment configs: `ml_collections.ConfigDict`, `--config.key=value` overrides, one-line errors.

Every configuration problem raises `ConfigError`, which the CLI prints as one line and turns
into exit status 2 before anything is compiled or written.
"""
from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

import ml_collections

SCALES = ("quick", "paper")


class ConfigError(ValueError):
    """A bad argument or config value; its message is the one line the user sees."""


def check(ok: bool, key: str, got: Any, allowed: str) -> None:
    """Raises ConfigError("config.<key>=<got>: allowed <allowed>") unless ``ok``."""
    if not ok:
        raise ConfigError(f"config.{key}={got!r}: allowed {allowed}")


def new_config(scale: str) -> ml_collections.ConfigDict:
    """The opening of every experiment's `get_config`: a ConfigDict holding ``scale`` (one of SCALES,
    else ConfigError) and ``seed`` 0."""
    check(scale in SCALES, "scale", scale, f"one of {SCALES}")
    c = ml_collections.ConfigDict()
    c.scale, c.seed = scale, 0
    return c


def check_ints_at_least_one(config, *keys: str) -> None:
    """check(config[k] >= 1, ...) for each key: the counts every experiment has (d, N, steps, batch…)."""
    for k in keys:
        v = config[k]
        check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, k, v, "an integer >= 1")


def check_steps_per_call(config) -> None:
    """config.steps_per_call: an integer >= 1 dividing config.log_every and config.ckpt_every."""
    k = config.steps_per_call
    check(isinstance(k, int) and not isinstance(k, bool) and k >= 1, "steps_per_call", k, "an integer >= 1")
    for every in ("log_every", "ckpt_every"):
        check(config[every] % k == 0, "steps_per_call", k, f"a divisor of {every}={config[every]}")


def check_positive(config, *keys: str) -> None:
    """check(config[k] > 0, ...) for each key (rates, scales, σ)."""
    for k in keys:
        check(config[k] > 0, k, config[k], "a number > 0")


def _flat_keys(cfg, prefix=""):
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _flat_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _parse_value(key: str, text: str, current: Any) -> Any:
    if isinstance(current, bool):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"config.{key}={text!r}: allowed true or false")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"config.{key}={text!r}: allowed an integer") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"config.{key}={text!r}: allowed a number") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        try:
            value = ast.literal_eval(text if text.strip().startswith(("(", "[")) else f"({text},)")
        except (ValueError, SyntaxError):
            if current and not all(isinstance(v, str) for v in current):
                raise ConfigError(f"config.{key}={text!r}: allowed a comma-separated list like 1,2,3") from None
            value = [part.strip() for part in text.split(",") if part.strip()]  # a list of names
        return type(current)(value)
    try:  # None or other: a Python literal, else the string itself
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_override(arg: str) -> tuple[str, str]:
    """'--config.a.b=3' → ('a.b', '3')."""
    body = arg[2:] if arg.startswith("--") else arg
    if not body.startswith("config.") or "=" not in body:
        raise ConfigError(f"argument {arg!r}: allowed --config.KEY=VALUE")
    key, text = body[len("config."):].split("=", 1)
    return key, text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Returns a copy of ``config`` with ``--config.key=value`` strings applied, type-checked."""
    config = ml_collections.ConfigDict(config.to_dict())
    keys = list(_flat_keys(config))
    for arg in overrides:
        key, text = parse_override(arg)
        if key not in keys:
            raise ConfigError(f"config.{key}: unknown key; allowed: {', '.join(sorted(keys))}")
        node, *_ = [config]
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        value = _parse_value(key, text, node[leaf])
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"config.{key}={text!r}: wrong type ({e})") from None
    return config


def scale_from(overrides: Sequence[str]) -> str:
    """The value of --config.scale among the overrides (default 'quick'), checked."""
    scale = "quick"
    for arg in overrides:
        key, text = parse_override(arg)
        if key == "scale":
            scale = text
    check(scale in SCALES, "scale", scale, f"one of {SCALES}")
    return scale
