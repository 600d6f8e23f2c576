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

from sttabt.core.flops import SOFTMAX_FLOPS
from sttabt.core.tokens import CompactIndex, TokenPrefix, compact, gather_tokens, topk_mask

Reduction = Literal["mean", "max"]
KeepSpec = float | Sequence[float] | Literal["dynamic"]

#: ``rows(layer, queries, samples)``: layer ``layer``'s attention probabilities, for the samples
#: ``samples`` (a slice of the batch) and the query positions of ``queries`` (the layout of those samples)
#: only, per head ``(b, H, m, n)`` or already reduced over heads ``(b, m, n)``, over the key positions
#: ``0..n-1`` (``n <= T``; keys from ``n`` on, and padded keys, get no attention). Row ``i`` of a sample is
#: its query ``queries.positions[b, i]``; rows where ``queries.valid`` is False are ignored.
AttentionRows = Callable[[int, CompactIndex, slice], torch.Tensor]

#: The ``samples`` an :data:`AttentionRows` source gets when the whole batch is scored at once.
ALL_SAMPLES = slice(None)

#: Default bound on the attention-row elements (b·H·m·n) scored at once: samples are taken in chunks so
#: that the rows stay in cache instead of streaming a batch-sized tensor through memory (16 MiB in fp32).
ROW_CHUNK_ELEMENTS = 1 << 22

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


def reduce_rows(
    rows: torch.Tensor,
    weights: torch.Tensor,
    row_valid: torch.Tensor,
    head_reduction: Reduction,
    token_reduction: Reduction,
    row_count: torch.Tensor | int,
) -> torch.Tensor:
    """r(j): the needed rows (``(B, H, m, n)`` or head-reduced ``(B, m, n)``) reduced over heads, then
    over rows with per-row weights ``(B, m)`` (zero on padding rows; ``row_count`` real rows per sample).
    Mean over both is one pass over the rows: a weighted sum over (head, row)."""
    rows = rows if rows.dtype == torch.float32 else rows.float()
    if rows.dim() == 4:
        batch, heads, m, n = rows.shape
        if head_reduction == "mean" and token_reduction == "mean":
            per_head = weights.unsqueeze(1).expand(batch, heads, m).reshape(batch, 1, heads * m)
            total = torch.bmm(per_head, rows.reshape(batch, heads * m, n)).squeeze(1)
            return total / (row_count * heads)
        rows = rows.mean(dim=1) if head_reduction == "mean" else rows.amax(dim=1)
    if token_reduction == "mean":
        # A batched vector-matrix product: one pass over the rows (einsum picks a slow path here).
        return torch.bmm(weights.unsqueeze(1), rows).squeeze(1) / row_count
    weighted = (rows * weights.unsqueeze(-1)).masked_fill(~row_valid.unsqueeze(-1), -math.inf)
    score = weighted.amax(dim=1)
    return torch.where(torch.isfinite(score), score, torch.zeros_like(score))


@dataclass
class _Step:
    """What back-tracking carries from one layer to the one below: S_{l+1}, its layout, its impacts."""

    needed: torch.Tensor  # (B, T) mask
    layout: CompactIndex
    impact: torch.Tensor  # (B, m) impacts w of the members of `layout` (0 on padding entries)


def _rows_of(layout: CompactIndex) -> torch.Tensor | int:
    """Members per sample as a divisor: a plain int when no entry is padding (batch 1)."""
    return layout.positions.shape[1] if layout.full else layout.valid.sum(dim=1, keepdim=True).clamp(min=1)


def _impacts(score: torch.Tensor, layout: CompactIndex) -> torch.Tensor:
    """w(j) = r(j) / Σ r over the set, for the members of ``layout``."""
    kept = score.gather(1, layout.positions)
    if not layout.full:
        kept = kept * layout.valid
    return kept / kept.sum(dim=1, keepdim=True).clamp(min=1e-12)


def backtrack_rows(
    rows: AttentionRows,
    valid: torch.Tensor,
    keep: KeepSpec,
    num_layers: int,
    *,
    readout: torch.Tensor | None = None,
    prefix: TokenPrefix | None = None,
    p: float = 0.1,
    head_reduction: Reduction = "mean",
    token_reduction: Reduction = "mean",
    union: bool = True,
    heads: int = 1,
    chunk_elements: int = ROW_CHUNK_ELEMENTS,
    ratio_lengths: torch.Tensor | None = None,
) -> BacktrackResult:
    """Build nested key sets S_0 ⊇ … ⊇ S_L, reading only the attention rows each layer needs.

    Args:
        rows: the attention source (see :data:`AttentionRows`); ``heads`` is its head count, used only to
            size the chunks of samples scored at once (``chunk_elements`` elements at most).
        valid: ``(B, T)`` bool, real (non-padding) tokens.
        keep: ratio of each sample's real length kept per layer, a list of L ratios, or ``"dynamic"``.
        readout: ``(B, T)`` bool seed S_L; defaults to the prefix's readout positions (CLS: position 0;
            CLS and the distillation token for a head that averages both).
        prefix: the tokens every S_0..S_{L-1} keeps and how a keep ratio counts them (default: CLS,
            counted in the budget, the text convention); top-k ranks only :meth:`TokenPrefix.ranked`.
        p: impact mixing constant (0.1 in the paper).
        union: keep ``S_l = TopK ∪ S_{l+1}`` (Pitfall R3); turning it off is only for ablations and
            breaks nesting, so the sparse runtime refuses such sets.
        ratio_lengths: ``(B,)`` lengths the keep ratios are fractions of (default: the real lengths; the
            paper's protocol passes padded lengths, see :func:`~sttabt.core.tokens.keep_counts_per_layer`).
    """
    ratios = per_layer_keep(keep, num_layers)
    valid = valid.bool()
    length = valid.shape[1]
    prefix = prefix or TokenPrefix()
    if readout is None:
        readout = prefix.readout_mask(valid)
    needed = readout & valid
    layout = compact(needed)
    step = _Step(needed, layout, layout.valid.float() / _rows_of(layout))
    counts = None if ratios == "dynamic" else prefix.ranked_counts(ratios, valid.sum(dim=1), ratio_lengths)
    no_padding = bool(valid.all())  # asked once: then nothing needs masking
    ranked = prefix.ranked(valid)
    # Prefix tokens outside the ranking (or outside the readout seed, which the union carries down) are
    # added to every set explicitly; for text (CLS = the seed, ranked with the rest) nothing is.
    explicit = prefix.count > prefix.readout or not prefix.in_budget
    pinned = prefix.mask(valid) & valid if explicit else None
    all_ranked = no_padding and prefix.in_budget

    sets, layouts, scores = [needed], [layout], []
    reductions = (head_reduction, token_reduction)
    for layer in range(num_layers - 1, -1, -1):
        per_chunk = max(1, chunk_elements // max(1, heads * step.layout.positions.shape[1] * length))
        score = _layer_scores(rows, layer, step, p, reductions, per_chunk, length)
        if not no_padding:
            score = score.masked_fill(~valid, 0.0)
        count = dynamic_counts(score, ranked) if counts is None else counts[layer]
        chosen = topk_mask(score, ranked, count, all_eligible=all_ranked)
        if pinned is not None:
            chosen = chosen | pinned
        current = (chosen | step.needed) if union else chosen
        layout = compact(current)
        step = _Step(current, layout, _impacts(score, layout))
        sets.append(current)
        layouts.append(layout)
        scores.append(score)
    sets.reverse()
    layouts.reverse()
    scores.reverse()
    return BacktrackResult(key_sets=sets, scores=scores, layouts=layouts)


def _layer_scores(
    rows: AttentionRows,
    layer: int,
    step: _Step,
    p: float,
    reductions: tuple[Reduction, Reduction],
    per_chunk: int,
    length: int,
) -> torch.Tensor:
    """r(j) ``(B, T)`` of one layer, scoring ``per_chunk`` samples at a time (each sample on its own)."""
    batch = step.layout.positions.shape[0]
    weights = (1.0 - p) + p * step.impact
    if not step.layout.full:
        weights = weights * step.layout.valid  # zero on padding rows
    parts = []
    for start in range(0, batch, per_chunk):
        whole = per_chunk >= batch
        samples = ALL_SAMPLES if whole else slice(start, min(start + per_chunk, batch))
        layout = step.layout if whole else step.layout.chunk(samples)
        attention = rows(layer, layout, samples)
        _check_rows(attention, layer, layout.positions.shape[0], layout.positions.shape[1], length)
        part_weights = weights if whole else weights[samples]
        score = reduce_rows(attention, part_weights, layout.valid, *reductions, _rows_of(layout))
        if score.shape[1] < length:  # keys past the source's width get nothing
            score = torch.nn.functional.pad(score, (0, length - score.shape[1]))
        parts.append(score)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _check_rows(rows: torch.Tensor, layer: int, batch: int, needed: int, length: int) -> None:
    fits = rows.dim() in (3, 4) and rows.shape[0] == batch and rows.shape[-2] == needed
    if not fits or rows.shape[-1] > length:
        raise ValueError(
            f"attention rows of layer {layer} have shape {tuple(rows.shape)}, expected "
            f"(B={batch}, [H,] needed rows={needed}, keys <= {length})"
        )


def rows_of_maps(attentions: Sequence[torch.Tensor]) -> AttentionRows:
    """An :data:`AttentionRows` source that slices full per-layer maps ``(B, H, T, T)`` (H may be 1)."""

    def rows(layer: int, queries: CompactIndex, samples: slice) -> torch.Tensor:
        probs = attentions[layer][samples]
        batch, length = queries.positions.shape[0], probs.shape[-1]
        if probs.dim() != 4 or probs.shape[0] != batch or probs.shape[2] != length:
            raise ValueError(
                f"attention of layer {layer} has shape {tuple(probs.shape)}, expected (B, H, T, T)"
            )
        heads = probs.shape[1]
        flat = probs.float().reshape(batch * heads, length, length)
        return gather_tokens(flat, _per_head(queries, heads)).view(batch, heads, -1, length)

    return rows


def _per_head(queries: CompactIndex, heads: int) -> torch.Tensor:
    """Row indices ``(B·H, m)`` that pick each sample's query rows in every head of ``(B·H, T, T)``."""
    return queries.positions.repeat_interleave(heads, dim=0)


def backtrack(
    attentions: Sequence[torch.Tensor],
    valid: torch.Tensor,
    keep: KeepSpec,
    *,
    readout: torch.Tensor | None = None,
    prefix: TokenPrefix | None = None,
    p: float = 0.1,
    head_reduction: Reduction = "mean",
    token_reduction: Reduction = "mean",
    union: bool = True,
) -> BacktrackResult:
    """:func:`backtrack_rows` on full per-layer attention maps ``(B, H, T, T)`` (row = query).

    For analysis and tests; inference computes only the needed rows (see ``sttabt.methods.abt``).
    """
    heads = attentions[0].shape[1] if len(attentions) else 1
    return backtrack_rows(
        rows_of_maps(attentions), valid, keep, len(attentions), readout=readout, prefix=prefix, p=p,
        head_reduction=head_reduction, token_reduction=token_reduction, union=union, heads=heads,
    )  # fmt: skip


def backtrack_cost(
    num_heads: int, query_width: int, real_lengths: torch.Tensor, query_counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(macs, elementwise_flops)`` of back-tracking on rows computed on demand.

    Per layer with ``m`` needed rows over ``n`` real keys: the rows' scores QKᵀ (``m·n·query_width``
    MACs, ``query_width`` = heads × head dim of the model that predicts attention), their softmax
    (5 FLOPs per element, as in :mod:`sttabt.core.flops`), the head reduction (``H·m·n``), the weighted
    token reduction (``2·m·n``) and the ranking (``n·ceil(log2 n)``).
    """
    n = real_lengths.double().unsqueeze(1)  # (B, 1)
    m = query_counts.double()  # (B, L)
    macs = (m * n * query_width).sum(dim=1)
    sort_cost = n * torch.log2(n.clamp(min=2)).ceil().clamp(min=1)
    per_layer = SOFTMAX_FLOPS * num_heads * m * n + num_heads * m * n + 2 * m * n + sort_cost
    return macs, per_layer.sum(dim=1)
