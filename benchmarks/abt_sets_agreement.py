"""ABT's token sets and accuracy on real documents: row-only vs full maps, and bf16 vs fp32.

On a trained teacher and its ApproxNet (default: the demo's BBC models under ``artifacts/demo``), for each
keep ratio: accuracy on the BBC test articles with row-only back-tracking (what `sttabt evaluate` runs),
with back-tracking on materialised full attention maps (the implementation before row-only
back-tracking), and under bf16 autocast; and the share of kept tokens the runs have in common.

Usage: ``python benchmarks/abt_sets_agreement.py [--teacher DIR] [--approx DIR] [--keeps 0.1,0.15,0.3]
[--max-length 512] [--limit N] [--output FILE]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _results import command_line, emit

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.approxnet import ApproxNet
from sttabt.bench import device_info
from sttabt.core.backtrack import backtrack
from sttabt.core.tokens import compact
from sttabt.data import batches, encode, load_examples
from sttabt.methods import MethodOptions, build_selector
from sttabt.models import load_text_classifier
from sttabt.runtime import SparseEncoder, TokenPlan, TokenSelector
from sttabt.utils import inference


def shared(reference: list[torch.Tensor], other: list[torch.Tensor]) -> tuple[int, int]:
    """(tokens ``reference`` keeps in S_0..S_{L-1}, of which ``other`` keeps too)."""
    kept = sum(int(s.sum()) for s in reference[:-1])
    both = sum(int((s & t).sum()) for s, t in zip(reference[:-1], other[:-1], strict=True))
    return kept, both


def evaluate_keep(model, approx, data, keep) -> dict:
    adapter = HFTextClassifierAdapter(model)
    runtime, predictor = SparseEncoder(adapter), SparseEncoder(approx.adapter)
    options = MethodOptions(keep=keep, approx="loaded", extra={"approxnet": approx})
    selector = build_selector("abt", adapter, options)
    device = torch.device("cpu")
    correct = {"rows": 0, "full_maps": 0, "bf16": 0}
    counts = {"rows_vs_full": [0, 0], "bf16_vs_fp32": [0, 0]}
    retention = []
    for batch, labels in data:
        valid = batch["attention_mask"].bool()
        with inference(device, "fp32"):
            rows = runtime(batch, selector)
            maps = predictor(batch, collect_attentions=True).attentions
            full = runtime(batch, _Planned(backtrack(maps, valid, keep).key_sets))
        with inference(device, "bf16"):
            bf16 = runtime(batch, selector)
        for name, out in (("rows", rows), ("full_maps", full), ("bf16", bf16)):
            correct[name] += int((out.logits.float().argmax(-1) == labels).sum())
        for name, (a, b) in (("rows_vs_full", (full, rows)), ("bf16_vs_fp32", (rows, bf16))):
            kept, both = shared(a.key_sets, b.key_sets)
            counts[name][0] += kept
            counts[name][1] += both
        retention.append(rows.retention())
    total = sum(len(labels) for _, labels in data)
    return {
        "keep": keep,
        "examples": total,
        "accuracy": {name: 100.0 * value / total for name, value in correct.items()},
        "shared_tokens": {name: both / kept for name, (kept, both) in counts.items()},
        "retention": float(torch.cat(retention).mean()),
    }


class _Planned(TokenSelector):
    """Fixed sets S_0..S_L (from full-map back-tracking) for the runtime."""

    def __init__(self, sets: list[torch.Tensor]):
        self._plan = TokenPlan(sets, [compact(s) for s in sets])

    def plan(self) -> TokenPlan:
        return self._plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="artifacts/demo/minilm-bbc")
    parser.add_argument("--approx", default="artifacts/demo/approx-bbc-f4")
    parser.add_argument("--keeps", default="0.1,0.15,0.3")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    start = time.time()
    model, tokenizer = load_text_classifier(args.teacher)
    model.eval()
    approx = ApproxNet.load(args.approx, teacher=model).eval()
    examples = load_examples("bbc", "test", limit=args.limit)
    features = encode(tokenizer, examples, args.max_length)
    pad = int(tokenizer.pad_token_id or 0)
    data = [(batch, batch.pop("labels")) for batch in batches(features, args.batch_size, pad)]
    rows = [evaluate_keep(model, approx, data, float(keep)) for keep in args.keeps.split(",")]
    result = {
        "teacher": args.teacher,
        "approx": args.approx,
        "task": "bbc",
        "split": "test",
        "max_length": args.max_length,
        "threads": torch.get_num_threads(),
        "device_info": device_info(torch.device("cpu")),
        "rows": rows,
        "seconds": round(time.time() - start, 1),
        "command": command_line("abt_sets_agreement.py", argv),
    }
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
