"""Adapter for Hugging Face ViT and DeiT image classifiers, pre-LayerNorm blocks.

A ViT/DeiT block is ``h + attn(LN1(h))`` then ``x + MLP(LN2(x))``, so ``qkv`` normalises the key and
query tokens with the block's ``layernorm_before`` before projecting, and ``finish`` adds the attention
output to the (un-normalised) query tokens and runs the MLP branch. Every call is a submodule of the model
with its own weights. No padding: every token of a fixed-size image is real.

Supported classes and their prefix tokens (never pruned; the readout is what the head reads):

===========================================  =============================  ==========================
class                                        prefix (positions)             readout
===========================================  =============================  ==========================
``ViTForImageClassification``                CLS (0)                        CLS
``DeiTForImageClassification``               CLS (0), distillation (1)      CLS
``DeiTForImageClassificationWithTeacher``    CLS (0), distillation (1)      both: the mean of the CLS
                                                                            and distillation heads
===========================================  =============================  ==========================

A keep ratio k is a fraction of the patches: every layer keeps the prefix plus ceil(k·patches).

Supported: the transformers >= 5.24 layout (``<base>.layers[i].attention.{q,k,v,o}_proj``, ``mlp``),
which the ``vision`` extra requires; older layouts are refused in one line.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sttabt.adapters.base import EncoderAdapter
from sttabt.adapters.pixels import checked_pixels
from sttabt.core.flops import EncoderShape
from sttabt.errors import SttabtError

#: model_type -> (attribute of the base model, prefix tokens before the patches).
BASES = {"vit": ("vit", 1), "deit": ("deit", 2)}


class HFViTClassifierAdapter(EncoderAdapter):
    """Drive a Hugging Face ViT/DeiT image classifier layer by layer on ``{"pixel_values": ...}``."""

    keep_ratio_excludes_prefix = True

    def __init__(self, model: nn.Module):
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        base_name, prefix = BASES.get(model_type, (None, 0))
        self.heads = _head_modules(model)
        if base_name is None or not hasattr(model, base_name) or self.heads is None:
            raise SttabtError(
                f"unsupported model {type(model).__name__} (model_type={model_type!r}): expected ViT"
                "ForImageClassification, DeiTForImageClassification or DeiTForImageClassificationWithTeacher"
            )
        self.model = model
        self.base = getattr(model, base_name)
        self.layers = getattr(self.base, "layers", None)
        if self.layers is None or not hasattr(self.layers[0].attention, "q_proj"):
            raise SttabtError(
                f"this transformers' {type(model).__name__} layout (encoder.layer[i].attention.attention) is "
                "not supported; use transformers >= 5.24 (pip install 'sttabt[vision]')"
            )
        self.prefix_tokens = prefix
        self.readout_tokens = len(self.heads)
        self.shape = _shape(config, self.base, len(self.heads))
        patches = self.base.embeddings.patch_embeddings
        self.image_channels = int(patches.num_channels)
        self.image_size = _pair(patches.image_size)
        self.patch_size = _pair(patches.patch_size)

    # -- embeddings ---------------------------------------------------------------------------------------
    def embed(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        patches = self.base.embeddings.patch_embeddings
        size = _pair(patches.image_size)
        pixels = checked_pixels(batch, patches.num_channels, size, patches.projection.weight.dtype)
        return self.base.embeddings(pixels)

    def valid_mask(self, batch: Mapping[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        """Every token of a fixed-size image is real: the prefix and all patches."""
        return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)

    # -- one layer ----------------------------------------------------------------------------------------
    def _heads(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        attn = self.layers[layer].attention
        return x.view(x.shape[0], x.shape[1], attn.num_attention_heads, attn.head_dim).transpose(1, 2)

    def qkv(self, layer: int, key_hidden: torch.Tensor, query_hidden: torch.Tensor):
        block = self.layers[layer]
        keys = block.layernorm_before(key_hidden)
        queries = keys if query_hidden is key_hidden else block.layernorm_before(query_hidden)
        attn = block.attention
        q = self._heads(layer, attn.q_proj(queries))
        k = self._heads(layer, attn.k_proj(keys))
        v = self._heads(layer, attn.v_proj(keys))
        return q, k, v

    def attention_scale(self, layer: int) -> float:
        return float(self.layers[layer].attention.scaling)

    def attention_dropout(self, layer: int) -> float:
        return float(self.layers[layer].attention.attention_dropout)

    def finish(self, layer: int, context: torch.Tensor, query_hidden: torch.Tensor) -> torch.Tensor:
        block = self.layers[layer]
        hidden = block.dropout(block.attention.o_proj(context)) + query_hidden
        return block.dropout(block.mlp(block.layernorm_after(hidden))) + hidden

    # -- head ---------------------------------------------------------------------------------------------
    def head(self, readout_hidden: torch.Tensor) -> torch.Tensor:
        """The classifier on CLS, or (WithTeacher) the mean of the CLS and distillation classifiers."""
        normed = self.base.layernorm(readout_hidden)
        logits = [classifier(normed[:, i]) for i, classifier in enumerate(self.heads)]
        return logits[0] if len(logits) == 1 else (logits[0] + logits[1]) / 2


def _head_modules(model: nn.Module) -> list[nn.Module] | None:
    """The classifiers in readout order: ``[classifier]`` or ``[cls_classifier, distillation_classifier]``."""
    if hasattr(model, "cls_classifier") and hasattr(model, "distillation_classifier"):
        return [model.cls_classifier, model.distillation_classifier]
    classifier = getattr(model, "classifier", None)
    return [classifier] if isinstance(classifier, nn.Module) else None


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _shape(config, base: nn.Module, readout: int) -> EncoderShape:
    """Cost sizes: the patch projection is counted once per patch, each head once per readout token."""
    d = config.hidden_size
    embeddings = base.embeddings.patch_embeddings
    patch = embeddings.projection
    per_patch = patch.in_channels * patch.kernel_size[0] * patch.kernel_size[1] * d
    return EncoderShape(
        num_layers=config.num_hidden_layers,
        hidden_size=d,
        intermediate_size=config.intermediate_size,
        num_heads=config.num_attention_heads,
        head_macs=readout * d * int(config.num_labels),
        embedding_macs_fixed=per_patch * int(embeddings.num_patches),
        embedding_layernorm=False,
    )
