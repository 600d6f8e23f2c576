"""STTABT concrete masking (METHODS.md §1.4): learned per-layer ``p_logit``\\s, hard sets at inference.

* **Inference** (:class:`ConcreteSelector`, method ``concrete``): in ``prepare()`` one dense ApproxNet pass
  on the runtime with fused attention records each layer's q and k (:class:`QueryKeyRecorder`); the
  logits Z = q·kᵀ·scale (−10000 on padded keys) of every row are rebuilt from them in float32, a chunk of
  samples at a time, and :func:`sttabt.core.concrete.concrete_masks` turns them into soft masks. The hard
  sets S_l = {M_l ≥ 0.5} go to the runtime as a :class:`TokenPlan`: tokens are physically removed.
  Concrete needs *all* rows (its row weights are the soft M_{l+1}, never exactly 0), except at the top,
  where M_L = onehot(CLS) needs the CLS row only, the one row the runtime's last layer computes.
* **Training** (:func:`concrete_forward`): the same masks drive the backbone in the *masked* formulation
  (:func:`masked_forward`), soft or hard, differentiable in the backbone, the ApproxNet and the
  ``p_logit``\\s (:class:`ConcreteState`); :meth:`ConcreteState.regularizer` is the loss beside the
  task loss.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sttabt.adapters.base import EncoderAdapter
from sttabt.core import concrete as core
from sttabt.core.concrete import ConcreteMasks, LogitRows
from sttabt.core.tokens import TokenPrefix, compact
from sttabt.errors import SttabtError
from sttabt.methods.abt import QueryKeyRecorder, QueryKeys, predictor_cost
from sttabt.methods.registry import MethodOptions, register_method
from sttabt.methods.state import with_saved_state
from sttabt.runtime import SparseEncoder, TokenPlan, TokenSelector, attention_probs

#: Additive logit on padded keys (the reference's mask value, as in the ApproxNet's traced scores).
PAD_LOGIT = -10000.0
#: The name of the ``p_logit`` tensor in a saved method state.
STATE_KEY = "p_logits"
#: |p_init| beyond this is a retention target within 5e-5 of 0 or 1: surely a mistake.
P_INIT_LIMIT = 10.0


@dataclass
class ConcreteConfig:
    """Concrete-masking settings (text defaults of METHODS.md §1.4); ``validate()`` checks them."""

    p_init: float = -1.0
    lambda_p: float = core.LAMBDA_P
    lambda_r: float = core.LAMBDA_R
    temperature: float = core.TEMPERATURE
    p: float = core.MIX
    hard_fraction: float = 0.2  # the last ~20 % of training steps use hard masks

    def validate(self) -> ConcreteConfig:
        _finite_in("p_init", self.p_init, -P_INIT_LIMIT, P_INIT_LIMIT)
        _finite_in("lambda_p", self.lambda_p, 0.0, math.inf)
        _finite_in("lambda_r", self.lambda_r, 0.0, math.inf)
        _finite_in("p", self.p, 0.0, 1.0)
        _finite_in("hard_fraction", self.hard_fraction, 0.0, 1.0)
        if not self.temperature > 0:
            raise SttabtError(f"concrete temperature must be positive, got {self.temperature}")
        return self

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _finite_in(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SttabtError(f"concrete {name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise SttabtError(f"concrete {name} must be in [{low:g}, {high:g}], got {value}")


class ConcreteState(nn.Module):
    """The learnable state: one ``p_logit`` per layer, initialised to ``p_init``."""

    def __init__(self, num_layers: int, config: ConcreteConfig | None = None):
        super().__init__()
        self.config = (config or ConcreteConfig()).validate()
        self.p_logits = nn.Parameter(torch.full((num_layers,), float(self.config.p_init)))

    def param_group(self, lr: float) -> dict[str, Any]:
        """An optimizer group for the ``p_logit``\\s: 10× the model's learning rate, no weight decay (R10)."""
        return {"params": [self.p_logits], "lr": 10.0 * lr, "weight_decay": 0.0}

    def regularizer(self, masks: ConcreteMasks) -> torch.Tensor:
        """λ_p·Σ(p_logit - p_init)² + λ_r·(σ(p_init) - ρ̄)², ρ̄ from the soft output masks."""
        cfg = self.config
        return core.concrete_regularizer(
            self.p_logits, cfg.p_init, masks.retention(), lambda_p=cfg.lambda_p, lambda_r=cfg.lambda_r
        )

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores (``sttabt_state.safetensors``)."""
        return {STATE_KEY: self.p_logits.detach().cpu().contiguous()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> ConcreteState:
        with torch.no_grad():
            self.p_logits.copy_(checked_p_logits(tensors, self.p_logits.shape[0]))
        return self


def checked_p_logits(tensors: Mapping[str, torch.Tensor], num_layers: int) -> torch.Tensor:
    """The saved ``p_logits`` of a method state, refused in one line unless they fit this model."""
    if set(tensors) != {STATE_KEY}:
        raise SttabtError(
            f"a concrete method state holds exactly {STATE_KEY!r}, got {sorted(tensors) or 'nothing'}"
        )
    values = tensors[STATE_KEY]
    if tuple(values.shape) != (num_layers,):
        raise SttabtError(
            f"the saved p_logits have shape {tuple(values.shape)}, but the model has {num_layers} layers"
        )
    if not values.is_floating_point() or not bool(torch.isfinite(values).all()):
        raise SttabtError("the saved p_logits must be finite floating-point numbers")
    return values.float()


# -- the ApproxNet's logits ------------------------------------------------------------------------------
def recorded_logits(records: Sequence[QueryKeys], scales: Sequence[float]) -> LogitRows:
    """Z_l = q·kᵀ·scale + (−10000 on padded keys) from a dense recorder pass, in float32, per chunk.

    The recorded layouts are right-padded prefixes (a dense pass removes nothing), so row i and column j
    are positions i and j; the last layer's only row is CLS.
    """

    def logits(layer: int, samples: slice) -> torch.Tensor:
        view, q, k = records[layer]
        if not (view.keys.prefix and view.queries.prefix):
            raise SttabtError("concrete masking needs the logits of a dense pass (nothing removed)")
        key_valid = view.keys.valid[samples]
        with torch.autocast(q.device.type, enabled=False):
            z = torch.matmul(q[samples].float() * scales[layer], k[samples].float().transpose(-1, -2))
        return z + (~key_valid).to(z.dtype)[:, None, None, :] * PAD_LOGIT

    return logits


def predict_masks(
    predictor: SparseEncoder,
    batch: Mapping[str, torch.Tensor],
    p_logits: torch.Tensor,
    *,
    p: float = core.MIX,
    temperature: float = core.TEMPERATURE,
    valid: torch.Tensor | None = None,
    prefix: TokenPrefix | None = None,
) -> ConcreteMasks:
    """One dense ApproxNet pass, then the soft masks; differentiable when grad is on (training).

    ``valid`` defaults to the batch's ``attention_mask``; ``prefix`` (default: CLS) is the model's."""
    recorder = QueryKeyRecorder()
    predictor(batch, recorder)
    adapter = predictor.adapter
    scales = [adapter.attention_scale(layer) for layer in range(adapter.num_layers)]
    valid = batch["attention_mask"].bool() if valid is None else valid.bool()
    return core.concrete_masks(
        recorded_logits(recorder.records, scales), valid, p_logits.to(valid.device),
        p=p, temperature=temperature, heads=adapter.num_heads, prefix=prefix,
    )  # fmt: skip


class ConcreteSelector(TokenSelector):
    """Plans S_l = {M_l ≥ 0.5} before the sparse run from the ApproxNet ``predictor`` (a runtime)."""

    name = "concrete"

    def __init__(
        self,
        predictor: SparseEncoder,
        p_logits: torch.Tensor,
        num_layers: int,
        *,
        p: float = core.MIX,
        temperature: float = core.TEMPERATURE,
        prefix: TokenPrefix | None = None,
    ):
        if predictor.adapter.num_layers != num_layers or tuple(p_logits.shape) != (num_layers,):
            raise SttabtError(
                f"concrete masking needs one p_logit and one ApproxNet layer per model layer ({num_layers}); "
                f"got {tuple(p_logits.shape)} p_logits and {predictor.adapter.num_layers} ApproxNet layers"
            )
        self.predictor = predictor
        self.p_logits = p_logits.detach().float()
        self.p = p
        self.temperature = temperature
        self.prefix = prefix or TokenPrefix()
        self.masks: ConcreteMasks | None = None
        self._sets: list[torch.Tensor] = []
        self._overhead = None

    def prepare(self, batch: Mapping[str, torch.Tensor], valid: torch.Tensor) -> None:
        self.masks = predict_masks(
            self.predictor, batch, self.p_logits, p=self.p, temperature=self.temperature, valid=valid,
            prefix=self.prefix,
        )  # fmt: skip
        self._sets = self.masks.hard()
        self._overhead = functools.partial(self._cost, valid.sum(dim=1))

    def plan(self) -> TokenPlan:
        return TokenPlan(self._sets, [compact(s) for s in self._sets])

    def overhead(self):
        return self._overhead

    def _cost(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample MACs and element-wise FLOPs: the ApproxNet pass, every logit row, the masks.

        On the device of the run's counts, with which :attr:`SparseOutput.cost` adds them up."""
        shape = self.predictor.adapter.shape
        rows = real.view(-1, 1).repeat(1, shape.num_layers)
        rows[:, -1] = self.prefix.readout  # the top layer reads the readout rows only (CLS)
        macs = (rows * real.unsqueeze(1)).sum(dim=1).double() * shape.hidden_size
        flops = core.construction_flops(shape.num_heads, real, rows)
        cost = predictor_cost(shape, real)
        return macs + cost.macs, flops + cost.flops - 2 * cost.macs


# -- the masked formulation (training) --------------------------------------------------------------------
def masked_forward(
    adapter: EncoderAdapter, batch: Mapping[str, torch.Tensor], masks: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Class logits of the backbone run at full length with masks M_0..M_L (soft or hard, ``(B, T)``).

    In layer l (METHODS.md §1.4, R4, R9): the K and V outputs × M_l; attention probabilities × M_l over
    keys, renormalised; the Q, attention-output, FFN-in and FFN-out outputs × M_{l+1}; residuals not
    masked. With hard masks this equals the physically gathered run on the runtime.
    """
    valid = batch["attention_mask"].bool()
    hidden = adapter.embed(batch)
    for layer in range(adapter.num_layers):
        keys, queries = masks[layer].float(), masks[layer + 1].float()
        q, k, v = adapter.qkv(layer, hidden, hidden)
        key_scale = keys[:, None, :, None]
        q = q * queries[:, None, :, None].to(q.dtype)
        k, v = k * key_scale.to(k.dtype), v * key_scale.to(v.dtype)
        probs = attention_probs(q, k, valid, adapter.attention_scale(layer)) * keys[:, None, None, :]
        probs = probs / probs.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)
        drop = adapter.attention_dropout(layer) if adapter.training else 0.0
        if drop > 0:
            probs = F.dropout(probs, p=drop)
        context = torch.matmul(probs.to(v.dtype), v)
        batch_size, heads, length, head_dim = context.shape
        context = context.transpose(1, 2).reshape(batch_size, length, heads * head_dim)
        hidden = adapter.finish_masked(layer, context, hidden, queries)
    return adapter.head(hidden[:, : adapter.readout_tokens])


@dataclass
class ConcreteRun:
    """One training forward: the class logits and the masks that produced them."""

    logits: torch.Tensor
    masks: ConcreteMasks


def concrete_forward(
    adapter: EncoderAdapter,
    predictor: SparseEncoder,
    state: ConcreteState,
    batch: Mapping[str, torch.Tensor],
    *,
    hard: bool = False,
    straight_through: bool = False,
) -> ConcreteRun:
    """The training forward: masks from the ApproxNet, then the masked backbone (soft or hard masks).

    Loss = task loss on ``logits`` + ``state.regularizer(run.masks)``. Gradients reach the backbone, the
    ApproxNet (through Z, Φ and the gates) and the ``p_logit``\\s; in the hard phase the masks carry no
    gradient unless ``straight_through``.
    """
    cfg = state.config
    masks = predict_masks(predictor, batch, state.p_logits, p=cfg.p, temperature=cfg.temperature)
    used = masks.masks
    if hard:
        used = [core.binarize(mask, straight_through=straight_through) for mask in used]
    return ConcreteRun(masked_forward(adapter, batch, used), masks)


def uses_hard_masks(step: int, total_steps: int, hard_fraction: float) -> bool:
    """Whether optimisation step ``step`` (0-based) of ``total_steps`` trains with hard masks: the last
    ``hard_fraction`` of the steps (the reference switches per epoch, from epoch 0.8·(E-1) on, which is
    "roughly the last 20 %" only for many epochs; per step the fraction holds for any length)."""
    return step >= total_steps - round(hard_fraction * total_steps)


# -- the registered method --------------------------------------------------------------------------------
#: The ``extra`` entries that give the ``p_logit``\\s (else they come from the model's saved directory).
STATE_SOURCES = ("method_state", "p_logits", "p_init")


def _p_logits(extra: Mapping[str, Any], num_layers: int) -> torch.Tensor:
    """Trained ``p_logits`` from ``extra["method_state"]`` (a loaded checkpoint), ``extra["p_logits"]``, or
    an untrained constant ``extra["p_init"]``."""
    if extra.get("method_state"):
        return checked_p_logits(extra["method_state"], num_layers)
    if extra.get("p_logits") is not None:
        return checked_p_logits({STATE_KEY: torch.as_tensor(extra["p_logits"])}, num_layers)
    if extra.get("p_init") is not None:
        config = ConcreteConfig(p_init=extra["p_init"]).validate()
        return torch.full((num_layers,), float(config.p_init))
    raise SttabtError(
        "method 'concrete' needs trained p_logits: load a directory saved by `sttabt train --method concrete`"
    )


@register_method(
    "concrete", "STTABT concrete masking: learned per-layer gates on an ApproxNet", uses={"approx", "p"}
)
def build_concrete(adapter: EncoderAdapter, options: MethodOptions) -> TokenSelector:
    from sttabt.approxnet import ApproxNet

    extra = with_saved_state(
        options.extra, adapter.model, "concrete", STATE_SOURCES, approx=not options.approx
    )
    approx = extra.get("approxnet")
    if approx is None:
        if not options.approx:
            raise SttabtError("method 'concrete' needs its ApproxNet (saved with the trained model)")
        approx = ApproxNet.load(options.approx, teacher=adapter.model)
    p_logits = _p_logits(extra, adapter.num_layers)
    temperature = (extra.get("method_config") or {}).get("temperature", core.TEMPERATURE)
    approx = approx.to(adapter.device).eval()
    return ConcreteSelector(
        SparseEncoder(approx.adapter), p_logits, adapter.num_layers, p=options.p, temperature=temperature,
        prefix=adapter.token_prefix,
    )  # fmt: skip
