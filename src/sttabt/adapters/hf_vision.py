"""Adapter for Hugging Face ViT image classifiers (``ViTForImageClassification``), pre-LayerNorm blocks.

A ViT block is ``h + attn(LN1(h))`` then ``x + MLP(LN2(x))``, so ``qkv`` normalises the key and query
tokens with the block's ``layernorm_before`` before projecting, and ``finish`` adds the attention output
to the (un-normalised) query tokens and runs the MLP branch. Every call is a submodule of the model with
its own weights. The token sequence is ``[CLS, patch_1, ..., patch_N]``: no padding (every token is
real), CLS at position 0 (kept by the runtime) and read by the head after the final LayerNorm.

Supported: the transformers >= 5.24 layout (``vit.layers[i].attention.{q,k,v,o}_proj``, ``mlp``). DeiT
classes are refused for now: their distillation token sits at position 1 and the runtime only pins
position 0, so pruning could drop it. (DeiT *checkpoints* saved as ``ViTForImageClassification``, such as
``facebook/deit-tiny-patch16-224``, have no distillation token and work.)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sttabt.adapters.base import EncoderAdapter
from sttabt.core.flops import EncoderShape
from sttabt.errors import SttabtError


class HFViTClassifierAdapter(EncoderAdapter):
    """Drive a Hugging Face ``ViTForImageClassification`` layer by layer on ``{"pixel_values": ...}``."""

    def __init__(self, model: nn.Module):
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type != "vit" or not hasattr(model, "classifier") or not hasattr(model, "vit"):
            raise SttabtError(
                f"unsupported model {type(model).__name__} (model_type={model_type!r}): expected a "
                "ViTForImageClassification (DeiT classes and their distillation token are not supported yet)"
            )
        self.model = model
        self.base = model.vit
        self.layers = getattr(self.base, "layers", None)
        if self.layers is None or not hasattr(self.layers[0].attention, "q_proj"):
            raise SttabtError(
                "this transformers' ViT layout (vit.encoder.layer[i].attention.attention) is not supported; "
                "use transformers >= 5.24"
            )
        d = config.hidden_size
        patch = self.base.embeddings.patch_embeddings.projection
        self.shape = EncoderShape(
            num_layers=config.num_hidden_layers,
            hidden_size=d,
            intermediate_size=config.intermediate_size,
            num_heads=config.num_attention_heads,
            head_macs=d * int(config.num_labels),
            # The patch projection, counted per token (CLS included: a small over-count of one patch).
            embedding_macs_per_token=patch.in_channels * patch.kernel_size[0] * patch.kernel_size[1] * d,
            embedding_layernorm=False,
        )

    # -- embeddings ---------------------------------------------------------------------------------------
    def embed(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if "pixel_values" not in batch:
            raise SttabtError("a vision batch needs pixel_values")
        weight = self.base.embeddings.patch_embeddings.projection.weight
        return self.base.embeddings(batch["pixel_values"].to(weight.dtype))

    def valid_mask(self, batch: Mapping[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        """Every token of a fixed-size image is real: CLS and all patches."""
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
        return self.model.classifier(self.base.layernorm(readout_hidden)[:, 0])
