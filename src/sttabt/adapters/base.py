"""What the sparse runtime needs from a backbone, and nothing more.

An adapter exposes one encoder layer as two calls on *already gathered* tokens: project queries, keys
and values (``qkv``), and finish the layer (attention-output projection, residuals, FFN) for the query
tokens (``finish``). The runtime owns token selection and the attention product in between. Adapters
call the model's own submodules with its own weights; they never copy an upstream forward body.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
from torch import nn

from sttabt.core.flops import EncoderShape
from sttabt.core.tokens import TokenPrefix
from sttabt.errors import SttabtError


class EncoderAdapter(ABC):
    """A view of one pretrained classifier that the sparse runtime can drive layer by layer."""

    #: The wrapped model (an ``nn.Module``); kept so callers can move it, train it or save it.
    model: nn.Module
    shape: EncoderShape
    #: Leading tokens that are never pruned (positions 0..P-1): CLS, a distillation token, registers.
    prefix_tokens: int = 1
    #: Leading tokens the head reads (positions 0..R-1, R <= P): the last layer computes only these.
    readout_tokens: int = 1
    #: Whether a keep ratio k is a fraction of the non-prefix tokens (P + ceil(k·(n-P)) kept: images) or
    #: of all tokens with the prefix counted in (ceil(k·n): the STTABT text convention).
    keep_ratio_excludes_prefix: bool = False
    #: Image backbones: input channels, ``(height, width)`` and ``(patch height, patch width)``.
    image_channels: int | None = None
    image_size: tuple[int, int] | None = None
    patch_size: tuple[int, int] | None = None

    @property
    def token_prefix(self) -> TokenPrefix:
        """The prefix policy that the runtime and every selector apply (a ``TokenPrefix``)."""
        return TokenPrefix(self.prefix_tokens, self.readout_tokens, not self.keep_ratio_excludes_prefix)

    @property
    def num_layers(self) -> int:
        return self.shape.num_layers

    @property
    def num_heads(self) -> int:
        return self.shape.num_heads

    @abstractmethod
    def embed(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings ``(B, T, d)`` of a batch (tokens or pixels), as the model computes them."""

    def valid_mask(self, batch: Mapping[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
        """Which of the ``(B, T)`` embedded tokens are real: the batch's ``attention_mask`` (text with
        right padding); a backbone without padding (patches of fixed-size images) returns all ones."""
        if "attention_mask" not in batch:
            raise SttabtError(f"{type(self).__name__} needs an attention_mask in the batch")
        return batch["attention_mask"].bool()

    @abstractmethod
    def qkv(
        self, layer: int, key_hidden: torch.Tensor, query_hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``(B, H, n_q, d_h)`` from ``query_hidden`` and keys/values ``(B, H, n_k, d_h)``."""

    @abstractmethod
    def attention_scale(self, layer: int) -> float:
        """The factor applied to QKᵀ before the softmax."""

    def attention_dropout(self, layer: int) -> float:
        """Dropout probability on attention probabilities while training."""
        return 0.0

    @abstractmethod
    def finish(self, layer: int, context: torch.Tensor, query_hidden: torch.Tensor) -> torch.Tensor:
        """Layer output ``(B, n_q, d)`` from the merged attention context ``(B, n_q, d)``."""

    def finish_masked(
        self, layer: int, context: torch.Tensor, query_hidden: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`finish` with the outputs of the attention-output projection and both FFN linears
        multiplied by ``mask (B, n_q)``, residuals untouched: the masked formulation of concrete masking
        (METHODS.md §1.4), which soft training needs (physical removal cannot express soft masks)."""
        raise SttabtError(f"{type(self).__name__} does not support masked layers (concrete masking training)")

    @abstractmethod
    def head(self, readout_hidden: torch.Tensor) -> torch.Tensor:
        """Class logits from the final hidden states of the readout tokens ``(B, R, d)``, R =
        :attr:`readout_tokens` (1: CLS)."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def training(self) -> bool:
        return self.model.training
