"""How the demo's ApproxNet settings were chosen: distil one setting on the demo's teacher, record its KL.

    python benchmarks/demo_approx_tuning.py --teacher artifacts/demo/minilm-bbc --lr 2e-3 --batch-size 8 \
        --general-epochs 1 --epochs 3 --name C --results benchmarks/results/demo/approx_tuning.jsonl

Everything else is the demo's (BBC, 400 train articles, 256 tokens, factor 4, seed 0, 64 test articles for
the quality report). One CPU thread, so that runs on a shared machine compare.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--general-epochs", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--name", required=True)
    parser.add_argument("--workdir", default="/tmp/approx-tuning")
    parser.add_argument("--results", required=True, help="JSON lines file to append the record to")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from sttabt.train.distill import DistillConfig, distill

    config = DistillConfig(
        teacher=args.teacher, task="bbc", output=str(Path(args.workdir) / args.name), factor=4,
        general_epochs=args.general_epochs, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        max_length=256, max_train_examples=400, seed=0, device="cpu", quality_examples=64, progress=False,
    )  # fmt: skip
    started = time.perf_counter()
    record = distill(config)
    stages = record["stages"]
    line = {
        "name": args.name,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "general_epochs": args.general_epochs,
        "epochs": args.epochs,
        "dev_kl": {k: v["kl"] for k, v in record["quality"].items() if isinstance(v, dict)},
        "heldout_kl_per_evaluation": {
            k: [e["heldout_kl"] for e in s["evaluations"]] for k, s in stages.items()
        },
        "steps": {k: s["steps"] for k, s in stages.items()},
        "wall_seconds": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
    }
    with open(args.results, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
    print(json.dumps(line))


if __name__ == "__main__":
    main()
