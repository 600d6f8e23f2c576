"""What an ApproxNet with fewer heads would save: its dense pass timed at 12, 4, 2 and 1 heads.

ABT's ApproxNet keeps the teacher's head count, and its full-length softmax over H·n² scores dominates ABT
on CPU (see ``abt_breakdown.py``). Back-tracking only reads head-averaged attention, so a narrower-headed
ApproxNet could predict it; this measures the time such a pass would take (random weights: speed does not
depend on them), not its accuracy, which would need its own distillation.

Usage: ``python benchmarks/approx_heads.py [--teacher minilm|bert-base] [--seq-len 512] [--dtype fp32]
[--threads 1] [--output FILE]``.
"""

from __future__ import annotations

import argparse

import torch
from _results import command_line, emit
from transformers import BertConfig, BertForSequenceClassification

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.bench import RANDOM_SHAPES, RANDOM_VOCAB, device_info, measure
from sttabt.methods.abt import QueryKeyRecorder
from sttabt.runtime import SparseEncoder
from sttabt.utils import inference

FACTOR = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="minilm", choices=sorted(RANDOM_SHAPES))
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = RANDOM_SHAPES[args.teacher]
    teacher = BertForSequenceClassification(BertConfig(vocab_size=RANDOM_VOCAB, **shape)).eval()
    ids = torch.randint(1000, RANDOM_VOCAB, (args.batch_size, args.seq_len))
    ids[:, 0] = 101
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    calls = {"teacher_hf_dense": lambda: teacher(**batch).logits}
    for heads in (12, 4, 2, 1):
        small = dict(shape, hidden_size=shape["hidden_size"] // FACTOR, num_attention_heads=heads,
                     intermediate_size=shape["intermediate_size"] // FACTOR)  # fmt: skip
        runner = SparseEncoder(HFTextClassifierAdapter(
            BertForSequenceClassification(BertConfig(vocab_size=RANDOM_VOCAB, **small)).eval()
        ))  # fmt: skip
        calls[f"approxnet_pass_{heads}_heads"] = lambda runner=runner: runner(batch, QueryKeyRecorder())
    with inference(torch.device("cpu"), args.dtype):
        samples, _ = measure(calls, 1, args.repeats, lambda: None)
    result = {
        "teacher": f"random:{args.teacher}", "factor": FACTOR, "batch_size": args.batch_size,
        "seq_len": args.seq_len, "dtype": args.dtype, "threads": args.threads,
        "device_info": device_info(torch.device("cpu")),
        "median_ms": {name: sorted(times)[len(times) // 2] for name, times in samples.items()},
        "command": command_line("approx_heads.py", argv),
    }  # fmt: skip
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
