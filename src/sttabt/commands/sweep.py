"""``sttabt sweep``: accuracy / retention / FLOPs over keep ratios for ABT, the ABT oracle and top-k."""

from __future__ import annotations

import argparse
from pathlib import Path

from sttabt import validate
from sttabt.commands.common import (
    DATA_DIR_HELP,
    SPLIT_HELP,
    add_overwrite_argument,
    add_protocol_argument,
    add_runtime_arguments,
)
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
        "JSON per run, summary.json, summary.md (the table, with the settings) and accuracy_vs_flops.png. "
        "With --config FILE (TOML or YAML) the sweep is a grid over methods and budgets, learned methods "
        "included (trained first), resumable, with latency, CSV/JSON tables and PNG/SVG plots "
        "(see the README).",
    )
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="a TOML/YAML grid (methods, budgets, training, latency): every other setting "
                        "comes from the file")  # fmt: skip
    parser.add_argument("--model", default=None, help="fine-tuned classifier: Hub id or local directory")
    parser.add_argument("--task", default=None, help="GLUE task (sst2, mrpc, ...) or bbc")
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
    add_protocol_argument(parser)
    parser.add_argument("--output-dir", default=None, help="directory for the runs, the table and the plot")
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
    if args.config is not None:
        return run_config(args)
    missing = [flag for flag in ("model", "task", "output_dir") if getattr(args, flag) is None]
    if missing:
        raise SttabtError(f"sttabt sweep needs --{missing[0].replace('_', '-')} (or --config FILE)")
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
        protocol=args.protocol,
    )
    check_sweep(base, keeps, methods, args.approx)
    command = getattr(args, "command_line", None)
    run_sweep(base, args.output_dir, keeps, methods, args.approx, append=args.append, command=command)
    print(Path(args.output_dir, "summary.md").read_text())
    return 0


#: The flags a --config sweep takes from its file instead; given beside --config they are refused.
CONFIG_OWNS = ("model", "task", "data_dir", "split", "approx", "methods", "keeps", "batch_size", "max_length",
               "limit", "device", "dtype", "output_dir", "overwrite", "append", "protocol")  # fmt: skip


def run_config(args: argparse.Namespace) -> int:
    """``sttabt sweep --config FILE``: the grid of :mod:`sttabt.grid` (resumes from existing point files)."""
    from sttabt.grid import load_grid_config, run_grid

    defaults = argparse.Namespace()
    register_defaults(defaults)
    given = [name for name in CONFIG_OWNS if getattr(args, name) != getattr(defaults, name)]
    if given:
        raise SttabtError(f"--{given[0].replace('_', '-')} cannot be combined with --config: "
                          "set it in the config file")  # fmt: skip
    config = load_grid_config(args.config)
    run_grid(config, command=getattr(args, "command_line", None))
    print(Path(config.output_dir, "summary.md").read_text())
    return 0


def register_defaults(namespace: argparse.Namespace) -> None:
    """The parser's defaults, to tell which flags a user actually gave."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    sub = parser.parse_args(["sweep", "--config", "x"])
    for name in CONFIG_OWNS:
        setattr(namespace, name, getattr(sub, name))
