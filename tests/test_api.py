"""The Python API: one wrapper, a plain attribute for the budget, the model left untouched."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import sttabt


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


def _batch():
    ids = torch.randint(5, 60, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_dense_wrapper_matches_model_and_leaves_it_unchanged(model):
    batch = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = sttabt.PrunedClassifier(model)
    out = pruned(batch)
    with torch.no_grad():
        reference = model(**batch).logits
    torch.testing.assert_close(out.logits, reference, atol=1e-5, rtol=0)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


def test_budget_is_a_plain_attribute(model):
    batch = _batch()
    pruned = sttabt.PrunedClassifier(model, method="topk", keep=0.5)
    half = pruned(batch)
    pruned.keep = 0.2
    fifth = pruned(batch)
    assert fifth.cost.flops.sum() < half.cost.flops.sum()
    assert (fifth.retention() <= half.retention() + 1e-9).all()
    kept = fifth.kept_positions(1)
    assert len(kept) == model.config.num_hidden_layers + 1
    assert kept[-1] == [0]
    assert all(0 in layer for layer in kept)
    assert all(max(layer) < 12 for layer in kept)  # padding of sample 1 is never kept


def test_unknown_option_and_method(model):
    with pytest.raises(TypeError):
        sttabt.PrunedClassifier(model, method="topk", keep=0.5, bogus=1)
    with pytest.raises(sttabt.SttabtError, match="unknown method"):
        sttabt.PrunedClassifier(model, method="nope")(_batch())
