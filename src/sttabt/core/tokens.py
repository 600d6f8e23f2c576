"""Token sets: per-sample subsets of sequence positions, batched.

A batch of token sets is kept two ways, because each suits a different job:

* a *membership mask* ``(B, T)`` over the original positions: what methods reason about (union,
  nesting, top-k by score), independent of how the runtime has compacted the hidden states;
* a *compact index* ``positions (B, m)`` with ``valid (B, m)``: the sorted original positions of each
  sample's members, padded to the batch maximum ``m``. This is what the runtime gathers with.

Sets are always sorted by original position, so position 0 (CLS) is at compact index 0 whenever kept, and
the P prefix tokens of a backbone (:class:`TokenPrefix`: CLS, a distillation token, registers) are at
compact indices 0..P-1 of every set. Nothing here knows about Hugging Face or timm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class CompactIndex:
    """Sorted member positions of each sample, padded to the batch maximum.

    ``positions[b, i]`` is an original sequence position when ``valid[b, i]``; padding entries hold 0 (a
    position that always exists) so they can be used for gathers without bounds checks.
    """

    positions: torch.Tensor  # (B, m) long
    valid: torch.Tensor  # (B, m) bool

    @property
    def counts(self) -> torch.Tensor:
        return self.valid.sum(dim=1)

    @cached_property
    def full(self) -> bool:
        """Whether no entry is padding (asked once per index: attention then needs no key mask)."""
        return bool(self.valid.all())

    def chunk(self, samples: slice) -> CompactIndex:
        """The layouts of the samples ``samples`` (still padded to this batch's width)."""
        part = CompactIndex(self.positions[samples], self.valid[samples])
        for flag in ("full", "prefix"):  # known for the whole batch: true of any part of it too
            if self.__dict__.get(flag):
                part.__dict__[flag] = True
        return part

    @cached_property
    def prefix(self) -> bool:
        """Whether every member sits at its own slot (positions 0, 1, …: right padding, nothing removed),
        so that the layout is a plain slice of the original order (asked once per index)."""
        leading = torch.arange(self.positions.shape[1], device=self.positions.device)
        return bool(((self.positions == leading) | ~self.valid).all())

    @classmethod
    def unpadded(cls, positions: torch.Tensor) -> CompactIndex:
        """An index known to hold no padding (every entry valid)."""
        index = cls(positions=positions, valid=torch.ones_like(positions, dtype=torch.bool))
        index.__dict__["full"] = True  # the cached answer of `full`, known without looking
        return index


def compact(mask: torch.Tensor) -> CompactIndex:
    """Turn a membership mask ``(B, T)`` into sorted compact positions (stable, batch-independent)."""
    if mask.dim() != 2:
        raise ValueError(f"token mask must be (batch, length), got shape {tuple(mask.shape)}")
    mask = mask.bool()
    batch, length = mask.shape
    if batch == 1:  # one sample: no padding, and nonzero() is already sorted (a few ops instead of a dozen)
        return CompactIndex.unpadded(mask[0].nonzero().view(1, -1))
    counts = mask.sum(dim=1)
    width = int(counts.max().item()) if batch else 0
    arange = torch.arange(length, device=mask.device).expand(batch, length)
    # Members keep their position as sort key; non-members go to the end.
    keys = torch.where(mask, arange, arange + length)
    order = keys.argsort(dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    positions = torch.where(valid, order, torch.zeros_like(order))
    return CompactIndex(positions=positions, valid=valid)


def expand(index: CompactIndex, length: int) -> torch.Tensor:
    """Inverse of :func:`compact`: the membership mask ``(B, length)``."""
    # Padding slots point at position 0; send them to a spare column so they cannot clear a real member.
    target = torch.where(index.valid, index.positions, torch.full_like(index.positions, length))
    mask = torch.zeros(index.positions.shape[0], length + 1, dtype=torch.bool, device=index.positions.device)
    return mask.scatter(1, target, True)[:, :length]


def relative_index(outer: torch.Tensor, inner: CompactIndex) -> torch.Tensor:
    """Where each member of ``inner`` sits in the compact layout of the set ``outer`` (a mask).

    Requires ``inner ⊆ outer`` (checked by the caller through :func:`assert_nested`). Padding entries map
    to 0.
    """
    rank = outer.long().cumsum(dim=1) - 1  # (B, T): compact slot of every member of `outer`
    rel = rank.gather(1, inner.positions)
    return torch.where(inner.valid, rel, torch.zeros_like(rel))


def gather_tokens(hidden: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """Gather rows ``rel (B, m)`` of ``hidden (B, n, d)`` -> ``(B, m, d)``: the physical removal step.

    Whole rows are copied by one ``index_select`` over the flattened batch (much faster on CPU than an
    element-wise ``gather`` with an expanded index).
    """
    batch, n, width = hidden.shape
    if batch == 1:
        return hidden.index_select(1, rel[0])
    flat = (torch.arange(batch, device=rel.device).unsqueeze(1) * n + rel).reshape(-1)
    return hidden.reshape(batch * n, width).index_select(0, flat).view(batch, rel.shape[1], width)


def scatter_scores(scores: torch.Tensor, index: CompactIndex, length: int, fill: float) -> torch.Tensor:
    """Place per-member scores ``(B, m)`` back at their original positions ``(B, length)``."""
    target = torch.where(index.valid, index.positions, torch.full_like(index.positions, length))
    out = torch.full((scores.shape[0], length + 1), fill, dtype=scores.dtype, device=scores.device)
    return out.scatter(1, target, scores)[:, :length]


def keep_counts(keep: float, real_lengths: torch.Tensor) -> torch.Tensor:
    """``ceil(keep * n)`` per sample, at least 1 and at most ``n`` (fractions of the *real* length)."""
    return keep_counts_per_layer([keep], real_lengths)[0]


def keep_counts_per_layer(
    ratios: list[float], real_lengths: torch.Tensor, ratio_lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """``(L, B)``: :func:`keep_counts` for every layer's ratio at once (a few ops instead of ~9 per layer).

    ``ratio_lengths`` (B,) are the lengths the ratios are fractions of, when not the real ones: the paper's
    protocol takes ``ceil(k · T_padded)`` (METHODS R5); the count is still at most the real length.
    """
    for keep in ratios:
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep ratio must be in (0, 1], got {keep}")
    lengths = (real_lengths if ratio_lengths is None else ratio_lengths).double().unsqueeze(0)
    table = torch.tensor(ratios, dtype=torch.float64, device=real_lengths.device).unsqueeze(1)
    counts = torch.ceil(lengths * table - 1e-9).long()
    return counts.clamp(min=1).minimum(real_lengths.long().clamp(min=1).unsqueeze(0))


@dataclass(frozen=True)
class TokenPrefix:
    """The leading positions 0..count-1 that every set keeps, and how a keep ratio counts them.

    Backbones put their non-prunable tokens first: CLS (text and vision), then e.g. a distillation token
    or registers. They are in every set S_0..S_{L-1}; the last set S_L holds the ``readout`` positions
    0..R-1 the head reads (R <= count: CLS, or CLS and the distillation token). Selectors rank only the
    other tokens. ``in_budget`` says how a keep ratio k counts the prefix: ``True`` keeps ceil(k·n) tokens
    with the prefix among them (the STTABT text convention: CLS counts towards the budget); ``False``
    keeps the prefix plus ceil(k·(n-P)) of the others (k is a fraction of the patches, as in DynamicViT).
    """

    count: int = 1
    readout: int = 1
    in_budget: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.readout <= self.count:
            raise ValueError(f"need 1 <= readout ({self.readout}) <= prefix tokens ({self.count})")

    def mask(self, valid: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` bool: the prefix positions (of the shape and device of ``valid``)."""
        return _leading(valid, self.count)

    def readout_mask(self, valid: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` bool: the positions the head reads, S_L."""
        return _leading(valid, self.readout)

    def ranked(self, valid: torch.Tensor) -> torch.Tensor:
        """The tokens a keep budget ranks: every real token, or the real non-prefix ones."""
        return valid if self.in_budget else valid & ~self.mask(valid)

    def ranked_counts(
        self, ratios: list[float], real_lengths: torch.Tensor, ratio_lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(L, B)``: how many of the :meth:`ranked` tokens a ratio per layer keeps (before the union
        with the prefix); ``ratio_lengths``: see :func:`keep_counts_per_layer`."""
        if self.in_budget:
            return keep_counts_per_layer(ratios, real_lengths, ratio_lengths)
        lengths = None if ratio_lengths is None else ratio_lengths - self.count
        return keep_counts_per_layer(ratios, real_lengths - self.count, lengths)

    def total_counts(
        self, ratios: list[float], real_lengths: torch.Tensor, ratio_lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(L, B)``: the tokens kept per layer, prefix included (at least the prefix, at most n)."""
        counts = self.ranked_counts(ratios, real_lengths, ratio_lengths)
        if not self.in_budget:
            counts = counts + self.count
        if self.count > 1 or not self.in_budget:  # a lone in-budget CLS: already within [1, n]
            counts = counts.clamp(min=self.count).minimum(real_lengths.long().unsqueeze(0))
        return counts


def _leading(like: torch.Tensor, count: int) -> torch.Tensor:
    mask = torch.zeros(like.shape, dtype=torch.bool, device=like.device)
    mask[:, :count] = True
    return mask


@dataclass(frozen=True)
class RowSelection:
    """Kept rows of a compact layout: ``rows (B, m)`` ascending indices into it, ``valid (B, m)``.

    The compact counterpart of a membership mask, for online decisions made on a layer's compact rows:
    the runtime gathers with ``rows`` directly, with no round trip through ``(B, T)`` masks. Rows 0..P-1
    (the prefix, CLS first) must be kept (the first P entries of every sample, valid); padding entries
    hold 0.
    """

    rows: torch.Tensor  # (B, m) long
    valid: torch.Tensor  # (B, m) bool

    @classmethod
    def unpadded(cls, rows: torch.Tensor) -> RowSelection:
        return cls(rows=rows, valid=torch.ones_like(rows, dtype=torch.bool))


def top_rows(
    scores: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor | int, *, all_valid: bool | None = None
) -> RowSelection:
    """The ``counts[b]`` highest-scoring valid entries of each row of ``scores (B, n)``, in compact order.

    Equivalent to :func:`topk_mask` on the same scores placed at their original positions (members of a
    compact layout are sorted by position): ties break towards the lower index, so the choice never
    depends on the batch. ``counts`` is clipped to each row's number of valid entries; a plain int
    (the same count for every row) saves a host sync.
    """
    all_valid = bool(valid.all()) if all_valid is None else all_valid
    if all_valid and scores.shape[0] == 1:  # one sample, nothing padded: a count known without a sync
        return _top_rows_single(scores, counts)
    if isinstance(counts, int):
        counts = torch.full((scores.shape[0],), counts, dtype=torch.long, device=scores.device)
    counts = counts.minimum(valid.sum(dim=1))
    width = int(counts.max()) if scores.shape[0] else 0
    ranked = scores.float()
    if not all_valid:
        ranked = ranked.masked_fill(~valid, -math.inf)
    order = ranked.argsort(dim=1, descending=True, stable=True)[:, :width]
    keep = torch.arange(width, device=scores.device).unsqueeze(0) < counts.unsqueeze(1)
    # Entries past a row's count sort to the end before the rows are put back in compact order.
    rows = torch.where(keep, order, scores.shape[1]).sort(dim=1).values
    return RowSelection(rows=torch.where(keep, rows, 0), valid=keep)


def _top_rows_single(scores: torch.Tensor, counts: torch.Tensor | int) -> RowSelection:
    """:func:`top_rows` for one unpadded sample: the top ``counts`` entries, in compact order."""
    count = min(counts if isinstance(counts, int) else int(counts[0]), scores.shape[1])
    order = scores.float().argsort(dim=1, descending=True, stable=True)[:, :count]
    return RowSelection.unpadded(order.sort(dim=1).values)


def topk_mask(
    scores: torch.Tensor, eligible: torch.Tensor, counts: torch.Tensor, *, all_eligible: bool = False
) -> torch.Tensor:
    """Per-row top-``counts[b]`` among ``eligible`` entries of ``scores (B, T)``.

    Ties break towards the lower position (stable sort), so the choice never depends on the batch.
    ``all_eligible`` says, when the caller knows, that every entry is eligible (no masking needed).
    """
    ranked = scores if scores.dtype == torch.float32 else scores.float()
    if not all_eligible:
        ranked = ranked.masked_fill(~eligible, -math.inf)
    order = ranked.argsort(dim=1, descending=True, stable=True)
    rank_of_slot = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0)
    take = rank_of_slot < counts.unsqueeze(1)
    chosen = torch.zeros_like(eligible).scatter(1, order, take)
    return chosen if all_eligible else chosen & eligible


def assert_nested(outer: torch.Tensor, inner: torch.Tensor, what: str = "token sets") -> None:
    """Raise if some sample's ``inner`` set is not contained in its ``outer`` set."""
    if bool((inner & ~outer).any()):
        bad = (inner & ~outer).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"{what} are not nested for samples {bad[:8]}")
