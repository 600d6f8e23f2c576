"""A tiny sentiment task on disk: a random 3-layer BERT teacher with its tokenizer, an ApproxNet, and a
GLUE-style SST-2 folder whose labels follow a few sentiment words (so learned methods have signal)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "film", "was", "a", "plot", "very"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_classifier(root: Path, seed: int) -> Path:
    """A tiny random 3-layer BERT classifier with peaky attention (so thresholds and gates bite)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocab = SPECIAL + WORDS
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=2,
                        initializer_range=0.3)  # fmt: skip
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(root)
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(root)
    return root


def tiny_approx_dir(teacher: Path, root: Path) -> Path:
    from sttabt.approxnet import ApproxNet
    from sttabt.models import load_text_classifier

    model, _ = load_text_classifier(str(teacher))
    torch.manual_seed(1)
    ApproxNet.from_teacher(model, 2).save(root)
    return root


def tiny_sst2(root: Path, train: int = 48, dev: int = 12) -> Path:
    """``root/SST-2/{train,dev}.tsv``; returns ``root`` (a GLUE data directory)."""
    (root / "SST-2").mkdir()
    for split, n, seed in (("train", train, 0), ("dev", dev, 1)):
        rng = random.Random(seed)
        rows = []
        for i in range(n):
            label = i % 2
            words = rng.sample(WORDS[6:], rng.randint(3, 6)) + [
                rng.choice(WORDS[:3] if label else WORDS[3:6])
            ]
            rng.shuffle(words)
            rows.append(f"{' '.join(words)}\t{label}\n")
        (root / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(rows))
    return root
