"""STTABT attention back-tracking (ABT), training-free (METHODS.md §1.3).

Per batch: (1) get every layer's attention at full length — from the distilled ApproxNet (``abt``) or
from the dense model itself (``abt-oracle``, a reference that needs a full dense pass); (2) build all
sets from the last layer down with :func:`sttabt.core.backtrack.backtrack`; (3) the runtime runs the
sparse model bottom-up with those sets. Steps 1-2 run inside :meth:`prepare`, so timing a runtime call
includes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from sttabt.adapters.base import EncoderAdapter
from sttabt.core.backtrack import backtrack, backtrack_overhead_flops, per_layer_keep
from sttabt.core.flops import dense_cost
from sttabt.errors import SttabtError
from sttabt.methods.registry import MethodOptions, register_method
from sttabt.runtime import SparseEncoder, TokenSelector

AttentionSource = Callable[[Mapping[str, torch.Tensor]], list[torch.Tensor]]


class BacktrackSelector(TokenSelector):
    """Plans S_0..S_L before the sparse run from a source of attention maps."""

    name = "abt"

    def __init__(
        self,
        source: AttentionSource,
        keep: Any,
        num_layers: int,
        num_heads: int,
        *,
        p: float = 0.1,
        head_reduction: str = "mean",
        token_reduction: str = "mean",
        source_cost: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ):
        for label, value in (("head reduction", head_reduction), ("token reduction", token_reduction)):
            if value not in ("mean", "max"):
                raise SttabtError(f"{label} must be 'mean' or 'max', got {value!r}")
        try:
            self.keep = per_layer_keep(keep, num_layers)
        except ValueError as exc:
            raise SttabtError(str(exc)) from exc
        self.source = source
        self.num_heads = num_heads
        self.p = p
        self.head_reduction = head_reduction
        self.token_reduction = token_reduction
        self.source_cost = source_cost
        self.result = None
        self._overhead: tuple[torch.Tensor, torch.Tensor] | None = None

    def prepare(self, batch: Mapping[str, torch.Tensor], valid: torch.Tensor) -> None:
        attentions = self.source(batch)
        self.result = backtrack(
            attentions,
            valid,
            self.keep,
            p=self.p,
            head_reduction=self.head_reduction,
            token_reduction=self.token_reduction,
        )
        real = valid.sum(dim=1)
        # Set-construction cost, per sample: every layer reduces heads and the needed rows, then ranks.
        query_counts = torch.stack([s.sum(dim=1) for s in self.result.key_sets[1:]], dim=1)
        mask_flops = torch.tensor(
            [
                backtrack_overhead_flops(self.num_heads, int(n), q.tolist())
                for n, q in zip(real.tolist(), query_counts, strict=True)
            ],
            dtype=torch.float64,
        )
        macs = torch.zeros_like(mask_flops)
        if self.source_cost is not None:
            src_macs, src_flops = self.source_cost(real)
            macs = macs + src_macs.cpu()
            mask_flops = mask_flops + src_flops.cpu()
        self._overhead = (macs.to(valid.device), mask_flops.to(valid.device))

    def input_mask(self, valid: torch.Tensor) -> torch.Tensor:
        return self.result.key_sets[0]

    def query_mask(self, layer: int, key_mask: torch.Tensor) -> torch.Tensor:
        return self.result.key_sets[layer + 1]

    def overhead(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self._overhead


def _keep_or_error(options: MethodOptions) -> Any:
    if options.keep is None:
        raise SttabtError("ABT needs --keep (a ratio in (0, 1], a per-layer list, or 'dynamic')")
    return options.keep


@register_method(
    "abt", "STTABT back-tracking driven by a distilled ApproxNet", needs_keep=True, needs_approx=True
)
def build_abt(adapter: EncoderAdapter, options: MethodOptions) -> TokenSelector:
    from sttabt.approxnet import ApproxNet

    approx = options.extra.get("approxnet")
    if approx is None:
        approx = ApproxNet.load(options.approx, teacher=adapter.model)
    approx = approx.to(adapter.device).eval()
    if approx.cost_shape().num_layers != adapter.num_layers:
        raise SttabtError(
            f"ApproxNet has {approx.cost_shape().num_layers} layers but the model has {adapter.num_layers}"
        )
    approx_shape = approx.cost_shape()

    def source_cost(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cost = dense_cost(approx_shape, real.cpu())
        return cost.macs, cost.flops - 2 * cost.macs  # MACs, and the element-wise rest of its FLOPs

    return BacktrackSelector(
        approx.attention_probs,
        _keep_or_error(options),
        adapter.num_layers,
        adapter.num_heads,
        p=options.p,
        head_reduction=options.head_reduction,
        token_reduction=options.token_reduction,
        source_cost=source_cost,
    )


@register_method(
    "abt-oracle",
    "back-tracking driven by the dense model's own attention (a reference; needs a dense pass, not counted)",
    needs_keep=True,
)
def build_abt_oracle(adapter: EncoderAdapter, options: MethodOptions) -> TokenSelector:
    runner = SparseEncoder(adapter)

    def dense_attention(batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        return runner(batch, collect_attentions=True).attentions

    selector = BacktrackSelector(
        dense_attention,
        _keep_or_error(options),
        adapter.num_layers,
        adapter.num_heads,
        p=options.p,
        head_reduction=options.head_reduction,
        token_reduction=options.token_reduction,
    )
    selector.name = "abt-oracle"
    return selector
