"""The STTABT paper's counting protocol (``--protocol reference``), for comparison with its numbers only.

PUBLISHED_RESULTS §1 counts on **padded** lengths: every example is padded to the longest example of its
1024-example chunk (METHODS §1.7), the keep ratio is a fraction of that padded length T (``m = ceil(k·T)``,
pads selectable once k·T exceeds the real length, R5), FLOPs count the padded tokens (ApproxNet at full
padded length included) and retention is the 13-entry mean (the L key sets and the CLS-only output,
each over T, §5.1). Our primary figures use real lengths, which is what wall clock follows.

How it is reproduced here: the run itself keeps ``min(n_real, ceil(k·T))`` real tokens per layer (pads
receive no attention, so the reference ranks every real token above every pad and chooses the same real
tokens); the counts are then re-stated at padded length: a layer whose count reached the real length
holds ``min(T, ceil(k·T))`` tokens in the reference (all real ones plus the lowest-index pads, which nest
from layer to layer), and a dense layer holds T. Covered: dense, abt, abt-oracle, topk (the methods the
paper's protocol defines a keep ratio for).
"""

from __future__ import annotations

from typing import Any

import torch

from sttabt.core.backtrack import backtrack_cost
from sttabt.core.flops import CostReport, EncoderShape, dense_cost, encoder_cost
from sttabt.errors import SttabtError

CHUNK = 1024
PROTOCOLS = ("real", "reference")
COVERED = ("dense", "abt", "abt-oracle", "topk")


def check_protocol(protocol: str, method: str) -> None:
    if protocol not in PROTOCOLS:
        raise SttabtError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if protocol == "reference" and method not in COVERED:
        raise SttabtError(f"--protocol reference covers {', '.join(COVERED)} (the paper's keep-ratio rule), "
                          f"not {method!r}")  # fmt: skip


def padded_lengths(lengths: list[int], chunk: int = CHUNK) -> torch.Tensor:
    """Each example's length padded to the longest of its ``chunk``-example block, in split order."""
    out = torch.zeros(len(lengths), dtype=torch.long)
    for start in range(0, len(lengths), chunk):
        block = lengths[start : start + chunk]
        out[start : start + len(block)] = max(block)
    return out


def layer_ratios(selector: Any) -> list[float] | None:
    """The per-layer keep ratios of a covered selector (None for dense); dynamic k has none."""
    ratios = getattr(selector, "keep", None)
    if ratios is None:
        ratios = getattr(selector, "ratios", None)
    if ratios == "dynamic":
        raise SttabtError("--protocol reference needs a keep ratio, not --keep dynamic")
    return ratios


def reference_counts(method: str, counts: torch.Tensor, real: torch.Tensor, padded: torch.Tensor,
                     ratios: list[float] | None) -> torch.Tensor:  # fmt: skip
    """``counts (N, L, 3)`` of the run re-stated at padded length (see the module docstring)."""
    n, t = real.view(-1, 1).long(), padded.view(-1, 1).long()
    layers = counts.shape[1]
    if ratios is None:  # dense: every full-length entry is T
        full = torch.where(counts == n.unsqueeze(-1), t.unsqueeze(-1), counts)
        return torch.where(counts == 1, counts, full)
    m = torch.stack([torch.ceil(t.double().squeeze(1) * r - 1e-9).long() for r in ratios], dim=1)
    m = torch.minimum(m, t)  # (N, L): the reference's count per layer
    out = counts.clone()
    if method == "topk":  # online: layer l reads the tokens kept by layer l-1, keeps m_l of them
        before = torch.cat([t, m[:, :-1]], dim=1)
        after = m
    else:  # planned: layer l's keys are S_l, its queries and outputs S_{l+1}
        before = m
        after = torch.cat([m[:, 1:], torch.ones_like(t)], dim=1)
    at_full = counts == n.unsqueeze(-1)
    for column, target in ((0, before), (1, before if method == "topk" else after), (2, after)):
        entry = out[..., column]
        out[..., column] = torch.where(at_full[..., column], torch.maximum(entry, target), entry)
    out[:, layers - 1, 1:] = counts[:, layers - 1, 1:]  # the CLS-only top layer is the same
    return out


def reference_figures(method: str, selector: Any, shape: EncoderShape, counts: torch.Tensor,
                      real: torch.Tensor, padded: torch.Tensor) -> dict[str, Any]:  # fmt: skip
    """Relative FLOPs and 13-entry retention as the paper counts them."""
    ratios = None if method == "dense" else layer_ratios(selector)
    ref = reference_counts(method, counts, real, padded, ratios)
    cost = _cost(method, selector, shape, ref, padded)
    dense = dense_cost(shape, padded)
    layers = counts.shape[1]
    retention = (ref[..., 0].double().sum(dim=1) + 1.0) / (padded.double() * (layers + 1))
    return {
        "relative": float(cost.flops.sum() / dense.flops.sum()),
        "per_example": float(cost.flops.mean()),
        "dense_per_example": float(dense.flops.mean()),
        "retention": float(retention.mean()),
        "padded_length_mean": float(padded.double().mean()),
        "chunk": CHUNK,
        "convention": "the STTABT paper's: padded to the longest example of each 1024-example chunk, "
        "k of the padded length, 13-entry retention over padded length (METHODS §1.7, §5.1, R5)",
    }


def _cost(method: str, selector: Any, shape: EncoderShape, counts: torch.Tensor,
          padded: torch.Tensor) -> CostReport:  # fmt: skip
    macs = flops = None
    if method == "topk":
        flops = selector.count_overhead(counts)
    elif method in ("abt", "abt-oracle"):
        from sttabt.methods.abt import predictor_cost

        predictor = selector.predictor.adapter.shape
        macs, flops = backtrack_cost(predictor.num_heads, predictor.hidden_size, padded, counts[..., 1])
        if selector.count_predictor:
            cost = predictor_cost(predictor, padded)
            macs, flops = macs + cost.macs, flops + cost.flops - 2 * cost.macs
    return encoder_cost(shape, counts, padded, macs, flops)
