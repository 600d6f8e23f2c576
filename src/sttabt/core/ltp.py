"""Learned Token Pruning (LTP, METHODS.md §2): received-attention scores against per-layer thresholds.

After layer l's attention, token j's score is the attention it receives from the real, still-kept query
rows, summed over heads and rows and divided by ``H·length``:

    s^l(j) = Σ_h Σ_i alive(i)·A_l^h(i, j) / (H·length)

* hard (inference, stage 2): j is pruned iff s^l(j) < θ^l, and stays pruned (cascade); CLS always stays;
* soft (stage 1): m^l(j) = σ((s^l(j) - θ^l) / T_temp) multiplies layer l's whole output.

[spec] ``length`` is a fixed constant (default 128), not the batch's padded length. The reference pads
every input to its maximum length 128 and divides by it; the thresholds (~0.01) are calibrated to that
(R15). A constant reproduces the reference's scores while keeping each sample's decision independent of
its batch (R7). Nothing here knows about Hugging Face.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

THETA_FINAL = 0.01
SCORE_LENGTH = 128
TEMPERATURE = 5e-4  # STTABT's LTP default, inside LTP's own search grid {1e-4 … 2e-3}
LAMBDA = 0.1  # LTP README's example (0.01-0.2 "worked well")


def base_thresholds(num_layers: int, theta_final: float = THETA_FINAL) -> torch.Tensor:
    """θ_base^l = θ_final·l/L for l = 0..L-1 (0-based, as the reference code: θ^0 = 0)."""
    return theta_final * torch.arange(num_layers, dtype=torch.float32) / num_layers


def pruning_layers(num_layers: int) -> range:
    """The layers that prune: not layer 0 (θ^0 = 0, R16) and [spec] not the last one, which computes CLS
    only here, so a decision there could change no output (its mask would only feed the regulariser)."""
    return range(1, num_layers - 1)


def received_attention(
    probs: torch.Tensor, query_alive: torch.Tensor, length: int = SCORE_LENGTH
) -> torch.Tensor:
    """s(j) ``(b, n_k)`` from attention ``(b, H, n_q, n_k)``: rows of dead or padded queries count 0."""
    rows = query_alive.to(probs.dtype)
    per_row = probs.sum(dim=1)  # (b, n_q, n_k)
    return torch.bmm(rows.unsqueeze(1), per_row).squeeze(1) / (probs.shape[1] * length)


def hard_keep(
    scores: torch.Tensor, threshold: torch.Tensor | float, alive: torch.Tensor, prefix: int = 1
) -> torch.Tensor:
    """The tokens that continue ``(b, n)``: alive and s ≥ θ (prune iff s < θ), with the ``prefix``
    leading tokens (CLS, index 0; for images also a distillation token or registers) kept."""
    keep = (scores >= threshold) & alive
    keep[:, :prefix] = True
    return keep


def soft_keep(
    scores: torch.Tensor, threshold: torch.Tensor, temperature: float, valid: torch.Tensor, prefix: int = 1
) -> torch.Tensor:
    """m = σ((s - θ)/T_temp) on real tokens, 0 on padding; [spec] the ``prefix`` leading tokens (CLS)
    fixed at 1, as they are always kept."""
    mask = torch.sigmoid((scores - threshold) / temperature) * valid.to(scores.dtype)
    cls = torch.zeros_like(mask)
    cls[:, :prefix] = 1.0
    return torch.maximum(mask, cls)


def mask_penalty(masks: Sequence[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """Σ_l mean over the batch of Σ_j m^l(j) / n: the LTP regulariser before its λ.

    [spec] Each mask is averaged over the sample's real tokens; the reference averages over all padded
    positions, so its penalty depends on how much padding the batch has.
    """
    if not masks:
        return valid.new_zeros((), dtype=torch.float32)
    real = valid.to(masks[0].dtype)
    lengths = real.sum(dim=1).clamp_min(1)
    return sum((mask * real).sum(dim=1).div(lengths).mean() for mask in masks)


def scoring_flops(num_heads: int, counts: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """Per-sample element-wise FLOPs of the scores in ``layers`` from the run's counts ``(B, L, 3)``:
    head sum and weighted row sum over n_q × n_k, then one comparison per key."""
    if not layers:
        return torch.zeros(counts.shape[0], dtype=torch.float64, device=counts.device)
    picked = counts[:, list(layers)].double()
    n_k, n_q = picked[..., 0], picked[..., 1]
    return (num_heads * n_q * n_k + n_q * n_k + n_k).sum(dim=1)
