"""Functional core: token sets, back-tracking and FLOPs. Knows nothing about Hugging Face or timm."""

from sttabt.core.backtrack import BacktrackResult, backtrack
from sttabt.core.flops import CostReport, EncoderShape, dense_cost, encoder_cost
from sttabt.core.tokens import (
    CompactIndex,
    RowSelection,
    compact,
    expand,
    gather_tokens,
    keep_counts,
    top_rows,
    topk_mask,
)

__all__ = [
    "BacktrackResult",
    "CompactIndex",
    "CostReport",
    "EncoderShape",
    "RowSelection",
    "backtrack",
    "compact",
    "dense_cost",
    "encoder_cost",
    "expand",
    "gather_tokens",
    "keep_counts",
    "top_rows",
    "topk_mask",
]
