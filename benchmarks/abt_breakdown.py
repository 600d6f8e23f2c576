"""Where ABT's time goes: the ApproxNet's pass, the back-tracking and the sparse pass, timed apart.

On a random-weight model shape with a random-init factor-4 ApproxNet (as ``run_abt_bench.sh``), at one
batch shape: the unmodified HF dense forward; the ApproxNet's dense pass on the runtime (fused attention,
q/k recorded), with its attention kernels alone (SDPA over the ApproxNet's heads, ``--heads``: default the
model's); back-tracking on the
recorded q/k (the rows' scores, reductions and ranking); the sparse pass with the planned sets; the whole
ABT call. Medians of interleaved rounds, ms.

Usage: ``python benchmarks/abt_breakdown.py [--model minilm|bert-base] [--batch-size 1] [--seq-len 512]
[--keep 0.1] [--dtype fp32] [--threads 1] [--heads H] [--output FILE]``.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from _results import command_line, emit
from transformers import BertConfig, BertForSequenceClassification

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.approxnet import ApproxNet
from sttabt.bench import RANDOM_SHAPES, RANDOM_VOCAB, device_info, measure
from sttabt.core.backtrack import backtrack_rows
from sttabt.methods import MethodOptions, build_selector
from sttabt.methods.abt import QueryKeyRecorder, rows_on_demand
from sttabt.runtime import SparseEncoder, TokenSelector
from sttabt.utils import inference


class _Fixed(TokenSelector):
    def __init__(self, plan):
        self._plan = plan

    def plan(self):
        return self._plan


def calls_for(args: argparse.Namespace) -> tuple[dict, object]:
    """The timed calls, and the token plan that the sparse pass runs."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=RANDOM_VOCAB, **RANDOM_SHAPES[args.model])
    model = BertForSequenceClassification(config).eval()
    torch.manual_seed(1)
    approx = ApproxNet.from_teacher(model, 4, heads=args.heads, fingerprint="random")
    ids = torch.randint(1000, RANDOM_VOCAB, (args.batch_size, args.seq_len))
    ids[:, 0] = 101
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    valid = batch["attention_mask"].bool()
    adapter, predictor = HFTextClassifierAdapter(model), SparseEncoder(approx.adapter)
    runtime = SparseEncoder(adapter)
    options = MethodOptions(keep=args.keep, approx="random", extra={"approxnet": approx})
    selector = build_selector("abt", adapter, options)
    shape = approx.adapter
    recorder = QueryKeyRecorder()
    scales = [shape.attention_scale(layer) for layer in range(shape.num_layers)]
    heads, width = shape.num_heads, approx.model.config.hidden_size // shape.num_heads
    qkv = [torch.randn(args.batch_size, heads, args.seq_len, width) for _ in range(3)]
    with inference(torch.device("cpu"), args.dtype):
        predictor(batch, recorder)
        selector.prepare(batch, valid)
    plan = selector.plan()

    def backtracking():
        rows = rows_on_demand(recorder.records, scales, args.seq_len)
        return backtrack_rows(rows, valid, args.keep, shape.num_layers, heads=heads)

    return {
        "hf_dense": lambda: model(**batch).logits,
        "approxnet_pass": lambda: predictor(batch, QueryKeyRecorder()),
        "approxnet_attention_kernels": lambda: [F.scaled_dot_product_attention(*qkv)
                                                for _ in range(shape.num_layers - 1)],
        "backtracking": backtracking,
        "sparse_pass": lambda: runtime(batch, _Fixed(plan)),
        "abt_total": lambda: runtime(batch, selector),
    }, plan  # fmt: skip


def run_header(args: argparse.Namespace) -> dict:
    """What a result of :func:`calls_for`'s setup records about the run: shape, ApproxNet, batch, CPU."""
    return {
        "model": f"random:{args.model}", "approx": "random, factor 4",
        "approx_heads": args.heads or RANDOM_SHAPES[args.model]["num_attention_heads"],
        "batch_size": args.batch_size, "seq_len": args.seq_len, "keep": args.keep, "dtype": args.dtype,
        "threads": args.threads, "device_info": device_info(torch.device("cpu")),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=sorted(RANDOM_SHAPES))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--keep", type=float, default=0.1)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--heads", type=int, default=None, help="ApproxNet heads (default: the model's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    calls, _ = calls_for(args)
    with inference(torch.device("cpu"), args.dtype):
        samples, _ = measure(calls, 1, args.repeats, lambda: None)
    medians = {name: sorted(times)[len(times) // 2] for name, times in samples.items()}
    result = {**run_header(args), "median_ms": medians, "command": command_line("abt_breakdown.py", argv)}
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
