"""``sttabt train``: train a learned pruning method (concrete masking or LTP) and save it as a model.

    sttabt train --method concrete --model runs/minilm-sst2 --approx runs/approx-sst2-f4 --task sst2 \\
        --p-init -1 --output runs/concrete-sst2
    sttabt train --method ltp --model runs/minilm-sst2 --task sst2 --lambda 0.1 --output runs/ltp-sst2

The output is a ``PrunedClassifier`` directory: ``sttabt evaluate --method concrete --model DIR`` (or
``ltp``), ``sttabt bench`` and ``PrunedClassifier.from_pretrained(DIR)`` need nothing else.
Multi-GPU: ``accelerate launch -m sttabt.cli train ...`` (``--batch-size`` is per process).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sttabt.commands.common import DATA_DIR_HELP, add_overwrite_argument
from sttabt.errors import SttabtError
from sttabt.validate import non_negative_int_arg, positive_int_arg

#: The file an earlier ``sttabt train`` (any saved PrunedClassifier) leaves in its output directory.
OUTPUT_MARKERS = ("sttabt_config.json",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a learned pruning method (concrete, ltp) on a fine-tuned classifier",
        description=__doc__.split("\n\n")[0].split(": ", 1)[-1],
    )
    p.add_argument("--method", required=True, help="concrete or ltp")
    p.add_argument("--model", required=True, help="the fine-tuned classifier (directory, Hub id)")
    p.add_argument("--task", required=True, help="GLUE task name or bbc")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--approx", default=None, metavar="DIR",
                   help="concrete: the ApproxNet distilled from --model (sttabt distill)")  # fmt: skip
    p.add_argument("--output", required=True,
                   help="directory for the trained model (an earlier train output is replaced)")  # fmt: skip
    add_overwrite_argument(p)
    group = p.add_argument_group("method")
    group.add_argument("--p-init", metavar="P", type=float, default=None,
                       help="concrete: initial p_logit, target retention σ(P) (default -1)")  # fmt: skip
    group.add_argument("--hard-fraction", type=float, default=None,
                       help="concrete: last fraction of the steps with hard masks (default 0.2)")  # fmt: skip
    group.add_argument("--lambda", dest="lambda_", metavar="L", type=float, default=None,
                       help="ltp: weight of the mask penalty (default 0.1)")  # fmt: skip
    group.add_argument("--temperature", metavar="T", type=float, default=None,
                       help="ltp: soft-mask temperature (default 5e-4)")  # fmt: skip
    group.add_argument("--hard-epochs", type=non_negative_int_arg, default=None,
                       help="ltp: stage-2 epochs, hard masks, frozen thresholds (default 1)")  # fmt: skip
    p.add_argument("--epochs", type=positive_int_arg, default=None,
                   help="concrete: all epochs (default 2); ltp: stage-1 epochs (default 1)")  # fmt: skip
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: concrete 1e-5, p_logits 10x; ltp 2e-5)")  # fmt: skip
    p.add_argument("--weight-decay", type=float, default=None,
                   help="default: concrete 0.05, ltp 0")  # fmt: skip
    p.add_argument("--max-grad-norm", type=float, default=None,
                   help="gradient clipping (default 0.5 for sst2 stsb mnli qnli qqp, else 0)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int_arg, default=32, help="per process (default 32)")
    p.add_argument("--eval-batch-size", type=positive_int_arg, default=64, help="default 64")
    p.add_argument("--max-length", type=positive_int_arg, default=128, help="truncate inputs (default 128)")
    p.add_argument("--max-train-examples", type=positive_int_arg, default=None,
                   help="use the first N train examples (before the held-out slice is taken)")  # fmt: skip
    p.add_argument("--heldout-fraction", type=float, default=0.1,
                   help="fraction of train held out for model selection (default 0.1)")  # fmt: skip
    p.add_argument("--max-heldout-examples", type=positive_int_arg, default=None, help="cap the held-out set")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast precision (default fp32); weights stay fp32")  # fmt: skip
    p.add_argument("--no-dev-eval", action="store_true", help="skip the final dev-split evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from sttabt.train.learned import LearnedConfig

    names = ("method", "model", "task", "output", "approx", "data_dir", "p_init", "hard_fraction", "lambda_",
             "temperature", "hard_epochs", "epochs", "lr", "weight_decay", "max_grad_norm", "batch_size",
             "eval_batch_size", "max_length", "max_train_examples", "heldout_fraction",
             "max_heldout_examples", "seed", "device", "dtype")  # fmt: skip
    values = {name: getattr(args, name) for name in names}
    return LearnedConfig(**values, eval_dev=not args.no_dev_eval, progress=not args.no_progress)


def check_arguments(args: argparse.Namespace):
    """Every argument, before anything heavy loads; returns the validated config."""
    from sttabt import validate
    from sttabt.approxnet import CONFIG_NAME as APPROX_CONFIG
    from sttabt.models import load_model_config

    config = config_from_args(args).validate()
    validate.output_dir(args.output, "--output", owned_by=OUTPUT_MARKERS, overwrite=args.overwrite)
    for flag, value in (("--model", args.model), ("--approx", args.approx)):
        if value and Path(value).exists() and validate.same_path(args.output, value):
            raise SttabtError(f"--output is the {flag} directory; choose another output directory")
    if config.approx and not (Path(config.approx) / APPROX_CONFIG).is_file():
        raise SttabtError(f"--approx {config.approx!r} is not an ApproxNet directory (no {APPROX_CONFIG})")
    validate.max_length(config.max_length, load_model_config(config.model), "--max-length")
    return config


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from sttabt.train.learned import LOG_NAME, summary_line, train_learned

    record = train_learned(check_arguments(args))
    if PartialState().is_main_process:
        print(summary_line(record))
        print(f"log: {record['output']}/{LOG_NAME}")
    return 0
