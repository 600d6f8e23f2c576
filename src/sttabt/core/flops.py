"""Analytic per-example cost of an encoder run with token sets (METHODS.md §5).

Conventions (documented in the README):

* ``macs`` counts multiply-accumulates of the matrix products only: Q/K/V projections, QKᵀ and A·V,
  attention-output projection, FFN, plus the head (pooler/classifier) the adapter declares.
* ``flops`` = 2 × ``macs`` + element-wise work: LayerNorm 5, GELU 8 and softmax 5 FLOPs per element
  (the STTABT/ELECTRA convention), plus any overhead a method declares (ApproxNet forward, set
  construction). Dense BERT-base at 128 tokens gives 22.41 GFLOPs (reference anchor 22.42).
* Lengths are each example's real token counts, never the padded batch length.

Per layer a run is described by three counts per sample: ``n_k`` keys/values read, ``n_q`` queries
whose attention scores are computed, and ``n_o`` tokens whose output (A·V, attention projection, FFN) is
produced.
Planned methods (ABT) have ``n_q == n_o``; online methods (top-k, LTP) compute attention for all current
tokens and prune afterwards, so ``n_q == n_k`` and ``n_o`` is the kept count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LAYERNORM_FLOPS = 5
GELU_FLOPS = 8
SOFTMAX_FLOPS = 5


@dataclass(frozen=True)
class EncoderShape:
    """The sizes that determine cost; built by each backbone adapter."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    head_macs: int = 0  # pooler + classifier for one readout token
    embedding_macs_per_token: int = 0  # e.g. ELECTRA's projection from embedding_size to hidden_size
    embedding_macs_fixed: int = 0  # per sample, whatever the tokens: e.g. a ViT's patch projection
    layernorms_per_layer: int = 2
    embedding_layernorm: bool = True


def layer_costs(shape: EncoderShape, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MACs and element-wise FLOPs per sample and layer for ``counts (..., L, 3) = (n_k, n_q, n_o)``."""
    c = counts.double()
    n_k, n_q, n_o = c[..., 0], c[..., 1], c[..., 2]
    d, d_ff = shape.hidden_size, shape.intermediate_size
    macs = (
        n_q * d * d  # Q projection
        + 2 * n_k * d * d  # K and V projections
        + n_q * n_k * d  # QKᵀ over all heads
        + n_o * n_k * d  # A·V, only for the rows that continue (online methods prune before it)
        + n_o * d * d  # attention-output projection
        + 2 * n_o * d * d_ff  # FFN
    )
    elementwise = (
        SOFTMAX_FLOPS * shape.num_heads * n_q * n_k
        + LAYERNORM_FLOPS * shape.layernorms_per_layer * n_o * d
        + GELU_FLOPS * n_o * d_ff
    )
    return macs, elementwise


def macs_by_kind(shape: EncoderShape, counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample encoder MACs split into ``linear`` (projections, FFN, head) and ``attention`` (QKᵀ, A·V).

    The split matters for wall clock: the two kinds run in different kernels whose efficiency depends
    differently on the token counts (small-row GEMMs are far less efficient than large ones on CPU).
    """
    c = counts.double()
    n_k, n_q, n_o = c[..., 0], c[..., 1], c[..., 2]
    d, d_ff = shape.hidden_size, shape.intermediate_size
    linear = (n_q + 2 * n_k + n_o) * d * d + 2 * n_o * d * d_ff
    attention = (n_q + n_o) * n_k * d
    return {"linear": linear.sum(dim=-1) + shape.head_macs, "attention": attention.sum(dim=-1)}


@dataclass(frozen=True)
class CostReport:
    """Per-example cost; tensors have one entry per sample."""

    macs: torch.Tensor
    flops: torch.Tensor

    def mean(self) -> dict[str, float]:
        return {"macs": float(self.macs.mean()), "flops": float(self.flops.mean())}


def encoder_cost(
    shape: EncoderShape,
    counts: torch.Tensor,
    real_lengths: torch.Tensor,
    overhead_macs: torch.Tensor | None = None,
    overhead_flops: torch.Tensor | None = None,
) -> CostReport:
    """Cost of whole runs: layers from ``counts (B, L, 3)``, embeddings and head, plus method overhead.

    ``overhead_macs`` is added to MACs (and twice to FLOPs); ``overhead_flops`` is element-wise work added
    to FLOPs only.
    """
    if counts.dim() != 3 or counts.shape[1:] != (shape.num_layers, 3):
        raise ValueError(f"counts must be (batch, {shape.num_layers}, 3), got {tuple(counts.shape)}")
    macs, elementwise = layer_costs(shape, counts)
    total_macs = macs.sum(dim=1) + shape.head_macs + shape.embedding_macs_per_token * real_lengths.double()
    if shape.embedding_macs_fixed:
        total_macs = total_macs + shape.embedding_macs_fixed
    total_elem = elementwise.sum(dim=1)
    if shape.embedding_layernorm:
        total_elem = total_elem + LAYERNORM_FLOPS * real_lengths.double() * shape.hidden_size
    if overhead_macs is not None:
        total_macs = total_macs + overhead_macs.double()
    flops = 2 * total_macs + total_elem
    if overhead_flops is not None:
        flops = flops + overhead_flops.double()
    return CostReport(macs=total_macs, flops=flops)


def dense_counts(real_lengths: torch.Tensor, num_layers: int, readout_last: bool = True) -> torch.Tensor:
    """Counts ``(B, L, 3)`` of an unpruned run; the last layer computes only the readout token."""
    n = real_lengths.long()
    counts = n.view(-1, 1, 1).expand(-1, num_layers, 3).clone()
    if readout_last:
        counts[:, -1, 1:] = 1
    return counts


def dense_cost(shape: EncoderShape, real_lengths: torch.Tensor, readout_last: bool = False) -> CostReport:
    """The dense model's cost. By default every layer is full length, as the unmodified model runs."""
    return encoder_cost(shape, dense_counts(real_lengths, shape.num_layers, readout_last), real_lengths)
