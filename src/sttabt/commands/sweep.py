"""``sttabt sweep``: accuracy / retention / FLOPs over keep ratios for ABT, the ABT oracle and top-k."""

from __future__ import annotations

import argparse
from pathlib import Path

from sttabt.commands.common import add_runtime_arguments
from sttabt.errors import SttabtError
from sttabt.evaluate import EvalConfig
from sttabt.sweep import DEFAULT_KEEPS, run_sweep


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help="sweep keep ratios for several methods; writes a table and a plot")
    parser.add_argument("--model", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--approx", default=None, help="ApproxNet directory (needed for method abt)")
    parser.add_argument("--methods", default="abt,abt-oracle,topk")
    parser.add_argument("--keeps", default=",".join(str(k) for k in DEFAULT_KEEPS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None)
    add_runtime_arguments(parser)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--append", action="store_true", help="add to the sweep in --output-dir (reuses dense/oracle runs)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - {"abt", "abt-oracle", "topk"})
    if unknown:
        raise SttabtError(f"sweep supports methods abt, abt-oracle, topk; got {', '.join(unknown)}")
    if "abt" in methods and not args.approx:
        raise SttabtError("method abt needs --approx DIR")
    try:
        keeps = [float(k) for k in args.keeps.split(",")]
    except ValueError as exc:
        raise SttabtError(f"--keeps must be a comma list of ratios, got {args.keeps!r}") from exc
    base = EvalConfig(
        model=args.model,
        task=args.task,
        data_dir=args.data_dir,
        split=args.split,
        batch_size=args.batch_size,
        max_length=args.max_length,
        limit=args.limit,
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
    )
    run_sweep(base, args.output_dir, keeps, methods, args.approx, append=args.append)
    print(Path(args.output_dir, "summary.md").read_text())
    return 0
