"""Which adapter drives a model: one lookup, so callers pass a model and get the right view of it."""

from __future__ import annotations

from torch import nn

from sttabt.adapters.base import EncoderAdapter
from sttabt.adapters.hf_text import HEAD_STYLES, HFTextClassifierAdapter
from sttabt.adapters.hf_vision import BASES, HFViTClassifierAdapter
from sttabt.adapters.timm_vit import TimmViTAdapter, is_timm_model
from sttabt.errors import SttabtError


def adapter_for(model: nn.Module | EncoderAdapter) -> EncoderAdapter:
    """The adapter for ``model`` (an adapter is returned as it is); one-line error for anything else.

    Hugging Face models are told apart by ``config.model_type`` (BERT family: text; ``vit``/``deit``:
    images), timm models by their module.
    """
    if isinstance(model, EncoderAdapter):
        return model
    if is_timm_model(model):
        return TimmViTAdapter(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in BASES:
        return HFViTClassifierAdapter(model)
    if model_type in HEAD_STYLES:
        return HFTextClassifierAdapter(model)
    raise SttabtError(
        f"unsupported model {type(model).__name__} (model_type={model_type!r}): expected a BERT-family "
        "sequence classifier, a Hugging Face ViT/DeiT image classifier or a timm VisionTransformer"
    )
