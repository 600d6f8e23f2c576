"""How fast the CPU's matrix products run at the row counts token pruning leaves, and what autocast costs.

Pruning at batch 1 turns a layer's ``(n, d) @ (d, d')`` products into ones with fewer rows, and the
weights still have to be read once per product. This measures, with the model's own shapes:

* ``rows``: GFLOP/s of ``F.linear`` for 1..512 rows, with one weight reused (it stays in cache) and
  cycling through as many distinct layers' weights as the model has (they are streamed from memory,
  as in a real forward), in fp32 and bf16;
* ``packed``: fp32 ``F.linear`` against MKL's pre-packed weights (``torch.ops.mkl._mkl_linear``, packed
  for that row count; when this torch has it), all layers' weights streamed, interleaved rounds;
* ``autocast``: one linear on 32 rows under bf16 autocast inside ``torch.inference_mode`` (autocast does
  not reuse its weight copies there) and inside ``torch.no_grad`` (it does), against plain bf16 tensors.

Usage: ``python benchmarks/gemm_rows.py [--threads 1] [--output benchmarks/results/gemm/rows.json]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sttabt.bench import device_info, measure
from sttabt.utils import atomic_write_json

#: (name, hidden, intermediate, layers) of the benchmarked encoder shapes.
SHAPES = [("minilm", 384, 1536, 6), ("bert-base", 768, 3072, 12)]
ROWS = [1, 8, 32, 64, 128, 512]


def median_us(call: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def layer_weights(hidden: int, intermediate: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """One encoder layer's linear weights: Q, K, V, attention output, FFN in and out."""
    shapes = [(hidden, hidden)] * 4 + [(intermediate, hidden), (hidden, intermediate)]
    return [torch.randn(out_features, in_features).to(dtype) for out_features, in_features in shapes]


def run_linears(layers: list[list[torch.Tensor]], inputs: dict[int, torch.Tensor]) -> None:
    """Every weight of ``layers`` applied once, to the input of its width."""
    for layer in layers:
        for weight in layer:
            F.linear(inputs[weight.shape[1]], weight)


def rows_table(repeats: int) -> list[dict]:
    results = []
    for name, hidden, intermediate, depth in SHAPES:
        for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            model = [layer_weights(hidden, intermediate, dtype) for _ in range(depth)]
            reused = [model[0]] * depth
            for rows in ROWS:
                inputs = {width: torch.randn(rows, width).to(dtype) for width in (hidden, intermediate)}
                macs = rows * sum(w.numel() for w in model[0]) * depth
                cached = median_us(functools.partial(run_linears, reused, inputs), repeats)
                streamed = median_us(functools.partial(run_linears, model, inputs), repeats)
                results.append({
                    "shape": name, "dtype": dtype_name, "rows": rows,
                    "cached_gflops": 2 * macs / cached / 1e3, "streamed_gflops": 2 * macs / streamed / 1e3,
                    "cached_us": cached, "streamed_us": streamed,
                    "weight_mb": sum(w.numel() * w.element_size() for layer in model for w in layer) / 2**20,
                })  # fmt: skip
    return results


def packed_table(repeats: int) -> list[dict]:
    """fp32 GFLOP/s of every layer's linears with plain weights and with MKL-packed ones, per row count."""
    packed_linear = getattr(torch.ops.mkl, "_mkl_linear", None)
    if packed_linear is None:
        return []
    results = []
    for name, hidden, intermediate, depth in SHAPES:
        model = [layer_weights(hidden, intermediate, torch.float32) for _ in range(depth)]
        weights = [weight for layer in model for weight in layer]
        for rows in ROWS:
            inputs = {width: torch.randn(rows, width) for width in (hidden, intermediate)}
            packed = [(torch.ops.mkl._mkl_reorder_linear_weight(w, rows), w) for w in weights]

            def run_packed(packed=packed, inputs=inputs, rows=rows) -> None:
                for packed_weight, weight in packed:
                    packed_linear(inputs[weight.shape[1]], packed_weight, weight, None, rows)

            calls = {"linear": functools.partial(run_linears, model, inputs), "mkl_packed": run_packed}
            samples, _ = measure(calls, 3, repeats, lambda: None)  # interleaved rounds, ms
            flops = 2 * rows * sum(w.numel() for w in weights)
            rates = {f"{call}_gflops": flops / statistics.median(ms) / 1e6 for call, ms in samples.items()}
            results.append({"shape": name, "rows": rows, **rates})
    return results


def autocast_table(repeats: int) -> dict:
    layer = torch.nn.Linear(768, 768)
    x = torch.randn(32, 768)
    plain_weight, plain_bias = layer.weight.detach().bfloat16(), layer.bias.detach().bfloat16()
    x_bf16 = x.bfloat16()
    out = {}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out["inference_mode_autocast_us"] = median_us(lambda: layer(x), repeats)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out["no_grad_autocast_us"] = median_us(lambda: layer(x), repeats)
    with torch.inference_mode():
        out["plain_bf16_us"] = median_us(lambda: F.linear(x_bf16, plain_weight, plain_bias), repeats)
        out["plain_fp32_us"] = median_us(lambda: layer(x), repeats)
    out["shape"] = "768x768 linear on 32 rows"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", default="benchmarks/results/gemm/rows.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    result = {
        "device_info": device_info(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows_table(args.repeats),
        "packed": packed_table(args.repeats),
        "autocast": autocast_table(args.repeats * 10),
        "command": "python benchmarks/gemm_rows.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    atomic_write_json(args.output, result)
    for r in result["rows"]:
        print(
            f"{r['shape']:9s} {r['dtype']} rows {r['rows']:4d}: cached {r['cached_gflops']:6.1f} GFLOP/s, "
            f"streamed {r['streamed_gflops']:6.1f} GFLOP/s ({r['weight_mb']:.0f} MB of weights)"
        )
    for r in result["packed"]:
        print(f"{r['shape']:9s} fp32 rows {r['rows']:4d}: linear {r['linear_gflops']:6.1f}, "
              f"MKL packed {r['mkl_packed_gflops']:6.1f} GFLOP/s")  # fmt: skip
    print(json.dumps(result["autocast"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
