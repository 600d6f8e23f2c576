"""ABT selectors: the lean attention source, the oracle and the ApproxNet-driven method."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.core.backtrack import backtrack
from sttabt.core.flops import dense_cost, encoder_cost
from sttabt.methods import MethodOptions, build_selector
from sttabt.methods.abt import head_reduced_attention
from sttabt.runtime import SparseEncoder


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    config = BertConfig(
        vocab_size=80,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=2,
        initializer_range=0.3,
    )
    return BertForSequenceClassification(config).eval()


def _batch(lengths, total=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = total or max(lengths)
    ids = torch.randint(5, 80, (len(lengths), total), generator=gen)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.mark.parametrize("reduction", ["mean", "max"])
def test_head_reduced_maps_match_full_attention(model, reduction):
    runner = SparseEncoder(HFTextClassifierAdapter(model))
    batch = _batch([9, 5, 7], total=11)
    with torch.no_grad():
        maps = head_reduced_attention(runner, batch, reduction)
        full = runner(batch, collect_attentions=True).attentions
    assert len(maps) == len(full)
    for layer, (ours, theirs) in enumerate(zip(maps, full, strict=True)):
        expected = theirs.mean(1) if reduction == "mean" else theirs.amax(1)
        if layer == len(maps) - 1:  # the last layer computes the CLS row only
            torch.testing.assert_close(ours[:, 0, 0], expected[:, 0], atol=1e-6, rtol=0)
            assert ours[:, 0, 1:].abs().sum() == 0
        else:
            torch.testing.assert_close(ours[:, 0], expected, atol=1e-6, rtol=0)


def test_oracle_sets_equal_backtracking_of_dense_attention(model):
    adapter = HFTextClassifierAdapter(model)
    runner = SparseEncoder(adapter)
    batch = _batch([12, 6, 9], seed=4)
    with torch.no_grad():
        full = runner(batch, collect_attentions=True).attentions
        out = runner(batch, build_selector("abt-oracle", adapter, MethodOptions(keep=0.3)))
    expected = backtrack(full, batch["attention_mask"].bool(), 0.3)
    for ours, theirs in zip(out.key_sets, expected.key_sets, strict=True):
        assert torch.equal(ours, theirs)


def test_abt_with_approxnet_is_batch_invariant_and_counts_its_overhead(model):
    from sttabt.approxnet import ApproxNet

    torch.manual_seed(0)
    approx = ApproxNet.from_teacher(model, factor=2)
    adapter = HFTextClassifierAdapter(model)
    runner = SparseEncoder(adapter)
    options = MethodOptions(keep=0.25, approx="<in memory>", extra={"approxnet": approx})
    lengths = [14, 5, 9]
    batch = _batch(lengths, seed=7)
    with torch.no_grad():
        together = runner(batch, build_selector("abt", adapter, options))
        for row, n in enumerate(lengths):
            alone_batch = {k: v[row : row + 1, :n] for k, v in batch.items()}
            alone = runner(alone_batch, build_selector("abt", adapter, options))
            torch.testing.assert_close(alone.logits[0], together.logits[row], atol=1e-5, rtol=0)
            for a, b in zip(alone.key_sets, together.key_sets, strict=True):
                assert torch.equal(a[0], b[row, :n])
            assert float(alone.cost.flops[0]) == pytest.approx(float(together.cost.flops[row]))
    # The ApproxNet forward (at each example's full real length) is part of the MACs, exactly.
    real = torch.tensor(lengths)
    sparse_only = encoder_cost(adapter.shape, together.counts, real).macs
    approx_macs = dense_cost(approx.cost_shape(), real).macs
    torch.testing.assert_close(together.cost.macs, sparse_only + approx_macs)
    sets = torch.stack([s.sum(1) for s in together.key_sets[:-1]], 1)
    assert (sets[:, 0] < torch.tensor(lengths)).any()  # something was pruned at the input
