"""Count the torch operators one forward issues: HF dense vs the runtime's dense, top-k and ABT passes.

At batch 1 a forward of a small model is a few hundred small ops, each costing microseconds whatever its
size, so the op count is a cost of its own. This counts the top-level ATen calls (a ``TorchDispatchMode``
sees each once) of one forward of a random-weight MiniLM-L6-shaped BERT at batch 1. ABT runs with a
random-init factor-4 ApproxNet (its pass and the set construction are part of the forward).

Usage: ``python benchmarks/count_ops.py [--seq-len 128] [--keep 0.25] [--abt-keep 0.1] [--output FILE]``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch
from _results import command_line, emit
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import BertConfig, BertForSequenceClassification

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.methods.registry import MethodOptions, build_selector
from sttabt.runtime import SparseEncoder


class OpLog(TorchDispatchMode):
    """Records the name of every ATen operator called while active."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def count(call) -> Counter:
    call()  # warm: lazy initialisation is not part of a forward
    with OpLog() as log:
        call()
    return Counter(log.names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--keep", type=float, default=0.25)
    parser.add_argument("--abt-keep", type=float, default=0.1)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536)
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(1000, 30000, (1, args.seq_len))
    ids[:, 0] = 101
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    adapter = HFTextClassifierAdapter(model)
    runtime = SparseEncoder(adapter)
    dense = build_selector("dense", adapter)
    topk = build_selector("topk", adapter, MethodOptions(keep=args.keep, schedule="constant"))
    from sttabt.approxnet import ApproxNet

    approx = ApproxNet.from_teacher(model, 4, fingerprint="random")
    abt_options = MethodOptions(keep=args.abt_keep, approx="random", extra={"approxnet": approx})
    abt = build_selector("abt", adapter, abt_options)
    with torch.inference_mode():
        counts = {
            "hf_dense": count(lambda: model(**batch)),
            "runtime_dense": count(lambda: runtime(batch, dense)),
            "topk": count(lambda: runtime(batch, topk)),
            "abt": count(lambda: runtime(batch, abt)),
        }
    result = {
        "model": "random MiniLM-L6 shape (6 x 384, 12 heads, FFN 1536)",
        "batch_size": 1,
        "seq_len": args.seq_len,
        "keep": args.keep,
        "abt_keep": args.abt_keep,
        "total_ops": {name: sum(c.values()) for name, c in counts.items()},
        "ops": {name: dict(c.most_common()) for name, c in counts.items()},
        "command": command_line("count_ops.py", argv),
    }
    emit(result, args.output, summary=result["total_ops"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
