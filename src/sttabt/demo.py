"""``make demo``: the whole STTABT pipeline on offline defaults (pretrained MiniLM-L6 + BBC News).

1. fine-tune all-MiniLM-L6-v2 on BBC News (the dense teacher);
2. distill a factor-4 ApproxNet from it (general stage on augmented train text, then task stage);
3. evaluate dense vs ABT at two budgets vs top-k on the BBC test split: accuracy, retention, relative
   FLOPs; then time every method as ``sttabt bench`` does (warm-up, interleaved rounds, load average);
4. write an HTML page showing one document's kept tokens layer by layer.

Steps 1-3's accuracy figures are cached under ``--workdir`` (keyed by their settings), so a second run
only re-times and redraws. Timings are never cached: they depend on the machine's load at the time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NoReturn

import torch

from sttabt import validate
from sttabt.errors import SttabtError
from sttabt.evaluate import EvalConfig, run_evaluation, write_outputs
from sttabt.methods import MethodOptions
from sttabt.utils import atomic_write_json

log = logging.getLogger("sttabt.demo")

TIMING_NAME = "timing.json"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``demo: error: ...``), like every other error of the demo."""

    def error(self, message: str) -> NoReturn:
        print(f"demo: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="python -m sttabt.demo", description=__doc__.splitlines()[0])

    def add(flag: str, default: str | None, help: str, **kwargs: Any) -> None:
        shown = help if default is None else f"{help} (default: {default})"
        parser.add_argument(flag, default=default, help=shown, **kwargs)

    add("--workdir", "artifacts/demo", "where the models, results and page go (cached)")
    add("--max-length", "256", "tokens per article for training and evaluation")
    add("--train-examples", "400", "train articles for fine-tuning and distillation")
    add("--epochs", "2", "fine-tuning epochs")
    add("--general-epochs", "1", "general-distillation epochs (augmented train text; 0: skip)")
    add("--distill-epochs", "3", "task-distillation epochs")
    add("--distill-lr", "2e-3", "ApproxNet learning rate")
    add(
        "--distill-batch-size",
        default="8",
        help="ApproxNet batch size (smaller: more optimiser steps per epoch)",
    )
    add("--keeps", default="0.3,0.15", help="ABT keep ratios (the first also sets top-k's target)")
    add("--limit", None, "evaluate the first N test articles (default: all 444)")
    add("--timing-docs", "16", "test articles in the timed batch")
    add("--timing-rounds", "5", "timed rounds per method, after one warm-up round")
    add("--train-dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 is slow without native bf16")
    add("--device", "auto", "auto, cpu, cuda or cuda:N")
    add("--seed", "0", "seed of every random draw")
    return _validated(parser.parse_args(argv))


def _validated(args: argparse.Namespace) -> argparse.Namespace:
    """Every argument checked (and converted) before anything is loaded or trained."""
    from sttabt.models import load_model_config

    minilm = load_model_config("minilm")
    args.max_length = validate.max_length(args.max_length, minilm, name="--max-length")
    args.train_examples = validate.positive_int(args.train_examples, "--train-examples")
    if args.train_examples < 10:
        raise SttabtError(f"--train-examples must be at least 10, got {args.train_examples}")
    args.epochs = validate.positive_int(args.epochs, "--epochs")
    args.general_epochs = validate.non_negative_int(args.general_epochs, "--general-epochs")
    args.distill_epochs = validate.positive_int(args.distill_epochs, "--distill-epochs")
    try:
        args.distill_lr = float(args.distill_lr)
    except ValueError:
        raise SttabtError(f"--distill-lr must be a number, got {args.distill_lr!r}") from None
    if not 0 < args.distill_lr < 1:
        raise SttabtError(f"--distill-lr must be in (0, 1), got {args.distill_lr}")
    args.distill_batch_size = validate.positive_int(args.distill_batch_size, "--distill-batch-size")
    args.keeps = validate.keep_list(args.keeps, "--keeps")
    args.limit = None if args.limit is None else validate.positive_int(args.limit, "--limit")
    args.timing_docs = validate.positive_int(args.timing_docs, "--timing-docs")
    args.timing_rounds = validate.positive_int(args.timing_rounds, "--timing-rounds")
    args.device = validate.device(args.device, "--device")
    args.seed = int(validate.non_negative_int(args.seed, "--seed"))
    return args


def main(argv: list[str] | None = None) -> int:
    from sttabt.cli import _quiet_dependencies

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _quiet_dependencies()
    for noisy in ("transformers", "accelerate", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        run_demo(parse_args(argv))
    except SttabtError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo: interrupted; finished steps stay cached, rerun to continue", file=sys.stderr)
        return 130
    return 0


def _cached(directory: Path, settings: dict, build: Callable[[], Any]) -> Path:
    """Run ``build`` unless ``directory`` holds a finished artifact made with the same settings."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    stamp = directory / "demo_settings.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        log.info("cached: %s", directory)
        return directory
    build()
    atomic_write_json(stamp, {"key": key, "settings": settings})
    return directory


def run_demo(args: argparse.Namespace) -> None:
    from sttabt.approxnet import ApproxNet
    from sttabt.models import load_text_classifier

    torch.manual_seed(args.seed)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    teacher_dir, ft = _teacher(args, work)
    approx_dir, dc = _approxnet(args, work, teacher_dir)

    log.info("[3/4] evaluating on the BBC test split (cached when the settings are unchanged), then timing")
    model, tokenizer = load_text_classifier(str(teacher_dir))
    approx = ApproxNet.load(approx_dir, teacher=model)
    base = EvalConfig(
        model=str(teacher_dir), task="bbc", split="test", batch_size=16, max_length=args.max_length,
        limit=args.limit, device=args.device,
    )  # fmt: skip
    runs = _method_runs(args.keeps, approx_dir, approx)
    results = work / "results"
    settings = {"teacher": asdict(ft), "approx": asdict(dc), "eval": base.to_dict(), "keeps": args.keeps}
    _cached(results, settings, lambda: _evaluate_all(base, runs, model, tokenizer, results))
    reports = {label: json.loads((results / _file_name(label)).read_text()) for label in runs}
    topk_keep = float(reports["top-k"]["config"]["options"]["keep"])
    runs["top-k"] = ("topk", MethodOptions(keep=topk_keep, schedule="reference"))
    timing = _time_methods(model, tokenizer, runs, args)
    atomic_write_json(work / TIMING_NAME, timing)

    rows = _table(reports, timing, topk_keep)
    summary = what_it_shows(rows)
    print()
    print(_format_table(rows))
    print(f"\n{summary}")
    print(_timing_line(timing))
    log.info("[4/4] writing the kept-token page")
    page = work / "kept_tokens.html"
    _write_page(page, model, tokenizer, approx, args, topk_keep, rows, summary)
    print(
        f"\nresults: {results}  |  timing: {work / TIMING_NAME}  |  kept tokens: {page}  |  "
        f"total {time.perf_counter() - started:.0f} s"
    )


def _teacher(args: argparse.Namespace, work: Path):
    from sttabt.train.finetune import FinetuneConfig, finetune

    teacher_dir = work / "minilm-bbc"
    ft = FinetuneConfig(
        model="minilm", task="bbc", output=str(teacher_dir), epochs=args.epochs, lr=1e-4, batch_size=16,
        max_length=args.max_length, max_train_examples=args.train_examples, seed=args.seed,
        device=args.device, dtype=args.train_dtype, eval_dev=False,
    )  # fmt: skip
    log.info("[1/4] fine-tuning MiniLM-L6 on BBC News -> %s", teacher_dir)
    _cached(teacher_dir, asdict(ft), lambda: finetune(ft))
    return teacher_dir, ft


def _approxnet(args: argparse.Namespace, work: Path, teacher_dir: Path):
    from sttabt.train.distill import DistillConfig

    approx_dir = work / "approx-bbc-f4"
    dc = DistillConfig(
        teacher=str(teacher_dir), task="bbc", output=str(approx_dir), factor=4,
        general_epochs=args.general_epochs, epochs=args.distill_epochs, lr=args.distill_lr,
        max_length=args.max_length, max_train_examples=args.train_examples,
        batch_size=args.distill_batch_size, seed=args.seed, device=args.device, dtype=args.train_dtype,
        quality_examples=64,
    )  # fmt: skip
    log.info("[2/4] distilling a factor-4 ApproxNet -> %s", approx_dir)
    _cached(approx_dir, asdict(dc), lambda: _distill_and_report(dc))
    return approx_dir, dc


def _distill_and_report(config: Any) -> None:
    from sttabt.train.distill import distill

    quality = distill(config)["quality"]
    start = "untrained" if "untrained" in quality else "init"
    log.info(
        "ApproxNet dev attention KL (64 test articles): %.3f untrained -> %.3f distilled",
        quality[start]["kl"], quality["distilled"]["kl"],
    )  # fmt: skip


def _method_runs(keeps: list[float], approx_dir: Path, approx: Any) -> dict[str, tuple[str, MethodOptions]]:
    """Label -> (method, options); top-k's target is filled in from ABT's measured retention."""
    runs: dict[str, tuple[str, MethodOptions]] = {"dense": ("dense", MethodOptions())}
    for keep in keeps:
        options = MethodOptions(keep=keep, approx=str(approx_dir), extra={"approxnet": approx})
        runs[f"ABT k={keep}"] = ("abt", options)
    runs["top-k"] = ("topk", MethodOptions(schedule="reference"))
    return runs


def _evaluate_all(base: EvalConfig, runs: dict, model: Any, tokenizer: Any, results: Path) -> None:
    done: dict[str, dict] = {}
    for label, (method, options) in runs.items():
        if method == "topk":
            # Top-k baseline at the retention the first ABT budget reached (METHODS.md §1.6 schedule).
            first_abt = next(name for name, (m, _) in runs.items() if m == "abt")
            options = replace(options, keep=min(1.0, done[first_abt]["retention"]))
        run = run_evaluation(replace(base, method=method, options=options), model, tokenizer)
        done[label] = write_outputs(run, results / _file_name(label))


def _time_methods(model: Any, tokenizer: Any, runs: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Wall clock of every method on one batch of test articles, with ``sttabt bench``'s protocol."""
    from sttabt.adapters.hf_text import HFTextClassifierAdapter
    from sttabt.bench import device_info, measure
    from sttabt.data import collate, encode, load_examples
    from sttabt.methods import build_selector
    from sttabt.runtime import SparseEncoder
    from sttabt.utils import inference, resolve_device

    device = resolve_device(args.device)
    model = model.to(device).eval()
    adapter = HFTextClassifierAdapter(model)
    runner = SparseEncoder(adapter)
    examples = load_examples("bbc", "test", limit=args.timing_docs)
    batch = collate(encode(tokenizer, examples, args.max_length), tokenizer.pad_token_id)
    batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    calls: dict[str, Callable[[], Any]] = {"HF dense": lambda: model(**batch).logits}
    for label, (method, options) in runs.items():
        selector = build_selector(method, adapter, options)
        calls[label] = lambda selector=selector: runner(batch, selector)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    load_start = _load_average()
    with inference(device, "fp32"):
        samples, _ = measure(calls, 1, args.timing_rounds, sync, desc="timing")
    load_end = _load_average()
    medians = {name: float(torch.tensor(times).median()) for name, times in samples.items()}
    return {
        "documents": int(batch["input_ids"].shape[0]),
        "padded_length": int(batch["input_ids"].shape[1]),
        "warmup": 1,
        "repeats": args.timing_rounds,
        "protocol": "sttabt.bench.measure: one batch, round-robin over methods with the order rotated "
        "each round, time.perf_counter around each call, torch.inference_mode",
        "median_ms": medians,
        "samples_ms": samples,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_info": device_info(device),
        "load_average": {"start": load_start, "end": load_end},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _file_name(label: str) -> str:
    return label.replace(" ", "_").replace("=", "").replace("-", "") + ".json"


def _table(reports: dict[str, dict], timing: dict[str, Any], topk_keep: float) -> list[dict]:
    """One row per method: accuracy, retention, FLOPs (whole test split) and wall clock (timed batch)."""
    medians, docs = timing["median_ms"], timing["documents"]
    rows = []
    for label, report in reports.items():
        shown = f"top-k @ret {topk_keep:.2f}" if label == "top-k" else label
        rows.append(
            {
                "method": shown,
                "accuracy %": f"{100 * report['metrics']['accuracy']:.2f}",
                "retention %": f"{100 * report['retention']:.1f}",
                "rel. FLOPs %": f"{100 * report['flops']['relative']:.1f}",
                "ms/doc": f"{medians[label] / docs:.1f}",
                "speed-up": f"{medians['HF dense'] / medians[label]:.2f}x",
            }
        )
    return rows


def what_it_shows(rows: list[dict]) -> str:
    """One line that reads the table: accuracy cost of each budget, and who wins at equal FLOPs."""
    dense = float(rows[0]["accuracy %"])

    def point(row: dict) -> tuple[float, float]:
        return float(row["accuracy %"]), float(row["rel. FLOPs %"])

    abt = [r for r in rows if r["method"].startswith("ABT")]
    topk = next(r for r in rows if r["method"].startswith("top-k"))
    parts = [
        f"{r['method']} {point(r)[0] - dense:+.2f} points at {point(r)[1]:.0f} % FLOPs ({r['speed-up']})"
        for r in abt
    ]
    parts.append(f"top-k {point(topk)[0] - dense:+.2f} at {point(topk)[1]:.0f} % ({topk['speed-up']})")
    nearest = min(abt, key=lambda r: abs(point(r)[1] - point(topk)[1]))
    (a_acc, a_flops), (t_acc, t_flops) = point(nearest), point(topk)
    if t_acc >= a_acc and t_flops <= a_flops:
        verdict = (
            f"top-k matches or beats {nearest['method']} at equal or lower FLOPs on this easy topic task"
        )
    elif a_acc >= t_acc and a_flops <= t_flops:
        verdict = f"{nearest['method']} beats top-k at equal or lower FLOPs"
    else:
        verdict = f"{nearest['method']} and top-k trade accuracy for FLOPs"
    return f"What the table shows (accuracy vs dense {dense:.2f} %): " + "; ".join(parts) + f"; {verdict}."


def _timing_line(timing: dict[str, Any]) -> str:
    start, end = (timing["load_average"][k] or ["?"] for k in ("start", "end"))
    return (
        f"(ms/doc and speed-up: median of {timing['repeats']} interleaved rounds after a warm-up on "
        f"{timing['documents']} test articles, vs the unmodified HF forward, threads: {timing['threads']}, "
        f"1-min load average {start[0]} -> {end[0]};"
        " other columns: the whole test split)"
    )


def _format_table(rows: list[dict]) -> str:
    headers = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(str(r[h]).ljust(w) for h, w in zip(headers, widths, strict=True)) for r in rows]
    return "\n".join([line, "-" * len(line), *body])


def _write_page(
    path: Path, model, tokenizer, approx, args, topk_keep: float, rows: list[dict], summary: str
) -> None:
    """One article, layer by layer, under ABT at the first budget and top-k at the table's target."""
    from sttabt.api import PrunedClassifier
    from sttabt.data import load_examples
    from sttabt.visualize import kept_tokens_html, write_page

    example = load_examples("bbc", "test", limit=1)[0]
    batch = tokenizer([example.text_a], return_tensors="pt", truncation=True, max_length=args.max_length)
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    names = model.config.id2label
    keep = args.keeps[0]
    variants = (
        (f"ABT (keep {keep})", {"method": "abt", "keep": keep, "approx": approx}),
        (f"top-k (reference schedule, target retention {topk_keep:.2f}: the table's top-k row)",
         {"method": "topk", "keep": topk_keep, "schedule": "reference"}),
    )  # fmt: skip
    sections = []
    for title, kwargs in variants:
        out = PrunedClassifier(model, **kwargs)(batch)
        kept = [s[0].tolist() for s in out.key_sets]
        predicted, true = int(out.logits.argmax()), int(example.label)
        caption = (
            f"prediction: {names.get(predicted, predicted)}; true: {names.get(true, true)}; "
            f"retention {100 * float(out.retention()[0]):.1f} %"
        )
        sections.append(kept_tokens_html(tokens, kept, title, caption))
    title = "sttabt: kept tokens on a BBC News article, layer by layer"
    write_page(path, title, sections, rows, intro=summary)


if __name__ == "__main__":
    sys.exit(main())
