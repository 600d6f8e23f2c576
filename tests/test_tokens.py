"""The token-set core: compact/expand, relative indices, gathers, per-row top-k, keep counts, scores."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sttabt.core.tokens import (
    CompactIndex,
    assert_nested,
    compact,
    expand,
    gather_tokens,
    keep_counts,
    keep_counts_per_layer,
    relative_index,
    scatter_scores,
    top_rows,
    topk_mask,
)


def _mask(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


@st.composite
def masks(draw, min_batch: int = 0, max_batch: int = 5, max_len: int = 12) -> torch.Tensor:
    batch = draw(st.integers(min_batch, max_batch))
    length = draw(st.integers(1, max_len))
    bits = draw(st.lists(st.booleans(), min_size=batch * length, max_size=batch * length))
    return torch.tensor(bits, dtype=torch.bool).view(batch, length)


# -- compact / expand -----------------------------------------------------------------------------------
def test_compact_hand_example():
    index = compact(_mask([[1, 0, 1, 1, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]]))
    assert index.positions.tolist() == [[0, 2, 3], [3, 0, 0], [0, 0, 0]]
    assert index.valid.tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    assert index.counts.tolist() == [3, 1, 0]


@settings(max_examples=60, deadline=None)
@given(masks())
def test_compact_layout(mask):
    index = compact(mask)
    batch, length = mask.shape
    assert index.positions.dtype == torch.long and index.valid.dtype == torch.bool
    width = int(mask.sum(1).max()) if batch else 0
    assert index.positions.shape == index.valid.shape == (batch, width)
    assert torch.equal(index.counts, mask.sum(1))
    rebuilt = torch.zeros_like(mask)
    for b in range(batch):
        rebuilt[b, index.positions[b][index.valid[b]]] = True
    assert torch.equal(rebuilt, mask)
    for b in range(batch):
        members = mask[b].nonzero().flatten().tolist()
        n = len(members)
        # Sorted members first, then padding that points at position 0.
        assert index.positions[b, :n].tolist() == members
        assert index.valid[b].tolist() == [True] * n + [False] * (width - n)
        assert index.positions[b, n:].tolist() == [0] * (width - n)


EXPAND_BUG = (
    "expand() scatters the padding slots (position 0, valid=False) after the members, so position 0 (CLS) "
    "is erased in every row that has fewer members than the batch maximum"
)


def test_expand_keeps_position_zero_in_short_rows():
    mask = _mask([[1, 1], [1, 0]])
    assert expand(compact(mask), 2).tolist() == [[True, True], [True, False]]


@settings(max_examples=60, deadline=None)
@given(masks())
@example(mask=_mask([[1, 1, 0], [1, 0, 1], [1, 0, 0]]))
def test_compact_expand_round_trip(mask):
    assert torch.equal(expand(compact(mask), mask.shape[1]), mask)


@settings(max_examples=40, deadline=None)
@given(masks(min_batch=1))
def test_compact_is_batch_independent(mask):
    full = compact(mask)
    for b in range(mask.shape[0]):
        alone = compact(mask[b : b + 1])
        n = int(alone.counts[0])
        assert torch.equal(full.positions[b, :n], alone.positions[0, :n])


@settings(max_examples=40, deadline=None)
@given(masks(min_batch=1))
def test_compact_index_full_says_whether_any_entry_is_padding(mask):
    index = compact(mask)
    assert index.full == bool(index.valid.all())
    if mask.shape[0] == 1:  # one sample is never padded
        assert index.full


def test_compact_rejects_non_2d():
    with pytest.raises(ValueError, match="batch, length"):
        compact(torch.ones(3, dtype=torch.bool))


# -- relative_index / gather_tokens ---------------------------------------------------------------------
def test_relative_index_hand_example():
    outer = _mask([[1, 1, 0, 1, 1], [1, 0, 1, 0, 0]])
    inner = compact(_mask([[1, 0, 0, 0, 1], [0, 0, 1, 0, 0]]))
    # Row 0: outer's compact layout is [0, 1, 3, 4]; position 4 sits at slot 3. Row 1: [0, 2] -> slot 1.
    assert relative_index(outer, inner).tolist() == [[0, 3], [1, 0]]


@settings(max_examples=60, deadline=None)
@given(masks(min_batch=1), st.integers(0, 2**31 - 1))
def test_relative_index_maps_into_outer_layout(outer, seed):
    gen = torch.Generator().manual_seed(seed)
    inner_mask = outer & (torch.rand(outer.shape, generator=gen) < 0.5)
    inner = compact(inner_mask)
    outer_index = compact(outer)
    rel = relative_index(outer, inner)
    # Following rel through outer's compact positions gives back inner's positions.
    via_outer = outer_index.positions.gather(1, rel) if outer_index.positions.shape[1] else rel
    assert torch.equal(via_outer[inner.valid], inner.positions[inner.valid])
    assert bool((rel[~inner.valid] == 0).all())

    # gather_tokens performs exactly that selection on compacted features.
    features = torch.randn(*outer.shape, 3, generator=gen)
    compact_outer = gather_tokens(features, outer_index.positions)
    picked = gather_tokens(compact_outer, rel)
    direct = gather_tokens(features, inner.positions)
    assert torch.equal(picked[inner.valid], direct[inner.valid])


def test_gather_tokens_hand_example():
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float).view(2, 4, 2)
    out = gather_tokens(hidden, torch.tensor([[3, 0], [1, 1]]))
    assert out.tolist() == [[[6, 7], [0, 1]], [[10, 11], [10, 11]]]


def test_assert_nested():
    outer = _mask([[1, 1, 0], [1, 0, 1]])
    assert_nested(outer, _mask([[1, 0, 0], [1, 0, 1]]))
    with pytest.raises(ValueError, match=r"samples \[1\]"):
        assert_nested(outer, _mask([[1, 0, 0], [1, 1, 0]]))


# -- topk_mask ------------------------------------------------------------------------------------------
def test_topk_mask_ties_prefer_lower_positions():
    scores = torch.zeros(1, 6)
    eligible = torch.ones(1, 6, dtype=torch.bool)
    assert topk_mask(scores, eligible, torch.tensor([3])).tolist() == [[1, 1, 1, 0, 0, 0]]
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.9, 0.1]])
    # 0.9 at 1 and 4, then the first of the three 0.5s (position 0), then the second (position 2).
    assert topk_mask(scores, eligible, torch.tensor([3])).tolist() == [[1, 1, 0, 0, 1, 0]]
    assert topk_mask(scores, eligible, torch.tensor([4])).tolist() == [[1, 1, 1, 0, 1, 0]]


def test_topk_mask_ties_do_not_depend_on_the_batch():
    # The same row (with ties) alone and below rows of other lengths and values.
    row = torch.tensor([[0.2, 0.7, 0.2, 0.7, 0.2, 0.7, 0.0, 0.0]])
    row_eligible = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    alone = topk_mask(row, row_eligible, torch.tensor([4]))
    others = torch.rand(3, 8, generator=torch.Generator().manual_seed(0))
    batch = torch.cat([others, row])
    eligible = torch.cat([torch.ones(3, 8, dtype=torch.bool), row_eligible])
    together = topk_mask(batch, eligible, torch.tensor([1, 8, 5, 4]))
    assert torch.equal(together[3:], alone)
    assert alone.tolist() == [[1, 1, 0, 1, 0, 1, 0, 0]]


def test_topk_mask_eligibility():
    scores = torch.tensor([[9.0, 1.0, 8.0, 2.0, 7.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    eligible = _mask([[0, 1, 0, 1, 1], [1, 1, 1, 0, 0]])
    # Ineligible entries are never chosen, even with the highest scores.
    assert topk_mask(scores, eligible, torch.tensor([2, 2])).tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 0, 0]]
    # Asking for more than is eligible (or more than the length) returns all eligible entries.
    assert torch.equal(topk_mask(scores, eligible, torch.tensor([4, 50])), eligible)
    assert not topk_mask(scores, eligible, torch.tensor([0, 0])).any()
    # -inf scores among eligible entries can still fill the count; ineligible ones cannot.
    scores = torch.tensor([[-math.inf, -math.inf, 1.0]])
    assert topk_mask(scores, _mask([[1, 0, 1]]), torch.tensor([2])).tolist() == [[1, 0, 1]]


@settings(max_examples=60, deadline=None)
@given(masks(min_batch=1), st.integers(0, 2**31 - 1))
def test_topk_mask_matches_sorted_reference(eligible, seed):
    gen = torch.Generator().manual_seed(seed)
    batch, length = eligible.shape
    # Few distinct values so that ties are frequent.
    scores = torch.randint(0, 4, (batch, length), generator=gen).float()
    counts = torch.randint(0, length + 2, (batch,), generator=gen)
    chosen = topk_mask(scores, eligible, counts)
    for b in range(batch):
        candidates = [j for j in range(length) if eligible[b, j]]
        ranked = sorted(candidates, key=lambda j: (-float(scores[b, j]), j))
        expected = set(ranked[: int(counts[b])])
        assert set(chosen[b].nonzero().flatten().tolist()) == expected


# -- top_rows (online selections in a compact layout) ---------------------------------------------------
def test_top_rows_hand_example():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.9, 0.1], [3.0, 1.0, 2.0, 0.0, 0.0, 0.0]])
    valid = _mask([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    selection = top_rows(scores, valid, torch.tensor([4, 5]))
    # Row 0: 0.9 at 1 and 4, then the 0.5s at 0 and 2 (ties towards the lower index), in compact order.
    # Row 1: only three valid entries, so the count is clipped to 3; padding entries are 0 / invalid.
    assert selection.rows.tolist() == [[0, 1, 2, 4], [0, 1, 2, 0]]
    assert selection.valid.tolist() == [[True] * 4, [True, True, True, False]]
    same = top_rows(scores, valid, torch.tensor([4, 5]), all_valid=False)
    assert torch.equal(same.rows, selection.rows) and torch.equal(same.valid, selection.valid)


@settings(max_examples=80, deadline=None)
@given(masks(min_batch=1), st.integers(0, 2**31 - 1))
def test_top_rows_equals_topk_mask_at_original_positions(members, seed):
    """Ranking a compact layout's rows picks exactly what topk_mask picks over the original positions."""
    gen = torch.Generator().manual_seed(seed)
    index = compact(members)
    batch, width = index.positions.shape
    scores = torch.randint(0, 4, (batch, width), generator=gen).float()  # frequent ties
    counts = torch.randint(1, members.shape[1] + 2, (batch,), generator=gen)
    if width == 0:
        return
    selection = top_rows(scores, index.valid, counts)
    at_positions = scatter_scores(scores, index, members.shape[1], fill=-math.inf)
    expected = topk_mask(at_positions, members, counts)
    chosen = CompactIndex(index.positions.gather(1, selection.rows), selection.valid)
    assert torch.equal(expand(chosen, members.shape[1]), expected)
    for b in range(batch):  # ascending valid rows, left-aligned, padding 0
        n = int(selection.valid[b].sum())
        assert selection.valid[b, :n].all() and not selection.valid[b, n:].any()
        rows = selection.rows[b, :n].tolist()
        assert rows == sorted(set(rows)) and selection.rows[b, n:].eq(0).all()


def test_top_rows_ties_do_not_depend_on_the_batch():
    row = torch.tensor([[0.2, 0.7, 0.2, 0.7, 0.2, 0.7]])
    alone = top_rows(row, torch.ones(1, 6, dtype=torch.bool), torch.tensor([4]))
    # In a batch the row is padded to 8 entries whose (invalid) scores would otherwise win.
    high = torch.nn.functional.pad(row, (0, 2), value=5.0)
    padded = torch.cat([torch.rand(2, 8, generator=torch.Generator().manual_seed(1)), high])
    valid = torch.cat([torch.ones(2, 8, dtype=torch.bool), _mask([[1] * 6 + [0, 0]])])
    together = top_rows(padded, valid, torch.tensor([3, 8, 4]))
    assert together.rows[2, :4].tolist() == alone.rows[0].tolist() == [0, 1, 3, 5]


# -- keep_counts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("keep", "lengths", "expected"),
    [
        (0.5, [1, 2, 7, 8, 9], [1, 1, 4, 4, 5]),
        (0.3, [10, 20, 11], [3, 6, 4]),  # 0.3 * 10 is 3.0000000000000004 in binary floating point
        (0.1, [10, 1, 128], [1, 1, 13]),
        (1.0, [1, 5, 128], [1, 5, 128]),
        (1e-6, [1, 5, 128], [1, 1, 1]),  # at least one token
        (0.7, [0], [1]),  # an empty sample still reports one (CLS)
    ],
)
def test_keep_counts_values(keep, lengths, expected):
    assert keep_counts(keep, torch.tensor(lengths)).tolist() == expected


def test_keep_counts_is_exact_ceil_on_a_decimal_grid():
    lengths = torch.arange(1, 513)
    for step in range(1, 101):
        keep = step / 100
        exact = [max(1, math.ceil(Fraction(step, 100) * n)) for n in range(1, 513)]
        assert keep_counts(keep, lengths).tolist() == exact, keep


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.0001, 2.0, float("nan")])
def test_keep_counts_rejects_ratios_outside_unit_interval(keep):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        keep_counts(keep, torch.tensor([10]))


def test_keep_counts_per_layer_equals_keep_counts_per_ratio():
    lengths = torch.tensor([1, 7, 10, 128, 0])
    ratios = [1.0, 0.5, 0.3, 0.1, 1e-6]
    table = keep_counts_per_layer(ratios, lengths)
    assert table.shape == (5, 5)
    for layer, keep in enumerate(ratios):
        assert table[layer].tolist() == keep_counts(keep, lengths).tolist()


@pytest.mark.parametrize("keep", [0.0, 1.5, float("nan")])
def test_keep_counts_per_layer_rejects_ratios_outside_unit_interval(keep):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        keep_counts_per_layer([0.5, keep], torch.tensor([10]))


# -- scatter_scores -------------------------------------------------------------------------------------
def test_scatter_scores_hand_example():
    index = compact(_mask([[1, 0, 1, 1], [1, 0, 0, 0], [0, 1, 0, 1]]))
    scores = torch.tensor([[0.5, 0.25, 0.75], [0.125, 7.0, 7.0], [0.375, 0.625, 7.0]])
    out = scatter_scores(scores, index, 4, fill=-1.0)
    # Padding slots (value 7) point at position 0 but never overwrite it.
    assert out.tolist() == [[0.5, -1.0, 0.25, 0.75], [0.125, -1.0, -1.0, -1.0], [-1.0, 0.375, -1.0, 0.625]]


@settings(max_examples=60, deadline=None)
@given(masks(min_batch=1), st.integers(0, 2**31 - 1))
def test_scatter_scores_round_trip(mask, seed):
    gen = torch.Generator().manual_seed(seed)
    index = compact(mask)
    length = mask.shape[1]
    dense = torch.rand(mask.shape, generator=gen)
    compact_scores = dense.gather(1, index.positions)
    # Garbage in the padding slots must not leak out.
    compact_scores = torch.where(index.valid, compact_scores, torch.full_like(compact_scores, 99.0))
    out = scatter_scores(compact_scores, index, length, fill=-math.inf)
    assert torch.equal(out[mask], dense[mask])
    assert bool((out[~mask] == -math.inf).all())


def test_compact_index_counts_property():
    index = CompactIndex(positions=torch.zeros(2, 3, dtype=torch.long), valid=_mask([[1, 1, 0], [0, 0, 0]]))
    assert index.counts.tolist() == [2, 0]


# -- prefix tokens ---------------------------------------------------------------------------------------
def test_text_prefix_counts_are_the_plain_keep_counts():
    from sttabt.core.tokens import TokenPrefix

    lengths = torch.tensor([1, 2, 7, 128])
    ratios = [0.05, 0.3, 1.0]
    assert torch.equal(TokenPrefix().total_counts(ratios, lengths), keep_counts_per_layer(ratios, lengths))


def test_image_prefix_counts_add_the_prefix_to_a_fraction_of_the_rest():
    from sttabt.core.tokens import TokenPrefix

    prefix = TokenPrefix(count=3, readout=2, in_budget=False)
    lengths = torch.tensor([3, 4, 13, 199])  # 0, 1, 10 and 196 non-prefix tokens
    counts = prefix.total_counts([0.5, 1.0], lengths)
    assert counts.tolist() == [[3, 4, 8, 101], [3, 4, 13, 199]]
    valid = torch.ones(1, 5, dtype=torch.bool)
    assert prefix.mask(valid).tolist() == [[True, True, True, False, False]]
    assert prefix.readout_mask(valid).tolist() == [[True, True, False, False, False]]
    assert prefix.ranked(valid).tolist() == [[False, False, False, True, True]]
    with pytest.raises(ValueError, match="readout"):
        TokenPrefix(count=1, readout=2)
