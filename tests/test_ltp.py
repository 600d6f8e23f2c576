"""LTP (METHODS.md §2): score, thresholds and masks by hand; the online selector on the runtime."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.core import ltp as core
from sttabt.core.flops import encoder_cost
from sttabt.errors import SttabtError
from sttabt.methods import MethodOptions, build_selector
from sttabt.methods.ltp import LTPConfig, LTPSelector, LTPState, ltp_masked_forward
from sttabt.runtime import SparseEncoder

ATOL = 1e-5
LENGTH = 16  # the score normaliser in these tests (the tiny inputs are far shorter than 128)
THRESHOLDS = torch.tensor([0.0, 0.06, 0.07, 0.2])  # the last one is never used


# -- the formulas by hand ------------------------------------------------------------------------------------
def _probs() -> torch.Tensor:
    head0 = [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]]
    head1 = [[0.2, 0.2, 0.6], [0.4, 0.4, 0.2], [1.0, 0.0, 0.0]]
    return torch.tensor([[head0, head1]])  # (1, 2, 3, 3)


def test_received_attention_by_hand():
    """Rows 0 and 1 alive, row 2 dead: column sums 1.2, 1.5, 1.3 over heads and live rows, / (2·4)."""
    alive = torch.tensor([[True, True, False]])
    scores = core.received_attention(_probs(), alive, length=4)
    torch.testing.assert_close(scores, torch.tensor([[0.15, 0.1875, 0.1625]]))


def test_hard_and_soft_masks_by_hand():
    scores = torch.tensor([[0.15, 0.1875, 0.1625]])
    every = torch.ones(1, 3, dtype=torch.bool)
    assert core.hard_keep(scores, 0.17, every).tolist() == [[True, True, False]]  # CLS kept below θ
    assert core.hard_keep(scores, 0.0, torch.tensor([[True, True, False]])).tolist() == [[True, True, False]]
    soft = core.soft_keep(scores, torch.tensor(0.16), 0.01, every)
    expected = [1.0, 1 / (1 + math.exp(-2.75)), 1 / (1 + math.exp(-0.25))]  # CLS fixed at 1
    torch.testing.assert_close(soft, torch.tensor([expected]))
    padded = core.soft_keep(scores, torch.tensor(0.0), 0.01, torch.tensor([[True, True, False]]))
    assert float(padded[0, 2]) == 0.0


def test_base_thresholds_and_pruning_layers():
    theta = core.base_thresholds(12)
    torch.testing.assert_close(
        theta[[0, 3, 6, 9, 11]], torch.tensor([0.0, 0.0025, 0.005, 0.0075, 0.01 * 11 / 12])
    )
    assert list(core.pruning_layers(12)) == list(range(1, 11))
    state = LTPState(4, LTPConfig(theta_final=0.02))
    torch.testing.assert_close(state.thresholds(), torch.tensor([0.0, 0.005, 0.01, 0.015]))


def test_mask_penalty_by_hand():
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    m1 = torch.tensor([[1.0, 0.5, 0.5, 0.0], [1.0, 0.2, 0.9, 0.9]])  # pads do not count
    m2 = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    penalty = core.mask_penalty([m1, m2], valid)
    assert float(penalty) == pytest.approx((0.5 + 0.6) / 2 + (1.0 + 0.5) / 2)


# -- the selector on the runtime -----------------------------------------------------------------------------
def _model(helpers, family="bert", seed=2):
    return helpers.make_model(helpers.TinySpec(family=family, layers=4, heads=2, head_dim=4, seed=seed))


def _selector(adapter, thresholds=THRESHOLDS):
    options = MethodOptions(extra={"thresholds": thresholds, "score_length": LENGTH})
    return build_selector("ltp", adapter, options)


def test_zero_thresholds_give_the_dense_model(helpers):
    model = _model(helpers)
    adapter = HFTextClassifierAdapter(model)
    batch = helpers.make_batch(model, [9, 4, 1, 12], seed=1)
    selector = _selector(adapter, torch.zeros(4))
    assert not any(selector.wants_attention(layer) for layer in range(4))  # fused attention throughout
    with torch.no_grad():
        out = SparseEncoder(adapter)(batch, selector)
        torch.testing.assert_close(out.logits, model(**batch).logits, atol=ATOL, rtol=0)
    assert all(torch.equal(s, batch["attention_mask"].bool()) for s in out.key_sets[:-1])


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_physical_removal_equals_the_masked_hard_rule(helpers, family):
    """Sets and logits of the runtime equal the masked reference form (pruned keys masked later on)."""
    model = _model(helpers, family)
    adapter = HFTextClassifierAdapter(model)
    lengths = [14, 6, 1, 10]
    batch = helpers.make_batch(model, lengths, width=15, pair=True, seed=4)
    with torch.no_grad():
        out = SparseEncoder(adapter)(batch, _selector(adapter))
        masked = ltp_masked_forward(adapter, batch, THRESHOLDS, hard=True, score_length=LENGTH)
    torch.testing.assert_close(out.logits, masked.logits, atol=ATOL, rtol=0)
    for layer in range(3):  # the last layer's set is the readout alone
        assert torch.equal(out.key_sets[layer + 1], masked.kept[layer])
    sizes = torch.stack([s.sum(1) for s in out.key_sets[:-1]])
    assert torch.equal(sizes[1], torch.tensor(lengths))  # layer 0 never prunes
    assert (sizes[2] < sizes[1]).any() and (sizes[3] < sizes[2]).any()  # layers 1 and 2 do, in cascade
    assert len(set(sizes[3].tolist())) > 1  # different counts per sample in one batch
    assert torch.equal(out.counts[:, 1, 0], out.counts[:, 1, 1])  # online: attention over all current
    assert torch.equal(out.counts[:, 1, 2], sizes[2])  # ... the FFN on the kept ones


def test_selector_is_batch_invariant_and_chunks_change_nothing(helpers):
    model = _model(helpers, seed=5)
    adapter = HFTextClassifierAdapter(model)
    lengths = [13, 5, 9, 1, 11]
    batch = helpers.make_batch(model, lengths, width=16, seed=6)
    with torch.no_grad():
        together = SparseEncoder(adapter)(batch, _selector(adapter))
        chunked = SparseEncoder(adapter, attention_chunk_elements=1)(batch, _selector(adapter))
        torch.testing.assert_close(chunked.logits, together.logits, atol=ATOL, rtol=0)
        for row, n in enumerate(lengths):
            alone = SparseEncoder(adapter)(helpers.sample_batch(batch, row), _selector(adapter))
            torch.testing.assert_close(alone.logits[0], together.logits[row], atol=ATOL, rtol=0)
            for a, b, c in zip(alone.key_sets, together.key_sets, chunked.key_sets, strict=True):
                assert torch.equal(a[0], b[row, :n]) and torch.equal(b[row], c[row])
            assert float(alone.cost.flops[0]) == pytest.approx(float(together.cost.flops[row]))
    assert (together.retention()[torch.tensor(lengths) > 1] < 1).all()  # every longer sample pruned


def test_cost_counts_the_scores_of_the_pruning_layers(helpers):
    model = _model(helpers)
    adapter = HFTextClassifierAdapter(model)
    batch = helpers.make_batch(model, [12, 7], seed=3)
    with torch.no_grad():
        out = SparseEncoder(adapter)(batch, _selector(adapter))
    counts = out.counts.double()
    n_k, n_q = counts[:, 1:3, 0], counts[:, 1:3, 1]  # layers 1 and 2 score; 0 and 3 do not
    scoring = (2 * n_q * n_k + n_q * n_k + n_k).sum(1)
    plain = encoder_cost(adapter.shape, out.counts, out.real_lengths)
    torch.testing.assert_close(out.cost.flops, plain.flops + scoring)
    torch.testing.assert_close(out.cost.macs, plain.macs)


# -- stage 1: soft masks -------------------------------------------------------------------------------------
def test_soft_stage_reaches_thresholds_and_weights(helpers):
    model = copy.deepcopy(_model(helpers)).train()
    adapter = HFTextClassifierAdapter(model)
    state = LTPState(4, LTPConfig(theta_final=0.2, temperature=0.01, lambda_=0.5, score_length=LENGTH))
    batch = helpers.make_batch(model, [10, 6, 3], seed=2)
    valid = batch["attention_mask"].bool()
    run = ltp_masked_forward(adapter, batch, state.thresholds(), temperature=0.01, score_length=LENGTH)
    assert len(run.masks) == 2 and all(bool((m[:, 0] == 1).all()) for m in run.masks)
    assert all(not bool(m[~valid].any()) for m in run.masks)
    penalty = state.regularizer(run, valid)
    assert float(penalty.detach()) == pytest.approx(0.5 * float(core.mask_penalty(run.masks, valid).detach()))
    loss = torch.nn.functional.cross_entropy(run.logits, torch.tensor([0, 1, 2])) + penalty
    loss.backward()
    grad = state.delta.grad
    assert grad[0] == 0 and grad[3] == 0 and bool((grad[1:3] != 0).all())  # layer 0 and the last: none
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert state.param_group(2e-5)["weight_decay"] == 0.0
    state.freeze()
    assert not state.delta.requires_grad


def test_soft_masks_of_high_scores_keep_the_dense_output(helpers):
    """With thresholds far below every score the soft masks are 1 and the model is the dense one."""
    model = _model(helpers)
    adapter = HFTextClassifierAdapter(model)
    batch = helpers.make_batch(model, [8, 5], seed=7)
    with torch.no_grad():
        run = ltp_masked_forward(adapter, batch, torch.full((4,), -1.0), temperature=1e-3)
        torch.testing.assert_close(run.logits, model(**batch).logits, atol=ATOL, rtol=0)


def test_state_round_trip_and_bad_input(helpers):
    adapter = HFTextClassifierAdapter(_model(helpers))
    state = LTPState(4)
    state.delta.data = torch.tensor([0.0, 0.01, -0.002, 0.003])
    again = LTPState(4).load_state_tensors(state.state_tensors())
    torch.testing.assert_close(again.thresholds(), state.thresholds())
    with pytest.raises(SttabtError, match="needs trained thresholds"):
        build_selector("ltp", adapter, MethodOptions())
    with pytest.raises(SttabtError, match="4 layers"):
        _selector(adapter, torch.zeros(3))
    with pytest.raises(SttabtError, match="exactly 'thresholds'"):
        build_selector("ltp", adapter, MethodOptions(extra={"method_state": {"p_logits": torch.zeros(4)}}))
    for bad in (dict(lambda_=-0.1), dict(lambda_=math.nan), dict(temperature=0.0), dict(theta_final=2.0)):
        with pytest.raises(SttabtError, match="LTP"):
            LTPConfig(**bad).validate()
    untrained = build_selector("ltp", adapter, MethodOptions(extra={"theta_final": 0.01}))
    assert isinstance(untrained, LTPSelector) and untrained.thresholds == pytest.approx(
        [0, 0.0025, 0.005, 0.0075]
    )


def test_physical_removal_equals_the_masked_hard_rule_on_minilm(minilm):
    """The pretrained MiniLM with the untrained thresholds θ_final·l/L at the reference length 128."""
    model, tokenizer = minilm
    adapter = HFTextClassifierAdapter(model)
    texts = [
        "a gorgeous, witty, seductive movie that never loses its nerve or its sense of humour.",
        "it's slow -- very, very slow.",
        "the acting is fine, but the plot wanders off somewhere around the second act and never returns.",
    ]
    batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    thresholds = core.base_thresholds(6)
    with torch.no_grad():
        out = SparseEncoder(adapter)(
            batch, build_selector("ltp", adapter, MethodOptions(extra={"thresholds": thresholds}))
        )
        masked = ltp_masked_forward(adapter, batch, thresholds, hard=True)
    torch.testing.assert_close(out.logits, masked.logits, atol=ATOL, rtol=0)
    for layer in range(5):
        assert torch.equal(out.key_sets[layer + 1], masked.kept[layer])
    assert 0.2 < float(out.retention().mean()) < 0.95
