"""``sttabt sweep``: accuracy / retention / FLOPs over keep ratios for ABT, the ABT oracle and top-k."""

from __future__ import annotations

import argparse
from pathlib import Path

from sttabt import validate
from sttabt.commands.common import DATA_DIR_HELP, SPLIT_HELP, add_overwrite_argument, add_runtime_arguments
from sttabt.errors import SttabtError
from sttabt.evaluate import EvalConfig
from sttabt.sweep import DEFAULT_KEEPS, SWEEP_METHODS, check_sweep, run_sweep

#: A file every earlier sweep leaves in its directory.
OUTPUT_MARKERS = ("summary.json",)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sweep",
        help="sweep keep ratios for several methods; writes a table and a plot",
        description="Evaluates dense, then each method at each keep ratio, on one task split. Writes one "
        "JSON per run, summary.json, summary.md (the table, with the settings) and accuracy_vs_flops.png.",
    )
    parser.add_argument("--model", required=True, help="fine-tuned classifier: Hub id or local directory")
    parser.add_argument("--task", required=True, help="GLUE task (sst2, mrpc, ...) or bbc")
    parser.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    parser.add_argument("--split", default="dev", help=SPLIT_HELP)
    parser.add_argument("--approx", default=None, metavar="DIR", help="distilled ApproxNet (method abt only)")
    parser.add_argument(
        "--methods",
        default=",".join(SWEEP_METHODS),
        help=f"comma list of {', '.join(SWEEP_METHODS)} (default all; top-k targets the oracle's retention)",
    )
    parser.add_argument(
        "--keeps",
        default=",".join(str(k) for k in DEFAULT_KEEPS),
        help=f"comma list of keep ratios in (0, 1] (default {','.join(str(k) for k in DEFAULT_KEEPS)})",
    )
    parser.add_argument("--batch-size", type=validate.positive_int_arg, default=32, help="default 32")
    parser.add_argument(
        "--max-length", type=validate.positive_int_arg, default=128, help="truncate inputs (default 128)"
    )
    parser.add_argument(
        "--limit", type=validate.positive_int_arg, default=None, help="evaluate the first N examples only"
    )
    add_runtime_arguments(parser)
    parser.add_argument("--output-dir", required=True, help="directory for the runs, the table and the plot")
    add_overwrite_argument(
        parser, "write into a non-empty --output-dir that holds other files (they are left alone)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--append",
        action="store_true",
        help="add to the sweep in --output-dir (reuses its dense/oracle runs; refused if its settings "
        "differ); without it an earlier sweep there is replaced",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    keeps = validate.keep_list(args.keeps, "--keeps")
    validate.output_dir(args.output_dir, "--output-dir", owned_by=OUTPUT_MARKERS, overwrite=args.overwrite)
    if args.append and not Path(args.output_dir, "summary.json").is_file():
        raise SttabtError(f"--append: no earlier sweep in {args.output_dir} (no summary.json)")
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
    check_sweep(base, keeps, methods, args.approx)
    command = getattr(args, "command_line", None)
    run_sweep(base, args.output_dir, keeps, methods, args.approx, append=args.append, command=command)
    print(Path(args.output_dir, "summary.md").read_text())
    return 0
