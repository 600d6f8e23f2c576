"""The sparse runtime on tiny random Hugging Face ViT classifiers (and the real DeiT-Tiny when present).

* dense runs equal the unmodified model (fp32, 1e-5);
* top-k and a selector keeping a different number of patches per image are batch invariant;
* unsupported classes are refused with one clear error.

Every supported class (HF DeiT and DeiT-with-teacher, timm) is covered in test_vision_backbones.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DeiTConfig, DeiTForMaskedImageModeling, ViTConfig, ViTForImageClassification

from sttabt.adapters.hf_vision import HFViTClassifierAdapter
from sttabt.errors import SttabtError
from sttabt.methods import MethodOptions, build_selector
from sttabt.runtime import LayerView, SparseEncoder, TokenSelector

ATOL = 1e-5
DEIT_TINY = Path(__file__).resolve().parents[2] / "shared" / "data" / "vision" / "deit-tiny-patch16-224"


def tiny_vit(seed: int = 0, **overrides) -> ViTForImageClassification:
    torch.manual_seed(seed)
    sizes = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    sizes.update(intermediate_size=64, num_labels=5)
    config = ViTConfig(**{**sizes, **overrides})
    return ViTForImageClassification(config).eval()


def pixels(model: torch.nn.Module, count: int, seed: int = 1) -> torch.Tensor:
    size = model.config.image_size
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, model.config.num_channels, size, size, generator=generator)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_dense_run_equals_hf_model(layers):
    model = tiny_vit(seed=layers, num_hidden_layers=layers)
    batch = {"pixel_values": pixels(model, 3)}
    with torch.no_grad():
        expected = model(**batch).logits
        out = SparseEncoder(HFViTClassifierAdapter(model))(batch)
    torch.testing.assert_close(out.logits, expected, atol=ATOL, rtol=0)
    tokens = (model.config.image_size // model.config.patch_size) ** 2 + 1
    assert all(bool(s.all()) for s in out.key_sets[:-1]) and out.key_sets[0].shape == (3, tokens)
    assert out.key_sets[-1][:, 0].all() and int(out.key_sets[-1].sum()) == 3  # last layer: CLS only


def _alone_and_batched(model, selector_factory, count: int = 4):
    runtime = SparseEncoder(HFViTClassifierAdapter(model))
    images = pixels(model, count, seed=3)
    with torch.no_grad():
        batched = runtime({"pixel_values": images}, selector_factory())
        alone = [runtime({"pixel_values": images[i : i + 1]}, selector_factory()) for i in range(count)]
    for i, single in enumerate(alone):
        torch.testing.assert_close(batched.logits[i : i + 1], single.logits, atol=ATOL, rtol=0)
        for layer_set, single_set in zip(batched.key_sets, single.key_sets, strict=True):
            assert torch.equal(layer_set[i : i + 1], single_set)
    return batched


def test_topk_is_batch_invariant():
    model = tiny_vit(seed=4, num_hidden_layers=3)
    adapter = HFViTClassifierAdapter(model)
    out = _alone_and_batched(model, lambda: build_selector("topk", adapter, MethodOptions(keep=0.5)))
    after_first = out.key_sets[1]
    assert after_first[:, 0].all() and after_first.sum(dim=1).lt(after_first.shape[1]).all()
    assert len({tuple(row.nonzero().flatten().tolist()) for row in after_first}) > 1  # images differ


class KeepFirstPatches(TokenSelector):
    """Keeps CLS and the first ``3 + 2·i`` patches of image i after layer 0: a different count per image."""

    name = "first-patches"

    def __init__(self, offset: int = 0):
        self.offset = offset

    def wants_attention(self, layer: int) -> bool:
        return layer == 0

    def after_attention(self, view: LayerView, probs: torch.Tensor) -> torch.Tensor:
        index = torch.arange(view.valid.shape[0]) + (view.samples.start or 0) + self.offset
        width = torch.arange(view.valid.shape[1])
        return (width[None, :] <= 3 + 2 * index[:, None]) & view.query_mask


def test_different_kept_counts_per_image_are_batch_invariant():
    model = tiny_vit(seed=5, num_hidden_layers=3)
    count = 4
    runtime = SparseEncoder(HFViTClassifierAdapter(model))
    images = pixels(model, count, seed=6)
    with torch.no_grad():
        batched = runtime({"pixel_values": images}, KeepFirstPatches())
        alone = [runtime({"pixel_values": images[i : i + 1]}, KeepFirstPatches(i)) for i in range(count)]
    sizes = batched.key_sets[1].sum(dim=1).tolist()
    assert sizes == [4 + 2 * i for i in range(count)]
    for i, single in enumerate(alone):
        torch.testing.assert_close(batched.logits[i : i + 1], single.logits, atol=ATOL, rtol=0)
        assert torch.equal(batched.key_sets[1][i : i + 1], single.key_sets[1])


def test_unsupported_classes_are_refused():
    deit = DeiTForMaskedImageModeling(
        DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)
    )
    with pytest.raises(SttabtError, match="DeiTForMaskedImageModeling"):
        HFViTClassifierAdapter(deit)
    with pytest.raises(SttabtError, match="pixel_values"):
        SparseEncoder(HFViTClassifierAdapter(tiny_vit()))({"input_ids": torch.zeros(1, 3, dtype=torch.long)})


@pytest.mark.skipif(not DEIT_TINY.is_dir(), reason=f"the real DeiT-Tiny is not at {DEIT_TINY}")
def test_real_deit_tiny_keep_all_equals_hf_model():
    model = ViTForImageClassification.from_pretrained(DEIT_TINY).eval()
    batch = {"pixel_values": pixels(model, 2, seed=7)}
    with torch.no_grad():
        expected = model(**batch).logits
        out = SparseEncoder(HFViTClassifierAdapter(model))(batch)
    torch.testing.assert_close(out.logits, expected, atol=1e-4, rtol=0)
