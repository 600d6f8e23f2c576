"""Manual top-k forward pruning (METHODS.md §1.6): no back-tracking, the layer's own attention decides.

After layer l's attention over its current tokens, each key is scored by its attention averaged over
heads and then over the current query rows; the top ⌈k_l·n⌉ continue to the attention-output projection,
the FFN and the next layer (n = the example's real length). The backbone's prefix tokens (CLS; for
images also a distillation token or registers) always continue; whether they count towards the ⌈k_l·n⌉
or come on top of ⌈k_l·(n-P)⌉ patches is the adapter's :class:`~sttabt.core.tokens.TokenPrefix`.
"""

from __future__ import annotations

import torch

from sttabt.core.tokens import RowSelection, TokenPrefix, scatter_scores, top_rows, topk_mask
from sttabt.errors import SttabtError
from sttabt.methods.registry import MethodOptions, register_method
from sttabt.runtime import RATIO_LENGTHS, LayerView, TokenSelector


def reference_schedule(target: float, num_layers: int) -> list[float]:
    """Per-layer keep ratios of the reference top-k baseline for a target average ``target``.

    The reference formula is written for 12 layers with ``l/10``; for L layers we use ``l/(L-2)`` so the
    ratio reaches its floor at the second-to-last layer, as it does for L = 12. Ratios are clipped to
    (0, 1]; the last layer keeps only CLS whatever the schedule says.
    """
    span = max(num_layers - 2, 1)
    ratios = []
    for layer in range(num_layers):
        frac = layer / span
        if target <= 0.666:
            ratio = 0.5 * target + (1 - frac) * target
        else:
            ratio = (1 - frac) * (2 - 2 * target) + (2 * target - 1)
        ratios.append(min(1.0, max(ratio, 1e-6)))
    return ratios


def mean_attention_received(probs: torch.Tensor, query_valid: torch.Tensor) -> torch.Tensor:
    """Each key's attention ``(b, n_k)``, averaged over heads and over the real query rows.

    A head sum (one contiguous pass over the maps) followed by a small batched matrix-vector product;
    the same two kernels run whatever the padding, so a sample's scores do not depend on its batch.
    """
    rows = query_valid.to(probs.dtype)  # (b, n_q)
    per_row = probs.sum(dim=1)  # (b, n_q, n_k)
    total = torch.bmm(rows.unsqueeze(1), per_row).squeeze(1)
    return total / (probs.shape[1] * rows.sum(dim=1, keepdim=True))


class TopKSelector(TokenSelector):
    name = "topk"

    def __init__(self, ratios: list[float], num_heads: int, prefix: TokenPrefix | None = None):
        self.ratios = ratios
        self.num_heads = num_heads
        self.prefix = prefix or TokenPrefix()

    def prepare(self, batch, valid: torch.Tensor) -> None:
        lengths = batch.get(RATIO_LENGTHS)
        self._counts = self.prefix.total_counts(self.ratios, valid.sum(dim=1), lengths)  # (L, B), prefix in
        # One sample: every layer's count as a plain int (one host sync here instead of one per layer).
        self._single = self._counts[:, 0].tolist() if valid.shape[0] == 1 else None

    def wants_attention(self, layer: int) -> bool:
        return layer < len(self.ratios) - 1  # the last layer computes CLS only anyway

    def after_attention(self, view: LayerView, probs: torch.Tensor) -> RowSelection | torch.Tensor:
        per_key = mean_attention_received(probs, view.queries.valid)
        # The prefix (compact keys 0..P-1, CLS first) is always kept; the counts include it.
        per_key[:, : self.prefix.count] = float("inf")
        counts = self._counts[view.layer][view.samples]
        if view.queries is view.keys:  # every current token is a query: rank the compact rows directly
            if self._single is not None:
                counts = self._single[view.layer]
            return top_rows(per_key, view.keys.valid, counts, all_valid=view.keys.full)
        scores = scatter_scores(per_key, view.keys, view.valid.shape[1], fill=float("-inf"))
        return topk_mask(scores, view.query_mask, counts)

    def count_overhead(self, counts: torch.Tensor) -> torch.Tensor:
        """Scoring per sample in every layer but the last: head and row means over n_q x n_k, ranking."""
        n_k, n_q = counts[:, :-1, 0].double(), counts[:, :-1, 1].double()
        per_layer = self.num_heads * n_q * n_k + n_q * n_k + n_k * torch.log2(n_k.clamp(min=2)).ceil()
        return per_layer.sum(dim=1)


@register_method("topk", "forward top-k by the layer's own attention (no back-tracking)", needs_keep=True)
def build_topk(adapter, options: MethodOptions) -> TokenSelector:
    keep = options.keep
    layers = adapter.num_layers
    if isinstance(keep, list):
        if len(keep) != layers:
            raise SttabtError(f"got {len(keep)} keep ratios for a model with {layers} layers")
        ratios = [float(k) for k in keep]
    elif keep == "dynamic":
        raise SttabtError("top-k has no dynamic mode; give --keep a ratio")
    elif options.schedule == "reference":
        ratios = reference_schedule(float(keep), layers)
    elif options.schedule == "constant":
        ratios = [float(keep)] * layers
    else:
        raise SttabtError(f"unknown top-k schedule {options.schedule!r}; choose constant or reference")
    return TopKSelector(ratios, adapter.num_heads, adapter.token_prefix)
