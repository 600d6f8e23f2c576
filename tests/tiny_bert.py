"""A tiny random BERT classifier, its ApproxNet and random-id batches, shared by the ABT/concrete tests.

``initializer_range=0.3`` makes the attention peaky, so that top-k choices are rarely near-ties.
"""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

VOCAB = 80


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(3)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        num_labels=2, initializer_range=0.3,
    )  # fmt: skip
    return BertForSequenceClassification(config).eval()


def tiny_approx(model: BertForSequenceClassification, heads: int | None = None):
    from sttabt.approxnet import ApproxNet

    torch.manual_seed(0)
    return ApproxNet.from_teacher(model, factor=2, init="interpolate", heads=heads)


def id_batch(lengths: list[int], total: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids, right-padded to ``total`` (default: the longest), with the attention mask."""
    gen = torch.Generator().manual_seed(seed)
    total = total or max(lengths)
    ids = torch.randint(5, VOCAB, (len(lengths), total), generator=gen)
    mask = (torch.arange(total)[None] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}
