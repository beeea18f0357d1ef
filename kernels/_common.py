"""Shared pieces of the linear-attention kernels (``kernels.linear_attention``, ``kernels.gla``).

Shapes: B batch, T tokens, H heads, K key/query head dim, V value head dim.
Layouts: tokens ``[B, T, H, K]``, state ``[B, H, K, V]`` (float32, float64 under x64).
Bad arguments raise ``ValueError`` whose message starts with the argument's name.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("reference", "xla", "pallas")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Block sizes of the chunked paths.

    chunk: tokens per chunk (the state is materialised once per chunk). T need not be a
      multiple: inputs are zero-padded to one (zero k, v, g add nothing and do not decay).
    sub_chunk: GLA's secondary chunking; must divide ``chunk``. Diagonal sub-blocks are
      computed element-wise, off-diagonal ones as a matmul against a reference point.
    block_v: Pallas only, value columns per program (the state's V columns are independent);
      None = all of V; must divide V (on TPU also be a multiple of 128).
    group: xla path only, chunks per step of the loop over the chunk-local terms; None = 32
      on CPU (the working set stays in cache: 2-3x faster at T >= 16k), all at once elsewhere.
    """

    chunk: int = 64
    sub_chunk: int = 8
    block_v: int | None = None
    group: int | None = None

    def __post_init__(self):
        for name in ("chunk", "sub_chunk"):
            val = getattr(self, name)
            if not isinstance(val, (int, np.integer)) or val < 1:
                raise ValueError(f"block_sizes.{name} must be a positive int, got {val!r}")
        if self.chunk % self.sub_chunk:
            raise ValueError(
                f"block_sizes.sub_chunk={self.sub_chunk} must divide block_sizes.chunk={self.chunk}")
        if self.block_v is not None and (not isinstance(self.block_v, (int, np.integer))
                                         or self.block_v < 1):
            raise ValueError(f"block_sizes.block_v must be None or a positive int, got {self.block_v!r}")
        if self.group is not None and (not isinstance(self.group, (int, np.integer))
                                       or self.group < 1):
            raise ValueError(f"block_sizes.group must be None or a positive int, got {self.group!r}")


def resolve_block_sizes(block_sizes: BlockSizes | None, v_dim: int) -> BlockSizes:
    if block_sizes is None:
        return BlockSizes()
    if not isinstance(block_sizes, BlockSizes):
        raise ValueError(f"block_sizes must be a kernels BlockSizes or None, got {type(block_sizes)}")
    if block_sizes.block_v is not None and v_dim % block_sizes.block_v:
        raise ValueError(
            f"block_sizes.block_v={block_sizes.block_v} must divide the value head dim V={v_dim}")
    return block_sizes


def check_implementation(implementation: str) -> str:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    return implementation


def _check_float(name: str, x) -> None:
    if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype, got {jnp.asarray(x).dtype}")


def check_tokens(q, k, v, g=None) -> tuple[int, int, int, int, int]:
    """Validates q, k (and g) [B, T, H, K], v [B, T, H, V]; returns (B, T, H, K, V)."""
    named = [("q", q), ("k", k), ("v", v)] + ([("g", g)] if g is not None else [])
    for name, x in named:
        if jnp.ndim(x) != 4:
            raise ValueError(f"{name} must have rank 4 [B, T, H, dim], got shape {jnp.shape(x)}")
        _check_float(name, x)
    b, t, h, kd = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {q.shape} (B, T, H, K), got {k.shape}")
    if v.shape[:3] != (b, t, h):
        raise ValueError(f"v must be [B, T, H, V] with (B, T, H)={(b, t, h)} as q, got {v.shape}")
    if g is not None and g.shape != k.shape:
        raise ValueError(f"g must have the shape of k {k.shape}, got {g.shape}")
    return b, t, h, kd, v.shape[3]


def check_state(name: str, state, b: int, h: int, kd: int, vd: int):
    if state is None:
        return None
    if jnp.shape(state) != (b, h, kd, vd):
        raise ValueError(f"{name} must have shape [B, H, K, V]={(b, h, kd, vd)}, got {jnp.shape(state)}")
    _check_float(name, state)
    return state


def check_nonpositive(name: str, x) -> None:
    """Raises if concrete ``x`` has an entry > 0, −inf or NaN; under jit (a tracer) it cannot check."""
    try:
        host = np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    host = host.astype(np.float32)
    if not np.all(np.isfinite(host) & (host <= 0)):
        raise ValueError(f"{name} is a log-decay and must be finite and <= 0 everywhere (max "
                         f"{np.max(host)}, min {np.min(host)}); use segment_ids for hard resets")


def check_scale(scale, kd: int) -> float:
    if scale is None:
        return float(kd) ** -0.5
    if not isinstance(scale, (int, float, np.floating)) or not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite float or None, got {scale!r}")
    return float(scale)


def check_segment_ids(segment_ids, b: int, t: int) -> None:
    if segment_ids is None:
        return
    if jnp.shape(segment_ids) != (b, t):
        raise ValueError(f"segment_ids must have shape [B, T]={(b, t)}, got {jnp.shape(segment_ids)}")
    if not jnp.issubdtype(jnp.asarray(segment_ids).dtype, jnp.integer):
        raise ValueError(f"segment_ids must have an integer dtype, got {jnp.asarray(segment_ids).dtype}")


def resets_from_segment_ids(seg_BxT, dtype) -> jax.Array:
    """[B, T] integer ids -> [B, T] 0/1 in ``dtype``: 1 where a new segment starts at t > 0.

    A segment starts wherever the id differs from the previous token's; position 0 never
    resets (the segment at t = 0 starts from ``initial_state``).
    """
    change_BxT = jnp.concatenate(
        [jnp.zeros((seg_BxT.shape[0], 1), bool), seg_BxT[:, 1:] != seg_BxT[:, :-1]], axis=1)
    return change_BxT.astype(dtype)


def compute_dtype(*xs) -> jnp.dtype:
    """float32, or float64 when an input is float64 (x64 mode)."""
    return jnp.promote_types(jnp.result_type(*[x for x in xs if x is not None]), jnp.float32)


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"
