"""STTABT attention back-tracking (ABT), training-free (METHODS.md §1.3).

Per batch, inside :meth:`BacktrackSelector.prepare` (so timing a runtime call includes it):

1. one dense pass of the attention predictor (the distilled ApproxNet for ``abt``; the model itself for
   ``abt-oracle``, a reference) on the sparse runtime with **fused attention**: no probabilities are
   materialised, the pass only keeps each layer's queries and keys (:class:`QueryKeyRecorder`);
2. back-tracking from the last layer down (:func:`sttabt.core.backtrack.backtrack_rows`) asks for the
   attention rows of S_{l+1} only, which :func:`rows_on_demand` computes from the recorded q/k in float32
   and reduces over heads at once;
3. the runtime runs the sparse model bottom-up with the resulting :class:`~sttabt.runtime.TokenPlan`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch

from sttabt.adapters.base import EncoderAdapter
from sttabt.core.backtrack import (
    ALL_SAMPLES,
    AttentionRows,
    BacktrackResult,
    backtrack_cost,
    backtrack_rows,
    per_layer_keep,
)
from sttabt.core.flops import EncoderShape, dense_counts, encoder_cost
from sttabt.core.tokens import CompactIndex, TokenPrefix, relative_index
from sttabt.errors import SttabtError
from sttabt.methods.registry import MethodOptions, register_method
from sttabt.runtime import (
    RATIO_LENGTHS,
    LayerView,
    SparseEncoder,
    TokenPlan,
    TokenSelector,
    attention_probs,
    gather_head_rows,
)

QueryKeys = tuple[LayerView, torch.Tensor, torch.Tensor]


class QueryKeyRecorder(TokenSelector):
    """Prunes nothing; keeps each layer's queries and keys (references, no copies) as the layer runs."""

    name = "qk-recorder"

    def __init__(self) -> None:
        self.records: list[QueryKeys] = []

    def prepare(self, batch: Mapping[str, torch.Tensor], valid: torch.Tensor) -> None:
        self.records = []

    def wants_queries_keys(self, layer: int) -> bool:
        return True

    def after_qkv(self, view: LayerView, q: torch.Tensor, k: torch.Tensor) -> None:
        self.records.append((view, q, k))


def rows_on_demand(records: list[QueryKeys], scales: list[float], length: int) -> AttentionRows:
    """Attention rows from recorded q/k: per-head softmax over all keys for the requested queries only.

    The scores are computed in float32 even under autocast (a few rows: cheap), so reduced precision
    changes the sets only through the predictor's own hidden states.
    """

    def rows(layer: int, needed: CompactIndex, samples: slice) -> torch.Tensor:
        view, q, k = records[layer]
        if samples != ALL_SAMPLES:
            view, q, k = view.chunk(samples), q[samples], k[samples]
        rel = needed.positions if view.queries.prefix else relative_index(view.query_mask, needed)
        with torch.autocast(q.device.type, enabled=False):
            picked, keys = _float(gather_head_rows(q, rel)), _float(k)
            probs = attention_probs(picked, keys, view.keys.valid, scales[layer], view.keys.full)
        return probs if view.keys.prefix else _at_key_positions(probs, view.keys, length)

    return rows


def _float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float32 else tensor.float()


def _at_key_positions(rows: torch.Tensor, keys: CompactIndex, length: int) -> torch.Tensor:
    """Place rows over compact keys ``(B, H, m, n_k)`` at the original key positions ``(B, H, m, T)``."""
    batch, heads, m, _ = rows.shape
    target = torch.where(keys.valid, keys.positions, length)[:, None, None, :].expand(-1, heads, m, -1)
    out = rows.new_zeros(batch, heads, m, length + 1)
    return out.scatter(3, target, rows)[..., :length]


class BacktrackSelector(TokenSelector):
    """Plans S_0..S_L before the sparse run from the attention of ``predictor`` (a runtime)."""

    name = "abt"

    def __init__(
        self,
        predictor: SparseEncoder,
        keep: Any,
        num_layers: int,
        *,
        p: float = 0.1,
        head_reduction: str = "mean",
        token_reduction: str = "mean",
        count_predictor: bool = True,
        prefix: TokenPrefix | None = None,
    ):
        for label, value in (("head reduction", head_reduction), ("token reduction", token_reduction)):
            if value not in ("mean", "max"):
                raise SttabtError(f"{label} must be 'mean' or 'max', got {value!r}")
        try:
            self.keep = per_layer_keep(keep, num_layers)
        except ValueError as exc:
            raise SttabtError(str(exc)) from exc
        if predictor.adapter.num_layers != num_layers:
            raise SttabtError(
                f"the attention predictor has {predictor.adapter.num_layers} layers but the model has "
                f"{num_layers}"
            )
        self.predictor = predictor
        self.num_layers = num_layers
        self.p = p
        self.head_reduction = head_reduction
        self.token_reduction = token_reduction
        self.count_predictor = count_predictor
        self.prefix = prefix or TokenPrefix()
        self.result: BacktrackResult | None = None
        self._overhead = None

    def prepare(self, batch: Mapping[str, torch.Tensor], valid: torch.Tensor) -> None:
        recorder = QueryKeyRecorder()
        self.predictor(batch, recorder)
        adapter = self.predictor.adapter
        scales = [adapter.attention_scale(layer) for layer in range(self.num_layers)]
        rows = rows_on_demand(recorder.records, scales, valid.shape[1])
        self.result = backtrack_rows(
            rows, valid, self.keep, self.num_layers, prefix=self.prefix, p=self.p,
            head_reduction=self.head_reduction,
            token_reduction=self.token_reduction, heads=adapter.num_heads,
            ratio_lengths=batch.get(RATIO_LENGTHS),
        )  # fmt: skip
        self._overhead = functools.partial(self._cost, valid.sum(dim=1), self.result)

    def _cost(self, real: torch.Tensor, result: BacktrackResult) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample MACs and element-wise FLOPs: the predictor's pass, the rows' scores, the ranking."""
        shape, device = self.predictor.adapter.shape, real.device
        real = real.cpu()
        macs, flops = backtrack_cost(shape.num_heads, shape.hidden_size, real, result.query_counts().cpu())
        if self.count_predictor:
            cost = predictor_cost(shape, real)
            macs, flops = macs + cost.macs, flops + cost.flops - 2 * cost.macs
        return macs.to(device), flops.to(device)  # beside the run's own counts

    def plan(self) -> TokenPlan:
        return TokenPlan(self.result.key_sets, self.result.layouts)

    def overhead(self):
        return self._overhead


def predictor_cost(shape: EncoderShape, real: torch.Tensor):
    """The predictor's dense pass on the runtime: full layers, then the readout only in the last one."""
    return encoder_cost(shape, dense_counts(real, shape.num_layers, readout_last=True), real)


def _backtrack_selector(
    adapter: EncoderAdapter, options: MethodOptions, predictor: SparseEncoder, count_predictor: bool
) -> BacktrackSelector:
    if options.keep is None:
        raise SttabtError("ABT needs --keep (a ratio in (0, 1], a per-layer list, or 'dynamic')")
    return BacktrackSelector(
        predictor,
        options.keep,
        adapter.num_layers,
        p=options.p,
        head_reduction=options.head_reduction,
        token_reduction=options.token_reduction,
        count_predictor=count_predictor,
        prefix=adapter.token_prefix,
    )


@register_method(
    "abt", "STTABT back-tracking driven by a distilled ApproxNet", needs_keep=True, needs_approx=True
)
def build_abt(adapter: EncoderAdapter, options: MethodOptions) -> TokenSelector:
    from sttabt.approxnet import ApproxNet

    approx = options.extra.get("approxnet")
    if approx is None:
        approx = ApproxNet.load(options.approx, teacher=adapter.model)
    approx = approx.to(adapter.device).eval()
    return _backtrack_selector(adapter, options, SparseEncoder(approx.adapter), count_predictor=True)


@register_method(
    "abt-oracle",
    "back-tracking driven by the dense model's own attention (a reference; needs a dense pass, not counted)",
    needs_keep=True,
)
def build_abt_oracle(adapter: EncoderAdapter, options: MethodOptions) -> TokenSelector:
    selector = _backtrack_selector(adapter, options, SparseEncoder(adapter), count_predictor=False)
    selector.name = "abt-oracle"
    return selector
