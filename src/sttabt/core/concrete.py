"""Concrete masking, STTABT's learned variant (METHODS.md §1.4): soft, differentiable key masks.

From the ApproxNet's pre-softmax logits Z_l (padded keys at -10000) the masks are built from the output
down: M_L = c_L = onehot(CLS), and for l = L-1 … 0

1. ū_l(q, j): per head and query row, Z standardised over the valid keys and passed through Φ, then
   averaged over heads (uniform scores: pads get ≈ 0);
2. r_l(j) = Σ_q M_{l+1}(q)·ū_l(q, j)·((1 - p) + p·c_{l+1}(q)) / (Σ_q M_{l+1}(q) + ε), with the *soft*
   M_{l+1} as row weights even when hard masks drive execution (the reference does so);
3. c_l = (0.01 + 0.99·r_l / (max r_l + ε))·a, the floored, normalised key score;
4. m_l = σ([logit(σ(p_logit_l)) + logit(c_l)] / τ): a deterministic concrete gate (c replaces the uniform
   noise of concrete dropout; nothing is sampled, Pitfall R8);
5. M_l = max(m_l, M_{l+1}) (the union, R3); hard sets S_l = {M_l ≥ 0.5}.

Everything is a per-sample tensor operation, so a sample's masks never depend on its batch (R7). Nothing
here knows about Hugging Face: logits come from a :data:`LogitRows` source.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sttabt.core.tokens import TokenPrefix

EPS = 1e-7
TEMPERATURE = 0.1
FLOOR = 0.01
MIX = 0.1
HARD_THRESHOLD = 0.5
LAMBDA_P = 1e-3
LAMBDA_R = 1e-3  # text; the reference uses 100 for vision (R11)
#: Bound on the logits (b·H·rows·n) standardised at once (1 MiB in fp32): samples, and the rows of a long
#: sample, are taken in blocks whose temporaries stay in cache (several times faster on CPU).
ROW_CHUNK_ELEMENTS = 1 << 18
#: Element-wise FLOPs counted per logit (scale 1, standardisation 6, Φ 8, head mean 1), per (row, key)
#: of the row reduction, and per key of the floor, gate and union (see :func:`construction_flops`).
FLOPS_PER_LOGIT = 16
FLOPS_PER_ROW_KEY = 2
FLOPS_PER_KEY = 14

#: ``logits(layer, samples)``: layer ``layer``'s pre-softmax logits for the samples ``samples`` (a slice of
#: the batch), ``(b, H, R, n)`` over query positions ``0..R-1`` and key positions ``0..n-1`` (``R, n <= T``).
#: Rows past ``R`` count with weight 0, which is exact when M_{l+1} vanishes there (the top layer needs the
#: CLS row only, since M_L = onehot(CLS)); keys past ``n`` get score 0.
LogitRows = Callable[[int, slice], torch.Tensor]


@dataclass(frozen=True)
class ConcreteMasks:
    """Soft masks ``masks[l]`` = M_l ``(B, T)`` for l = 0..L (M_L = onehot(CLS)), with gates and scores."""

    masks: list[torch.Tensor]
    gates: list[torch.Tensor]  # m_l, l = 0..L-1
    scores: list[torch.Tensor]  # c_l, l = 0..L-1
    valid: torch.Tensor  # (B, T) bool, real tokens

    @property
    def num_layers(self) -> int:
        return len(self.masks) - 1

    def hard(self) -> list[torch.Tensor]:
        """The sets S_l = {M_l ≥ 0.5} as ``(B, T)`` bool masks: nested, CLS in each, no padding."""
        return [(mask >= HARD_THRESHOLD) & self.valid for mask in self.masks]

    def retention(self) -> torch.Tensor:
        """ρ̄: the soft retention the loss targets (see :func:`achieved_retention`)."""
        return achieved_retention(self.masks[1:], self.valid)


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x), accurate in the lower tail (``erfc``), differentiable."""
    return 0.5 * torch.erfc(-x / math.sqrt(2.0))


def uniform_scores(
    logits: torch.Tensor, key_valid: torch.Tensor, *, all_valid: bool | None = None
) -> torch.Tensor:
    """ū ``(b, R, n)``: logits ``(b, H, R, n)`` standardised per head and row over the valid keys
    ``(b, n)``, through Φ, averaged over heads (step 1). ``all_valid``: no key is padding, if known.

    The variance is floored at 1e-24 before the square root: the value is unchanged to float precision,
    but a constant row (a sample with one real token) then has a finite gradient instead of NaN. Without
    autograd the large temporaries are reused in place (the cost is memory traffic, not arithmetic).
    """
    z = logits.float()
    heads = z.shape[1]
    all_valid = bool(key_valid.all()) if all_valid is None else all_valid
    count = key_valid.sum(dim=-1).to(z.dtype)[:, None, None, None] + EPS
    v = None if all_valid else key_valid.to(z.dtype)[:, None, None, :]
    mean = (z if v is None else z * v).sum(dim=-1, keepdim=True) / count
    centred = z - mean
    square = centred * centred
    if v is not None:
        square = square.mul_(v)
    var = square.sum(dim=-1, keepdim=True) / count
    scale = -1.0 / (math.sqrt(2.0) * (var.clamp_min(1e-24).sqrt() + EPS))  # Φ(x) = erfc(-x/√2) / 2
    if torch.is_grad_enabled() and z.requires_grad:
        tails = torch.erfc(centred * scale)
    else:
        tails = centred.mul_(scale).erfc_()
    return tails.sum(dim=1).mul_(0.5 / heads)


def concrete_gate(
    scores: torch.Tensor, p_logit: torch.Tensor, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """m = σ([log π - log(1 - π) + log c - log(1 - c)] / τ), π = σ(p_logit), ε inside each log (step 4)."""
    pi = torch.sigmoid(p_logit)
    prior = torch.log(pi + EPS) - torch.log(1 - pi + EPS)
    return torch.sigmoid((prior + torch.log(scores + EPS) - torch.log(1 - scores + EPS)) / temperature)


def floored_scores(r: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """c = (0.01 + 0.99·r / (max_j r + ε))·a (step 3): pads get 0, every real key at least 0.01."""
    top = r.amax(dim=1, keepdim=True)
    return (FLOOR + (1 - FLOOR) * r / (top + EPS)) * valid.to(r.dtype)


def logits_of_maps(logits: Sequence[torch.Tensor]) -> LogitRows:
    """A :data:`LogitRows` source over precomputed per-layer logits ``(B, H, R, n)``."""
    return lambda layer, samples: logits[layer][samples]


def concrete_masks(
    logits: LogitRows | Sequence[torch.Tensor],
    valid: torch.Tensor,
    p_logits: torch.Tensor,
    *,
    p: float = MIX,
    temperature: float = TEMPERATURE,
    heads: int = 1,
    chunk_elements: int = ROW_CHUNK_ELEMENTS,
    prefix: TokenPrefix | None = None,
) -> ConcreteMasks:
    """Build M_L … M_0 from the top down (steps 1-5 above); differentiable in the logits and ``p_logits``.

    ``p_logits`` holds one entry per layer; ``heads`` only sizes the chunks of samples scored at once
    (``chunk_elements`` logits at most), which bounds memory at inference. [spec] The gate is multiplied
    by a(j), so a padded position is never kept (the reference's gate would let one through only for
    p_logit > ~16). ``prefix`` (default: CLS): M_L = c_L = the readout positions, and the prefix
    positions are held at 1 in every M_l (l < L), so that no selection can drop them.
    """
    source = logits if callable(logits) else logits_of_maps(logits)
    valid = valid.bool()
    batch, length = valid.shape
    num_layers = int(p_logits.shape[0])
    real = valid.to(p_logits.dtype if p_logits.is_floating_point() else torch.float32)
    prefix = prefix or TokenPrefix()
    upper = torch.zeros_like(real)
    upper[:, : prefix.readout] = 1.0  # M_L = the readout (onehot(CLS))
    impact = upper.clone()  # c_L = the readout
    # Prefix tokens beyond the readout are held at 1 below the top (the union carries the readout down).
    extra = prefix.mask(valid) & ~prefix.readout_mask(valid) if prefix.count > prefix.readout else None
    masks, gates, scores = [upper], [], []
    chunks = _sample_chunks(valid, max(1, chunk_elements // max(1, heads * length * length)))
    for layer in range(num_layers - 1, -1, -1):
        weights = upper * ((1 - p) + p * impact)
        total = upper.sum(dim=1, keepdim=True) + EPS
        parts = [
            _key_scores(
                source(layer, samples), weights[samples], valid[samples], length, full, chunk_elements
            )
            for samples, full in chunks
        ]
        r = (parts[0] if len(parts) == 1 else torch.cat(parts)) / total
        impact = floored_scores(r, valid)
        gate = concrete_gate(impact, p_logits[layer], temperature) * real
        upper = torch.maximum(gate, upper)
        if extra is not None:
            upper = upper.masked_fill(extra, 1.0)
        masks.append(upper)
        gates.append(gate)
        scores.append(impact)
    for listed in (masks, gates, scores):
        listed.reverse()
    return ConcreteMasks(masks=masks, gates=gates, scores=scores, valid=valid)


def _sample_chunks(valid: torch.Tensor, per_chunk: int) -> list[tuple[slice, bool]]:
    """Chunks of ``per_chunk`` samples, each with whether it has no padding (asked once, not per layer)."""
    batch = valid.shape[0]
    chunks = [slice(start, min(start + per_chunk, batch)) for start in range(0, batch, per_chunk)]
    return [(samples, bool(valid[samples].all())) for samples in chunks]


def _key_scores(
    logits: torch.Tensor,
    weights: torch.Tensor,
    valid: torch.Tensor,
    length: int,
    all_valid: bool,
    chunk_elements: int,
) -> torch.Tensor:
    """Σ_q weights(q)·ū(q, j) ``(b, T)`` for one chunk, in blocks of rows: rows past R weigh 0, keys past n
    score 0."""
    if logits.dim() != 4 or logits.shape[0] != valid.shape[0] or max(logits.shape[2:]) > length:
        raise ValueError(
            f"logits must be (b={valid.shape[0]}, H, R, n) with R, n <= {length}, got {tuple(logits.shape)}"
        )
    batch, heads, rows, keys = logits.shape
    key_valid = valid[:, :keys]
    step = max(1, chunk_elements // max(1, batch * heads * keys))
    r = None
    for start in range(0, rows, step):
        block = slice(start, min(start + step, rows))
        uniform = uniform_scores(logits[:, :, block], key_valid, all_valid=all_valid)
        part = torch.bmm(weights[:, None, block].to(uniform.dtype), uniform).squeeze(1)
        r = part if r is None else r + part
    return torch.nn.functional.pad(r, (0, length - keys)) if keys < length else r


def achieved_retention(output_masks: Sequence[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """ρ̄: mean over the batch and the L output masks M_1..M_L (the CLS-only M_L included) of
    Σ_j M(j) / Σ_j a(j), i.e. normalised by each sample's real length (text convention, R11)."""
    real = valid.to(output_masks[0].dtype)
    lengths = real.sum(dim=1).clamp_min(1)
    per_layer = torch.stack([(mask * real).sum(dim=1) / lengths for mask in output_masks])
    return per_layer.mean()


def concrete_regularizer(
    p_logits: torch.Tensor,
    p_init: float,
    retention: torch.Tensor,
    *,
    lambda_p: float = LAMBDA_P,
    lambda_r: float = LAMBDA_R,
) -> torch.Tensor:
    """λ_p·Σ_l (p_logit_l - p_init)² + λ_r·(σ(p_init) - ρ̄)²: the loss beside the task loss.

    The retention target is σ(p_init); with λ_r = 1e-3 on text it is effectively p_init, held by λ_p.
    """
    anchor = (p_logits - p_init).square().sum()
    target = 1.0 / (1.0 + math.exp(-p_init))
    return lambda_p * anchor + lambda_r * (target - retention).square()


def binarize(mask: torch.Tensor, *, straight_through: bool = False) -> torch.Tensor:
    """M^hard = 1[M ≥ 0.5] as a float mask; ``straight_through`` passes M's gradient through it.

    Without it the hard mask has no gradient (the reference's hard phase: the p_logits then move only
    through the regulariser, which reads the soft masks).
    """
    hard = (mask >= HARD_THRESHOLD).to(mask.dtype)
    return hard + mask - mask.detach() if straight_through else hard


def construction_flops(num_heads: int, real_lengths: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Per-sample element-wise FLOPs of building the masks: ``rows (B, L)`` logit rows per layer over the
    sample's ``n`` real keys (standardisation, Φ, head mean, row reduction), then each key's gate."""
    n = real_lengths.double().unsqueeze(1)
    m = rows.double()
    per_layer = FLOPS_PER_LOGIT * num_heads * m * n + FLOPS_PER_ROW_KEY * m * n + FLOPS_PER_KEY * n
    return per_layer.sum(dim=1)
