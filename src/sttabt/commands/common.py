"""Argument groups shared by several commands."""

from __future__ import annotations

import argparse

from sttabt.methods import MethodOptions, method_names
from sttabt.methods.registry import parse_keep


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method")
    group.add_argument("--method", default="dense", help=f"one of: {', '.join(method_names())}")
    group.add_argument(
        "--keep",
        default=None,
        help="keep ratio as a fraction of each example's real length: 0.3, a per-layer list 0.9,0.7,... "
        "or 'dynamic' (ABT)",
    )
    group.add_argument(
        "--schedule", default="constant", choices=["constant", "reference"], help="top-k schedule"
    )
    group.add_argument("--approx", default=None, help="ApproxNet directory (ABT)")
    group.add_argument("--p", type=float, default=0.1, help="ABT impact mixing constant")
    group.add_argument("--head-reduction", default="mean", choices=["mean", "max"])
    group.add_argument("--token-reduction", default="mean", choices=["mean", "max"])


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
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast precision"
    )
