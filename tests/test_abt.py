"""ABT selectors: attention rows on demand, the oracle and the ApproxNet-driven method."""

from __future__ import annotations

import pytest
import torch
from tiny_bert import id_batch, tiny_approx, tiny_bert

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.core.backtrack import backtrack, backtrack_cost
from sttabt.core.flops import dense_counts, encoder_cost
from sttabt.core.tokens import compact
from sttabt.errors import SttabtError
from sttabt.methods import MethodOptions, build_selector
from sttabt.methods.abt import QueryKeyRecorder, rows_on_demand
from sttabt.runtime import SparseEncoder, TokenPlan, TokenSelector


@pytest.fixture(scope="module")
def model():
    return tiny_bert()


@pytest.fixture(scope="module", params=[None, 2], ids=["teacher-heads", "2-heads"])
def approx(model, request):
    """The teacher's 4 heads, and a narrower ApproxNet whose 2 heads each predict a pair's mean."""
    return tiny_approx(model, heads=request.param)


def test_rows_on_demand_equal_the_rows_of_full_maps(model):
    adapter = HFTextClassifierAdapter(model)
    runner = SparseEncoder(adapter)
    batch = id_batch([9, 5, 7], total=11)
    valid = batch["attention_mask"].bool()
    with torch.no_grad():
        full = runner(batch, collect_attentions=True).attentions
        recorder = QueryKeyRecorder()
        runner(batch, recorder)
        scales = [adapter.attention_scale(layer) for layer in range(adapter.num_layers)]
        rows = rows_on_demand(recorder.records, scales, valid.shape[1])
        wanted = valid.clone()
        wanted[:, 1::2] = False  # some rows only, different counts per sample
        for layer, maps in enumerate(full):
            needed = compact(valid.new_zeros(valid.shape).index_fill(1, torch.tensor([0]), True))
            if layer < len(full) - 1:  # the last layer has only the CLS query
                needed = compact(wanted)
            got = rows(layer, needed, slice(None))
            for b in range(valid.shape[0]):
                members = needed.positions[b][needed.valid[b]]
                n_keys = got.shape[-1]
                ours = got[b, :, : len(members)]
                torch.testing.assert_close(ours, maps[b][:, members, :n_keys], atol=1e-6, rtol=0)
                assert not got[b, ..., valid[b].sum() :].any()  # padded keys get nothing
                assert not maps[b, ..., n_keys:].any()  # and the source may stop before T


def _full_maps(runner, batch):
    return runner(batch, collect_attentions=True).attentions


@pytest.mark.parametrize(
    "options",
    [
        dict(keep=0.3),
        dict(keep="dynamic"),
        dict(keep=[0.5, 0.3, 0.2]),
        dict(keep=0.4, head_reduction="max", token_reduction="max"),
        dict(keep=0.4, p=0.0),
    ],
)
def test_oracle_and_abt_sets_equal_backtracking_of_full_maps(model, approx, options):
    """The row-only path chooses exactly what back-tracking on materialised full maps chooses."""
    adapter = HFTextClassifierAdapter(model)
    runner = SparseEncoder(adapter)
    batch = id_batch([12, 6, 9], total=14, seed=4)
    valid = batch["attention_mask"].bool()
    kwargs = {k: v for k, v in options.items() if k != "keep"}
    with torch.no_grad():
        for method, maps in (
            ("abt-oracle", _full_maps(runner, batch)),
            ("abt", _full_maps(SparseEncoder(approx.adapter), batch)),
        ):
            opts = MethodOptions(approx="<in memory>", extra={"approxnet": approx}, **options)
            out = runner(batch, build_selector(method, adapter, opts))
            expected = backtrack(maps, valid, options["keep"], **kwargs)
            for ours, theirs in zip(out.key_sets, expected.key_sets, strict=True):
                assert torch.equal(ours, theirs), method


def test_abt_with_approxnet_is_batch_invariant_and_counts_its_overhead(model, approx):
    adapter = HFTextClassifierAdapter(model)
    runner = SparseEncoder(adapter)
    options = MethodOptions(keep=0.25, approx="<in memory>", extra={"approxnet": approx})
    lengths = [14, 5, 9]
    batch = id_batch(lengths, total=16, seed=7)
    with torch.no_grad():
        together = runner(batch, build_selector("abt", adapter, options))
        for row, n in enumerate(lengths):
            alone_batch = {k: v[row : row + 1, :n] for k, v in batch.items()}
            alone = runner(alone_batch, build_selector("abt", adapter, options))
            torch.testing.assert_close(alone.logits[0], together.logits[row], atol=1e-5, rtol=0)
            for a, b in zip(alone.key_sets, together.key_sets, strict=True):
                assert torch.equal(a[0], b[row, :n])
            assert float(alone.cost.flops[0]) == pytest.approx(float(together.cost.flops[row]))
    # Exactly: the ApproxNet's pass (full layers, CLS only in the last), the rows' scores, the ranking.
    real = torch.tensor(lengths)
    shape = approx.adapter.shape
    sparse_only = encoder_cost(adapter.shape, together.counts, real).macs
    approx_macs = encoder_cost(shape, dense_counts(real, shape.num_layers, readout_last=True), real).macs
    rows_read = torch.stack([s.sum(1) for s in together.key_sets[1:]], 1)
    row_macs = (rows_read * real.unsqueeze(1)).sum(1).double() * shape.hidden_size
    torch.testing.assert_close(together.cost.macs, sparse_only + approx_macs + row_macs)
    assert torch.equal(backtrack_cost(shape.num_heads, shape.hidden_size, real, rows_read)[0], row_macs)
    sets = torch.stack([s.sum(1) for s in together.key_sets[:-1]], 1)
    assert (sets[:, 0] < torch.tensor(lengths)).any()  # something was pruned at the input


def test_cost_is_for_its_own_batch_when_read_later(model, approx):
    """The overhead is computed lazily; reading it after the next call must not use that call's sets."""
    adapter = HFTextClassifierAdapter(model)
    runner = SparseEncoder(adapter)
    selector = build_selector(
        "abt", adapter, MethodOptions(keep=0.3, approx="<in memory>", extra={"approxnet": approx})
    )
    with torch.no_grad():
        first = runner(id_batch([12, 10], seed=1), selector)
        expected = first.cost.flops.clone()
        first.__dict__.pop("cost")
        runner(id_batch([4, 3, 2], seed=2), selector)
    torch.testing.assert_close(first.cost.flops, expected)


class _Plan(TokenSelector):
    def __init__(self, sets):
        self.sets = sets

    def plan(self):
        return TokenPlan(self.sets, [compact(s) for s in self.sets])


def test_runtime_refuses_a_broken_plan(model):
    runner = SparseEncoder(HFTextClassifierAdapter(model))
    batch = id_batch([6, 4])
    valid = batch["attention_mask"].bool()
    cls = torch.zeros_like(valid)
    cls[:, 0] = True
    not_nested = valid.clone()
    not_nested[0, 3] = False
    grows = [not_nested, valid, valid, cls]  # S_1 has a token S_0 lacks
    with pytest.raises(SttabtError, match="nested"):
        runner(batch, _Plan(grows))
    with pytest.raises(SttabtError, match="sets"):
        runner(batch, _Plan([valid, cls]))
    fine = runner(batch, _Plan([valid, valid, not_nested & valid, cls]))
    assert fine.key_sets[2].sum().item() == not_nested.sum().item()
