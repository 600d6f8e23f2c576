"""``sttabt visualize``: which tokens each layer keeps, for a few examples of a task split.

Images: a PNG grid, one row per image and one column per layer, dropped patches dimmed. Text: the HTML
page of the demo, one line per layer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sttabt import validate
from sttabt.commands.common import (
    add_method_arguments,
    add_runtime_arguments,
    add_task_arguments,
    method_options_from_args,
)
from sttabt.errors import SttabtError

MAX_EXAMPLES = 16


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("visualize", help="picture the tokens (patches) each layer keeps")
    add_task_arguments(parser)
    add_method_arguments(parser)
    parser.add_argument(
        "--examples", type=validate.positive_int_arg, default=4, help=f"the first N (<= {MAX_EXAMPLES})"
    )
    parser.add_argument("--max-length", type=validate.positive_int_arg, default=128, help="text: truncate")
    add_runtime_arguments(parser)
    parser.add_argument("--output", required=True, help="a .png file (images) or .html file (text)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sttabt.data import get_task
    from sttabt.methods.registry import validate_method

    task = get_task(args.task)
    suffix = ".png" if task.is_image else ".html"
    validate.output_file(args.output, "--output")
    if Path(args.output).suffix.lower() != suffix:
        raise SttabtError(f"--output must be a {suffix} file for {task.name}, got {args.output}")
    if args.examples > MAX_EXAMPLES:
        raise SttabtError(f"--examples must be at most {MAX_EXAMPLES}, got {args.examples}")
    options = method_options_from_args(args)
    validate_method(args.method, options, strict=True)
    validate.dtype(args.dtype, validate.device(args.device, "--device"), "--dtype")
    written = draw(args, task, options)
    print(f"{args.method}: kept tokens of {args.examples} {task.name}/{args.split} examples -> {written}")
    return 0


def draw(args: argparse.Namespace, task, options) -> str:
    """Run the method on the first ``--examples`` examples and write the picture or page."""
    import torch

    from sttabt.data import LABEL_NAMES, collate, encode_for_task, load_examples
    from sttabt.evaluate import load_for_task
    from sttabt.methods import build_selector
    from sttabt.runtime import SparseEncoder
    from sttabt.utils import inference, resolve_device

    examples = load_examples(task.name, args.split, args.data_dir, args.examples)
    model, processor = load_for_task(args.model, task)
    device = resolve_device(args.device)
    model = model.to(device).eval()
    encoder = SparseEncoder(model)
    selector = build_selector(args.method, encoder.adapter, options)
    features = encode_for_task(task, processor, examples, args.max_length)
    names = LABEL_NAMES.get(task.name) or {}
    caption = f"{args.method}" + (f", keep {args.keep}" if args.keep else "")
    if task.is_image:
        batch = collate(features, 0)
        batch.pop("labels", None)
        with inference(device, args.dtype):
            out = encoder({k: v.to(device) for k, v in batch.items()}, selector)
        predicted = out.logits.argmax(-1).tolist()
        titles = [_title(names, p, ex.label) for p, ex in zip(predicted, examples, strict=True)]
        _draw_images(args.output, processor, batch["pixel_values"], out, encoder.adapter, titles, caption)
        return args.output
    sections = []
    for feature, example in zip(features, examples, strict=True):
        batch = {k: v.to(device) for k, v in collate([feature], processor.pad_token_id or 0).items()
                 if k != "labels"}  # fmt: skip
        with inference(device, args.dtype):
            out = encoder(batch, selector)
        tokens = processor.convert_ids_to_tokens(feature["input_ids"])
        kept = [s[0].tolist() for s in out.key_sets]
        predicted = int(torch.as_tensor(out.logits).argmax())
        sections.append(_text_section(tokens, kept, _title(names, predicted, example.label), out))
    from sttabt.visualize import write_page

    write_page(args.output, f"sttabt: kept tokens on {task.name}/{args.split}, {caption}", sections)
    return args.output


def _title(names, predicted: int, label: int) -> str:
    def name(i: int) -> str:
        return str(names[i]) if 0 <= i < len(names) else str(i)

    return f"pred {name(predicted)} / true {name(label)}"


def _text_section(tokens, kept, title: str, out) -> str:
    from sttabt.visualize import kept_tokens_html

    return kept_tokens_html(tokens, kept, title, f"retention {100 * float(out.retention()[0]):.1f} %")


def _draw_images(path, transform, pixels, out, adapter, titles, caption: str) -> None:
    from sttabt.visualize import kept_patches_png

    kept_patches_png(
        path,
        transform.to_display(pixels).numpy(),
        [s.cpu() for s in out.key_sets],
        patch=adapter.patch_size,
        prefix=adapter.prefix_tokens,
        row_titles=titles,
        title=f"patches each layer reads ({caption}); dimmed red: removed",
    )
