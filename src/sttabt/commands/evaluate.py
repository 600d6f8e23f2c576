"""``sttabt evaluate``: metrics, retention and FLOPs of a method on a task split."""

from __future__ import annotations

import argparse

from sttabt import validate
from sttabt.commands.common import (
    add_method_arguments,
    add_protocol_argument,
    add_runtime_arguments,
    add_task_arguments,
    method_options_from_args,
)
from sttabt.errors import SttabtError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="evaluate a classifier with a pruning method")
    add_task_arguments(parser)
    add_method_arguments(parser)
    parser.add_argument("--batch-size", type=validate.positive_int_arg, default=32, help="default 32")
    parser.add_argument(
        "--max-length", type=validate.positive_int_arg, default=128, help="truncate inputs (default 128)"
    )
    parser.add_argument(
        "--limit", type=validate.positive_int_arg, default=None, help="evaluate the first N examples only"
    )
    add_runtime_arguments(parser)
    add_protocol_argument(parser)
    parser.add_argument("--output", required=True, help="results.json path")
    parser.add_argument("--predictions", default=None, help="optional preds.jsonl path")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sttabt.evaluate import EvalConfig, run_evaluation, write_outputs

    validate.output_file(args.output, "--output")
    if args.predictions is not None:
        validate.output_file(args.predictions, "--predictions")
        if validate.same_path(args.output, args.predictions):
            raise SttabtError("--output and --predictions name the same file")
    config = EvalConfig(
        model=args.model,
        task=args.task,
        method=args.method,
        options=method_options_from_args(args),
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
    config.validate()
    run_ = run_evaluation(config)
    report = write_outputs(run_, args.output, args.predictions, command=getattr(args, "command_line", None))
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in report["metrics"].items())
    print(
        f"{report['method']} {report['task']}/{report['split']} ({report['examples']} examples): {metrics}; "
        f"retention {report['retention']:.3f}; relative FLOPs {report['flops']['relative']:.3f}"
        f" -> {args.output}"
    )
    return 0
