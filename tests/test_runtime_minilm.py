"""The sparse runtime on the real pretrained all-MiniLM-L6-v2 (6 layers, d = 384, 12 heads), eval, fp32.

The classification head is new and random (seeded); the encoder weights are the pretrained ones, so the
attention patterns that top-k and back-tracking rank are real ones. Skips when the model is not installed.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.core.backtrack import backtrack
from sttabt.runtime import SparseEncoder

ATOL = 1e-5

SENTENCES = [
    "a gripping, beautifully acted film that never loses its nerve.",
    "dull.",
    "the plot meanders, the jokes fall flat and the ending arrives far too late to save anything at all.",
    "an honest little movie.",
    "i expected more from a director of this calibre, but the cast does what it can with thin material.",
]
SECONDS = [
    "the critics loved it.",
    "it was boring from start to finish and nobody in the audience laughed once.",
    "not bad.",
    "a triumph of style over substance, yet oddly moving in its final act.",
    "the film is two hours long.",
]


class ReadoutRecorder(HFTextClassifierAdapter):
    """The adapter, keeping the last readout hidden states it was asked to classify."""

    def head(self, readout_hidden: torch.Tensor) -> torch.Tensor:
        self.readout = readout_hidden
        return super().head(readout_hidden)


@pytest.fixture(scope="module")
def setup(minilm):
    model, tokenizer = minilm
    return model, tokenizer, SparseEncoder(HFTextClassifierAdapter(model))


def tokenize(tokenizer, pair: bool, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """The sentences (or sentence pairs), padded to the longest or, with ``max_length``, further."""
    args = (SENTENCES, SECONDS) if pair else (SENTENCES,)
    padding = "max_length" if max_length else True
    return dict(tokenizer(*args, padding=padding, max_length=max_length, return_tensors="pt"))


def kept(masks: list[torch.Tensor], index: int) -> list[list[int]]:
    return [m[index].nonzero().flatten().tolist() for m in masks]


def alone(batch: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    n = int(batch["attention_mask"][index].sum())
    return {key: value[index : index + 1, :n] for key, value in batch.items()}


@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
def test_dense_equals_hf_model(setup, pair):
    model, tokenizer, runtime = setup
    batch = tokenize(tokenizer, pair)
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max()  # the batch really is padded
    adapter = ReadoutRecorder(model)
    with torch.no_grad():
        out = SparseEncoder(adapter)(batch)
        expected = model(**batch).logits
        assert expected.abs().max() > 0.1  # logits are O(1): the tolerance below is strict
        torch.testing.assert_close(out.logits, expected, atol=ATOL, rtol=0)
        # The CLS state the head reads equals the model's own last hidden state at CLS.
        hidden = model.bert(**batch).last_hidden_state[:, :1]
        torch.testing.assert_close(adapter.readout, hidden, atol=ATOL, rtol=0)
        single = alone(batch, 2)  # no padding at all
        torch.testing.assert_close(runtime(single).logits, model(**single).logits, atol=ATOL, rtol=0)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), pair=st.booleans(), extra_pad=st.integers(0, 4))
def test_gathered_run_equals_masked_reference(setup, helpers, seed, pair, extra_pad):
    model, tokenizer, runtime = setup
    width = tokenize(tokenizer, pair)["input_ids"].shape[1] + extra_pad
    batch = tokenize(tokenizer, pair, max_length=width) if extra_pad else tokenize(tokenizer, pair)
    lengths = batch["attention_mask"].sum(1).tolist()
    sets = helpers.random_nested_sets(lengths, 6, torch.Generator().manual_seed(seed))
    selector = helpers.PlannedSelector.from_sets(sets, width)
    with torch.no_grad():
        out = runtime(batch, selector)
        expected = helpers.masked_reference(model, batch, selector.masks)
    torch.testing.assert_close(out.logits, expected, atol=ATOL, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(out.key_sets, selector.masks, strict=True))


def _check_batch_invariance(runtime, batch, make_selector):
    with torch.no_grad():
        together = runtime(batch, make_selector(batch, None))
        for b in range(batch["input_ids"].shape[0]):
            single_batch = alone(batch, b)
            single = runtime(single_batch, make_selector(single_batch, b))
            torch.testing.assert_close(together.logits[b : b + 1], single.logits, atol=ATOL, rtol=0)
            assert kept(together.key_sets, b) == kept(single.key_sets, 0)
            assert torch.equal(together.counts[b], single.counts[0])
    return together


def test_batch_invariance_planned_sets(setup, helpers):
    _, tokenizer, runtime = setup
    batch = tokenize(tokenizer, pair=True)
    lengths = batch["attention_mask"].sum(1).tolist()
    sets = helpers.random_nested_sets(lengths, 6, torch.Generator().manual_seed(0), keep_prob=0.7)

    def make(sub, index):
        chosen = sets if index is None else [sets[index]]
        return helpers.PlannedSelector.from_sets(chosen, sub["input_ids"].shape[1])

    _check_batch_invariance(runtime, batch, make)


@pytest.mark.parametrize("keep", [0.5, 0.2])
def test_batch_invariance_topk(setup, keep):
    from sttabt.methods import MethodOptions, build_selector

    _, tokenizer, runtime = setup
    batch = tokenize(tokenizer, pair=False)
    out = _check_batch_invariance(
        runtime,
        batch,
        lambda _batch, _index: build_selector("topk", runtime.adapter, MethodOptions(keep=keep)),
    )
    assert (out.counts[:, 0, 2] < out.real_lengths).all()


@pytest.mark.parametrize("keep", [0.3, "dynamic"])
def test_batch_invariance_backtrack_from_dense_attention(setup, helpers, keep):
    _, tokenizer, runtime = setup

    def make(sub, _index):
        attentions = runtime(sub, collect_attentions=True).attentions
        return helpers.PlannedSelector(backtrack(attentions, sub["attention_mask"].bool(), keep).key_sets)

    batch = tokenize(tokenizer, pair=True)
    out = _check_batch_invariance(runtime, batch, make)
    assert (out.counts[:, :, 0] < out.real_lengths.unsqueeze(1)).any()  # something was pruned


def test_backtrack_keep_one_equals_dense(setup, helpers):
    model, tokenizer, runtime = setup
    batch = tokenize(tokenizer, pair=True)
    valid = batch["attention_mask"].bool()
    with torch.no_grad():
        dense = runtime(batch, collect_attentions=True)
        sets = backtrack(dense.attentions, valid, 1.0).key_sets
        for s in sets[:-1]:
            assert torch.equal(s, valid)
        out = runtime(batch, helpers.PlannedSelector(sets))
        torch.testing.assert_close(out.logits, model(**batch).logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("keep", [0.3, "dynamic"])
def test_padding_invariance(setup, helpers, keep):
    """R5: padding to a longer width changes neither the kept real tokens nor the logits."""
    _, tokenizer, runtime = setup
    results = []
    for extra in (0, 9):
        width = tokenize(tokenizer, pair=False)["input_ids"].shape[1] + extra
        batch = tokenize(tokenizer, pair=False, max_length=width)
        with torch.no_grad():
            attentions = runtime(batch, collect_attentions=True).attentions
            sets = backtrack(attentions, batch["attention_mask"].bool(), keep).key_sets
            out = runtime(batch, helpers.PlannedSelector(sets))
        results.append(([kept(sets, b) for b in range(len(SENTENCES))], out))
    (sets_a, out_a), (sets_b, out_b) = results
    assert sets_a == sets_b
    torch.testing.assert_close(out_a.logits, out_b.logits, atol=ATOL, rtol=0)
    assert torch.equal(out_a.cost.macs, out_b.cost.macs)
