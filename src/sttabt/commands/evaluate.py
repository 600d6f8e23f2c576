"""``sttabt evaluate``: metrics, retention and FLOPs of a method on a task split."""

from __future__ import annotations

import argparse

from sttabt.commands.common import add_method_arguments, add_runtime_arguments, method_options_from_args
from sttabt.evaluate import EvalConfig, run_evaluation, write_outputs


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="evaluate a classifier with a pruning method")
    parser.add_argument("--model", required=True, help="fine-tuned classifier: Hub id or local directory")
    parser.add_argument("--task", required=True, help="GLUE task (sst2, mrpc, ...) or bbc")
    parser.add_argument("--data-dir", default=None, help="GLUE directory (default: ../shared/data/glue)")
    parser.add_argument("--split", default="dev")
    add_method_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N examples only")
    add_runtime_arguments(parser)
    parser.add_argument("--output", required=True, help="results.json path")
    parser.add_argument("--predictions", default=None, help="optional preds.jsonl path")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
    )
    report = write_outputs(run_evaluation(config), args.output, args.predictions)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in report["metrics"].items())
    print(
        f"{report['method']} {report['task']}/{report['split']} ({report['examples']} examples): {metrics}; "
        f"retention {report['retention']:.3f}; relative FLOPs {report['flops']['relative']:.3f}"
        f" -> {args.output}"
    )
    return 0
