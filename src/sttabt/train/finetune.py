"""Fine-tune a dense text classifier on one task: the backbone and teacher every pruning method starts from.

Model selection never looks at the reported split (METHODS.md, pitfall R14): a seeded slice of the
*train* split is held out, the epoch with the best held-out primary metric is kept, and only that model
is scored once on the task's dev split at the end.

Runs under Hugging Face Accelerate, so the same code works on one CPU, one GPU or several processes
(``accelerate launch -m sttabt.cli finetune ...``): every process takes every P-th batch of the same
seeded batch order (the last ``n_batches % P`` batches of an epoch are skipped so that all processes
step together; ``--batch-size`` is per process), evaluation is sharded and gathered, and only the main
process writes files.
On CPU with a fixed seed and thread count, two runs give bit-identical weights.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from sttabt.data import LABEL_NAMES, batches, encode, get_task, load_examples, split_train_heldout
from sttabt.errors import SttabtError
from sttabt.metrics import compute_metrics, primary_metric
from sttabt.utils import DTYPES, atomic_directory, atomic_write_json, set_seed

log = logging.getLogger(__name__)

LOG_NAME = "train_log.json"
#: The split that ``load_examples(task, "dev")`` actually reads, recorded in the log.
_DEV_FILE = {"mnli": "dev_matched", "bbc": "test"}


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run depends on; saved verbatim in ``train_log.json``.

    ``max_train_examples`` caps the pool read from the train split (its first N examples) *before* the
    held-out slice is taken; ``max_heldout_examples`` caps that slice (useful for MNLI/QQP on a CPU).
    """

    model: str
    task: str
    output: str
    data_dir: str | None = None
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    max_train_examples: int | None = None
    heldout_fraction: float = 0.1
    max_heldout_examples: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "fp32"
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    group_by_length: bool = False
    eval_dev: bool = True
    progress: bool = True

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.lr > 0, f"learning rate must be positive, got {self.lr}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval batch size must be >= 1, got {self.eval_batch_size}"),
            (self.max_length >= 2, f"max length must be >= 2, got {self.max_length}"),
            (0.0 <= self.heldout_fraction < 1.0,
             f"heldout fraction must be in [0, 1), got {self.heldout_fraction}"),
            (0.0 <= self.warmup_ratio < 1.0, f"warmup ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.max_grad_norm >= 0, f"max grad norm must be >= 0 (0 = off), got {self.max_grad_norm}"),
            (self.dtype in DTYPES, f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}"),
            (self.device in ("auto", "cpu", "cuda"),
             f"device must be auto, cpu or cuda, got {self.device!r}"),
            (self.max_train_examples is None or self.max_train_examples >= 2,
             f"max train examples must be >= 2, got {self.max_train_examples}"),
            (self.max_heldout_examples is None or self.max_heldout_examples >= 1,
             f"max heldout examples must be >= 1, got {self.max_heldout_examples}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise SttabtError(message)
        if not str(self.output).strip():
            raise SttabtError("an output directory is required")
        if Path(self.output).exists() and not Path(self.output).is_dir():
            raise SttabtError(f"output exists and is not a directory: {self.output}")
        get_task(self.task)


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Train, keep the best held-out epoch, score it on dev, save it; return the training log."""
    started = time.perf_counter()
    config.validate()
    spec = get_task(config.task)
    accelerator = _make_accelerator(config.device, config.dtype)
    main = accelerator.is_main_process

    pool = load_examples(spec.name, "train", config.data_dir, limit=config.max_train_examples)
    train_ex, held_ex = split_train_heldout(pool, config.heldout_fraction, config.seed)
    if config.max_heldout_examples is not None:
        held_ex = held_ex[: config.max_heldout_examples]
    dev_ex = load_examples(spec.name, "dev", config.data_dir) if config.eval_dev else []

    from sttabt.models import load_text_classifier, resolve_model_path

    set_seed(config.seed)  # the new classification head is drawn from this seed
    problem_type = "regression" if spec.is_regression else "single_label_classification"
    model, tokenizer = load_text_classifier(
        config.model, num_labels=spec.num_labels, problem_type=problem_type
    )
    _set_label_names(model, spec.name)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise SttabtError(f"the tokenizer of {config.model!r} has no padding token")
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and config.max_length > max_pos:
        raise SttabtError(f"max length {config.max_length} exceeds the model's {max_pos} positions")

    train_f = encode(tokenizer, train_ex, config.max_length)
    held_f = encode(tokenizer, held_ex, config.max_length)
    dev_f = encode(tokenizer, dev_ex, config.max_length)

    procs = accelerator.num_processes
    global_batches = math.ceil(len(train_f) / config.batch_size)
    steps_per_epoch = global_batches // procs
    if steps_per_epoch == 0:
        raise SttabtError(f"{len(train_f)} training examples make fewer batches than the {procs} processes")
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_ratio * total_steps)

    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    # Accelerate steps a prepared scheduler once per process per optimiser step, so it counts in
    # process-steps.
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps * procs, total_steps * procs)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    bare = accelerator.unwrap_model(model)
    metric = primary_metric(spec.name)
    show_bar = config.progress and accelerator.is_local_main_process and sys.stderr.isatty()

    if main:
        log.info(
            "fine-tuning %s on %s: %d train / %d held-out / %d dev examples, %d steps per epoch x %d epochs, "
            "%d process(es) on %s, %s",
            config.model, spec.name, len(train_f), len(held_f), len(dev_f), steps_per_epoch, config.epochs,
            procs, accelerator.device, config.dtype,
        )  # fmt: skip

    epochs: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, best_score = 0, -math.inf
    for epoch in range(1, config.epochs + 1):
        record = _train_epoch(
            model, optimizer, scheduler, accelerator, train_f, config, pad_id, epoch, steps_per_epoch,
            show_bar,
        )  # fmt: skip
        if held_f:
            held_metrics, held_rate, held_s = _evaluate(bare, held_f, spec.name, accelerator, config, pad_id)
            record.update(heldout=held_metrics, heldout_examples_per_s=held_rate, heldout_seconds=held_s)
            score = held_metrics[metric]
        else:
            score = float(epoch)  # no held-out slice: the last epoch wins
        epochs.append(record)
        if main:
            held_txt = f", held-out {metric}={record['heldout'][metric]:.4f}" if held_f else ""
            log.info(
                "epoch %d/%d: loss %.4f, %.1f train examples/s%s",
                epoch, config.epochs, record["train_loss"], record["train_examples_per_s"], held_txt,
            )  # fmt: skip
        if score > best_score:
            best_epoch, best_score = epoch, score
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in bare.state_dict().items()}

    assert best_state is not None
    bare.load_state_dict(best_state)
    dev_record: dict[str, Any] | None = None
    if dev_f:
        dev_metrics, dev_rate, dev_s = _evaluate(bare, dev_f, spec.name, accelerator, config, pad_id)
        dev_record = {"split": _DEV_FILE.get(spec.name, "dev"), "examples": len(dev_f),
                      "metrics": dev_metrics, "examples_per_s": dev_rate, "seconds": dev_s}  # fmt: skip

    train_rates = [e["train_examples_per_s"] for e in epochs]
    train_seconds = sum(e["train_seconds"] for e in epochs)
    record_out: dict[str, Any] = {
        "config": asdict(config),
        "task": asdict(spec),
        "model_path": resolve_model_path(config.model),
        "primary_metric": metric,
        "examples": {"train": len(train_f), "heldout": len(held_f), "dev": len(dev_f)},
        "steps_per_epoch": steps_per_epoch,
        "warmup_steps": warmup_steps,
        "epochs": epochs,
        "best_epoch": best_epoch,
        "best_heldout": epochs[best_epoch - 1].get("heldout"),
        "dev": dev_record,
        "throughput": {
            "train_examples_per_s_mean": sum(train_rates) / len(train_rates),
            "train_examples_per_s_overall": sum(e["train_examples"] for e in epochs)
            / max(train_seconds, 1e-9),
            "dev_examples_per_s": dev_record["examples_per_s"] if dev_record else None,
        },
        "environment": {
            "processes": procs,
            "device": str(accelerator.device),
            "mixed_precision": accelerator.mixed_precision,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "output": str(Path(config.output).resolve()),
    }
    record_out["wall_seconds"] = time.perf_counter() - started
    record_out["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if main:
        _save(bare, tokenizer, config.output, record_out)
        log.info("saved the epoch-%d model to %s", best_epoch, config.output)
    accelerator.wait_for_everyone()
    return record_out


def summary_line(record: dict[str, Any]) -> str:
    """One line for the terminal: dev metrics, the selected epoch, throughput, wall time, output."""
    metric = record["primary_metric"]
    dev = record.get("dev")
    if dev:
        dev_txt = f"{dev['split']} " + " ".join(f"{k}={v:.4f}" for k, v in dev["metrics"].items())
    else:
        dev_txt = "dev not evaluated"
    held = record.get("best_heldout")
    held_txt = f", held-out {metric}={held[metric]:.4f}" if held else ""
    return (
        f"{record['task']['name']}: {dev_txt} | "
        f"best epoch {record['best_epoch']}/{record['config']['epochs']}{held_txt} | "
        f"{record['throughput']['train_examples_per_s_mean']:.1f} train ex/s | "
        f"{record['wall_seconds']:.0f} s -> {record['output']}"
    )


# ------------------------------------------------------------------------------------------- internals


def _make_accelerator(device: str, dtype: str):
    """An Accelerator for ``device``/``dtype``; re-creates a single-process state left by an earlier run."""
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    from sttabt.utils import resolve_device

    resolved = resolve_device(device)
    if dtype == "fp16" and resolved.type == "cpu":
        raise SttabtError("fp16 is not supported on CPU; use --dtype bf16")
    kwargs = {"cpu": resolved.type == "cpu", "mixed_precision": {"fp32": "no"}.get(dtype, dtype)}
    try:
        return Accelerator(**kwargs)
    except ValueError as exc:
        if "already been initialized" not in str(exc):
            raise SttabtError(f"cannot set up Accelerate: {exc}") from exc
        if PartialState().num_processes > 1:
            raise SttabtError(f"cannot change precision inside a multi-process run: {exc}") from exc
        # Accelerate keeps one process-wide state; a second run in the same process (tests, notebooks)
        # with another precision must start from a clean one.
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)


def _set_label_names(model: torch.nn.Module, task: str) -> None:
    names = LABEL_NAMES.get(task)
    if names and len(names) == model.config.num_labels:
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {name: i for i, name in enumerate(names)}


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and normalisation weights (every parameter with fewer than 2 dims)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _train_epoch(
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    features: Sequence[dict[str, Any]],
    config: FinetuneConfig,
    pad_id: int,
    epoch: int,
    steps: int,
    show_bar: bool,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    model.train()
    rank, procs = accelerator.process_index, accelerator.num_processes
    order = batches(
        features, config.batch_size, pad_id, shuffle=True, seed=config.seed * 1000 + epoch,
        group_by_length=config.group_by_length,
    )  # fmt: skip
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    seen = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    bar = tqdm(
        total=steps, desc=f"epoch {epoch}/{config.epochs}", unit="step", disable=not show_bar, leave=False
    )
    start = time.perf_counter()
    step = 0
    for index, batch in enumerate(order):
        if step >= steps:
            break
        if index % procs != rank:
            continue
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        loss = model(**batch).loss
        accelerator.backward(loss)
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        n = batch["input_ids"].shape[0]
        loss_sum += loss.detach().double() * n
        seen += n
        step += 1
        if show_bar:
            elapsed = time.perf_counter() - start
            rate = seen.item() * procs / elapsed
            bar.set_postfix(loss=f"{(loss_sum / seen).item():.4f}", ex_s=f"{rate:.1f}", refresh=False)
            bar.update(1)
    bar.close()
    seconds = time.perf_counter() - start
    totals = accelerator.reduce(torch.stack([loss_sum, seen]), reduction="sum")
    total_seen = float(totals[1].item())
    return {
        "epoch": epoch,
        "train_loss": float(totals[0].item()) / max(total_seen, 1.0),
        "train_examples": int(total_seen),
        "train_seconds": seconds,
        "train_examples_per_s": total_seen / seconds if seconds > 0 else float("nan"),
        "lr_end": float(scheduler.get_last_lr()[0]),
    }


@torch.no_grad()
def _evaluate(
    model: torch.nn.Module,
    features: Sequence[dict[str, Any]],
    task: str,
    accelerator: Any,
    config: FinetuneConfig,
    pad_id: int,
) -> tuple[dict[str, float], float, float]:
    """Metrics on ``features``; each process scores a shard of length-sorted batches, then all gather."""
    spec = get_task(task)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    rank, procs = accelerator.process_index, accelerator.num_processes
    by_length = sorted(range(len(features)), key=lambda i: (-len(features[i]["input_ids"]), i))
    mine = by_length[rank::procs]
    width = spec.num_labels
    shard_len = math.ceil(len(features) / procs)
    out = torch.zeros(shard_len, width, dtype=torch.float32, device=accelerator.device)
    idx = torch.full((shard_len,), -1, dtype=torch.long, device=accelerator.device)
    for start_i in range(0, len(mine), config.eval_batch_size):
        chunk = mine[start_i : start_i + config.eval_batch_size]
        batch = next(batches([features[i] for i in chunk], len(chunk), pad_id))
        batch.pop("labels", None)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            logits = model(**batch).logits
        out[start_i : start_i + len(chunk)] = logits.float()
        idx[start_i : start_i + len(chunk)] = torch.tensor(chunk, device=accelerator.device)
    all_out = accelerator.gather(out).cpu()
    all_idx = accelerator.gather(idx).cpu()
    keep = all_idx >= 0
    preds = torch.empty(len(features), width)
    preds[all_idx[keep]] = all_out[keep]
    labels = [f["label"] for f in features]
    metrics = compute_metrics(task, preds[:, 0] if spec.is_regression else preds, labels)
    seconds = time.perf_counter() - start
    model.train(was_training)
    return metrics, (len(features) / seconds if seconds > 0 else float("nan")), seconds


def _save(model: Any, tokenizer: Any, output: str, record: dict[str, Any]) -> None:
    """Write model (safetensors), tokenizer and log into a temp dir that replaces ``output`` at once."""
    kwargs = (
        {"safe_serialization": True}
        if "safe_serialization" in inspect.signature(model.save_pretrained).parameters
        else {}
    )  # transformers >= 5 always writes safetensors and has no such flag
    with atomic_directory(output) as tmp:
        model.save_pretrained(tmp, **kwargs)
        tokenizer.save_pretrained(tmp)
        if not any(tmp.glob("*.safetensors")) or any(tmp.glob("*.bin")):
            raise SttabtError(f"expected safetensors weights only in {tmp}, got {sorted(os.listdir(tmp))}")
        atomic_write_json(tmp / LOG_NAME, record)
        _publish_permissions(tmp)


def _publish_permissions(folder: Path) -> None:
    """Give the checkpoint the usual umask permissions: temp dirs and files are created owner-only."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
