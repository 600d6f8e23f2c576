"""LTP, Learned Token Pruning (METHODS.md §2), on the sparse runtime and in its masked training form.

* **Inference and stage 2** (:class:`LTPSelector`, method ``ltp``): an online selector. After layer l's
  attention over its current tokens it keeps the tokens whose received attention reaches θ^l; the
  runtime physically removes the rest before the attention-output projection and the FFN, so layer l's
  FFN already runs on the reduced set and a removed token never returns (the cascade). Each sample keeps
  its own count. Stage 2 (hard, frozen thresholds) trains the backbone through this same runtime.
* **Stage 1** (:func:`ltp_masked_forward`, ``hard=False``): full length, the soft mask
  σ((s - θ)/T_temp) multiplies each pruning layer's whole output, the attention mask is not updated;
  :meth:`LTPState.regularizer` is λ·Σ_l mean(m^l). ``hard=True`` is the masked form of the hard rule
  (pruned keys masked in all later layers), equal to the runtime's physical removal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sttabt.adapters.base import EncoderAdapter
from sttabt.core import ltp as core
from sttabt.core.tokens import RowSelection, compact
from sttabt.errors import SttabtError
from sttabt.methods.registry import MethodOptions, register_method
from sttabt.methods.state import with_saved_state
from sttabt.runtime import LayerView, TokenSelector, attention_probs

#: The name of the threshold tensor in a saved method state.
STATE_KEY = "thresholds"


@dataclass
class LTPConfig:
    """LTP settings; the defaults are the spec's (θ_final, λ) and STTABT's LTP temperature."""

    theta_final: float = core.THETA_FINAL
    temperature: float = core.TEMPERATURE
    lambda_: float = core.LAMBDA
    score_length: int = core.SCORE_LENGTH

    def validate(self) -> LTPConfig:
        for name, low, high in (("theta_final", 0.0, 1.0), ("lambda_", 0.0, math.inf)):
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if not number or not low <= value <= high:
                raise SttabtError(
                    f"LTP {name.rstrip('_')} must be a number in [{low:g}, {high:g}], got {value!r}"
                )
        if not (isinstance(self.temperature, int | float) and 0 < self.temperature < math.inf):
            raise SttabtError(f"LTP temperature must be a positive number, got {self.temperature!r}")
        if (
            isinstance(self.score_length, bool)
            or not isinstance(self.score_length, int)
            or self.score_length < 1
        ):
            raise SttabtError(f"LTP score length must be a positive integer, got {self.score_length!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LTPState(nn.Module):
    """One learnable threshold per layer, θ^l = θ_final·l/L + δ^l with δ initialised to 0."""

    def __init__(self, num_layers: int, config: LTPConfig | None = None):
        super().__init__()
        self.config = (config or LTPConfig()).validate()
        self.register_buffer("base", core.base_thresholds(num_layers, self.config.theta_final))
        self.delta = nn.Parameter(torch.zeros(num_layers))

    def thresholds(self) -> torch.Tensor:
        return self.base + self.delta

    def param_group(self, lr: float) -> dict[str, Any]:
        """The thresholds' optimizer group: their own learning rate (the model's by default), no decay."""
        return {"params": [self.delta], "lr": lr, "weight_decay": 0.0}

    def freeze(self) -> LTPState:
        """Stage 2: the thresholds stay as they are (binarised masks, weights fine-tuned)."""
        self.delta.requires_grad_(False)
        return self

    def regularizer(self, run: LTPRun, valid: torch.Tensor) -> torch.Tensor:
        return self.config.lambda_ * core.mask_penalty(run.masks, valid)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {STATE_KEY: self.thresholds().detach().cpu().contiguous()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> LTPState:
        values = checked_thresholds(tensors, self.base.shape[0])
        with torch.no_grad():
            self.delta.copy_(values.to(self.base) - self.base)
        return self


def checked_thresholds(tensors: Mapping[str, torch.Tensor], num_layers: int) -> torch.Tensor:
    """The saved thresholds of a method state, refused in one line unless they fit this model."""
    if set(tensors) != {STATE_KEY}:
        raise SttabtError(
            f"an LTP method state holds exactly {STATE_KEY!r}, got {sorted(tensors) or 'nothing'}"
        )
    values = tensors[STATE_KEY]
    if tuple(values.shape) != (num_layers,):
        raise SttabtError(
            f"the saved thresholds have shape {tuple(values.shape)}, but the model has {num_layers} layers"
        )
    if not values.is_floating_point() or not bool(torch.isfinite(values).all()):
        raise SttabtError("the saved thresholds must be finite floating-point numbers")
    return values.float()


class LTPSelector(TokenSelector):
    """Online hard LTP on the runtime: prune j after layer l's attention iff s^l(j) < θ^l."""

    name = "ltp"

    def __init__(
        self, thresholds: torch.Tensor, num_heads: int, score_length: int = core.SCORE_LENGTH, prefix: int = 1
    ):
        self.thresholds = [float(t) for t in thresholds]
        self.num_heads = num_heads
        self.score_length = score_length
        self.prefix = prefix  # leading tokens always kept (CLS; more for some image backbones)
        layers = core.pruning_layers(len(self.thresholds))
        # A threshold <= 0 prunes nothing (scores are >= 0): such a layer runs fused attention.
        self.scored = [layer for layer in layers if self.thresholds[layer] > 0]

    def wants_attention(self, layer: int) -> bool:
        return layer in self.scored

    def after_attention(self, view: LayerView, probs: torch.Tensor) -> RowSelection:
        if view.queries is not view.keys:
            raise SttabtError(
                "LTP scores the attention of all current tokens; it cannot follow planned queries"
            )
        scores = core.received_attention(probs, view.queries.valid, self.score_length)
        keep = core.hard_keep(scores, self.thresholds[view.layer], view.keys.valid, self.prefix)
        kept = compact(keep)  # the kept compact rows, ascending: a row selection
        return RowSelection(rows=kept.positions, valid=kept.valid)

    def count_overhead(self, counts: torch.Tensor) -> torch.Tensor:
        return core.scoring_flops(self.num_heads, counts, self.scored)


# -- the masked formulation (stage 1 training, and the masked form of the hard rule) -----------------------
@dataclass
class LTPRun:
    """One masked forward: class logits, each pruning layer's mask (soft, or hard as 0/1), the kept sets."""

    logits: torch.Tensor
    masks: list[torch.Tensor] = field(default_factory=list)
    kept: list[torch.Tensor] = field(default_factory=list)  # alive tokens after each layer, (B, T) bool


def ltp_masked_forward(
    adapter: EncoderAdapter,
    batch: Mapping[str, torch.Tensor],
    thresholds: torch.Tensor,
    *,
    hard: bool = False,
    temperature: float = core.TEMPERATURE,
    score_length: int = core.SCORE_LENGTH,
) -> LTPRun:
    """Run the backbone at full length with LTP masks; differentiable in the weights and thresholds (soft).

    Soft: the mask multiplies the whole output of each pruning layer; only padding is masked in attention.
    Hard: pruned tokens are masked as keys and ignored as score rows in all later layers (the cascade).
    """
    hidden = adapter.embed(batch)
    valid = adapter.valid_mask(batch, hidden).bool()
    alive = valid
    prefix = adapter.prefix_tokens
    run = LTPRun(logits=hidden.new_zeros(0))
    pruning = set(core.pruning_layers(adapter.num_layers))
    for layer in range(adapter.num_layers):
        q, k, v = adapter.qkv(layer, hidden, hidden)
        probs = attention_probs(q, k, alive, adapter.attention_scale(layer))
        drop = adapter.attention_dropout(layer) if adapter.training else 0.0
        mixed = F.dropout(probs, p=drop) if drop > 0 else probs
        context = torch.matmul(mixed.to(v.dtype), v)
        batch_size, heads, length, head_dim = context.shape
        output = adapter.finish(
            layer, context.transpose(1, 2).reshape(batch_size, length, heads * head_dim), hidden
        )
        if layer in pruning:
            scores = core.received_attention(probs, alive, score_length)
            if hard:
                alive = core.hard_keep(scores, thresholds[layer], alive, prefix)
                run.masks.append(alive.to(scores.dtype))
            else:
                mask = core.soft_keep(scores, thresholds[layer], temperature, valid, prefix)
                output = output * mask.unsqueeze(-1).to(output.dtype)
                run.masks.append(mask)
        run.kept.append(alive)
        hidden = output
    run.logits = adapter.head(hidden[:, : adapter.readout_tokens])
    return run


# -- the registered method --------------------------------------------------------------------------------
#: The ``extra`` entries that give the thresholds (else they come from the model's saved directory).
STATE_SOURCES = ("method_state", "thresholds", "theta_final")


def _thresholds(extra: Mapping[str, Any], num_layers: int) -> torch.Tensor:
    """Trained thresholds from ``extra["method_state"]`` or ``extra["thresholds"]``, or the untrained
    initialisation θ_final·l/L from ``extra["theta_final"]``."""
    if extra.get("method_state"):
        return checked_thresholds(extra["method_state"], num_layers)
    if extra.get("thresholds") is not None:
        return checked_thresholds({STATE_KEY: torch.as_tensor(extra["thresholds"])}, num_layers)
    if extra.get("theta_final") is not None:
        config = LTPConfig(theta_final=extra["theta_final"]).validate()
        return core.base_thresholds(num_layers, config.theta_final)
    raise SttabtError(
        "method 'ltp' needs trained thresholds: load a directory saved by `sttabt train --method ltp`"
    )


@register_method("ltp", "Learned Token Pruning: per-layer thresholds on received attention", uses=set())
def build_ltp(adapter: EncoderAdapter, options: MethodOptions) -> TokenSelector:
    extra = with_saved_state(options.extra, adapter.model, "ltp", STATE_SOURCES)
    saved_length = (extra.get("method_config") or {}).get("score_length", core.SCORE_LENGTH)
    length = extra.get("score_length", saved_length)
    LTPConfig(score_length=length).validate()
    thresholds = _thresholds(extra, adapter.num_layers)
    return LTPSelector(thresholds, adapter.num_heads, length, adapter.prefix_tokens)
