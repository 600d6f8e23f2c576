"""Collect ``run_approx_heads.sh``'s results into ``summary.json`` and ``summary.md``.

Per ApproxNet head count: its distillation (dev attention KL against its own targets, and the head-mean KL
that back-tracking reads, comparable across head counts), ABT's BBC test accuracy, retention and relative
FLOPs at each keep ratio, and ABT's wall clock against HF dense from each bench run.

Usage: ``python benchmarks/aggregate_approx_heads.py [RESULTS_DIR]`` (default
``benchmarks/results/approx_heads``).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from sttabt.utils import atomic_write_json, atomic_write_text

DEFAULT_DIR = Path(__file__).resolve().parent / "results" / "approx_heads"
EVAL = re.compile(r"eval_h(\d+)_k([\d.]+)\.json")
BENCH = re.compile(r"bench_h(\d+)_k([\d.]+)_b(\d+)_s(\d+)_(\w+)_t(\d+)\.json")
DISTILL = re.compile(r"distill_log_h(\d+)\.json")


def collect(folder: Path) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {"distill": [], "eval": [], "bench": []}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if match := DISTILL.fullmatch(path.name):
            quality = data["quality"]["distilled"]
            rows["distill"].append({
                "heads": int(match[1]), "kl": quality["kl"], "head_mean_kl": quality.get("head_mean_kl"),
                "relative_flops_at_128_tokens": data["approxnet"]["relative_flops_at_128_tokens"],
                "wall_seconds": data.get("wall_seconds"),
            })  # fmt: skip
        elif match := EVAL.fullmatch(path.name):
            rows["eval"].append({
                "heads": int(match[1]), "keep": float(match[2]), "accuracy": data["metrics"]["accuracy"],
                "retention": data["retention"], "relative_flops": data["flops"]["relative"],
                "examples": data["examples"],
            })  # fmt: skip
        elif match := BENCH.fullmatch(path.name):
            timings = data["timings"]
            rows["bench"].append({
                "heads": int(match[1]), "keep": float(match[2]), "batch_size": int(match[3]),
                "seq_len": int(match[4]), "dtype": match[5], "threads": int(match[6]),
                "hf_dense_ms": timings["hf_dense"]["median_ms"], "abt_ms": timings["method"]["median_ms"],
                "speedup": data["speedup"], "ideal_speedup": data["ideal_speedup"],
                "efficiency": data["efficiency"], "cpu": data["device_info"],
            })  # fmt: skip
    for key, order in (("distill", ("heads",)), ("eval", ("heads", "keep")),
                       ("bench", ("dtype", "batch_size", "heads"))):  # fmt: skip
        rows[key].sort(key=lambda row, order=order: tuple(row[k] for k in order))
    return rows


def markdown(rows: dict[str, Any]) -> str:
    lines = ["| heads | dev KL (own targets) | head-mean KL | ApproxNet FLOPs / teacher (128 tok) |",
             "|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows["distill"]:
        mean = "-" if r["head_mean_kl"] is None else f"{r['head_mean_kl']:.4f}"
        lines.append(f"| {r['heads']} | {r['kl']:.4f} | {mean} | {r['relative_flops_at_128_tokens']:.3f} |")
    lines += ["", "| heads | k | BBC test accuracy | retention | relative FLOPs |",
              "|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows["eval"]:
        lines.append(f"| {r['heads']} | {r['keep']} | {100 * r['accuracy']:.2f} "
                     f"| {100 * r['retention']:.1f} % | {100 * r['relative_flops']:.1f} % |")  # fmt: skip
    lines += ["", "| dtype | batch | heads | HF dense ms | ABT ms | speed-up | ideal | efficiency |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows["bench"]:
        lines.append(
            f"| {r['dtype']} | {r['batch_size']} | {r['heads']} | {r['hf_dense_ms']:.1f} | {r['abt_ms']:.1f} "
            f"| {r['speedup']:.2f}x | {r['ideal_speedup']:.2f}x | {r['efficiency']:.2f} |"
        )
    if rows["bench"]:
        cpu = rows["bench"][0]["cpu"]
        lines += ["", f"CPU: {cpu.get('name')}, torch capability {cpu.get('torch_cpu_capability')}, "
                      f"features {', '.join(cpu.get('features', []))}; seq len 512, k = 0.1, "
                      f"{rows['bench'][0]['threads']} thread(s)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(DEFAULT_DIR))
    folder = Path(parser.parse_args(argv).folder)
    rows = collect(folder)
    atomic_write_json(folder / "summary.json", rows)
    text = markdown(rows)
    atomic_write_text(folder / "summary.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
