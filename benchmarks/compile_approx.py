"""Does ``torch.compile`` speed up ABT's fixed-shape part, the ApproxNet's dense pass? Measured, not assumed.

Times a random-init factor-4 ApproxNet of the MiniLM-L6 shape (6 x 96, 12 heads, FFN 384: what ABT runs
once per batch at full length) eagerly and compiled (inductor, ``dynamic=False``), at batch 1 and the given
lengths, and the cost of the first compiled call. Also times the attention kernel alone (12 heads, head
dim 8): SDPA against a compiled explicit softmax attention, and SDPA at the teacher's head dim 32 (the cost
of softmax attention is set by H·n², not by the head dim). Every new input shape recompiles.

Usage: ``python benchmarks/compile_approx.py [--lengths 64,128,512] [--threads 1] [--output FILE]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from _results import command_line, emit
from transformers import BertConfig, BertForSequenceClassification

from sttabt.bench import device_info


def median_ms(call, repeats: int = 20) -> float:
    call()
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.matmul(scores.softmax(dim=-1), v)


def first_call_s(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure_length(model: torch.nn.Module, length: int) -> dict[str, float]:
    ids = torch.randint(1000, 30000, (1, length))
    ids[:, 0] = 101
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    compiled = torch.compile(model, dynamic=False)
    q, k, v = (torch.randn(1, 12, length, 8) for _ in range(3))
    attention = torch.compile(explicit_attention, dynamic=False)
    with torch.inference_mode():
        row = {"seq_len": length, "eager_ms": median_ms(lambda: model(**batch).logits)}
        row["compile_first_call_s"] = first_call_s(lambda: compiled(**batch))
        row["compiled_ms"] = median_ms(lambda: compiled(**batch).logits)
        row["sdpa_ms"] = median_ms(lambda: F.scaled_dot_product_attention(q, k, v))
        wide = [torch.randn(1, 12, length, 32) for _ in range(3)]  # the teacher's own head dim (MiniLM)
        row["sdpa_head_dim_32_ms"] = median_ms(lambda: F.scaled_dot_product_attention(*wide))
        row["attention_compile_first_call_s"] = first_call_s(lambda: attention(q, k, v))
        row["compiled_explicit_attention_ms"] = median_ms(lambda: attention(q, k, v))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="64,128,512")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=6, hidden_size=96, num_attention_heads=12, intermediate_size=384)
    model = BertForSequenceClassification(config).eval()
    rows = [measure_length(model, int(length)) for length in args.lengths.split(",")]
    result = {
        "model": "random ApproxNet shape of MiniLM-L6 at factor 4 (6 x 96, 12 heads of dim 8, FFN 384)",
        "batch_size": 1,
        "threads": args.threads,
        "device_info": device_info(torch.device("cpu")),
        "torch": torch.__version__,
        "rows": rows,
        "command": command_line("compile_approx.py", argv),
    }
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
