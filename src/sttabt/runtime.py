"""The sparse-token runtime: runs an encoder with per-sample token sets, physically gathered.

For layer l the runtime holds the hidden states of the key/value set S_l only (compacted, padded to the
batch maximum with a key mask). A :class:`TokenSelector` decides, per layer, either *before* the layer
(planned: ABT and concrete masking give S_{l+1} up front) or *after* its attention (online: top-k and LTP
look at the layer's attention and pick the tokens that continue). Queries, the attention-output
projection and the FFN then run on the chosen tokens only, and the next layer sees only those.

Invariants enforced here, whatever the selector returns:
* the adapter's P prefix tokens (positions 0..P-1: CLS, a distillation token, registers; P = 1 for text)
  are in every set S_0..S_{L-1}, and padding is in none;
* sets are nested (a layer can only keep tokens it has);
* the last layer computes the readout tokens only (positions 0..R-1, the ones the head reads; CLS).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from sttabt.adapters.base import EncoderAdapter
from sttabt.adapters.lookup import adapter_for
from sttabt.core.flops import CostReport, EncoderShape, encoder_cost
from sttabt.core.tokens import CompactIndex, RowSelection, compact, expand, gather_tokens, relative_index
from sttabt.errors import SttabtError


@dataclass
class LayerView:
    """What a selector sees of the running layer l (all masks are ``(b, T)`` over original positions).

    A view may cover a slice of the batch only (``samples``): the runtime computes attention in chunks of
    samples so that ``(B, H, n, n)`` probabilities are never held for a whole batch at once.
    """

    layer: int
    valid: torch.Tensor  # real tokens
    key_mask: torch.Tensor  # S_l
    query_mask: torch.Tensor  # the tokens whose attention rows were computed
    keys: CompactIndex  # compact layout of S_l (columns of the attention)
    queries: CompactIndex  # compact layout of the query rows
    samples: slice = field(default_factory=lambda: slice(None))  # the samples of the batch this view covers

    def chunk(self, samples: slice) -> LayerView:
        """The same layer seen for the samples ``samples`` of this view."""
        keys = self.keys.chunk(samples)
        same = self.queries is self.keys  # every key is a query: keep saying so
        queries = keys if same else self.queries.chunk(samples)
        key_mask = self.key_mask[samples]
        query_mask = key_mask if same else self.query_mask[samples]
        return LayerView(self.layer, self.valid[samples], key_mask, query_mask, keys, queries, samples)


class TokenSelector:
    """Base class of all pruning methods: override the hooks a method needs.

    Planned methods override :meth:`input_mask` / :meth:`query_mask`; online methods override
    :meth:`wants_attention` and :meth:`after_attention`. All masks are ``(B, T)`` over original
    positions; the runtime intersects them with what the layer has and adds the prefix tokens back.
    """

    name = "dense"

    def prepare(self, batch: Mapping[str, torch.Tensor], valid: torch.Tensor) -> None:
        """Called once per batch before layer 0 (e.g. run the ApproxNet and plan every set)."""

    def input_mask(self, valid: torch.Tensor) -> torch.Tensor | None:
        """S_0, the tokens layer 0 reads; ``None`` keeps every real token."""
        return None

    def query_mask(self, layer: int, key_mask: torch.Tensor) -> torch.Tensor | None:
        """S_{l+1}, the tokens layer l must output, known before the layer runs; ``None`` = all of S_l."""
        return None

    def plan(self) -> TokenPlan | None:
        """Every set S_0..S_L at once, when :meth:`prepare` already knows them (then :meth:`input_mask` and
        :meth:`query_mask` are not asked): the runtime uses the plan's layouts as they are, checked once."""
        return None

    def wants_attention(self, layer: int) -> bool:
        """Whether :meth:`after_attention` needs layer ``layer``'s attention probabilities."""
        return False

    def wants_queries_keys(self, layer: int) -> bool:
        """Whether :meth:`after_qkv` wants layer ``layer``'s queries and keys."""
        return False

    def after_qkv(self, view: LayerView, q: torch.Tensor, k: torch.Tensor) -> None:
        """Sees a layer's queries ``(b, H, n_q, d_h)`` and keys ``(b, H, n_k, d_h)`` before attention.

        For sources of attention rows on demand: keeping q and k costs nothing, and any attention row can
        be recomputed from them later, while the layer itself runs fused attention (no probabilities).
        """

    def after_attention(self, view: LayerView, probs: torch.Tensor) -> torch.Tensor | RowSelection | None:
        """Online decision after attention: the tokens that continue (``None`` = all query rows).

        Either a ``(b, T)`` membership mask, or a :class:`~sttabt.core.tokens.RowSelection` of rows of
        ``view.queries`` (cheaper: no round trip through masks; :func:`~sttabt.core.tokens.top_rows`
        builds one from per-row scores). ``probs`` is ``(b, H, n_q, n_k)`` in the compact layouts
        ``view.queries`` / ``view.keys``. The
        runtime calls this once per *chunk of samples* (``view.samples``), so a decision must depend on
        each sample alone, which batch invariance requires anyway. A selection keeps the P prefix rows
        (the first P query rows). Also called for the last layer (whose only queries are the readout
        tokens) when :meth:`wants_attention` says so; a selection returned there is ignored.
        """
        return None

    def overhead(self) -> Overhead | None:
        """Per-sample ``(macs, elementwise_flops)`` this method spent on the last batch, if any.

        May be a function returning them, so that the bookkeeping runs only when the cost is asked for,
        outside timed forwards (it must not read state that the next batch overwrites).
        """
        return None

    def count_overhead(self, counts: torch.Tensor) -> torch.Tensor | None:
        """Per-sample element-wise FLOPs that follow from the run's counts ``(B, L, 3)`` alone (e.g. scoring).

        Evaluated lazily, after the forward, so bookkeeping stays out of timed runs.
        """
        return None


Overhead = tuple[torch.Tensor, torch.Tensor] | Callable[[], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TokenPlan:
    """All sets of a run, known before it: masks ``key_sets[l]`` = S_l ``(B, T)`` for l = 0..L (S_L = the
    readout) and ``layouts[l] = compact(key_sets[l])``, so that the runtime compacts nothing itself."""

    key_sets: list[torch.Tensor]
    layouts: list[CompactIndex]


@dataclass
class SparseOutput:
    """Result of one sparse run. Counts and cost are derived on first access, outside the forward."""

    logits: torch.Tensor
    key_sets: list[torch.Tensor]  # S_0..S_L as (B, T) masks; S_L = the readout tokens
    layer_sizes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # per layer: valid masks of K, Q, O
    real_lengths: torch.Tensor  # (B,)
    shape: EncoderShape
    overhead: Overhead | None = None
    count_overhead: Callable[[torch.Tensor], torch.Tensor] | None = None
    attentions: list[torch.Tensor] = field(default_factory=list)  # when requested (dense layouts)

    @cached_property
    def counts(self) -> torch.Tensor:
        """``(B, L, 3)``: keys, attention queries and outputs per layer."""
        per_layer = [torch.stack([m.sum(dim=1) for m in sizes], dim=-1) for sizes in self.layer_sizes]
        return torch.stack(per_layer, dim=1)

    @cached_property
    def cost(self) -> CostReport:
        """Per-example MACs/FLOPs of this run, including the method's declared overhead."""
        overhead = self.overhead() if callable(self.overhead) else self.overhead
        macs, flops = (None, None) if overhead is None else overhead
        extra = None if self.count_overhead is None else self.count_overhead(self.counts)
        if extra is not None:
            flops = extra if flops is None else flops + extra
        return encoder_cost(self.shape, self.counts, self.real_lengths, macs, flops)

    def kept_positions(self, sample: int) -> list[list[int]]:
        """Original positions kept by one sample at every layer (its key sets S_0..S_L)."""
        return [s[sample].nonzero().flatten().tolist() for s in self.key_sets]

    def retention(self) -> torch.Tensor:
        """Per-sample mean over layers l = 0..L-1 of |S_l| / real length."""
        layers = torch.stack([s.sum(dim=1) for s in self.key_sets[:-1]], dim=1).double()
        return (layers / self.real_lengths.double().unsqueeze(1)).mean(dim=1)


def attention_probs(
    q: torch.Tensor, k: torch.Tensor, key_valid: torch.Tensor, scale: float, keys_full: bool | None = None
) -> torch.Tensor:
    """Softmax attention probabilities ``(B, H, n_q, n_k)`` in float32 over compact keys with a key mask.

    Without autograd the softmax runs in place on the score buffer: one large allocation instead of two,
    which matters on CPU where a fresh multi-MB buffer costs page faults on first touch. ``keys_full``
    says that no key is padding, when the caller already knows.
    """
    scores = torch.matmul(q * scale, k.transpose(-1, -2))
    if scores.dtype != torch.float32:
        scores = scores.float()
    if not (bool(key_valid.all()) if keys_full is None else keys_full):
        scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    if scores.requires_grad:
        return scores.softmax(dim=-1)
    return torch.ops.aten._softmax.out(scores, -1, False, out=scores)


def fused_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: CompactIndex, scale: float, dropout_p: float
) -> torch.Tensor:
    """``scaled_dot_product_attention`` over compact keys; no mask at all when no key is padding."""
    mask = None if keys.full else keys.valid[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def gather_head_rows(tensor: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """Gather query rows ``rel (B, m)`` of a per-head tensor ``(B, H, n, X)``.

    Whole rows are copied with one ``index_select`` over the flattened tensor, which is several times
    faster than an element-wise ``gather`` with an expanded index.
    """
    batch, heads, n, width = tensor.shape
    if batch == 1:
        return tensor.index_select(2, rel[0])
    base = torch.arange(batch * heads, device=rel.device).view(batch, heads, 1) * n
    flat = (base + rel[:, None, :]).reshape(-1)
    return tensor.reshape(batch * heads * n, width).index_select(0, flat).view(batch, heads, -1, width)


def _fit_rows(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Cut or zero-pad dim 2 of ``(b, H, m, X)`` to ``width`` rows (rows past a count are padding)."""
    if tensor.shape[2] >= width:
        return tensor[:, :, :width]
    return F.pad(tensor, (0, 0, 0, width - tensor.shape[2]))


def _take_prefix_or_gather(hidden: torch.Tensor, index: CompactIndex) -> torch.Tensor:
    """Gather the members of ``index``; a plain slice when they are the leading positions (right padding)."""
    if index.prefix:
        return hidden[:, : index.positions.shape[1]]
    return gather_tokens(hidden, index.positions)


def _merge_heads(ctx: torch.Tensor) -> torch.Tensor:
    batch, heads, n, head_dim = ctx.shape
    return ctx.transpose(1, 2).reshape(batch, n, heads * head_dim)


def _restrict(requested: torch.Tensor | None, available: torch.Tensor, pinned: torch.Tensor, what: str):
    """Intersect a selector's mask with what is available, refusing tokens that were already removed;
    the ``pinned`` tokens (the prefix) are added back."""
    if requested is None:
        return available
    requested = requested.bool()
    if bool((requested & ~available).any()):
        raise SttabtError(f"{what} asks for tokens that are not in the previous set (sets must be nested)")
    return requested | pinned


def _check_plan(
    plan: TokenPlan, valid: torch.Tensor, readout: torch.Tensor, prefix: int, layers: int
) -> None:
    """One check of a whole plan (a single host sync): nested, no padding, the prefix in every set but
    the last, S_L = readout."""
    if len(plan.key_sets) != layers + 1 or len(plan.layouts) != layers + 1:
        raise SttabtError(f"a token plan needs {layers + 1} sets (S_0..S_L), got {len(plan.key_sets)}")
    sets = torch.stack(plan.key_sets)  # (L+1, B, T)
    broken = (sets[1:] & ~sets[:-1]).any() | (sets & ~valid).any() | ~sets[:-1, :, :prefix].all()
    if bool(broken | (sets[-1] != readout).any()):
        raise SttabtError(
            f"a token plan must be nested, keep CLS (the {prefix} prefix tokens), hold no padding and end "
            "with the readout tokens"
        )


#: Optional batch entry ``(B,)``: the lengths that keep ratios are fractions of, when not the real lengths
#: (the paper's padded-length protocol, :mod:`sttabt.protocol`). Selectors read it; the model never sees it.
RATIO_LENGTHS = "ratio_lengths"
#: Default bound on the attention-probability elements held at once (b·H·n_q·n_k, 16 MiB in fp32).
ATTENTION_CHUNK_ELEMENTS = 1 << 22


class SparseEncoder:
    """Run an adapter's encoder with a token selector. Stateless between calls.

    ``attention_chunk_elements`` bounds the explicit attention probabilities materialised at once for
    selectors that read them: such layers run in chunks of samples, so the maps stay in cache instead of
    streaming a ``(B, H, n, n)`` tensor through memory several times (and paying page faults for it).
    """

    def __init__(
        self, adapter: EncoderAdapter | nn.Module, attention_chunk_elements: int = ATTENTION_CHUNK_ELEMENTS
    ):
        if attention_chunk_elements < 1:
            raise SttabtError(f"attention_chunk_elements must be positive, got {attention_chunk_elements}")
        self.adapter = adapter_for(adapter)  # a model gets its adapter from the one lookup
        self.attention_chunk_elements = attention_chunk_elements

    def __call__(
        self,
        batch: Mapping[str, torch.Tensor],
        selector: TokenSelector | None = None,
        *,
        collect_attentions: bool = False,
    ) -> SparseOutput:
        selector = selector or TokenSelector()
        adapter = self.adapter
        hidden = adapter.embed(batch)
        valid = adapter.valid_mask(batch, hidden).bool()
        prefix = adapter.token_prefix
        if valid.dim() != 2 or valid.shape[1] < prefix.count or not bool(valid[:, : prefix.count].all()):
            raise SttabtError(
                f"every sample must have real leading tokens (CLS, and all {prefix.count} prefix tokens) and "
                "right padding"
            )
        readout, pinned = prefix.readout_mask(valid), prefix.mask(valid)
        real_lengths = valid.sum(dim=1)

        selector.prepare(batch, valid)
        plan = selector.plan()
        if plan is not None:
            _check_plan(plan, valid, readout, prefix.count, adapter.num_layers)
            key_mask, keys = plan.key_sets[0], plan.layouts[0]
        else:
            key_mask = _restrict(selector.input_mask(valid), valid, pinned, "input_mask") & valid
            keys = compact(key_mask)
        hidden = _take_prefix_or_gather(hidden, keys)

        key_sets = [key_mask]
        layer_sizes = []
        attentions: list[torch.Tensor] = []
        dropout = adapter.attention_dropout if adapter.training else (lambda _layer: 0.0)
        for layer in range(adapter.num_layers):
            last = layer == adapter.num_layers - 1
            if plan is not None:
                query_mask, queries = plan.key_sets[layer + 1], plan.layouts[layer + 1]
            else:
                query_mask, queries = self._planned_queries(
                    selector, layer, last, key_mask, keys, readout, pinned
                )
            if queries is keys:
                query_hidden = hidden
            else:
                query_hidden = gather_tokens(hidden, relative_index(key_mask, queries))
            q, k, v = adapter.qkv(layer, hidden, query_hidden)
            if selector.wants_queries_keys(layer):
                selector.after_qkv(LayerView(layer, valid, key_mask, query_mask, keys, queries), q, k)
            scale, drop = adapter.attention_scale(layer), dropout(layer)
            out_mask, outputs = query_mask, queries
            wants = selector.wants_attention(layer)
            if not (collect_attentions or wants):
                ctx = fused_attention(q, k, v, keys, scale, drop)
            else:
                view = LayerView(layer, valid, key_mask, query_mask, keys, queries)
                online = selector if wants else None
                ctx, out_mask, outputs, rel_o, maps = self._attend_with_probs(
                    view, q, k, v, scale, drop, online, not last, (pinned, prefix.count), collect_attentions
                )
                if collect_attentions:
                    attentions.append(maps)
                if rel_o is not None:  # online pruning: the FFN onwards only for the kept rows
                    query_hidden = gather_tokens(query_hidden, rel_o)
            hidden = adapter.finish(layer, _merge_heads(ctx), query_hidden)
            layer_sizes.append((keys.valid, queries.valid, outputs.valid))
            key_mask, keys = out_mask, outputs
            key_sets.append(key_mask)

        logits = adapter.head(hidden[:, : prefix.readout])
        return SparseOutput(
            logits,
            key_sets,
            layer_sizes,
            real_lengths,
            adapter.shape,
            selector.overhead(),
            selector.count_overhead,
            attentions,
        )

    @staticmethod
    def _planned_queries(
        selector: TokenSelector,
        layer: int,
        last: bool,
        key_mask: torch.Tensor,
        keys: CompactIndex,
        readout: torch.Tensor,
        pinned: torch.Tensor,
    ) -> tuple[torch.Tensor, CompactIndex]:
        """The query set of a layer from a selector without a plan (the last layer: the readout only)."""
        if last:
            return readout, compact(readout)
        planned = selector.query_mask(layer, key_mask)
        if planned is None:  # every current token is a query: no gather needed
            return key_mask, keys
        query_mask = _restrict(planned, key_mask, pinned, "query_mask")
        return query_mask, compact(query_mask)

    def _attend_with_probs(
        self,
        view: LayerView,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        scale: float,
        dropout_p: float,
        selector: TokenSelector | None,
        prune: bool,
        pinned: tuple[torch.Tensor, int],
        collect: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, CompactIndex, torch.Tensor | None, torch.Tensor | None]:
        """Attention through explicit probabilities, chunked over samples.

        Each chunk's selector decision is applied right away (A·V only for the rows it keeps), so no
        chunk's probabilities outlive its iteration. Returns the context, the output mask with its compact
        layout, the output rows' places among the query rows (``None`` when nothing was pruned: the
        outputs are then the queries) and, if ``collect``, the dense ``(B, H, T, T)`` maps. ``pinned`` is
        the prefix as a mask and as a count.
        """
        pinned_mask, prefix = pinned
        batch, heads, n_q, _ = q.shape
        step = max(1, self.attention_chunk_elements // max(1, heads * n_q * k.shape[2]))
        length = view.valid.shape[1]
        contexts, kept, maps = [], [], []
        for start in range(0, batch, step):
            rows = slice(start, min(start + step, batch))
            part = view if step >= batch else view.chunk(rows)
            probs = attention_probs(q[rows], k[rows], part.keys.valid, scale, part.keys.full)
            if collect:
                maps.append(_scatter_attention(probs, part, length))
            chosen = selector.after_attention(part, probs) if selector is not None else None
            selection = None
            if chosen is not None and prune:
                selection = _selected_rows(chosen, part, pinned_mask[rows], prefix)
            if selection is not None:
                probs = gather_head_rows(probs, selection[0])
            if dropout_p > 0:
                probs = F.dropout(probs, p=dropout_p)
            contexts.append(torch.matmul(probs.to(v.dtype), v[rows]))
            kept.append(selection)
        collected = (maps[0] if len(maps) == 1 else torch.cat(maps)) if collect else None
        if all(selection is None for selection in kept):
            context = contexts[0] if len(contexts) == 1 else torch.cat(contexts)
            return context, view.query_mask, view.queries, None, collected
        if len(kept) == 1:
            rel, outputs, out_mask = kept[0]
            return contexts[0], out_mask, outputs, rel, collected
        # Chunks share the layout "members sorted, left-aligned"; only their padded widths differ.
        parts = [
            _all_rows(view.chunk(slice(i * step, (i + 1) * step))) if selection is None else selection
            for i, selection in enumerate(kept)
        ]
        width = max(int(part[1].valid.sum(dim=1).max()) for part in parts)
        rel = torch.cat([_fit_columns(part[0], width) for part in parts])
        outputs = CompactIndex(
            torch.cat([_fit_columns(part[1].positions, width) for part in parts]),
            torch.cat([_fit_columns(part[1].valid, width) for part in parts]),
        )
        out_mask = torch.cat([part[2] for part in parts])
        return torch.cat([_fit_rows(c, width) for c in contexts]), out_mask, outputs, rel, collected


def _selected_rows(
    chosen: torch.Tensor | RowSelection, view: LayerView, pinned: torch.Tensor, prefix: int
) -> tuple[torch.Tensor, CompactIndex, torch.Tensor]:
    """A selector's choice as (rows of the query layout, output layout, output mask), checked."""
    if isinstance(chosen, RowSelection):
        _check_prefix_rows(chosen, prefix)
        positions = view.queries.positions.gather(1, chosen.rows)
        outputs = CompactIndex(torch.where(chosen.valid, positions, 0), chosen.valid)
        return chosen.rows, outputs, expand(outputs, view.valid.shape[1])
    out_mask = _restrict(chosen, view.query_mask, pinned, "after_attention")
    outputs = compact(out_mask)
    return relative_index(view.query_mask, outputs), outputs, out_mask


def _check_prefix_rows(chosen: RowSelection, prefix: int) -> None:
    """A row selection must keep rows 0..P-1 (the prefix: CLS first) of every sample."""
    rows = chosen.rows
    if prefix == 1:  # text and plain ViT: one check, as before the prefix was general
        broken = rows.shape[1] == 0 or bool(rows[:, 0].any())
    else:
        leading = torch.arange(prefix, device=rows.device)
        broken = rows.shape[1] < prefix or bool(
            ((rows[:, :prefix] != leading) | ~chosen.valid[:, :prefix]).any()
        )
    if broken:
        raise SttabtError(
            f"after_attention must keep row 0 (the readout token) and all {prefix} prefix rows of each sample"
        )


def _all_rows(view: LayerView) -> tuple[torch.Tensor, CompactIndex, torch.Tensor]:
    """The identity selection of a chunk that kept every query row."""
    width = view.queries.positions.shape[1]
    rel = torch.arange(width, device=view.valid.device).expand(view.valid.shape[0], width)
    return torch.where(view.queries.valid, rel, 0), view.queries, view.query_mask


def _fit_columns(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Cut or zero-pad dim 1 of ``(b, m)`` to ``width`` (entries past a count are padding: 0 / False)."""
    if tensor.shape[1] >= width:
        return tensor[:, :width]
    return F.pad(tensor, (0, width - tensor.shape[1]))


def _scatter_attention(probs: torch.Tensor, view: LayerView, length: int) -> torch.Tensor:
    """Place compact attention ``(B, H, n_q, n_k)`` into a full ``(B, H, T, T)`` map (zeros elsewhere)."""
    batch, heads = probs.shape[:2]
    full = probs.new_zeros(batch, heads, length, length)
    rows = view.queries.positions[:, None, :, None].expand(-1, heads, -1, length)
    cols = view.keys.positions[:, None, None, :].expand(-1, heads, probs.shape[2], -1)
    # Zero padded rows/columns before scattering so they cannot overwrite real entries.
    probs = probs * view.queries.valid[:, None, :, None] * view.keys.valid[:, None, None, :]
    by_row = probs.new_zeros(batch, heads, probs.shape[2], length).scatter_add(3, cols, probs)
    return full.scatter_add(2, rows, by_row)
