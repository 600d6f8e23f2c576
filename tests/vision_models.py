"""Tiny random image classifiers of every supported class, and a masked (full-length) reference run.

Every parameter is redrawn at std 0.2 (HF and timm initialise at 0.02, which gives near-uniform attention:
top-k would then rank near-ties that flip with the summation order, as tests/conftest.py notes for text).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

IMAGE, PATCH, WIDTH, HEADS, CLASSES = 32, 8, 32, 4, 5
PATCHES = (IMAGE // PATCH) ** 2


def _peaky(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.eval().float()


def _hf(kind: str, layers: int, seed: int) -> nn.Module:
    import transformers as tf

    sizes = dict(image_size=IMAGE, patch_size=PATCH, hidden_size=WIDTH, num_hidden_layers=layers)
    sizes.update(num_attention_heads=HEADS, intermediate_size=2 * WIDTH, num_labels=CLASSES)
    classes = {
        "vit": (tf.ViTConfig, tf.ViTForImageClassification),
        "deit": (tf.DeiTConfig, tf.DeiTForImageClassification),
        "deit-teacher": (tf.DeiTConfig, tf.DeiTForImageClassificationWithTeacher),
    }
    config_class, model_class = classes[kind]
    model = model_class(config_class(**sizes))
    model.set_attn_implementation("eager")  # the masked reference passes an additive mask
    return model


def _timm(name: str, **overrides) -> Callable[[int, int], nn.Module]:
    def build(layers: int, seed: int) -> nn.Module:
        import timm

        sizes = dict(img_size=IMAGE, patch_size=PATCH, embed_dim=WIDTH, depth=layers, num_heads=HEADS)
        sizes.update(mlp_ratio=2, num_classes=CLASSES)
        return timm.create_model(name, pretrained=False, **sizes, **overrides)

    return build


#: name -> (builder(layers, seed), prefix tokens, readout tokens)
BUILDERS: dict[str, tuple[Callable[[int, int], nn.Module], int, int]] = {
    "hf-vit": (lambda layers, seed: _hf("vit", layers, seed), 1, 1),
    "hf-deit": (lambda layers, seed: _hf("deit", layers, seed), 2, 1),
    "hf-deit-teacher": (lambda layers, seed: _hf("deit-teacher", layers, seed), 2, 2),
    "timm-vit": (_timm("vit_tiny_patch16_224"), 1, 1),
    "timm-registers": (_timm("vit_tiny_patch16_224", reg_tokens=3), 4, 1),
    "timm-distilled": (_timm("deit_tiny_distilled_patch16_224"), 2, 2),
    "timm-layerscale-qknorm": (
        _timm("vit_tiny_patch16_224", init_values=0.1, qk_norm=True, drop_path_rate=0.2),
        1,
        1,
    ),
}
CASES = list(BUILDERS)


def make(case: str, layers: int = 3, seed: int = 0) -> nn.Module:
    """A tiny random classifier of ``case`` in eval mode."""
    return _peaky(BUILDERS[case][0](layers, seed), seed)


def images(count: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def reference_logits(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The unmodified model's logits."""
    out = model(pixel_values=pixels) if hasattr(model, "config") else model(pixels)
    return out.logits if hasattr(out, "logits") else out


def masked_reference(model: nn.Module, pixels: torch.Tensor, key_sets: list[torch.Tensor]) -> torch.Tensor:
    """Full-length reference of a sparse run with the model's own blocks (as tests/conftest.py for text):
    layer l masks the keys outside S_l (additive -inf-like mask) and carries the tokens outside S_{l+1}
    unchanged; the head reads the final hidden states as the unmodified model does."""
    if hasattr(model, "config"):
        base = model.vit if model.config.model_type == "vit" else model.deit
        hidden, blocks = base.embeddings(pixels), base.layers
    else:
        hidden = model.norm_pre(model._pos_embed(model.patch_embed(pixels)))
        blocks = model.blocks
    floor = torch.finfo(hidden.dtype).min
    for layer, block in enumerate(blocks):
        keys, outputs = key_sets[layer], key_sets[layer + 1]
        additive = torch.zeros(keys.shape, dtype=hidden.dtype).masked_fill(~keys, floor)[:, None, None, :]
        updated = block(hidden, additive) if hasattr(model, "config") else block(hidden, attn_mask=additive)
        hidden = torch.where(outputs.unsqueeze(-1), updated, hidden)
    if not hasattr(model, "config"):
        return model.forward_head(model.norm(hidden))
    normed = base.layernorm(hidden)
    if hasattr(model, "cls_classifier"):
        return (model.cls_classifier(normed[:, 0]) + model.distillation_classifier(normed[:, 1])) / 2
    return model.classifier(normed[:, 0])


def random_prefix_sets(
    batch: int, tokens: int, layers: int, prefix: int, readout: int, generator: torch.Generator, keep: float
) -> list[torch.Tensor]:
    """Random nested sets S_0 ⊇ … ⊇ S_L over ``tokens`` positions: the prefix in S_0..S_{L-1}, S_L = the
    readout positions (each non-prefix token survives a layer with probability ``keep``)."""
    current = torch.ones(batch, tokens, dtype=torch.bool)
    sets = []
    for _ in range(layers):
        survive = torch.rand(batch, tokens, generator=generator) < keep
        survive[:, :prefix] = True
        current = current & survive
        sets.append(current.clone())
    last = torch.zeros(batch, tokens, dtype=torch.bool)
    last[:, :readout] = True
    return sets + [last]
