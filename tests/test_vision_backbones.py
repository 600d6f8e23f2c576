"""The sparse runtime on tiny random image classifiers of every supported class (tests/vision_models.py):
HF ViT, HF DeiT, HF DeiT-with-teacher, timm ViT, timm ViT with registers, timm distilled, timm with
LayerScale + qk-norm (+ drop-path, inert in eval).

* keep-all runs (dense, top-k at 1.0) equal the unmodified model (fp32, 1e-5);
* every image's logits and sets are the same in a batch and alone, with different kept counts per image;
* prefix tokens (class, distillation, registers) are in every set, whatever the selector asks;
* physically gathered runs equal a masked full-length reference built from the model's own blocks;
* unsupported models and inputs are refused in one line.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vision_models import CASES, PATCHES, images, make, masked_reference, random_prefix_sets, reference_logits

from sttabt.adapters.lookup import adapter_for
from sttabt.core.tokens import RowSelection
from sttabt.errors import SttabtError
from sttabt.methods import MethodOptions, build_selector
from sttabt.runtime import LayerView, SparseEncoder, TokenSelector

ATOL = 1e-5
TOKENS_BEFORE_PREFIX = PATCHES  # patches per image; the prefix comes on top


@pytest.fixture(scope="module", params=CASES)
def case(request):
    """``(name, model, adapter)`` for each supported class, built once per module."""
    model = make(request.param)
    return request.param, model, adapter_for(model)


def _prefix_kept(out, prefix: int, readout: int) -> None:
    for layer_set in out.key_sets[:-1]:
        assert layer_set[:, :prefix].all()
    assert out.key_sets[-1][:, :readout].all() and int(out.key_sets[-1].sum(dim=1).max()) == readout


# -- keep-all == the unmodified model ---------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dense", "topk"])
def test_keep_all_equals_unmodified_model(case, method):
    _, model, adapter = case
    pixels = images(3)
    options = MethodOptions(keep=1.0) if method == "topk" else MethodOptions()
    with torch.no_grad():
        expected = reference_logits(model, pixels)
        out = SparseEncoder(model)({"pixel_values": pixels}, build_selector(method, model, options))
    torch.testing.assert_close(out.logits, expected, atol=ATOL, rtol=0)
    tokens = PATCHES + adapter.prefix_tokens
    assert out.key_sets[0].shape == (3, tokens) and all(bool(s.all()) for s in out.key_sets[:-1])
    _prefix_kept(out, adapter.prefix_tokens, adapter.readout_tokens)


def test_adapters_declare_their_prefix(case):
    name, _, adapter = case
    expected = {"hf-deit": (2, 1), "hf-deit-teacher": (2, 2), "timm-registers": (4, 1)}
    expected["timm-distilled"] = (2, 2)
    assert (adapter.prefix_tokens, adapter.readout_tokens) == expected.get(name, (1, 1))
    assert adapter.keep_ratio_excludes_prefix


# -- batch invariance with different kept counts per image --------------------------------------------
class KeepFirstPatches(TokenSelector):
    """Asks, after layer 0, for the first ``1 + 2·i`` patches of image i only (no prefix at all: the
    runtime must add the prefix back): a different count per image."""

    name = "first-patches"

    def __init__(self, prefix: int, offset: int = 0):
        self.prefix, self.offset = prefix, offset

    def wants_attention(self, layer: int) -> bool:
        return layer == 0

    def after_attention(self, view: LayerView, probs: torch.Tensor) -> torch.Tensor:
        index = torch.arange(view.valid.shape[0]) + (view.samples.start or 0) + self.offset
        position = torch.arange(view.valid.shape[1])[None, :]
        patch = position - self.prefix
        return (patch >= 0) & (patch <= 2 * index[:, None]) & view.query_mask


def _alone_and_batched(model, make_selector, count: int = 4):
    runtime = SparseEncoder(model)
    pixels = images(count, seed=3)
    with torch.no_grad():
        batched = runtime({"pixel_values": pixels}, make_selector(0))
        alone = [runtime({"pixel_values": pixels[i : i + 1]}, make_selector(i)) for i in range(count)]
    for i, single in enumerate(alone):
        torch.testing.assert_close(batched.logits[i : i + 1], single.logits, atol=ATOL, rtol=0)
        for layer_set, single_set in zip(batched.key_sets, single.key_sets, strict=True):
            assert torch.equal(layer_set[i : i + 1], single_set)
    return batched


METHODS = {
    "topk": lambda model: (lambda _i: build_selector("topk", model, MethodOptions(keep=0.4))),
    "abt-oracle": lambda model: (lambda _i: build_selector("abt-oracle", model, MethodOptions(keep=0.3))),
    "ltp": lambda model: (
        lambda _i: build_selector(
            "ltp", model, MethodOptions(extra={"thresholds": torch.full((3,), 0.05), "score_length": 20})
        )
    ),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_methods_are_batch_invariant_and_keep_the_prefix(case, method):
    _, model, adapter = case
    out = _alone_and_batched(model, METHODS[method](model))
    _prefix_kept(out, adapter.prefix_tokens, adapter.readout_tokens)
    pruned = out.key_sets[{"ltp": 2, "topk": 1}.get(method, -2)]
    assert pruned.sum(dim=1).lt(PATCHES + adapter.prefix_tokens).any()  # something was removed
    if method == "topk":  # k = 0.4 of the 16 patches, plus the prefix
        assert out.key_sets[1].sum(dim=1).tolist() == [7 + adapter.prefix_tokens] * 4


def test_different_counts_per_image_are_batch_invariant(case):
    _, model, adapter = case
    prefix = adapter.prefix_tokens
    out = _alone_and_batched(model, lambda i: KeepFirstPatches(prefix, i))
    assert out.key_sets[1].sum(dim=1).tolist() == [prefix + 1 + 2 * i for i in range(4)]
    _prefix_kept(out, prefix, adapter.readout_tokens)


def test_abt_back_tracks_from_every_readout_token(case):
    """The seed S_L is what the head reads: CLS, and for a distilled head CLS and distillation token."""
    _, model, adapter = case
    selector = build_selector("abt-oracle", model, MethodOptions(keep=0.25))
    with torch.no_grad():
        out = SparseEncoder(model)({"pixel_values": images(2)}, selector)
    top = selector.result.key_sets[-1]
    assert top[:, : adapter.readout_tokens].all() and int(top.sum(dim=1).max()) == adapter.readout_tokens
    _prefix_kept(out, adapter.prefix_tokens, adapter.readout_tokens)
    # k = 0.25 of the patches is ranked (4 of 16) and the union carries the sets above: never fewer
    assert out.key_sets[-2].sum(dim=1).ge(adapter.prefix_tokens + 4).all()


class DropPrefixRows(TokenSelector):
    """A broken online selector: keeps every row but the last prefix row."""

    def __init__(self, prefix: int):
        self.prefix = prefix

    def wants_attention(self, layer: int) -> bool:
        return layer == 0

    def after_attention(self, view: LayerView, probs: torch.Tensor) -> RowSelection:
        rows = torch.arange(view.queries.positions.shape[1])
        keep = rows != self.prefix - 1
        return RowSelection.unpadded(rows[keep].expand(view.valid.shape[0], -1))


def test_a_selection_without_the_prefix_rows_is_refused(case):
    _, model, adapter = case
    with pytest.raises(SttabtError, match="prefix rows"), torch.no_grad():
        SparseEncoder(model)({"pixel_values": images(2)}, DropPrefixRows(adapter.prefix_tokens))


# -- physically gathered == masked reference ------------------------------------------------------------
@settings(max_examples=28, deadline=None)
@given(
    name=st.sampled_from(CASES),
    layers=st.integers(1, 3),
    batch=st.integers(1, 3),
    keep=st.floats(0.1, 0.9),
    seed=st.integers(0, 2**16),
)
def test_gathered_run_equals_masked_reference(helpers, name, layers, batch, keep, seed):
    model = make(name, layers=layers, seed=seed)
    adapter = adapter_for(model)
    generator = torch.Generator().manual_seed(seed)
    tokens = PATCHES + adapter.prefix_tokens
    sets = random_prefix_sets(
        batch, tokens, layers, adapter.prefix_tokens, adapter.readout_tokens, generator, keep
    )
    pixels = images(batch, seed=seed)
    with torch.no_grad():
        out = SparseEncoder(adapter)({"pixel_values": pixels}, helpers.PlannedSelector(sets))
        expected = masked_reference(model, pixels, sets)
    for got, wanted in zip(out.key_sets, sets, strict=True):
        assert torch.equal(got, wanted)
    torch.testing.assert_close(out.logits, expected, atol=ATOL, rtol=0)


# -- one-line errors ------------------------------------------------------------------------------------
def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_bad_inputs_are_refused_in_one_line(case):
    _, model, _ = case
    runtime = SparseEncoder(model)
    bad = {
        "pixel_values": {"input_ids": torch.zeros(1, 3, dtype=torch.long)},
        "32x32": {"pixel_values": torch.zeros(1, 3, 24, 24)},
        r"\(batch, 3, height, width\)": {"pixel_values": torch.zeros(1, 1, 32, 32)},
    }
    for message, batch in bad.items():
        with pytest.raises(SttabtError, match=message) as exc:
            runtime(batch)
        _one_line(exc)


def _timm_unsupported():
    import timm
    from timm.models.vision_transformer import ResPostBlock, VisionTransformer

    sizes = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4, num_classes=3)
    vit = "vit_tiny_patch16_224"
    return {
        "global_pool='avg'": timm.create_model(vit, pretrained=False, global_pool="avg", **sizes),
        "global_pool='map'": timm.create_model(vit, pretrained=False, global_pool="map", **sizes),
        "ResPostBlock": VisionTransformer(block_fn=ResPostBlock, **sizes),
        "expected a timm VisionTransformer": timm.create_model("resnet18", pretrained=False, num_classes=3),
    }


def test_unsupported_models_are_refused_in_one_line():
    import transformers as tf

    sizes = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)
    deit = tf.DeiTConfig(**sizes)
    cases = {
        **_timm_unsupported(),
        "DeiTForMaskedImageModeling": tf.DeiTForMaskedImageModeling(deit),
        "unsupported model Linear": torch.nn.Linear(2, 2),
    }
    for message, model in cases.items():
        with pytest.raises(SttabtError, match=message) as exc:
            adapter_for(model)
        _one_line(exc)
        with pytest.raises(SttabtError):
            build_selector("topk", model, MethodOptions(keep=0.5))
