"""Attention back-tracking (STTABT Algorithm 1, METHODS.md §1.3), batched per sample.

Token sets are built from the output (CLS) down to the input: the last layer needs only the readout
tokens, and each layer below keeps the keys that the tokens needed above it attend to most. Every step
is a per-row tensor operation, so a sample's sets never depend on the other members of its batch
(Pitfall R1/R7): the union is an elementwise OR of row masks, padding is never ranked (R5), and dynamic
k is counted per sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from sttabt.core.tokens import keep_counts, topk_mask

Reduction = Literal["mean", "max"]
KeepSpec = float | Sequence[float] | Literal["dynamic"]

#: Reference dynamic-k constants [code]: a key counts if its score exceeds this fraction of the row max.
DYNAMIC_RELATIVE_THRESHOLD = 0.00625
DYNAMIC_BOUNDS = (0.2, 0.95)


@dataclass(frozen=True)
class BacktrackResult:
    """Nested sets ``key_sets[l]`` = S_l for l = 0..L (S_L = readout), each ``(B, T)`` bool."""

    key_sets: list[torch.Tensor]
    scores: list[torch.Tensor]  # r_l (B, T) per layer l = 0..L-1, for inspection and plots

    @property
    def num_layers(self) -> int:
        return len(self.key_sets) - 1


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
    """Build nested key sets S_0 ⊇ … ⊇ S_L from per-layer attention probabilities.

    Args:
        attentions: L tensors ``(B, H, T, T)`` (row = query, column = key), e.g. from the ApproxNet.
        valid: ``(B, T)`` bool, real (non-padding) tokens.
        keep: ratio of each sample's real length kept per layer, a list of L ratios, or ``"dynamic"``.
        readout: ``(B, T)`` bool seed S_L; defaults to CLS (position 0).
        p: impact mixing constant (0.1 in the paper).
        union: keep ``S_l = TopK ∪ S_{l+1}`` (Pitfall R3); turning it off is only for ablations and
            breaks nesting, so the sparse runtime refuses such sets.
    """
    num_layers = len(attentions)
    ratios = per_layer_keep(keep, num_layers)
    valid = valid.bool()
    batch, length = valid.shape
    if readout is None:
        readout = torch.zeros_like(valid)
        readout[:, 0] = True
    needed = readout & valid
    impact = needed.float() / needed.float().sum(dim=1, keepdim=True).clamp(min=1.0)
    n_real = valid.sum(dim=1)

    sets: list[torch.Tensor] = [needed]
    scores: list[torch.Tensor] = []
    for layer in range(num_layers - 1, -1, -1):
        probs = attentions[layer].float()
        if probs.shape != (batch, probs.shape[1], length, length):
            raise ValueError(
                f"attention of layer {layer} has shape {tuple(probs.shape)}, expected (B, H, T, T)"
            )
        if probs.shape[1] == 1:  # already reduced over heads (the lean ApproxNet / oracle recorders)
            head = probs[:, 0]
        else:
            head = probs.mean(dim=1) if head_reduction == "mean" else probs.amax(dim=1)  # (B, Tq, Tk)
        row_weight = needed.float() * ((1.0 - p) + p * impact)  # (B, Tq); zero off S_{l+1}
        if token_reduction == "mean":
            # A batched vector-matrix product: one pass over the maps (einsum picks a slow path here).
            weighted_sum = torch.bmm(row_weight.unsqueeze(1), head).squeeze(1)
            score = weighted_sum / needed.float().sum(1, keepdim=True).clamp(min=1)
        else:
            weighted = head * row_weight.unsqueeze(-1)
            score = weighted.masked_fill(~needed.unsqueeze(-1), -math.inf).amax(dim=1)
            score = torch.where(torch.isfinite(score), score, torch.zeros_like(score))
        score = score.masked_fill(~valid, 0.0)
        counts = dynamic_counts(score, valid) if ratios == "dynamic" else keep_counts(ratios[layer], n_real)
        chosen = topk_mask(score, valid, counts)
        current = (chosen | needed) if union else chosen
        total = (score * current).sum(dim=1, keepdim=True).clamp(min=1e-12)
        impact = torch.where(current, score / total, torch.zeros_like(score))
        needed = current
        sets.append(current)
        scores.append(score)
    sets.reverse()
    scores.reverse()
    return BacktrackResult(key_sets=sets, scores=scores)


def backtrack_overhead_flops(num_heads: int, real_length: int, query_counts: Sequence[int]) -> int:
    """FLOPs of building the sets for one sample: head reduction, weighted token reduction, top-k."""
    n = real_length
    sort_cost = n * max(1, math.ceil(math.log2(max(n, 2))))
    return sum(num_heads * n_q * n + 2 * n_q * n + sort_cost for n_q in query_counts)
