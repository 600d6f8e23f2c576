"""Adapter for timm ``VisionTransformer`` classifiers (ViT, DeiT, DeiT-distilled, registers, LayerScale).

timm's pre-norm block is ``x + drop_path1(ls1(attn(norm1(x))))`` then ``x + drop_path2(ls2(mlp(norm2(x))))``;
its attention projects q, k and v with one fused linear ``attn.qkv`` and may normalise q and k per head
(``q_norm``/``k_norm``) and the context before ``attn.proj`` (``attn.norm``). ``qkv`` runs ``attn.qkv``
itself when every key is a query; when the queries are a subset it applies the query rows and the
key/value rows of that same weight separately, so that keys are not projected to queries for nothing.
``finish`` calls the block's own ``attn.norm``, ``attn.proj``, ``proj_drop``, ``ls1``, ``drop_path1``,
``norm2``, ``mlp``, ``ls2``, ``drop_path2``; the head is the model's own ``norm`` + ``forward_head``.

Prefix tokens (never pruned) are timm's ``num_prefix_tokens`` leading tokens: the class token, then either
the distillation token (``VisionTransformerDistilled``, whose head averages its CLS and distillation heads:
both are the readout) or the register tokens (``reg_tokens``; only CLS is read). A keep ratio k is a
fraction of the patches. Only ``global_pool='token'`` is supported: a model that averages (or maxes, or
attention-pools) over all patch tokens reads every patch at the end, so removing patches would change
what its head pools; such models are refused in one line, as are other block/attention classes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sttabt.adapters.base import EncoderAdapter
from sttabt.adapters.pixels import checked_pixels
from sttabt.core.flops import EncoderShape
from sttabt.errors import SttabtError


def _timm():
    try:
        import timm.layers
        import timm.models.deit
        import timm.models.vision_transformer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SttabtError(f"timm models need timm (pip install 'sttabt[vision]'): {exc}") from exc
    return timm


def is_timm_model(model: object) -> bool:
    """Whether ``model`` comes from timm (without importing timm for other models)."""
    return type(model).__module__.startswith("timm.")


class TimmViTAdapter(EncoderAdapter):
    """Drive a timm ``VisionTransformer`` layer by layer on ``{"pixel_values": ...}``."""

    keep_ratio_excludes_prefix = True

    def __init__(self, model: nn.Module):
        timm = _timm()
        _check_supported(model, timm)
        self.model = model
        self.blocks = model.blocks
        self.distilled = isinstance(model, timm.models.deit.VisionTransformerDistilled)
        self.prefix_tokens = int(model.num_prefix_tokens)
        self.readout_tokens = 2 if self.distilled else 1
        self.shape = _shape(model, self.readout_tokens)
        patch = model.patch_embed
        self.image_channels = int(patch.proj.in_channels)
        self.image_size = tuple(int(v) for v in patch.img_size)
        self.patch_size = tuple(int(v) for v in patch.patch_size)

    # -- embeddings ---------------------------------------------------------------------------------------
    def embed(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        patch = self.model.patch_embed
        size = tuple(patch.img_size) if getattr(patch, "strict_img_size", True) else None
        pixels = checked_pixels(batch, patch.proj.in_channels, size, patch.proj.weight.dtype)
        model = self.model
        return model.norm_pre(model.patch_drop(model._pos_embed(patch(pixels))))

    def valid_mask(self, batch: Mapping[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        """Every token of a fixed-size image is real: the prefix and all patches."""
        return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)

    # -- one layer ----------------------------------------------------------------------------------------
    def qkv(self, layer: int, key_hidden: torch.Tensor, query_hidden: torch.Tensor):
        block = self.blocks[layer]
        attn = block.attn
        keys = block.norm1(key_hidden)
        if query_hidden is key_hidden:
            q, k, v = _split_heads(attn.qkv(keys), 3, attn.num_heads).unbind(0)
        else:
            width = attn.num_heads * attn.head_dim
            weight, bias = attn.qkv.weight, attn.qkv.bias
            queries = block.norm1(query_hidden)
            q = _split_heads(F.linear(queries, weight[:width], _rows(bias, 0, width)), 1, attn.num_heads)[0]
            kv = F.linear(keys, weight[width:], _rows(bias, width, 3 * width))
            k, v = _split_heads(kv, 2, attn.num_heads).unbind(0)
        return attn.q_norm(q), attn.k_norm(k), v

    def attention_scale(self, layer: int) -> float:
        return float(self.blocks[layer].attn.scale)

    def attention_dropout(self, layer: int) -> float:
        return float(self.blocks[layer].attn.attn_drop.p)

    def finish(self, layer: int, context: torch.Tensor, query_hidden: torch.Tensor) -> torch.Tensor:
        block = self.blocks[layer]
        attn = block.attn
        attended = attn.proj_drop(attn.proj(attn.norm(context)))
        hidden = query_hidden + block.drop_path1(block.ls1(attended))
        return hidden + block.drop_path2(block.ls2(block.mlp(block.norm2(hidden))))

    # -- head ---------------------------------------------------------------------------------------------
    def head(self, readout_hidden: torch.Tensor) -> torch.Tensor:
        """timm's own final norm and head on the readout (CLS; CLS and distillation token averaged)."""
        return self.model.forward_head(self.model.norm(readout_hidden))


def _rows(bias: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    return None if bias is None else bias[start:stop]


def _split_heads(x: torch.Tensor, parts: int, heads: int) -> torch.Tensor:
    """``(B, n, parts·H·d_h)`` -> ``(parts, B, H, n, d_h)``, timm's own qkv layout."""
    batch, n, width = x.shape
    return x.reshape(batch, n, parts, heads, width // (parts * heads)).permute(2, 0, 3, 1, 4)


def _check_supported(model: nn.Module, timm) -> None:
    """Refuse, in one line each, what the adapter cannot run token-sparse."""
    vit = timm.models.vision_transformer
    name = type(model).__name__
    if not isinstance(model, vit.VisionTransformer):
        raise SttabtError(f"unsupported timm model {name}: expected a timm VisionTransformer (ViT/DeiT)")
    if model.global_pool != "token" or not model.has_class_token or model.attn_pool is not None:
        raise SttabtError(
            f"unsupported timm {name} with global_pool={model.global_pool!r}: its head pools over every "
            "patch token, so pruning patches would change what it reads; only global_pool='token' (CLS) works"
        )
    if getattr(model, "distilled_training", False):
        raise SttabtError("timm distilled training returns two heads; call set_distilled_training(False)")
    if getattr(model, "dynamic_img_size", False):
        raise SttabtError(f"timm {name} with dynamic_img_size is not supported (cost is per image size)")
    for block in model.blocks:
        attn = getattr(block, "attn", None)
        if type(block) is not vit.Block or type(attn) is not timm.layers.Attention:
            raise SttabtError(
                f"unsupported timm block {type(block).__name__} / {type(attn).__name__}: expected the "
                "pre-norm Block with timm's Attention"
            )
        if attn.gate is not None or attn.num_heads * attn.head_dim != model.embed_dim:
            raise SttabtError("unsupported timm attention: gated, or with a width other than embed_dim")
        if type(block.mlp) is not timm.layers.Mlp:
            raise SttabtError(f"unsupported timm MLP {type(block.mlp).__name__}: expected timm's Mlp")


def _shape(model: nn.Module, readout: int) -> EncoderShape:
    """Cost sizes: the patch projection once per patch, each classifier once per readout token."""
    d = int(model.embed_dim)
    proj = model.patch_embed.proj
    per_patch = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1] * d
    block = model.blocks[0]
    classes = int(model.num_classes)
    return EncoderShape(
        num_layers=len(model.blocks),
        hidden_size=d,
        intermediate_size=int(block.mlp.fc1.out_features),
        num_heads=int(block.attn.num_heads),
        head_macs=readout * d * classes,
        embedding_macs_fixed=per_patch * int(model.patch_embed.num_patches),
        embedding_layernorm=False,
    )
