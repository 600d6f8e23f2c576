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
from sttabt.core.tokens import CompactIndex
from sttabt.errors import SttabtError
from sttabt.methods.registry import MethodOptions, register_method
from sttabt.runtime import LayerView, SparseEncoder, TokenSelector

AttentionSource = Callable[[Mapping[str, torch.Tensor]], list[torch.Tensor]]


class HeadReducedAttention(TokenSelector):
    """Records every layer's attention reduced over heads, without pruning anything.

    Run on the runtime, this is the lean "full-length forward" that ABT needs: only the head-reduced map
    of each layer is kept ((B, T, T), not (B, H, T, T)), and the last layer computes the CLS row only,
    which is the only row back-tracking reads there.
    """

    name = "attention-recorder"

    def __init__(self, head_reduction: str = "mean"):
        self.head_reduction = head_reduction
        self._chunks: list[list[torch.Tensor]] = []

    def prepare(self, batch: Mapping[str, torch.Tensor], valid: torch.Tensor) -> None:
        self._chunks = []
        self.length = valid.shape[1]

    def wants_attention(self, layer: int) -> bool:
        return True

    def after_attention(self, view: LayerView, probs: torch.Tensor) -> None:
        reduced = probs.mean(dim=1) if self.head_reduction == "mean" else probs.amax(dim=1)
        if view.layer == len(self._chunks):
            self._chunks.append([])
        # The runtime visits the chunks of samples of a layer in order.
        self._chunks[view.layer].append(_scatter_map(reduced, view.queries, view.keys, self.length))
        return None

    @property
    def maps(self) -> list[torch.Tensor]:
        """Per-layer ``(B, T, T)`` head-reduced maps of the last run."""
        return [parts[0] if len(parts) == 1 else torch.cat(parts) for parts in self._chunks]


def _scatter_map(reduced: torch.Tensor, rows: CompactIndex, cols: CompactIndex, length: int) -> torch.Tensor:
    """Place a compact ``(B, n_q, n_k)`` map at original positions in a ``(B, T, T)`` map of zeros."""
    reduced = reduced * rows.valid[:, :, None] * cols.valid[:, None, :]
    if rows.positions.shape[1] == reduced.shape[1] and bool(
        (rows.positions == torch.arange(rows.positions.shape[1], device=reduced.device)).all()
        and (cols.positions == torch.arange(cols.positions.shape[1], device=reduced.device)).all()
    ):  # prefix layouts (right padding, nothing pruned): a padded copy, no scatter
        return torch.nn.functional.pad(reduced, (0, length - reduced.shape[2], 0, length - reduced.shape[1]))
    by_col = reduced.new_zeros(reduced.shape[0], reduced.shape[1], length)
    by_col = by_col.scatter_add(2, cols.positions[:, None, :].expand(-1, reduced.shape[1], -1), reduced)
    full = reduced.new_zeros(reduced.shape[0], length, length)
    return full.scatter_add(1, rows.positions[:, :, None].expand(-1, -1, length), by_col)


def head_reduced_attention(
    runner: SparseEncoder, batch: Mapping[str, torch.Tensor], head_reduction: str
) -> list[torch.Tensor]:
    """Per-layer ``(B, 1, T, T)`` attention of ``runner``'s model, reduced over heads (see above)."""
    recorder = HeadReducedAttention(head_reduction)
    runner(batch, recorder)
    return [m.unsqueeze(1) for m in recorder.maps]


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


def _backtrack_selector(
    adapter: EncoderAdapter, options: MethodOptions, source: AttentionSource, source_cost=None
) -> BacktrackSelector:
    if options.keep is None:
        raise SttabtError("ABT needs --keep (a ratio in (0, 1], a per-layer list, or 'dynamic')")
    return BacktrackSelector(
        source,
        options.keep,
        adapter.num_layers,
        adapter.num_heads,
        p=options.p,
        head_reduction=options.head_reduction,
        token_reduction=options.token_reduction,
        source_cost=source_cost,
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
    if approx.cost_shape().num_layers != adapter.num_layers:
        raise SttabtError(
            f"ApproxNet has {approx.cost_shape().num_layers} layers but the model has {adapter.num_layers}"
        )
    approx_shape = approx.cost_shape()
    approx_runner = SparseEncoder(approx.adapter)

    def source_cost(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cost = dense_cost(approx_shape, real.cpu())
        return cost.macs, cost.flops - 2 * cost.macs  # MACs, and the element-wise rest of its FLOPs

    def approx_attention(batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        return head_reduced_attention(approx_runner, batch, options.head_reduction)

    return _backtrack_selector(adapter, options, approx_attention, source_cost)


@register_method(
    "abt-oracle",
    "back-tracking driven by the dense model's own attention (a reference; needs a dense pass, not counted)",
    needs_keep=True,
)
def build_abt_oracle(adapter: EncoderAdapter, options: MethodOptions) -> TokenSelector:
    runner = SparseEncoder(adapter)

    def dense_attention(batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        return head_reduced_attention(runner, batch, options.head_reduction)

    selector = _backtrack_selector(adapter, options, dense_attention)
    selector.name = "abt-oracle"
    return selector
