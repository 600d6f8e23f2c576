"""load_image_classifier: timm by name (no Hub) with safetensors weights, timm and HF folders, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sttabt.adapters.hf_vision import HFViTClassifierAdapter
from sttabt.adapters.timm_vit import TimmViTAdapter
from sttabt.errors import SttabtError
from sttabt.models import load_image_classifier

DEIT_TINY = Path(__file__).resolve().parents[2] / "shared" / "data" / "vision" / "deit-tiny-patch16-224"
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4, num_classes=3)


def _save(model: torch.nn.Module, path: Path) -> None:
    save_file({name: value.contiguous() for name, value in model.state_dict().items()}, str(path))


def test_timm_by_name_and_directory_load_the_saved_weights(tmp_path):
    name = "timm:deit_tiny_distilled_patch16_224"
    model, adapter = load_image_classifier(name, random_weights=True, **TINY)
    assert isinstance(adapter, TimmViTAdapter) and adapter.prefix_tokens == 2 and not model.training
    _save(model, tmp_path / "model.safetensors")
    again, _ = load_image_classifier(
        "timm:deit_tiny_distilled_patch16_224", checkpoint=tmp_path / "model.safetensors", **TINY
    )
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "deit_tiny_distilled_patch16_224"}))
    from_dir, _ = load_image_classifier(str(tmp_path), **TINY)
    for loaded in (again, from_dir):
        for (name, want), got in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
            assert torch.equal(want, got), name


def test_bad_weights_and_names_are_refused_in_one_line(tmp_path):
    other, _ = load_image_classifier("timm:vit_tiny_patch16_224", random_weights=True, **TINY)
    _save(other, tmp_path / "vit.safetensors")
    cases = {
        "needs a .safetensors checkpoint": dict(name="timm:vit_tiny_patch16_224"),
        "refusing pickled weights": dict(name="timm:vit_tiny_patch16_224", checkpoint="w.pth"),
        "Unknown model": dict(name="timm:no_such_model", random_weights=True),
        "cannot load .*vit.safetensors": dict(
            name="timm:deit_tiny_distilled_patch16_224", checkpoint=tmp_path / "vit.safetensors"
        ),
        "does not exist": dict(name="timm:vit_tiny_patch16_224", checkpoint=tmp_path / "missing.safetensors"),
    }
    for message, kwargs in cases.items():
        name = kwargs.pop("name")
        with pytest.raises(SttabtError, match=message) as exc:
            load_image_classifier(name, **{**TINY, **kwargs})
        assert "\n" not in str(exc.value)


@pytest.mark.skipif(not DEIT_TINY.is_dir(), reason=f"the real DeiT-Tiny is not at {DEIT_TINY}")
def test_hf_directory_loads_with_its_adapter():
    model, adapter = load_image_classifier(str(DEIT_TINY))
    assert isinstance(adapter, HFViTClassifierAdapter) and adapter.num_layers == 12 and not model.training
