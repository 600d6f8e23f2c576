"""Attention back-tracking (METHODS.md §1.3, Algorithm 1) and its pitfalls R1, R3, R5, R6, R7."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.core.backtrack import (
    backtrack,
    backtrack_cost,
    backtrack_rows,
    dynamic_counts,
    per_layer_keep,
    rows_of_maps,
)
from sttabt.runtime import SparseEncoder


# -- helpers --------------------------------------------------------------------------------------------
def random_attention(
    lengths: list[int],
    heads: int,
    layers: int,
    gen: torch.Generator,
    width: int | None = None,
    sharp: float = 3.0,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-layer attention probabilities ``(B, H, T, T)`` over each sample's real keys.

    The padding region (pad query rows, pad key columns) holds positive garbage: back-tracking must ignore it.
    """
    width = max(lengths) if width is None else width
    valid = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    pad_key = ~valid[:, None, None, :]
    out = []
    for _ in range(layers):
        logits = torch.randn(len(lengths), heads, width, width, generator=gen) * sharp
        probs = logits.masked_fill(pad_key, -math.inf).softmax(-1)
        garbage = torch.rand(probs.shape, generator=gen) * 5
        pad_region = pad_key | ~valid[:, None, :, None]
        out.append(torch.where(pad_region, garbage, probs))
    return out, valid


def alone(attentions: list[torch.Tensor], index: int, n: int) -> list[torch.Tensor]:
    return [a[index : index + 1, :, :n, :n] for a in attentions]


def positions(mask_row: torch.Tensor) -> list[int]:
    return mask_row.nonzero().flatten().tolist()


def reference_abt(
    attentions: list[torch.Tensor], keep, p: float, head_reduction: str, token_reduction: str
) -> tuple[list[list[int]], list[list[float]]]:
    """Algorithm 1 for ONE unpadded sample, written with plain Python loops in float64.

    ``attentions[l]`` is ``(H, n, n)``. Returns the sets S_0..S_L (sorted lists) and the scores r_l.
    Ties in the top-k break towards the lower position.
    """
    layers = len(attentions)
    n = attentions[0].shape[-1]
    needed, impact = [0], {0: 1.0}
    sets, scores = [[0]], []
    for layer in range(layers - 1, -1, -1):
        a = attentions[layer].double()
        head = a.mean(0) if head_reduction == "mean" else a.amax(0)
        r = []
        for j in range(n):
            terms = [float(head[q, j]) * ((1 - p) + p * impact[q]) for q in needed]
            r.append(sum(terms) / len(terms) if token_reduction == "mean" else max(terms))
        if keep == "dynamic":
            top = max(r)
            count = sum(1 for v in r if v > 0.00625 * top)
            count = min(max(count, math.ceil(Fraction(n, 5))), math.ceil(Fraction(19 * n, 20)))
        else:
            ratio = keep[layer] if isinstance(keep, list) else keep
            count = math.ceil(Fraction(str(ratio)) * n)
        count = max(1, min(count, n))
        ranked = sorted(range(n), key=lambda j: (-r[j], j))
        current = sorted(set(ranked[:count]) | set(needed))
        total = sum(r[j] for j in current)
        impact = {j: r[j] / total for j in current}
        needed = current
        sets.append(current)
        scores.append(r)
    return sets[::-1], scores[::-1]


# -- Algorithm 1 by hand --------------------------------------------------------------------------------
def hand_example() -> tuple[list[torch.Tensor], torch.Tensor]:
    """T = 5 with one pad (position 4), n = 4, 2 layers, 1 head; keep 0.5 gives m = ceil(0.5 * 4) = 2.

    Rows that back-tracking must ignore (queries not needed, pad rows) and the pad column carry values
    that would change the result if they were used.
    """
    layer1 = torch.tensor(
        [
            [0.1, 0.2, 0.3, 0.4, 0.5],  # CLS row: the only one S_2 = {0} needs
            [0.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0, 0.0],  # pad row
        ]
    )
    layer0 = torch.tensor(
        [
            [0.25, 0.5, 0.0, 0.25, 0.9],
            [0.0, 0.0, 0.0, 1.0, 0.0],  # token 1 will not be in S_1: ignored
            [0.25, 0.25, 0.25, 0.25, 0.9],
            [0.25, 0.0, 0.5, 0.25, 0.9],
            [1.0, 0.0, 0.0, 0.0, 0.0],  # pad row
        ]
    )
    valid = torch.tensor([[True, True, True, True, False]])
    return [layer0.view(1, 1, 5, 5), layer1.view(1, 1, 5, 5)], valid


def test_hand_example_mean_reduction_with_p_mixing():
    attentions, valid = hand_example()
    result = backtrack(attentions, valid, 0.5, p=0.1)
    # Layer 1 (top): S_2 = {0} with impact w(0) = 1, so the row weight is (1 - p) + p * 1 = 1 and
    #   r_1 = A_1[0, :] = [0.1, 0.2, 0.3, 0.4, (pad) 0]. Top-2 = {3, 2}; S_1 = {2, 3} ∪ {0} = {0, 2, 3}.
    #   Impacts over S_1: total 0.1 + 0.3 + 0.4 = 0.8 -> w = {0: 0.125, 2: 0.375, 3: 0.5}.
    assert result.scores[1][0].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.0])
    # Layer 0: row weights 0.9 + 0.1 w(q) = {0: 0.9125, 2: 0.9375, 3: 0.95}; r_0(j) = (1/3) Σ_q weight·A_0:
    #   j=0: 0.25 (0.9125 + 0.9375 + 0.95) / 3 = 0.7 / 3        = 0.2333333
    #   j=1: (0.9125·0.5 + 0.9375·0.25 + 0.95·0) / 3 = 0.690625/3 = 0.2302083
    #   j=2: (0.9125·0 + 0.9375·0.25 + 0.95·0.5) / 3 = 0.709375/3 = 0.2364583
    #   j=3: same as j=0                                         = 0.2333333
    # Top-2 = {2} and one of the tied {0, 3}; either way S_0 = {0, 2, 3}: token 1 is dropped.
    assert result.scores[0][0].tolist() == pytest.approx([0.7 / 3, 0.690625 / 3, 0.709375 / 3, 0.7 / 3, 0.0])
    assert [positions(s[0]) for s in result.key_sets] == [[0, 2, 3], [0, 2, 3], [0]]
    assert result.num_layers == 2


def test_hand_example_without_p_mixing_keeps_another_token():
    attentions, valid = hand_example()
    result = backtrack(attentions, valid, 0.5, p=0.0)
    # p = 0: every needed row weighs 1, so r_0 = column means over rows {0, 2, 3} = 0.75 / 3 = 0.25 for all
    # four real keys (exact in binary). The stable top-2 takes {0, 1}: S_0 = {0, 1} ∪ S_1 = {0, 1, 2, 3}.
    assert result.scores[0][0].tolist() == [0.25, 0.25, 0.25, 0.25, 0.0]
    assert [positions(s[0]) for s in result.key_sets] == [[0, 1, 2, 3], [0, 2, 3], [0]]


def test_hand_example_max_token_reduction():
    attentions, valid = hand_example()
    result = backtrack(attentions, valid, 0.5, p=0.1, token_reduction="max")
    # r_0(j) = max over q in {0, 2, 3} of weight(q)·A_0[q, j]:
    #   j=0: 0.95·0.25 = 0.2375; j=1: 0.9125·0.5 = 0.45625; j=2: 0.95·0.5 = 0.475; j=3: 0.2375.
    # (Row 1, not needed, has 1.0 at j=3: using it would pick token 3.) Top-2 = {2, 1}.
    assert result.scores[0][0].tolist() == pytest.approx([0.2375, 0.45625, 0.475, 0.2375, 0.0])
    assert [positions(s[0]) for s in result.key_sets] == [[0, 1, 2, 3], [0, 2, 3], [0]]


def test_hand_example_per_layer_ratios_and_no_union():
    attentions, valid = hand_example()
    # keep[0] = 1 keeps every real token at layer 0 (never the pad); keep[1] = 0.25 -> m = 1: {3} ∪ {0}.
    result = backtrack(attentions, valid, [1.0, 0.25])
    assert [positions(s[0]) for s in result.key_sets] == [[0, 1, 2, 3], [0, 3], [0]]
    # Without the union (ablation only) CLS is not carried into S_1: S_1 is just the top-2 {2, 3}.
    result = backtrack(attentions, valid, 0.5, union=False)
    assert positions(result.key_sets[1][0]) == [2, 3]


def test_hand_example_head_reductions():
    # One layer, T = 4, two heads; only the CLS row matters. keep 0.5 -> m = 2.
    attention = torch.zeros(1, 2, 4, 4)
    attention[0, 0, 0] = torch.tensor([0.125, 0.25, 0.125, 0.5])
    attention[0, 1, 0] = torch.tensor([0.125, 0.375, 0.5, 0.0])
    attention[0, :, 1:, 1] = 1.0  # rows that are not needed
    valid = torch.ones(1, 4, dtype=torch.bool)
    # mean over heads: [0.125, 0.3125, 0.3125, 0.25] -> top-2 {1, 2}
    mean = backtrack([attention], valid, 0.5)
    assert [positions(s[0]) for s in mean.key_sets] == [[0, 1, 2], [0]]
    # max over heads: [0.125, 0.375, 0.5, 0.5] -> top-2 {2, 3} (the tie at 0.5 is irrelevant: both go)
    peak = backtrack([attention], valid, 0.5, head_reduction="max")
    assert peak.scores[0][0].tolist() == [0.125, 0.375, 0.5, 0.5]
    assert [positions(s[0]) for s in peak.key_sets] == [[0, 2, 3], [0]]


def test_readout_seed():
    attentions, valid = hand_example()
    readout = torch.tensor([[True, False, False, True, True]])  # the pad (4) is dropped from the seed
    result = backtrack(attentions, valid, 0.25, readout=readout)
    assert positions(result.key_sets[-1][0]) == [0, 3]
    # Layer 1 rows {0, 3}, impacts 1/2 each -> weight 0.9 + 0.05 = 0.95 for both;
    # r_1 = 0.95 (A_1[0] + A_1[3]) / 2 = 0.475·[0.1, 1.2, 0.3, 0.4]: top-1 {1}.
    assert result.scores[1][0].tolist() == pytest.approx([0.0475, 0.57, 0.1425, 0.19, 0.0])
    assert positions(result.key_sets[1][0]) == [0, 1, 3]


# -- general properties ---------------------------------------------------------------------------------
keep_specs = st.one_of(
    st.sampled_from([0.05, 0.1, 0.3, 0.5, 0.7, 1.0]),
    st.just("dynamic"),
    st.lists(st.sampled_from([0.2, 0.5, 0.9, 1.0]), min_size=3, max_size=3),
)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    extra_pad=st.integers(0, 3),
    heads=st.integers(1, 3),
    layers=st.integers(1, 3),
    keep=keep_specs,
    p=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    head_reduction=st.sampled_from(["mean", "max"]),
    token_reduction=st.sampled_from(["mean", "max"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_backtrack_matches_plain_reference_and_is_batch_independent(
    lengths, extra_pad, heads, layers, keep, p, head_reduction, token_reduction, seed
):
    if isinstance(keep, list):
        keep = keep[:layers]
    gen = torch.Generator().manual_seed(seed)
    attentions, valid = random_attention(lengths, heads, layers, gen, width=max(lengths) + extra_pad)
    kwargs = dict(p=p, head_reduction=head_reduction, token_reduction=token_reduction)
    result = backtrack(attentions, valid, keep, **kwargs)
    sets = result.key_sets
    assert len(sets) == layers + 1 and len(result.scores) == layers
    # S_L = {CLS}; CLS everywhere; no padding; nested (R3, R5, R6).
    assert torch.equal(
        sets[-1],
        torch.nn.functional.one_hot(torch.zeros(len(lengths), dtype=torch.long), valid.shape[1]).bool(),
    )
    for outer, inner in zip(sets[:-1], sets[1:], strict=True):
        assert not (inner & ~outer).any()
    for s in sets:
        assert bool(s[:, 0].all()) and not (s & ~valid).any()
    for b, n in enumerate(lengths):
        expected_sets, expected_scores = reference_abt(
            [a[0] for a in alone(attentions, b, n)], keep, p, head_reduction, token_reduction
        )
        assert [positions(s[b]) for s in sets] == expected_sets
        for layer in range(layers):
            got = result.scores[layer][b]
            assert got[:n].tolist() == pytest.approx(expected_scores[layer], rel=1e-5, abs=1e-7)
            assert not got[n:].any()
        # R7: the same sample alone (no padding, no other samples) gets the same sets.
        single = backtrack(alone(attentions, b, n), valid[b : b + 1, :n], keep, **kwargs)
        assert [positions(s[0]) for s in single.key_sets] == expected_sets


def test_keep_one_keeps_every_real_token():
    gen = torch.Generator().manual_seed(1)
    lengths = [9, 4, 1, 7]
    attentions, valid = random_attention(lengths, 2, 3, gen, width=11)
    result = backtrack(attentions, valid, 1.0)
    for s in result.key_sets[:-1]:
        assert torch.equal(s, valid)
    assert positions(result.key_sets[-1].any(0)) == [0]


def test_union_is_per_row_r1():
    """R1: the union S_l = TopK ∪ S_{l+1} is formed per sample.

    The reference concatenates the index columns of the whole batch and de-duplicates columns; in this
    batch that leaves sample 0 with CLS twice (its top-k contains CLS, sample 1's does not).
    """
    attention = torch.zeros(2, 1, 4, 4)
    attention[0, 0, 0] = torch.tensor([0.4, 0.1, 0.3, 0.2])  # top-2 {0, 2}: overlaps S_1 = {0}
    attention[1, 0, 0] = torch.tensor([0.1, 0.4, 0.2, 0.3])  # top-2 {1, 3}: disjoint from S_1
    valid = torch.ones(2, 4, dtype=torch.bool)
    result = backtrack([attention], valid, 0.5)
    assert [positions(result.key_sets[0][b]) for b in range(2)] == [[0, 2], [0, 1, 3]]
    assert result.key_sets[0].sum(1).tolist() == [2, 3]

    # The batch-wide column de-duplication of the reference gives something else for sample 0.
    top = result.scores[0].topk(2, dim=1).indices  # [[0, 2], [1, 3]]
    seed = torch.zeros(2, 1, dtype=torch.long)
    batchwide = torch.unique(torch.cat([seed, top], dim=1), dim=1)
    assert batchwide[0].tolist() == [0, 0, 2]  # a duplicate, not the set {0, 2}
    for b in range(2):
        single = backtrack([attention[b : b + 1]], valid[b : b + 1], 0.5)
        assert torch.equal(single.key_sets[0][0], result.key_sets[0][b])


def test_dynamic_k_is_per_sample_r7():
    """R7: dynamic k counts per sample; the reference's batch maximum would inflate the peaky sample."""
    n = 20
    attention = torch.zeros(2, 1, n, n)
    attention[0, 0, 0] = 1.0 / n  # flat: every key is above 0.625 % of the max -> ceil(0.95 n) = 19
    attention[1, 0, 0, 5] = 1.0  # peaky: one key above the threshold -> clipped up to ceil(0.2 n) = 4
    valid = torch.ones(2, n, dtype=torch.bool)
    result = backtrack([attention], valid, "dynamic")
    s0 = result.key_sets[0]
    assert s0.sum(1).tolist() == [19, 4]
    # Sample 1: key 5, then the tied zero-score keys 0, 1, 2 (lower positions first); CLS is already in.
    assert positions(s0[1]) == [0, 1, 2, 5]
    for b in range(2):
        single = backtrack([attention[b : b + 1]], valid[b : b + 1], "dynamic")
        assert torch.equal(single.key_sets[0][0], s0[b])


def test_dynamic_counts_bounds_are_exact():
    # ceil(0.2 n) and ceil(0.95 n) in exact arithmetic, for every length up to 1024.
    lengths = torch.arange(1, 1025)
    width = int(lengths.max())
    valid = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    peaky = torch.zeros(len(lengths), width)
    peaky[:, 0] = 1.0
    flat = valid.float()
    low = [math.ceil(Fraction(n, 5)) for n in range(1, 1025)]
    high = [math.ceil(Fraction(19 * n, 20)) for n in range(1, 1025)]
    assert dynamic_counts(peaky, valid).tolist() == [max(1, v) for v in low]
    assert dynamic_counts(flat, valid).tolist() == high
    # In between, the count of keys above 0.625 % of the row maximum.
    scores = torch.tensor([[1.0, 0.5, 0.00626, 0.00625, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0]])
    assert dynamic_counts(scores, torch.ones(1, 10, dtype=torch.bool)).tolist() == [4]


def test_keep_validation():
    assert per_layer_keep(0.5, 3) == [0.5, 0.5, 0.5]
    assert per_layer_keep([0.1, 1.0], 2) == [0.1, 1.0]
    assert per_layer_keep("dynamic", 4) == "dynamic"
    for bad in (0.0, 1.5, [0.5], [0.5, 0.0], "fast"):
        with pytest.raises(ValueError):
            per_layer_keep(bad, 2)
    with pytest.raises(ValueError, match="expected"):
        backtrack([torch.zeros(1, 1, 3, 4)], torch.ones(1, 3, dtype=torch.bool), 0.5)


def test_overhead_flops_hand_count():
    # H = 2, n = 8 (sort: 8·ceil(log2 8) = 24) and two layers with 1 and 3 query rows:
    # reductions and ranking (2·1·8 + 2·1·8 + 24) + (2·3·8 + 2·3·8 + 24) = 56 + 120, plus the rows'
    # softmax 5·2·(1 + 3)·8 = 320; the rows' scores are (1 + 3)·8·width MACs.
    macs, flops = backtrack_cost(2, 16, torch.tensor([8]), torch.tensor([[1, 3]]))
    assert flops.tolist() == [176 + 320]
    assert macs.tolist() == [4 * 8 * 16]


# -- driven by a real (tiny) model through the runtime --------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_keep_one_reproduces_dense_logits(helpers, family):
    model = helpers.make_model(helpers.TinySpec(family=family, layers=3, heads=2, head_dim=8, seed=3))
    adapter = HFTextClassifierAdapter(model)
    batch = helpers.make_batch(model, [11, 3, 7], pair=True, seed=4)
    runtime = SparseEncoder(adapter)
    with torch.no_grad():
        dense = runtime(batch, collect_attentions=True)
        valid = batch["attention_mask"].bool()
        sets = backtrack(dense.attentions, valid, 1.0).key_sets
        for s in sets[:-1]:
            assert torch.equal(s, valid)
        sparse = runtime(batch, helpers.PlannedSelector(sets))
        reference = model(**batch).logits
    torch.testing.assert_close(sparse.logits, reference, atol=1e-5, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(sparse.key_sets, sets, strict=True))


@pytest.mark.parametrize("keep", [0.3, 0.6, "dynamic"])
def test_padding_invariance_through_the_runtime(helpers, keep):
    """R5: extra padding changes neither the kept real tokens nor the sparse logits."""
    model = helpers.make_model(helpers.TinySpec(layers=3, heads=2, head_dim=8, seed=5))
    runtime = SparseEncoder(HFTextClassifierAdapter(model))
    lengths = [24, 6, 17]
    outputs = []
    with torch.no_grad():
        for width in (24, 32):
            batch = helpers.make_batch(model, lengths, width=width, seed=6)
            valid = batch["attention_mask"].bool()
            dense = runtime(batch, collect_attentions=True)
            sets = backtrack(dense.attentions, valid, keep).key_sets
            sparse = runtime(batch, helpers.PlannedSelector(sets))
            outputs.append(([[positions(s[b]) for s in sets] for b in range(3)], sparse))
    (sets_a, out_a), (sets_b, out_b) = outputs
    assert sets_a == sets_b
    assert any(len(s) < n for b, n in enumerate(lengths) for s in sets_a[b][:-1])  # something was pruned
    torch.testing.assert_close(out_a.logits, out_b.logits, atol=1e-5, rtol=0)
    assert torch.equal(out_a.counts, out_b.counts)


@pytest.mark.parametrize("keep", [0.3, "dynamic"])
@pytest.mark.parametrize("reductions", [("mean", "mean"), ("max", "mean"), ("mean", "max")])
def test_chunks_of_samples_change_nothing(keep, reductions):
    """Scoring a few samples at a time (to stay in cache) gives the same sets and scores as all at once."""
    gen = torch.Generator().manual_seed(11)
    attentions, valid = random_attention([13, 4, 9, 1, 12], heads=3, layers=3, gen=gen, width=15)
    head, token = reductions
    rows = rows_of_maps(attentions)
    whole = backtrack_rows(rows, valid, keep, 3, head_reduction=head, token_reduction=token, heads=3)
    for budget in (1, 200, 3 * 15 * 15 * 2):  # one sample at a time, then two
        chunked = backtrack_rows(
            rows, valid, keep, 3, head_reduction=head, token_reduction=token, heads=3, chunk_elements=budget
        )
        for a, b in zip(whole.key_sets, chunked.key_sets, strict=True):
            assert torch.equal(a, b)
        for a, b in zip(whole.scores, chunked.scores, strict=True):
            torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def test_backtracking_keeps_every_prefix_token_and_seeds_from_the_readout():
    """P = 3 prefix tokens, a head reading positions 0 and 1: both seed S_L, all three stay in every set,
    and the keep ratio ranks only the 9 others (ceil(0.25·9) = 3 of them per layer, plus the union)."""
    from sttabt.core.tokens import TokenPrefix

    gen = torch.Generator().manual_seed(0)
    maps = [torch.rand(2, 2, 12, 12, generator=gen).softmax(dim=-1) for _ in range(3)]
    # Make the prefix unattractive so that a ranking that included it would drop it.
    maps = [m * torch.cat([torch.full((3,), 1e-3), torch.ones(9)]) for m in maps]
    valid = torch.ones(2, 12, dtype=torch.bool)
    prefix = TokenPrefix(count=3, readout=2, in_budget=False)
    result = backtrack(maps, valid, 0.25, prefix=prefix)
    assert result.key_sets[-1].sum(dim=1).tolist() == [2, 2] and result.key_sets[-1][:, :2].all()
    for layer_set in result.key_sets[:-1]:
        assert layer_set[:, :3].all()
    assert result.key_sets[2].sum(dim=1).tolist() == [6, 6]  # the prefix + 3 ranked non-prefix tokens
