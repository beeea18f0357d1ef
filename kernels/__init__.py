"""Attention kernels: each op beside its plain-jnp reference, with "reference" | "xla" | "pallas"
implementations (Pallas interpreted on CPU) and a custom VJP.

Linear/gated (GLA, LAWCAT): docs/kernels_linear.md. Block-sparse, top-k and KDGQA: docs/kernels_sparse.md.
"""
from kernels._common import BlockSizes as LinearBlockSizes
from kernels.gla import gla, gla_decode_step, gla_reference
from kernels.kdgqa import kdgqa_allocation, kdgqa_attention, kdgqa_reference, kv_index_from_counts
from kernels.lawcat import causal_depthwise_conv, lawcat, lawcat_reference
from kernels.linear_attention import linear_attention, linear_attention_reference
from kernels.moba import moba_attention, moba_attention_reference, moba_selection_reference
from kernels.topk import (spark_topk_attention, statistical_soft_threshold, statistical_threshold,
                          statistical_topk, statistical_topk_reference)

__all__ = [
    "LinearBlockSizes", "causal_depthwise_conv", "gla", "gla_decode_step", "gla_reference", "kdgqa_allocation",
    "kdgqa_attention", "kdgqa_reference", "kv_index_from_counts", "lawcat",
    "lawcat_reference", "linear_attention",
    "linear_attention_reference", "moba_attention", "moba_attention_reference", "moba_selection_reference",
    "spark_topk_attention", "statistical_soft_threshold", "statistical_threshold", "statistical_topk",
    "statistical_topk_reference",
]
