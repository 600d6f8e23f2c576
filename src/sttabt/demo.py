"""``make demo``: the whole STTABT pipeline on offline defaults (pretrained MiniLM-L6 + BBC News).

1. fine-tune all-MiniLM-L6-v2 on BBC News (the dense teacher);
2. distill a factor-4 ApproxNet from it (general stage on augmented train text, then task stage);
3. evaluate dense vs ABT at two budgets vs top-k on the BBC test split: accuracy, retention, relative
   FLOPs, measured latency and speed-up;
4. write an HTML page showing one document's kept tokens layer by layer.

Steps 1-2 are cached under ``--workdir`` (keyed by their settings), so a second run only evaluates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from sttabt.errors import SttabtError
from sttabt.evaluate import EvalConfig, run_evaluation, write_outputs
from sttabt.methods import MethodOptions

log = logging.getLogger("sttabt.demo")


def _cached(directory: Path, settings: dict, build) -> Path:
    """Run ``build`` unless ``directory`` holds a finished artifact made with the same settings."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    stamp = directory / "demo_settings.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        log.info("cached: %s", directory)
        return directory
    build()
    stamp.write_text(json.dumps({"key": key, "settings": settings}, indent=2, default=str))
    return directory


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sttabt.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="artifacts/demo")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--train-examples", type=int, default=400, help="fine-tuning/distillation examples")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--distill-epochs", type=int, default=2)
    parser.add_argument("--keeps", default="0.3,0.15", help="two ABT budgets")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N test documents")
    parser.add_argument(
        "--train-dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 is slow without native bf16"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from sttabt.cli import _quiet_dependencies

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _quiet_dependencies()
    args = parse_args(argv)
    try:
        run_demo(args)
    except SttabtError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_demo(args: argparse.Namespace) -> None:
    from sttabt.approxnet import ApproxNet
    from sttabt.models import load_text_classifier
    from sttabt.train.distill import DistillConfig, distill
    from sttabt.train.finetune import FinetuneConfig, finetune

    torch.manual_seed(args.seed)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    teacher_dir = work / "minilm-bbc"
    ft = FinetuneConfig(
        model="minilm",
        task="bbc",
        output=str(teacher_dir),
        epochs=args.epochs,
        lr=1e-4,
        batch_size=16,
        max_length=args.max_length,
        max_train_examples=args.train_examples,
        seed=args.seed,
        device=args.device,
        dtype=args.train_dtype,
        eval_dev=False,
    )
    log.info("[1/4] fine-tuning MiniLM-L6 on BBC News -> %s", teacher_dir)
    _cached(teacher_dir, asdict(ft), lambda: finetune(ft))

    approx_dir = work / "approx-bbc-f4"
    dc = DistillConfig(
        teacher=str(teacher_dir),
        task="bbc",
        output=str(approx_dir),
        factor=4,
        general_epochs=1,
        epochs=args.distill_epochs,
        max_length=args.max_length,
        max_train_examples=args.train_examples,
        batch_size=16,
        seed=args.seed,
        device=args.device,
        dtype=args.train_dtype,
        quality_examples=64,
    )
    log.info("[2/4] distilling a factor-4 ApproxNet -> %s", approx_dir)
    _cached(approx_dir, asdict(dc), lambda: distill(dc))

    log.info("[3/4] evaluating on the BBC test split (cached when the settings are unchanged)")
    model, tokenizer = load_text_classifier(str(teacher_dir))
    approx = ApproxNet.load(approx_dir, teacher=model)
    base = EvalConfig(
        model=str(teacher_dir),
        task="bbc",
        split="test",
        batch_size=16,
        max_length=args.max_length,
        limit=args.limit,
        device=args.device,
    )
    keeps = [float(k) for k in args.keeps.split(",")]
    results = work / "results"
    names = ["dense"] + [f"ABT k={keep}" for keep in keeps] + ["top-k"]

    def evaluate_all() -> None:
        runs = [("dense", "dense", MethodOptions())]
        for keep in keeps:
            options = MethodOptions(keep=keep, approx=str(approx_dir), extra={"approxnet": approx})
            runs.append((f"ABT k={keep}", "abt", options))
        done = {}
        for label, method, options in runs:
            run = run_evaluation(replace(base, method=method, options=options), model, tokenizer)
            done[label] = write_outputs(run, results / _file_name(label))
        # Top-k baseline at the retention the first ABT budget reached (METHODS.md §1.6 schedule).
        target = min(1.0, done[names[1]]["retention"])
        options = MethodOptions(keep=target, schedule="reference")
        run = run_evaluation(replace(base, method="topk", options=options), model, tokenizer)
        write_outputs(run, results / _file_name("top-k"))

    settings = {"teacher": asdict(ft), "approx": asdict(dc), "eval": base.to_dict(), "keeps": keeps}
    _cached(results, settings, evaluate_all)
    reports = [(label, json.loads((results / _file_name(label)).read_text())) for label in names]
    target = reports[-1][1]["config"]["options"]["keep"]
    reports[-1] = (f"top-k @ret {target:.2f}", reports[-1][1])

    rows = _table(reports)
    print()
    print(_format_table(rows))
    log.info("[4/4] writing the kept-token page")
    page = work / "kept_tokens.html"
    _write_page(page, model, tokenizer, approx, keeps[0], args.max_length, rows)
    print(
        f"\nresults: {work / 'results'}  |  kept tokens: {page}  |  "
        f"total {time.perf_counter() - started:.0f} s"
    )


def _file_name(label: str) -> str:
    return label.replace(" ", "_").replace("=", "").replace("-", "") + ".json"


def _table(reports: list[tuple[str, dict]]) -> list[dict]:
    dense_seconds = reports[0][1]["seconds"]
    rows = []
    for label, report in reports:
        count = report["examples"]
        rows.append(
            {
                "method": label,
                "accuracy %": f"{100 * report['metrics']['accuracy']:.2f}",
                "retention %": f"{100 * report['retention']:.1f}",
                "rel. FLOPs %": f"{100 * report['flops']['relative']:.1f}",
                "ms/doc": f"{1000 * report['seconds'] / count:.1f}",
                "speed-up": f"{dense_seconds / report['seconds']:.2f}x",
            }
        )
    return rows


def _format_table(rows: list[dict]) -> str:
    headers = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(str(r[h]).ljust(w) for h, w in zip(headers, widths, strict=True)) for r in rows]
    return "\n".join([line, "-" * len(line), *body])


def _write_page(path: Path, model, tokenizer, approx, keep: float, max_length: int, rows: list[dict]) -> None:
    from sttabt.api import PrunedClassifier
    from sttabt.data import load_examples
    from sttabt.visualize import kept_tokens_html, write_page

    example = load_examples("bbc", "test", limit=1)[0]
    batch = tokenizer([example.text_a], return_tensors="pt", truncation=True, max_length=max_length)
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    sections = []
    for method, kwargs in (("abt", {"approx": approx}), ("topk", {"schedule": "reference"})):
        out = PrunedClassifier(model, method=method, keep=keep, **kwargs)(batch)
        kept = [s[0].tolist() for s in out.key_sets]
        label = model.config.id2label.get(int(out.logits.argmax()), str(int(out.logits.argmax())))
        sections.append(
            kept_tokens_html(
                tokens,
                kept,
                f"{method} (keep {keep})",
                f"prediction: {label}; true: {model.config.id2label.get(int(example.label), example.label)}; "
                f"retention {100 * float(out.retention()[0]):.1f} %",
            )
        )
    write_page(path, "sttabt: kept tokens on a BBC News article, layer by layer", sections, rows)


if __name__ == "__main__":
    sys.exit(main())
