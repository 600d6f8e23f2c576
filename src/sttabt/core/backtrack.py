"""Attention back-tracking (STTABT Algorithm 1, METHODS.md §1.3), batched per sample, rows on demand.

Token sets are built from the output (CLS) down to the input: the last layer needs only the readout
tokens, and each layer below keeps the keys that the tokens needed above it attend to most. Layer l
reads only the attention *rows* of S_{l+1} (only CLS at the top), so the core asks an
:data:`AttentionRows` source for exactly those rows: a source may compute them on demand from recorded
queries and keys (the fast path, no full maps anywhere) or slice precomputed full maps
(:func:`backtrack`). Every step is a per-row tensor operation, so a sample's sets never depend on the
other members of its batch (Pitfall R1/R7): the union is an elementwise OR of row masks, padding is
never ranked (R5), and dynamic k is counted per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from sttabt.core.tokens import CompactIndex, compact, gather_tokens, keep_counts_per_layer, topk_mask

Reduction = Literal["mean", "max"]
KeepSpec = float | Sequence[float] | Literal["dynamic"]

#: ``rows(layer, queries)``: layer ``layer``'s attention reduced over heads, for the query positions of
#: ``queries`` only, as ``(B, m, T)`` over original key positions (zero on padded keys). Row ``i`` of a
#: sample is its query ``queries.positions[b, i]``; rows where ``queries.valid`` is False are ignored.
AttentionRows = Callable[[int, CompactIndex], torch.Tensor]

#: Reference dynamic-k constants [code]: a key counts if its score exceeds this fraction of the row max.
DYNAMIC_RELATIVE_THRESHOLD = 0.00625
DYNAMIC_BOUNDS = (0.2, 0.95)


@dataclass(frozen=True)
class BacktrackResult:
    """Nested sets ``key_sets[l]`` = S_l for l = 0..L (S_L = readout), each ``(B, T)`` bool.

    ``layouts[l]`` is ``compact(key_sets[l])``, built on the way down anyway and handed to the runtime
    so that it does not compact the same sets again.
    """

    key_sets: list[torch.Tensor]
    scores: list[torch.Tensor]  # r_l (B, T) per layer l = 0..L-1, for inspection and plots
    layouts: list[CompactIndex]

    @property
    def num_layers(self) -> int:
        return len(self.key_sets) - 1

    def query_counts(self) -> torch.Tensor:
        """``(B, L)``: the attention rows back-tracking read at each layer, |S_{l+1}|."""
        return torch.stack([index.valid.sum(dim=1) for index in self.layouts[1:]], dim=1)


def per_layer_keep(keep: KeepSpec, num_layers: int) -> list[float] | Literal["dynamic"]:
    """Normalise a keep specification to one ratio per layer (or ``"dynamic"``), validating it."""
    if isinstance(keep, str):
        if keep != "dynamic":
            raise ValueError(f"keep must be a ratio in (0, 1], a list of ratios or 'dynamic', got {keep!r}")
        return "dynamic"
    ratios = [float(keep)] * num_layers if isinstance(keep, int | float) else [float(k) for k in keep]
    if len(ratios) != num_layers:
        raise ValueError(f"got {len(ratios)} keep ratios for a model with {num_layers} layers")
    for ratio in ratios:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"keep ratio must be in (0, 1], got {ratio}")
    return ratios


def dynamic_counts(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-sample dynamic k [spec]: keys above 0.625 % of the row max, clipped to [20 %, 95 %] of n."""
    masked = scores.masked_fill(~valid, -math.inf)
    row_max = masked.max(dim=1, keepdim=True).values
    above = (masked > DYNAMIC_RELATIVE_THRESHOLD * row_max) & valid
    n_real = valid.sum(dim=1)
    low = torch.ceil(n_real * DYNAMIC_BOUNDS[0]).long()
    high = torch.ceil(n_real * DYNAMIC_BOUNDS[1]).long()
    return above.sum(dim=1).clamp(min=1).maximum(low).minimum(high).clamp(min=1)


def reduce_rows(rows: torch.Tensor, weights: torch.Tensor, row_valid: torch.Tensor, reduction: Reduction):
    """Token reduction r(j) over the needed rows ``(B, m, T)`` with per-row weights ``(B, m)``."""
    if reduction == "mean":
        # A batched vector-matrix product: one pass over the rows (einsum picks a slow path here).
        total = torch.bmm(weights.unsqueeze(1), rows).squeeze(1)
        return total / row_valid.sum(dim=1, keepdim=True).clamp(min=1)
    weighted = (rows * weights.unsqueeze(-1)).masked_fill(~row_valid.unsqueeze(-1), -math.inf)
    score = weighted.amax(dim=1)
    return torch.where(torch.isfinite(score), score, torch.zeros_like(score))


def backtrack_rows(
    rows: AttentionRows,
    valid: torch.Tensor,
    keep: KeepSpec,
    num_layers: int,
    *,
    readout: torch.Tensor | None = None,
    p: float = 0.1,
    token_reduction: Reduction = "mean",
    union: bool = True,
) -> BacktrackResult:
    """Build nested key sets S_0 ⊇ … ⊇ S_L, reading only the attention rows each layer needs.

    Args:
        rows: the attention source (see :data:`AttentionRows`), already reduced over heads.
        valid: ``(B, T)`` bool, real (non-padding) tokens.
        keep: ratio of each sample's real length kept per layer, a list of L ratios, or ``"dynamic"``.
        readout: ``(B, T)`` bool seed S_L; defaults to CLS (position 0).
        p: impact mixing constant (0.1 in the paper).
        union: keep ``S_l = TopK ∪ S_{l+1}`` (Pitfall R3); turning it off is only for ablations and
            breaks nesting, so the sparse runtime refuses such sets.
    """
    ratios = per_layer_keep(keep, num_layers)
    valid = valid.bool()
    length = valid.shape[1]
    if readout is None:
        readout = torch.zeros_like(valid)
        readout[:, 0] = True
    needed = readout & valid
    layout = compact(needed)
    impact = needed.float() / needed.float().sum(dim=1, keepdim=True).clamp(min=1.0)
    n_real = valid.sum(dim=1)
    counts = None if ratios == "dynamic" else keep_counts_per_layer(ratios, n_real)

    sets, layouts, scores = [needed], [layout], []
    for layer in range(num_layers - 1, -1, -1):
        head = rows(layer, layout).float()  # (B, m, T)
        if head.shape != (valid.shape[0], layout.positions.shape[1], length):
            raise ValueError(
                f"attention rows of layer {layer} have shape {tuple(head.shape)}, expected "
                f"{(valid.shape[0], layout.positions.shape[1], length)} (B, needed rows, T)"
            )
        row_impact = impact.gather(1, layout.positions)
        weights = ((1.0 - p) + p * row_impact) * layout.valid  # zero on padding rows
        score = reduce_rows(head, weights, layout.valid, token_reduction).masked_fill(~valid, 0.0)
        count = dynamic_counts(score, valid) if counts is None else counts[layer]
        chosen = topk_mask(score, valid, count)
        current = (chosen | needed) if union else chosen
        total = (score * current).sum(dim=1, keepdim=True).clamp(min=1e-12)
        impact = torch.where(current, score / total, torch.zeros_like(score))
        needed, layout = current, compact(current)
        sets.append(current)
        layouts.append(layout)
        scores.append(score)
    sets.reverse()
    layouts.reverse()
    scores.reverse()
    return BacktrackResult(key_sets=sets, scores=scores, layouts=layouts)


def rows_of_maps(attentions: Sequence[torch.Tensor], head_reduction: Reduction = "mean") -> AttentionRows:
    """An :data:`AttentionRows` source that slices full per-layer maps ``(B, H, T, T)`` (H may be 1)."""

    def rows(layer: int, queries: CompactIndex) -> torch.Tensor:
        probs = attentions[layer]
        batch, length = queries.positions.shape[0], probs.shape[-1]
        if probs.dim() != 4 or probs.shape[0] != batch or probs.shape[2] != length:
            raise ValueError(
                f"attention of layer {layer} has shape {tuple(probs.shape)}, expected (B, H, T, T)"
            )
        if probs.shape[1] == 1:
            head = probs[:, 0]
        else:
            head = probs.float().mean(dim=1) if head_reduction == "mean" else probs.float().amax(dim=1)
        return gather_tokens(head.float(), queries.positions)

    return rows


def backtrack(
    attentions: Sequence[torch.Tensor],
    valid: torch.Tensor,
    keep: KeepSpec,
    *,
    readout: torch.Tensor | None = None,
    p: float = 0.1,
    head_reduction: Reduction = "mean",
    token_reduction: Reduction = "mean",
    union: bool = True,
) -> BacktrackResult:
    """:func:`backtrack_rows` on full per-layer attention maps ``(B, H, T, T)`` (row = query).

    For analysis and tests; inference computes only the needed rows (see ``sttabt.methods.abt``).
    """
    source = rows_of_maps(attentions, head_reduction)
    return backtrack_rows(
        source, valid, keep, len(attentions), readout=readout, p=p, token_reduction=token_reduction,
        union=union,
    )  # fmt: skip


def backtrack_overhead_flops(num_heads: int, real_length: int, query_counts: Sequence[int]) -> int:
    """FLOPs of building the sets for one sample: head reduction, weighted token reduction, top-k."""
    n = real_length
    sort_cost = n * max(1, math.ceil(math.log2(max(n, 2))))
    return sum(num_heads * n_q * n + 2 * n_q * n + sort_cost for n_q in query_counts)


def backtrack_cost(
    num_heads: int, query_width: int, real_lengths: torch.Tensor, query_counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(macs, elementwise_flops)`` of back-tracking on rows computed on demand.

    Per layer with ``m`` needed rows over ``n`` real keys: the rows' scores QKᵀ (``m·n·query_width``
    MACs, ``query_width`` = heads × head dim of the model that predicts attention), their softmax
    (5 FLOPs per element, as in :mod:`sttabt.core.flops`), then what :func:`backtrack_overhead_flops`
    counts (head reduction, weighted token reduction, ranking).
    """
    n = real_lengths.double().unsqueeze(1)  # (B, 1)
    m = query_counts.double()  # (B, L)
    macs = (m * n * query_width).sum(dim=1)
    sort_cost = n * torch.log2(n.clamp(min=2)).ceil().clamp(min=1)
    per_layer = 5 * num_heads * m * n + num_heads * m * n + 2 * m * n + sort_cost
    return macs, per_layer.sum(dim=1)
