"""``sttabt bench``: wall-clock latency of the dense model vs a pruning method on the same inputs."""

from __future__ import annotations

import argparse

from sttabt import validate
from sttabt.commands.common import DATA_DIR_HELP
from sttabt.methods.registry import parse_keep


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time HF dense, runtime dense and a method on identical inputs",
        description=(
            "Times the unmodified Hugging Face forward, the sparse runtime with the dense selector and the "
            "runtime with METHOD, interleaved round-robin on the same inputs: random ids (CLS first; every "
            "sample has real length --seq-len unless --length-jitter is set) or, with --task, real examples. "
            "Reports median/p10/p90 ms, the speed-up over HF dense, the ideal speed-up from the FLOPs report "
            "and their ratio (efficiency)."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="model directory or Hub id, or random:bert-base / random:minilm (random weights, no download)",
    )
    p.add_argument("--method", required=True, help="pruning method (e.g. topk, abt, dense)")
    p.add_argument("--keep", default=None, help="keep ratio in (0, 1], a per-layer comma list, or 'dynamic'")
    p.add_argument("--schedule", choices=["constant", "reference"], default="constant", help="top-k schedule")
    p.add_argument(
        "--approx",
        default=None,
        metavar="DIR",
        help="distilled ApproxNet directory (ABT), or random[:F[xH]]: a random-init factor-F ApproxNet of "
        "the model's shape (F = 4 by default) with H heads (default: the model's), for timing without "
        "trained artifacts",
    )
    p.add_argument(
        "--p", type=validate.p_arg, default=0.1, help="ABT impact-mixing constant p in [0, 1] (default 0.1)"
    )
    p.add_argument("--batch-size", type=validate.positive_int_arg, default=1, help="samples (default 1)")
    p.add_argument(
        "--seq-len",
        type=validate.positive_int_arg,
        default=128,
        help="real length of each sample, with CLS (default 128)",
    )
    p.add_argument(
        "--length-jitter",
        type=float,
        default=0.0,
        help="draw real lengths uniformly from [ceil((1-J)*seq_len), seq_len] and pad to the longest",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast precision")
    p.add_argument("--warmup", type=validate.non_negative_int_arg, default=3, help="untimed rounds")
    p.add_argument(
        "--repeats", type=validate.positive_int_arg, default=10, help="timed rounds (default 10)"
    )
    p.add_argument(
        "--threads", type=validate.positive_int_arg, default=None, help="intra-op threads (default: torch's)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument(
        "--task",
        default=None,
        help="time real examples of a text task (sst2, bbc, ...) instead of random ids: --batch-size of "
        "the split's examples with at least --seq-len tokens, truncated to it, drawn with --seed",
    )
    p.add_argument("--split", default="dev", help="split of --task (default dev)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also profile one call per variant and report time by kind of work (linear, attention, other)",
    )
    p.add_argument(
        "--skip-runtime-dense",
        action="store_true",
        help="time only HF dense and the method (not the runtime's own dense pass): for the slowest shapes",
    )
    p.add_argument("--output", required=True, help="where to write the JSON result")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sttabt.bench import BenchConfig, format_summary, run_benchmark

    config = BenchConfig(
        model=args.model,
        method=args.method,
        keep=parse_keep(args.keep),
        schedule=args.schedule,
        approx=args.approx,
        p=args.p,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        length_jitter=args.length_jitter,
        device=args.device,
        dtype=args.dtype,
        warmup=args.warmup,
        repeats=args.repeats,
        threads=args.threads,
        seed=args.seed,
        task=args.task,
        split=args.split,
        data_dir=args.data_dir,
        breakdown=args.breakdown,
        runtime_dense=not args.skip_runtime_dense,
        output=args.output,
    )
    result = run_benchmark(config)
    print(format_summary(result))
    print(f"wrote {args.output}")
    return 0
