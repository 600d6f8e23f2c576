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

from sttabt.commands.common import DATA_DIR_HELP, add_overwrite_argument
from sttabt.validate import non_negative_int_arg, positive_int_arg

#: Files an earlier ``sttabt distill`` leaves in its output directory.
OUTPUT_MARKERS = ("distill_log.json", "approxnet.json")


def register(sub) -> None:
    p = sub.add_parser(
        "distill",
        help="distil an ApproxNet (a thin copy of the teacher that predicts its attention) for ABT",
        description=__doc__.split("\n\n")[0].split(": ", 1)[-1],
    )
    p.add_argument("--teacher", required=True, help="the fine-tuned classifier (directory, Hub id or alias)")
    p.add_argument("--task", required=True, help="GLUE task name, bbc, or an image task (fashion-mnist, "
                   "digits, imagenet, imagefolder)")  # fmt: skip
    p.add_argument("--output", required=True,
                   help="directory for the ApproxNet (an earlier distill output is replaced)")  # fmt: skip
    add_overwrite_argument(p)
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--eval-data-dir", default=None,
                   help="read the dev split of the quality report from here instead of --data-dir (images: "
                        "e.g. distil on ImageNet sample images, report on validation images)")  # fmt: skip
    p.add_argument("--factor", type=positive_int_arg, default=None,
                   help="width reduction f: hidden and FFN sizes / f (default 4)")  # fmt: skip
    p.add_argument("--heads", type=positive_int_arg, default=None,
                   help="the ApproxNet's attention heads, a divisor of the teacher's (default: the "
                        "teacher's); each is distilled against the mean of a group of teacher heads, "
                        "which makes ABT's full-length ApproxNet softmax cheaper")  # fmt: skip
    p.add_argument("--general-corpus", default=None,
                   help="text file for general distillation (default: the task's train inputs)")  # fmt: skip
    p.add_argument("--general-teacher", default=None,
                   help="teacher of the general stage, e.g. the base model (default: --teacher)")  # fmt: skip
    p.add_argument("--general-epochs", type=non_negative_int_arg, default=1,
                   help="general-stage epochs (0: skip; default 1)")  # fmt: skip
    p.add_argument("--epochs", type=non_negative_int_arg, default=3,
                   help="epochs of task distillation (0: skip; default 3)")  # fmt: skip
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="default 1e-4")
    p.add_argument("--grad-clip", type=float, default=0.5, help="gradient-norm clipping (default 0.5)")
    p.add_argument("--batch-size", type=positive_int_arg, default=16, help="per process (default 16)")
    p.add_argument("--eval-batch-size", type=positive_int_arg, default=64, help="default 64")
    p.add_argument("--max-length", type=positive_int_arg, default=128, help="truncate inputs (default 128)")
    p.add_argument("--max-train-examples", type=positive_int_arg, default=None,
                   help="use the first N train examples (before the held-out slice is taken)")  # fmt: skip
    p.add_argument("--max-general-examples", type=positive_int_arg, default=None,
                   help="use only the first N lines of the general corpus")  # fmt: skip
    p.add_argument("--heldout-fraction", type=float, default=0.1,
                   help="fraction of train held out for checkpoint selection (default 0.1)")  # fmt: skip
    p.add_argument("--max-heldout-examples", type=positive_int_arg, default=512, help="default 512")
    p.add_argument("--quality-examples", type=positive_int_arg, default=None,
                   help="dev examples for the attention-quality report (default: all)")  # fmt: skip
    p.add_argument("--eval-every", type=non_negative_int_arg, default=0,
                   help="steps between held-out evaluations (default 0: after each epoch only)")  # fmt: skip
    p.add_argument("--init", default=None, help="start from this general-stage ApproxNet (skips stage 1)")
    p.add_argument("--init-mode", choices=("random", "interpolate"), default="random",
                   help="initialisation of a new ApproxNet from the teacher (default random)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast precision (default fp32)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def check_arguments(args: argparse.Namespace) -> None:
    """Output directory, device, dtype and max length against the teacher, before anything loads."""
    from sttabt import validate
    from sttabt.approxnet import checked_heads
    from sttabt.models import load_model_config

    validate.output_dir(args.output, "--output", owned_by=OUTPUT_MARKERS, overwrite=args.overwrite)
    validate.dtype(args.dtype, validate.device(args.device, "--device"), "--dtype")
    teacher_config = load_model_config(args.teacher)
    validate.max_length(args.max_length, teacher_config, "--max-length")
    teacher_heads = getattr(teacher_config, "num_attention_heads", None)
    if args.heads is not None and teacher_heads is not None:
        checked_heads(args.heads, int(teacher_heads))


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from sttabt.train.distill import DistillConfig, distill, summary_line

    check_arguments(args)
    config = DistillConfig(
        teacher=args.teacher,
        task=args.task,
        output=args.output,
        data_dir=args.data_dir,
        eval_data_dir=args.eval_data_dir,
        factor=args.factor,
        heads=args.heads,
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
