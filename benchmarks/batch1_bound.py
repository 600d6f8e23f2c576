"""What bounds ABT at batch 1 on short inputs: where the time of each part of one call goes.

``torch.profiler`` over the HF dense forward, the ApproxNet's pass and the sparse pass of one batch-1 ABT
call, on the random-weight shape and random ApproxNet of ``abt_breakdown.py``: ms per call, the time in
``addmm``, aten ops per call and the encoder's GEMM rate, with the plan's kept rows per layer (the sparse
pass's linear MACs follow from them). ``gemm_rows.py`` measures the same GEMMs without the model.

Usage: ``python benchmarks/batch1_bound.py [--model minilm] [--seq-len 128] [--keep 0.1] [--heads 4]
[--threads 1] [--output FILE]`` (fp32).
"""

from __future__ import annotations

import argparse
import sys

import torch
from _results import command_line, emit
from abt_breakdown import calls_for, run_header
from torch.profiler import ProfilerActivity, profile

from sttabt.bench import RANDOM_SHAPES
from sttabt.utils import inference


def encoder_linear_macs(rows: list[int], hidden: int, inner: int) -> int:
    """Linear MACs of a run whose layer l holds ``rows[l]`` keys and outputs ``rows[l+1]`` tokens."""
    keys, outputs = rows[:-1], rows[1:]
    per_output = 2 * hidden**2 + 2 * hidden * inner  # query and output projections + FFN pair, per kept token
    return sum(2 * k * hidden**2 + q * per_output for k, q in zip(keys, outputs, strict=True))


def profiled(call, calls_per_run: int = 10) -> dict:
    """ms per call, ``addmm`` share and aten ops per call (nested included), from ``torch.profiler``.

    Five warm-up calls come first, so one-off allocation is not profiled.
    """
    for _ in range(5):
        call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls_per_run):
            call()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    addmm = sum(e.self_cpu_time_total for e in events if e.key == "aten::addmm")
    aten_ops = sum(e.count for e in events if e.key.startswith("aten::"))
    return {
        "ms_per_call": round(total / calls_per_run / 1e3, 2),
        "addmm_ms_per_call": round(addmm / calls_per_run / 1e3, 2),
        "addmm_share": round(addmm / total, 3),
        "aten_ops_per_call": round(aten_ops / calls_per_run),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", choices=sorted(RANDOM_SHAPES))
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--keep", type=float, default=0.1)
    parser.add_argument("--heads", type=int, default=4, help="ApproxNet heads")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = RANDOM_SHAPES[args.model]
    hidden, inner = shape["hidden_size"], shape["intermediate_size"]
    run = argparse.Namespace(model=args.model, batch_size=1, seq_len=args.seq_len, keep=args.keep,
                             dtype="fp32", threads=args.threads, heads=args.heads)  # fmt: skip
    calls, plan = calls_for(run)
    rows = [int(s.sum()) for s in plan.key_sets]
    parts = {}
    with inference(torch.device("cpu"), "fp32"):
        for name in ("hf_dense", "approxnet_pass", "sparse_pass"):
            parts[name] = profiled(calls[name])
    macs = {"hf_dense": encoder_linear_macs([args.seq_len] * len(rows), hidden, inner),
            "sparse_pass": encoder_linear_macs(rows, hidden, inner)}  # fmt: skip
    for name, count in macs.items():
        parts[name]["encoder_linear_gflops"] = round(2 * count / parts[name]["addmm_ms_per_call"] / 1e6, 1)
    result = {
        **run_header(run), "plan_rows_per_layer": rows, "profile": parts,
        "note": "encoder_linear_gflops counts the encoder's linear layers only (not pooler/classifier), so "
                "it slightly overstates the rate; the profiler's own overhead is included in ms_per_call",
        "command": command_line("batch1_bound.py", argv),
    }  # fmt: skip
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
