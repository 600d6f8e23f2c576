"""The sparse runtime on tiny random BERT / RoBERTa / ELECTRA classifiers.

* dense runs equal the unmodified Hugging Face model;
* physically gathered runs equal a full-length *masked* reference built from the model's own layers
  (``masked_reference`` in conftest.py, shared with the MiniLM tests);
* every sample's logits and kept sets are independent of the batch it is in (R7);
* the runtime enforces its invariants (CLS kept, nesting, no padding) and reports consistent counts.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.core.backtrack import backtrack
from sttabt.core.flops import dense_counts, encoder_cost
from sttabt.core.tokens import RowSelection
from sttabt.errors import SttabtError
from sttabt.runtime import SparseEncoder, TokenSelector

ATOL = 1e-5


def kept(masks: list[torch.Tensor], index: int) -> list[list[int]]:
    return [m[index].nonzero().flatten().tolist() for m in masks]


# -- 1. dense equivalence -------------------------------------------------------------------------------
DENSE_CASES = {
    "bert": dict(family="bert"),
    "roberta": dict(family="roberta"),
    "electra": dict(family="electra"),
    "electra-embedding-projection": dict(family="electra", embedding_size=6),
}


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
@pytest.mark.parametrize("case", list(DENSE_CASES))
def test_dense_run_equals_hf_model(helpers, case, pair, padded):
    spec = helpers.TinySpec(layers=3, heads=4, head_dim=4, intermediate=20, seed=7, **DENSE_CASES[case])
    model = helpers.make_model(spec)
    if case == "electra-embedding-projection":
        assert model.config.embedding_size != model.config.hidden_size
        assert model.electra.embeddings_project is not None
    lengths = [13, 5, 1, 9] if padded else [10, 10]
    batch = helpers.make_batch(model, lengths, pair=pair, seed=8)
    with torch.no_grad():
        expected = model(**batch).logits
        out = SparseEncoder(HFTextClassifierAdapter(model))(batch)
    torch.testing.assert_close(out.logits, expected, atol=ATOL, rtol=0)
    valid = batch["attention_mask"].bool()
    for s in out.key_sets[:-1]:
        assert torch.equal(s, valid)
    assert kept(out.key_sets, 0)[-1] == [0]
    assert torch.equal(out.counts, dense_counts(valid.sum(1), spec.layers))  # last layer: CLS only
    torch.testing.assert_close(out.retention(), torch.ones(len(lengths), dtype=torch.float64))


@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_dense_run_equals_hf_model_on_random_lengths(helpers, family):
    model = helpers.make_model(helpers.TinySpec(family=family, layers=2, heads=2, head_dim=8, seed=24))
    runtime = SparseEncoder(HFTextClassifierAdapter(model))
    for seed in range(3):
        batch = helpers.random_padded_batch(model, 6, 20, seed=seed, extra_pad=3, pair=bool(seed % 2))
        with torch.no_grad():
            torch.testing.assert_close(runtime(batch).logits, model(**batch).logits, atol=ATOL, rtol=0)


def test_dense_attentions_equal_hf_eager_attentions(helpers):
    model = helpers.make_model(helpers.TinySpec(layers=3, heads=2, head_dim=4, seed=9))
    model.set_attn_implementation("eager")
    batch = helpers.make_batch(model, [8, 3, 6], pair=True, seed=10)
    valid = batch["attention_mask"].bool()
    with torch.no_grad():
        hf = model(**batch, output_attentions=True).attentions
        ours = SparseEncoder(HFTextClassifierAdapter(model))(batch, collect_attentions=True).attentions
    assert len(ours) == len(hf) == 3
    real = (valid[:, None, :, None] & valid[:, None, None, :]).expand_as(ours[0])
    for layer in range(2):
        torch.testing.assert_close(ours[layer][real], hf[layer][real], atol=1e-6, rtol=0)
        assert not ours[layer][~real].any()
    # The last layer computes the CLS row only.
    torch.testing.assert_close(
        ours[2][:, :, 0][real[:, :, 0]], hf[2][:, :, 0][real[:, :, 0]], atol=1e-6, rtol=0
    )
    assert not ours[2][:, :, 1:].any()


# -- 3. physically gathered == masked reference ---------------------------------------------------------
@st.composite
def sparse_cases(draw):
    family = draw(st.sampled_from(["bert", "roberta", "electra"]))
    heads = draw(st.integers(1, 4))
    spec = dict(
        family=family,
        layers=draw(st.integers(1, 3)),
        heads=heads,
        head_dim=draw(st.sampled_from([1, 2, 4, 8])),
        intermediate=draw(st.integers(4, 40)),
        num_labels=draw(st.integers(1, 4)),
        embedding_size=draw(st.sampled_from([None, 5])) if family == "electra" else None,
        seed=draw(st.integers(0, 2**16)),
    )
    lengths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))
    return spec, lengths, draw(st.integers(0, 3)), draw(st.booleans()), draw(st.integers(0, 2**31 - 1))


@settings(max_examples=30, deadline=None)
@given(sparse_cases())
def test_gathered_run_equals_masked_reference(helpers, case):
    spec, lengths, extra_pad, pair, seed = case
    model = helpers.make_model(helpers.TinySpec(**spec))
    batch = helpers.make_batch(model, lengths, width=max(lengths) + extra_pad, pair=pair, seed=seed)
    width = batch["input_ids"].shape[1]
    sets = helpers.random_nested_sets(lengths, spec["layers"], torch.Generator().manual_seed(seed))
    selector = helpers.PlannedSelector.from_sets(sets, width)
    with torch.no_grad():
        out = SparseEncoder(HFTextClassifierAdapter(model))(batch, selector)
        expected = helpers.masked_reference(model, batch, selector.masks)
    torch.testing.assert_close(out.logits, expected, atol=ATOL, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(out.key_sets, selector.masks, strict=True))
    sizes = [m.sum(1) for m in selector.masks]
    for layer in range(spec["layers"]):
        assert out.counts[:, layer, 0].tolist() == sizes[layer].tolist()
        assert out.counts[:, layer, 1].tolist() == sizes[layer + 1].tolist()
        assert out.counts[:, layer, 2].tolist() == sizes[layer + 1].tolist()


def test_masked_reference_is_sensitive_to_the_sets(helpers):
    """Guard for the test above: different sets give different logits, so equality means something."""
    model = helpers.make_model(helpers.TinySpec(layers=2, heads=2, head_dim=4, seed=11))
    batch = helpers.make_batch(model, [9, 7], seed=12)
    sets = helpers.random_nested_sets([9, 7], 2, torch.Generator().manual_seed(0), keep_prob=0.5)
    masks = helpers.sets_to_masks(sets, 9)
    dense = [batch["attention_mask"].bool()] * 2 + [masks[-1]]
    with torch.no_grad():
        sparse = helpers.masked_reference(model, batch, masks)
        full = helpers.masked_reference(model, batch, dense)
        expected = model(**batch).logits
    torch.testing.assert_close(full, expected, atol=ATOL, rtol=0)
    assert (sparse - full).abs().max() > 1e-3


# -- 2. batch invariance --------------------------------------------------------------------------------
LENGTHS = [9, 30, 3, 22, 1]  # every sample has longer and shorter neighbours


def _alone_vs_batch(helpers, model, make_selector, pair=False):
    """Run the batch and each sample alone (cut to its real length); return both outputs per sample."""
    runtime = SparseEncoder(HFTextClassifierAdapter(model))
    batch = helpers.make_batch(model, LENGTHS, width=max(LENGTHS) + 2, pair=pair, seed=13)
    with torch.no_grad():
        together = runtime(batch, make_selector(runtime, batch, None))
        singles = []
        for b in range(len(LENGTHS)):
            single = helpers.sample_batch(batch, b)
            singles.append(runtime(single, make_selector(runtime, single, b)))
    return together, singles


def _assert_invariant(together, singles):
    # Whatever the method: CLS in every set, no padding, nested sets, S_L = {CLS}.
    valid = together.key_sets[0].new_zeros(together.key_sets[0].shape)
    for b, n in enumerate(together.real_lengths.tolist()):
        valid[b, :n] = True
    for outer, inner in zip(together.key_sets[:-1], together.key_sets[1:], strict=True):
        assert not (inner & ~outer).any()
    for s in together.key_sets:
        assert s[:, 0].all() and not (s & ~valid).any()
    assert together.key_sets[-1].sum(1).eq(1).all()
    for b, single in enumerate(singles):
        torch.testing.assert_close(together.logits[b : b + 1], single.logits, atol=ATOL, rtol=0)
        assert kept(together.key_sets, b) == kept(single.key_sets, 0)
        assert torch.equal(together.counts[b], single.counts[0])
        torch.testing.assert_close(together.cost.macs[b], single.cost.macs[0])
        torch.testing.assert_close(together.cost.flops[b], single.cost.flops[0])


@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_batch_invariance_planned_sets(helpers, family):
    model = helpers.make_model(helpers.TinySpec(family=family, layers=3, heads=2, head_dim=4, seed=14))
    sets = helpers.random_nested_sets(LENGTHS, 3, torch.Generator().manual_seed(15), keep_prob=0.6)

    def make(runtime, batch, index):
        chosen = sets if index is None else [sets[index]]
        return helpers.PlannedSelector.from_sets(chosen, batch["input_ids"].shape[1])

    together, singles = _alone_vs_batch(helpers, model, make, pair=True)
    _assert_invariant(together, singles)
    for b in range(len(LENGTHS)):
        assert kept(together.key_sets, b) == sets[b]


@pytest.mark.parametrize(
    "options", [dict(keep=0.5), dict(keep=0.3, schedule="reference")], ids=["const", "ref"]
)
@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_batch_invariance_topk(helpers, family, options):
    from sttabt.methods import MethodOptions, build_selector

    model = helpers.make_model(helpers.TinySpec(family=family, layers=3, heads=2, head_dim=4, seed=16))

    def make(runtime, batch, index):
        return build_selector("topk", runtime.adapter, MethodOptions(**options))

    together, singles = _alone_vs_batch(helpers, model, make)
    _assert_invariant(together, singles)
    assert (together.counts[:, :, 2] < together.counts[:, :, 0]).any()  # something was pruned


@pytest.mark.parametrize("keep", [0.4, "dynamic"])
@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_batch_invariance_backtrack_from_dense_attention(helpers, family, keep):
    model = helpers.make_model(helpers.TinySpec(family=family, layers=3, heads=2, head_dim=4, seed=17))

    def make(runtime, batch, index):
        attentions = runtime(batch, collect_attentions=True).attentions
        sets = backtrack(attentions, batch["attention_mask"].bool(), keep).key_sets
        return helpers.PlannedSelector(sets)

    together, singles = _alone_vs_batch(helpers, model, make, pair=True)
    _assert_invariant(together, singles)
    assert (together.counts[:, :, 0] < together.real_lengths.unsqueeze(1)).any()


# -- top-k specifics ------------------------------------------------------------------------------------
def test_topk_keeps_the_most_attended_tokens(helpers):
    """Top-k keeps ceil(k·n) tokens (CLS included) by its own attention (heads, then rows, averaged)."""
    import math

    from sttabt.methods import MethodOptions, build_selector

    model = helpers.make_model(helpers.TinySpec(layers=3, heads=2, head_dim=4, seed=18))
    runtime = SparseEncoder(HFTextClassifierAdapter(model))
    batch = helpers.make_batch(model, [12, 7], seed=19)
    selector = build_selector("topk", runtime.adapter, MethodOptions(keep=0.5))
    with torch.no_grad():
        out = runtime(batch, selector, collect_attentions=True)
    for layer in range(2):  # the last layer keeps CLS only
        current, chosen = out.key_sets[layer], out.key_sets[layer + 1]
        probs = out.attentions[layer].mean(1)  # (B, T, T), zero outside the current rows / keys
        scores = probs.sum(1) / current.sum(1, keepdim=True)
        for b, n in enumerate([12, 7]):
            count = min(math.ceil(0.5 * n), int(current[b].sum()))
            others = [j for j in current[b].nonzero().flatten().tolist() if j != 0]
            order = sorted(others, key=lambda j: (-float(scores[b, j]), j))
            # CLS is always kept and counts towards the ceil(k·n) budget.
            assert set(chosen[b].nonzero().flatten().tolist()) == {0} | set(order[: count - 1])
    # Online: every current token is a query, except in the last layer, which computes CLS only.
    assert torch.equal(out.counts[:, :-1, 0], out.counts[:, :-1, 1])
    assert out.counts[:, -1, 1:].eq(1).all()


def test_topk_keep_one_equals_dense(helpers):
    from sttabt.methods import MethodOptions, build_selector

    model = helpers.make_model(helpers.TinySpec(family="roberta", layers=2, heads=2, head_dim=4, seed=20))
    runtime = SparseEncoder(HFTextClassifierAdapter(model))
    batch = helpers.make_batch(model, [9, 4, 6], seed=21)
    with torch.no_grad():
        out = runtime(batch, build_selector("topk", runtime.adapter, MethodOptions(keep=1.0)))
        expected = model(**batch).logits
    torch.testing.assert_close(out.logits, expected, atol=ATOL, rtol=0)


# -- invariants the runtime enforces --------------------------------------------------------------------
class _Fixed(TokenSelector):
    def __init__(self, input_mask=None, queries=None):
        self._input, self._queries = input_mask, queries or {}

    def input_mask(self, valid):
        return self._input

    def query_mask(self, layer, key_mask):
        return self._queries.get(layer)


def _tiny(helpers):
    model = helpers.make_model(helpers.TinySpec(layers=2, heads=2, head_dim=4, seed=22))
    return model, SparseEncoder(HFTextClassifierAdapter(model)), helpers.make_batch(model, [6, 4], seed=23)


def test_runtime_adds_cls_back(helpers):
    model, runtime, batch = _tiny(helpers)
    no_cls = torch.tensor([[0, 1, 1, 0, 1, 0], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = runtime(
            batch, _Fixed(input_mask=no_cls, queries={0: no_cls & torch.tensor([0, 1, 0, 0, 1, 0]).bool()})
        )
        sets = [no_cls | out.key_sets[-1], out.key_sets[1], out.key_sets[2]]
        expected = helpers.masked_reference(model, batch, sets)
    assert kept(out.key_sets, 0) == [[0, 1, 2, 4], [0, 1, 4], [0]]
    assert kept(out.key_sets, 1) == [[0, 2, 3], [0], [0]]
    torch.testing.assert_close(out.logits, expected, atol=ATOL, rtol=0)


def test_runtime_refuses_non_nested_sets(helpers):
    _, runtime, batch = _tiny(helpers)
    s0 = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    s1 = torch.tensor([[1, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)  # 2 was removed already
    with pytest.raises(SttabtError, match="nested"):
        runtime(batch, _Fixed(input_mask=s0, queries={0: s1}))


def test_runtime_refuses_padding_in_sets(helpers):
    _, runtime, batch = _tiny(helpers)
    with_pad = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 1, 0]], dtype=torch.bool)  # sample 1 has n = 4
    with pytest.raises(SttabtError):
        runtime(batch, _Fixed(input_mask=with_pad))


def test_runtime_rejects_bad_batches(helpers):
    _, runtime, batch = _tiny(helpers)
    with pytest.raises(SttabtError, match="attention_mask"):
        runtime({"input_ids": batch["input_ids"]})
    left_padded = dict(batch, attention_mask=batch["attention_mask"].flip(1))
    with pytest.raises(SttabtError, match="CLS"):
        runtime(left_padded)


def test_counts_cost_and_retention_of_a_planned_run(helpers):
    model, runtime, batch = _tiny(helpers)
    sets = [[[0, 1, 3, 5], [0, 3], [0]], [[0, 1, 2, 3], [0, 1, 2], [0]]]
    selector = helpers.PlannedSelector.from_sets(sets, 6)
    with torch.no_grad():
        out = runtime(batch, selector)
    assert out.counts.tolist() == [[[4, 2, 2], [2, 1, 1]], [[4, 3, 3], [3, 1, 1]]]
    assert out.real_lengths.tolist() == [6, 4]
    assert out.kept_positions(0) == sets[0] and out.kept_positions(1) == sets[1]
    reference = encoder_cost(runtime.adapter.shape, out.counts, out.real_lengths)
    assert torch.equal(out.cost.macs, reference.macs) and torch.equal(out.cost.flops, reference.flops)
    torch.testing.assert_close(
        out.retention(), torch.tensor([(4 / 6 + 2 / 6) / 2, (4 / 4 + 3 / 4) / 2], dtype=torch.float64)
    )


# -- attention in chunks of samples ---------------------------------------------------------------------
class _HalfOfSome(TokenSelector):
    """Online: samples in ``prune`` keep the first half of their current tokens; a chunk holding none of
    them answers ``None`` (keep everything), so chunked runs mix pruned and unpruned chunks."""

    def __init__(self, prune: set[int]):
        self.prune = prune

    def wants_attention(self, layer):
        return True

    def after_attention(self, view, probs):
        first = view.samples.start or 0
        members = [first + i for i in range(view.valid.shape[0])]
        if not any(m in self.prune for m in members):
            return None
        rank = view.query_mask.long().cumsum(dim=1)
        half = (view.query_mask.sum(dim=1, keepdim=True) + 1) // 2
        chosen = view.query_mask & (rank <= half)
        keep_all = torch.tensor([m not in self.prune for m in members]).unsqueeze(1)
        return torch.where(keep_all, view.query_mask, chosen)


class _HalfRowsOfSome(_HalfOfSome):
    """``_HalfOfSome`` answering with compact rows (:class:`RowSelection`) instead of masks."""

    def after_attention(self, view, probs):
        first = view.samples.start or 0
        members = [first + i for i in range(view.valid.shape[0])]
        if not any(m in self.prune for m in members):
            return None
        counts = view.queries.valid.sum(dim=1)
        half = torch.tensor(
            [(int(c) + 1) // 2 if m in self.prune else int(c) for m, c in zip(members, counts, strict=True)]
        )
        width = view.queries.positions.shape[1]
        rows = torch.arange(width).expand(len(members), width)
        valid = rows < half.unsqueeze(1)
        return RowSelection(torch.where(valid, rows, 0), valid)


def _chunk_budgets(heads: int, width: int) -> list[int]:
    per_sample = heads * width * width
    return [1, 2 * per_sample, 3 * per_sample]  # chunks of 1, 2 and 3 samples


@pytest.mark.parametrize("method", ["topk", "half-of-some", "half-rows-of-some", "abt-oracle"])
def test_chunked_attention_equals_whole_batch(helpers, method):
    """Bounding the probabilities held at once (chunks of samples) changes nothing in the result."""
    from sttabt.methods import MethodOptions, build_selector

    model = helpers.make_model(helpers.TinySpec(layers=3, heads=2, head_dim=4, seed=40))
    adapter = HFTextClassifierAdapter(model)
    width = max(LENGTHS) + 2
    batch = helpers.make_batch(model, LENGTHS, width=width, seed=41)

    def make():
        if method == "half-of-some":
            return _HalfOfSome({0, 3})
        if method == "half-rows-of-some":
            return _HalfRowsOfSome({0, 3})
        return build_selector(method, adapter, MethodOptions(keep=0.4))

    with torch.no_grad():
        unbounded = SparseEncoder(adapter, attention_chunk_elements=1 << 30)
        whole = unbounded(batch, make(), collect_attentions=True)
        assert (whole.counts[:, :-1, 2] < whole.counts[:, :-1, 0]).any()  # something was pruned
        for budget in _chunk_budgets(2, width):
            chunked = SparseEncoder(adapter, attention_chunk_elements=budget)(
                batch, make(), collect_attentions=True
            )
            torch.testing.assert_close(chunked.logits, whole.logits, atol=ATOL, rtol=0)
            for b in range(len(LENGTHS)):
                assert kept(chunked.key_sets, b) == kept(whole.key_sets, b)
            for got, expected in zip(chunked.attentions, whole.attentions, strict=True):
                torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_chunked_attention_mixing_pruned_and_unpruned_chunks_matches_reference(helpers):
    model = helpers.make_model(helpers.TinySpec(layers=3, heads=2, head_dim=4, seed=42))
    adapter = HFTextClassifierAdapter(model)
    batch = helpers.make_batch(model, LENGTHS, width=max(LENGTHS), seed=43)
    with torch.no_grad():
        out = SparseEncoder(adapter, attention_chunk_elements=1)(batch, _HalfOfSome({1, 2}))
        expected = helpers.masked_reference(model, batch, out.key_sets)
    torch.testing.assert_close(out.logits, expected, atol=ATOL, rtol=0)
    for b, n in enumerate(LENGTHS):
        if b in (1, 2):
            assert out.key_sets[1][b].sum() == (n + 1) // 2
        else:
            assert out.key_sets[1][b].sum() == n


@pytest.mark.parametrize("budget", [1, 1 << 30], ids=["chunked", "whole"])
def test_row_selections_equal_mask_selections(helpers, budget):
    """An online choice given as compact rows runs exactly like the same choice given as a mask."""
    model = helpers.make_model(helpers.TinySpec(layers=3, heads=2, head_dim=4, seed=45))
    runtime = SparseEncoder(HFTextClassifierAdapter(model), attention_chunk_elements=budget)
    batch = helpers.make_batch(model, LENGTHS, width=max(LENGTHS) + 2, seed=46)
    with torch.no_grad():
        by_rows = runtime(batch, _HalfRowsOfSome({1, 3, 4}))
        by_mask = runtime(batch, _HalfOfSome({1, 3, 4}))
        expected = helpers.masked_reference(model, batch, by_rows.key_sets)
    torch.testing.assert_close(by_rows.logits, by_mask.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(by_rows.logits, expected, atol=ATOL, rtol=0)
    assert torch.equal(by_rows.counts, by_mask.counts)
    for b in range(len(LENGTHS)):
        assert kept(by_rows.key_sets, b) == kept(by_mask.key_sets, b)


class _DropsCls(TokenSelector):
    def wants_attention(self, layer):
        return True

    def after_attention(self, view, probs):
        width = view.queries.positions.shape[1]
        rows = torch.arange(1, width).expand(view.valid.shape[0], width - 1)  # every row but row 0
        return RowSelection(rows, torch.ones_like(rows, dtype=torch.bool))


def test_runtime_rejects_a_row_selection_without_the_readout_token(helpers):
    model = helpers.make_model(helpers.TinySpec(layers=2, heads=2, head_dim=4, seed=47))
    runtime = SparseEncoder(HFTextClassifierAdapter(model))
    batch = helpers.make_batch(model, [6, 4], seed=48)
    with pytest.raises(SttabtError, match="row 0"), torch.no_grad():
        runtime(batch, _DropsCls())


def test_topk_by_rows_equals_topk_by_masks(helpers):
    """Top-k ranks compact rows directly; the result equals ranking at original positions (the old path)."""
    from sttabt.core.tokens import scatter_scores, topk_mask
    from sttabt.methods import MethodOptions, build_selector
    from sttabt.methods.topk import TopKSelector, mean_attention_received

    class MaskTopK(TopKSelector):
        def after_attention(self, view, probs):
            per_key = mean_attention_received(probs, view.queries.valid)
            scores = scatter_scores(per_key, view.keys, view.valid.shape[1], fill=float("-inf"))
            scores[:, 0] = float("inf")
            return topk_mask(scores, view.query_mask, self._counts[view.layer][view.samples])

    model = helpers.make_model(helpers.TinySpec(layers=4, heads=2, head_dim=4, seed=49))
    adapter = HFTextClassifierAdapter(model)
    runtime = SparseEncoder(adapter)
    batch = helpers.make_batch(model, LENGTHS, width=max(LENGTHS) + 2, seed=50)
    for options in (dict(keep=0.4), dict(keep=[0.9, 0.5, 0.7, 0.3]), dict(keep=0.5, schedule="reference")):
        fast = build_selector("topk", adapter, MethodOptions(**options))
        reference = MaskTopK(fast.ratios, fast.num_heads)
        with torch.no_grad():
            got, expected = runtime(batch, fast), runtime(batch, reference)
        torch.testing.assert_close(got.logits, expected.logits, atol=ATOL, rtol=0)
        for b in range(len(LENGTHS)):
            assert kept(got.key_sets, b) == kept(expected.key_sets, b), options


@pytest.mark.parametrize("method", ["dense", "topk"])
def test_runtime_composes_with_bf16_autocast(helpers, method):
    """Under bf16 autocast the runtime follows HF's own bf16 forward and prunes exactly as many tokens."""
    from sttabt.methods import MethodOptions, build_selector
    from sttabt.utils import inference

    model = helpers.make_model(helpers.TinySpec(layers=3, heads=2, head_dim=8, seed=51))
    adapter = HFTextClassifierAdapter(model)
    runtime = SparseEncoder(adapter)
    batch = helpers.make_batch(model, LENGTHS, width=max(LENGTHS) + 2, seed=52)
    options = MethodOptions(keep=0.5) if method == "topk" else MethodOptions()
    with torch.no_grad():
        fp32 = runtime(batch, build_selector(method, adapter, options))
    with inference(torch.device("cpu"), "bf16"):
        out = runtime(batch, build_selector(method, adapter, options))
        hf = model(**batch).logits
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()
    assert torch.equal(out.counts, fp32.counts)  # budgets are counts of real tokens, whatever the dtype
    if method == "dense":
        torch.testing.assert_close(out.logits.float(), hf.float(), atol=3e-2, rtol=0)
    assert (out.logits.float() - fp32.logits).abs().max() < 0.1


def test_runtime_rejects_a_non_positive_chunk_budget(helpers):
    model = helpers.make_model(helpers.TinySpec(layers=1, heads=2, head_dim=4, seed=44))
    with pytest.raises(SttabtError, match="attention_chunk_elements"):
        SparseEncoder(HFTextClassifierAdapter(model), attention_chunk_elements=0)
