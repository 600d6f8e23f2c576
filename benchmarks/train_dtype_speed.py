"""Is bf16 autocast training faster than fp32 on this CPU? Interleaved `sttabt finetune` runs on one slice.

Each round runs the same short fine-tune (same examples, seed and settings) once per dtype, alternating, and
reads the train examples/s from its train_log.json; the ratio is taken per round, so a machine that gets
slower or faster during the run moves both sides alike.

    python benchmarks/train_dtype_speed.py --task sst2 --examples 1500 --rounds 2 \
        --output benchmarks/results/sst2/train_dtype_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _results import command_line, emit

from sttabt.provenance import run_provenance


def finetune_speed(args: argparse.Namespace, dtype: str, output: Path) -> dict:
    """One short fine-tune in a subprocess; its train throughput and loss from train_log.json."""
    cmd = [sys.executable, "-m", "sttabt", "finetune", "--model", args.model, "--task", args.task,
           "--output", str(output), "--epochs", "1", "--max-train-examples", str(args.examples),
           "--heldout-fraction", "0", "--no-dev-eval", "--no-progress", "--max-length", str(args.max_length),
           "--batch-size", str(args.batch_size), "--group-by-length", "--dtype", dtype, "--seed", "0"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    log = json.loads((output / "train_log.json").read_text())
    epoch = log["epochs"][0]
    return {"dtype": dtype, "train_examples_per_s": epoch["train_examples_per_s"],
            "train_seconds": epoch["train_seconds"], "train_loss": epoch["train_loss"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--examples", type=int, default=1500)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    runs, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            pair = {dtype: finetune_speed(args, dtype, Path(tmp) / f"{dtype}-{round_index}")
                    for dtype in ("fp32", "bf16")}
            runs += [{"round": round_index, **run} for run in pair.values()]
            ratios.append(pair["bf16"]["train_examples_per_s"] / pair["fp32"]["train_examples_per_s"])
    result = {
        "command": command_line("train_dtype_speed.py", argv),
        "settings": vars(args),
        "runs": runs,
        "bf16_over_fp32_speed": {"per_round": ratios, "median": statistics.median(ratios)},
        "environment": run_provenance(torch.device("cpu")),
    }
    emit(result, args.output, summary={"bf16_over_fp32_speed": result["bf16_over_fp32_speed"]})


if __name__ == "__main__":
    main()
