"""``sttabt finetune``: fine-tune a dense classifier on a GLUE task or BBC News and save it in HF format.

Multi-GPU: ``accelerate launch -m sttabt.cli finetune ...`` (``--batch-size`` is per process).
"""

from __future__ import annotations

import argparse

from sttabt.commands.common import DATA_DIR_HELP, add_overwrite_argument
from sttabt.data import TASKS, get_task
from sttabt.validate import positive_int_arg

#: The file an earlier ``sttabt finetune`` leaves in its output directory.
OUTPUT_MARKERS = ("train_log.json",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a dense text or image classifier (model selection on a held-out slice of train)",
        description=(
            "Fine-tune a BERT-family classifier on a task, keep the epoch with the best metric on a "
            "held-out slice of the train split, score it once on the dev split, and save it (safetensors, "
            "tokenizer and train_log.json) into --output."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="local model directory, Hub id, or 'minilm'; images: also a ViT preset (vit-small-fmnist, "
        "vit-tiny-digits: new weights) or timm:<architecture>",
    )
    names = ", ".join(t.name for t in TASKS.values())
    p.add_argument("--task", required=True, help=f"one of {names} (aliases like SST-2 work)")
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument(
        "--output", required=True, help="directory for the model (an earlier finetune output is replaced)"
    )
    add_overwrite_argument(p)
    p.add_argument("--epochs", type=positive_int_arg, default=3, help="default 3")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    p.add_argument("--batch-size", type=positive_int_arg, default=32, help="per process (default 32)")
    p.add_argument("--eval-batch-size", type=positive_int_arg, default=64, help="default 64")
    p.add_argument("--max-length", type=positive_int_arg, default=128, help="truncate inputs (default 128)")
    p.add_argument(
        "--max-train-examples",
        type=positive_int_arg,
        default=None,
        help="use only the first N examples of the train split (before the held-out slice)",
    )
    p.add_argument(
        "--heldout-fraction",
        type=float,
        default=0.1,
        help="fraction of train held out for model selection (0: keep the last epoch; default 0.1)",
    )
    p.add_argument("--max-heldout-examples", type=positive_int_arg, default=None, help="cap the held-out set")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="mixed precision for the forward/backward pass (default fp32); weights stay fp32. bf16 on a "
        "CPU without native bf16 (AVX2 only) is many times slower than fp32",
    )
    p.add_argument("--warmup-ratio", type=float, default=0.06, help="linear warm-up fraction (default 0.06)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="default 0.01")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off; default 1.0)")
    p.add_argument(
        "--group-by-length",
        action="store_true",
        help="batch examples of similar length together (much less padding; faster on CPU)",
    )
    p.add_argument("--no-dev-eval", action="store_true", help="skip the final dev-split evaluation")
    p.add_argument(
        "--no-augment",
        action="store_true",
        help="image tasks: no training augmentation (default: random shifts, flips except digits, erasing)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (off anyway without a TTY)")
    p.set_defaults(func=run)


def check_arguments(args: argparse.Namespace) -> None:
    """Output directory, device, dtype and max length against the model, before anything loads."""
    from sttabt import validate
    from sttabt.models import load_model_config

    validate.output_dir(args.output, "--output", owned_by=OUTPUT_MARKERS, overwrite=args.overwrite)
    validate.dtype(args.dtype, validate.device(args.device, "--device"), "--dtype")
    if get_task(args.task).is_image:
        if not args.model.startswith("timm:"):
            load_model_config(args.model)  # a missing directory or bad config fails here, not after the data
        return
    validate.max_length(args.max_length, load_model_config(args.model), "--max-length")


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from sttabt.train.finetune import FinetuneConfig, finetune, summary_line

    check_arguments(args)
    config = FinetuneConfig(
        model=args.model,
        task=args.task,
        output=args.output,
        data_dir=args.data_dir,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        max_length=args.max_length,
        max_train_examples=args.max_train_examples,
        heldout_fraction=args.heldout_fraction,
        max_heldout_examples=args.max_heldout_examples,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        group_by_length=args.group_by_length,
        eval_dev=not args.no_dev_eval,
        augment=not args.no_augment,
        progress=not args.no_progress,
    )
    record = finetune(config)
    if PartialState().is_main_process:
        print(summary_line(record))
    return 0
