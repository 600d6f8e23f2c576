"""Adapter for Hugging Face BERT-family sequence classifiers (BERT, RoBERTa, ELECTRA, MiniLM, ...).

These models share one post-LayerNorm layer layout (``attention.self.{query,key,value}``,
``attention.output``, ``intermediate``, ``output``); they differ in the embeddings and in the head. The
adapter finds the base model through ``base_model`` and calls each submodule's own ``forward``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sttabt.adapters.base import EncoderAdapter
from sttabt.core.flops import EncoderShape
from sttabt.errors import SttabtError

#: model_type -> how the classification head reads the encoder output.
#: "pooler": BERT-style, ``classifier(dropout(pooler(h)))``; "sequence": the head takes the sequence output
#: and reads position 0 itself (RoBERTa/ELECTRA-style ``ClassificationHead``).
HEAD_STYLES = {
    "bert": "pooler",
    "roberta": "sequence",
    "xlm-roberta": "sequence",
    "camembert": "sequence",
    "electra": "sequence",
}


class HFTextClassifierAdapter(EncoderAdapter):
    """Drive a ``*ForSequenceClassification`` model of the BERT family layer by layer."""

    def __init__(self, model: nn.Module):
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type not in HEAD_STYLES or not hasattr(model, "classifier"):
            supported = ", ".join(sorted(HEAD_STYLES))
            raise SttabtError(
                f"unsupported model {type(model).__name__} (model_type={model_type!r}): expected a "
                f"*ForSequenceClassification model of type {supported}"
            )
        self.model = model
        self.model_type = model_type
        self.head_style = HEAD_STYLES[model_type]
        self.base = model.base_model
        self.layers = self.base.encoder.layer
        if self.head_style == "pooler" and getattr(self.base, "pooler", None) is None:
            raise SttabtError(f"{type(model).__name__} has no pooler; cannot read its CLS output")
        d = config.hidden_size
        num_labels = int(config.num_labels)
        head_macs = d * d + d * num_labels  # pooler (or head dense) + output projection
        self.shape = EncoderShape(
            num_layers=config.num_hidden_layers,
            hidden_size=d,
            intermediate_size=config.intermediate_size,
            num_heads=config.num_attention_heads,
            head_macs=head_macs,
            embedding_macs_per_token=_embedding_projection_macs(self.base),
        )

    # -- embeddings ---------------------------------------------------------------------------------------
    def embed(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if "input_ids" not in batch:
            raise SttabtError("a batch needs input_ids and attention_mask")
        kwargs = {"input_ids": batch["input_ids"]}
        if batch.get("token_type_ids") is not None:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        hidden = self.base.embeddings(**kwargs)
        project = getattr(self.base, "embeddings_project", None)  # ELECTRA with embedding_size != hidden
        return project(hidden) if project is not None else hidden

    # -- one layer ----------------------------------------------------------------------------------------
    def _heads(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        attn = self.layers[layer].attention.self
        return x.view(x.shape[0], x.shape[1], attn.num_attention_heads, attn.attention_head_size).transpose(
            1, 2
        )

    def qkv(self, layer: int, key_hidden: torch.Tensor, query_hidden: torch.Tensor):
        attn = self.layers[layer].attention.self
        q = self._heads(layer, attn.query(query_hidden))
        k = self._heads(layer, attn.key(key_hidden))
        v = self._heads(layer, attn.value(key_hidden))
        return q, k, v

    def attention_scale(self, layer: int) -> float:
        attn = self.layers[layer].attention.self
        return float(getattr(attn, "scaling", attn.attention_head_size**-0.5))

    def attention_dropout(self, layer: int) -> float:
        return float(self.layers[layer].attention.self.dropout.p)

    def finish(self, layer: int, context: torch.Tensor, query_hidden: torch.Tensor) -> torch.Tensor:
        block = self.layers[layer]
        attention_output = block.attention.output(context, query_hidden)
        return block.output(block.intermediate(attention_output), attention_output)

    def finish_masked(
        self, layer: int, context: torch.Tensor, query_hidden: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`finish` with each linear's output (``attention.output.dense``, ``intermediate.dense``,
        ``output.dense``) multiplied by ``mask (B, n_q)``; residuals and LayerNorms as the model has them.

        The model's own submodule forwards run unchanged: the mask is applied by forward hooks that live
        for this call only (so two threads must not run masked layers of one model at once).
        """
        block = self.layers[layer]
        scale = mask.unsqueeze(-1)
        linears = (block.attention.output.dense, block.intermediate.dense, block.output.dense)
        handles = [linear.register_forward_hook(_scale_output(scale)) for linear in linears]
        try:
            return self.finish(layer, context, query_hidden)
        finally:
            for handle in handles:
                handle.remove()

    # -- head ---------------------------------------------------------------------------------------------
    def head(self, readout_hidden: torch.Tensor) -> torch.Tensor:
        if self.head_style == "pooler":
            pooled = self.base.pooler(readout_hidden)
            return self.model.classifier(self.model.dropout(pooled))
        return self.model.classifier(readout_hidden)


def _scale_output(scale: torch.Tensor):
    """A forward hook that multiplies a module's output by ``scale``."""

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * scale.to(output.dtype)

    return hook


def _embedding_projection_macs(base: nn.Module) -> int:
    project = getattr(base, "embeddings_project", None)
    return int(project.in_features * project.out_features) if isinstance(project, nn.Linear) else 0
