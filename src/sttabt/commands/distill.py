"""``sttabt distill``: distil an STTABT ApproxNet from a fine-tuned teacher (METHODS.md §1.2).

    sttabt distill --teacher artifacts/minilm-sst2 --task sst2 --factor 4 --output artifacts/approx-sst2-f4

Stage 1 (general, ``--general-epochs``) distils on GLUE-like augmented unlabeled text: ``--general-corpus
FILE`` (lines of >= 50 characters, e.g. a WikiText file) or, by default, the task's own training inputs.
Stage 2 (task, ``--epochs``) distils on the task's training inputs from the fine-tuned teacher. The
reference trains far longer (GLUE: WikiText-103 pre-distillation, then e.g. 15 epochs for SST-2); the
defaults here are sized for a CPU. ``--init DIR`` starts from a saved general-stage ApproxNet (every run
keeps its own in ``OUTPUT/general/``) and skips stage 1.
"""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def register(sub) -> None:
    p = sub.add_parser(
        "distill",
        help="distil an ApproxNet (a thin copy of the teacher that predicts its attention) for ABT",
        description=__doc__.split("\n\n")[0].split(": ", 1)[-1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--teacher", required=True, help="the fine-tuned classifier (directory or alias)")
    p.add_argument("--task", required=True, help="GLUE task name or bbc")
    p.add_argument("--output", required=True, help="directory for the ApproxNet (replaced atomically)")
    p.add_argument("--data-dir", default=None, help="GLUE directory (default: ../shared/data/glue)")
    p.add_argument("--factor", type=_positive_int, default=None,
                   help="width reduction f: hidden and FFN sizes / f, same heads (default 4)")  # fmt: skip
    p.add_argument("--general-corpus", default=None,
                   help="text file for general distillation (default: the task's train inputs)")  # fmt: skip
    p.add_argument("--general-teacher", default=None,
                   help="teacher of the general stage, e.g. the base model (default: --teacher)")  # fmt: skip
    p.add_argument("--general-epochs", type=_count, default=1, help="general-stage epochs (0: skip)")
    p.add_argument("--epochs", type=_count, default=3, help="epochs of task distillation (0: skip)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--grad-clip", type=float, default=0.5)
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--eval-batch-size", type=_positive_int, default=64)
    p.add_argument("--max-length", type=_positive_int, default=128)
    p.add_argument("--max-train-examples", type=_positive_int, default=None,
                   help="use the first N train examples (before the held-out slice is taken)")  # fmt: skip
    p.add_argument("--max-general-examples", type=_positive_int, default=None,
                   help="use only the first N lines of the general corpus")  # fmt: skip
    p.add_argument("--heldout-fraction", type=float, default=0.1,
                   help="fraction of the train examples held out for checkpoint selection")  # fmt: skip
    p.add_argument("--max-heldout-examples", type=_positive_int, default=512)
    p.add_argument("--quality-examples", type=_positive_int, default=None,
                   help="dev examples for the attention-quality report (default: all)")  # fmt: skip
    p.add_argument("--eval-every", type=_count, default=0,
                   help="steps between held-out evaluations (0: after each epoch only)")  # fmt: skip
    p.add_argument("--init", default=None, help="start from this general-stage ApproxNet (skips stage 1)")
    p.add_argument("--init-mode", choices=("random", "interpolate"), default="random",
                   help="initialisation of a new ApproxNet from the teacher")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast precision")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from sttabt.train.distill import DistillConfig, distill, summary_line

    config = DistillConfig(
        teacher=args.teacher,
        task=args.task,
        output=args.output,
        data_dir=args.data_dir,
        factor=args.factor,
        general_corpus=args.general_corpus,
        general_teacher=args.general_teacher,
        general_epochs=args.general_epochs,
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        max_length=args.max_length,
        max_train_examples=args.max_train_examples,
        max_general_examples=args.max_general_examples,
        heldout_fraction=args.heldout_fraction,
        max_heldout_examples=args.max_heldout_examples,
        quality_examples=args.quality_examples,
        eval_every=args.eval_every,
        init=args.init,
        init_mode=args.init_mode,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
    )
    record = distill(config)
    if PartialState().is_main_process:  # one summary under torchrun / accelerate launch
        print(summary_line(record))
        print(f"log: {record['output']}/distill_log.json")
    return 0
