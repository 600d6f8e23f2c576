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
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from sttabt.data import (
    LABEL_NAMES,
    batches,
    encode_for_task,
    feature_length,
    get_task,
    load_examples,
    split_train_heldout,
)
from sttabt.errors import SttabtError
from sttabt.metrics import compute_metrics, primary_metric
from sttabt.progress import track
from sttabt.train.loop import LoopConfig, make_accelerator, steps_per_epoch, train_loop
from sttabt.utils import DTYPES, atomic_directory, atomic_write_json, autocast, set_seed

log = logging.getLogger(__name__)

LOG_NAME = "train_log.json"
#: The split that ``load_examples(task, "dev")`` actually reads, recorded in the log.
_DEV_FILE = {"mnli": "dev_matched", "bbc": "test", "fashion-mnist": "test", "digits": "test"}


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
    augment: bool = True  # image tasks: random shifts, flips (not digits) and erasing while training

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


@dataclass
class _Data:
    """Encoded train / held-out / dev features of one run."""

    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    dev: list[dict[str, Any]]


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Train, keep the best held-out epoch, score it on dev, save it; return the training log."""
    started = time.perf_counter()
    config.validate()
    spec = get_task(config.task)
    accelerator = make_accelerator(config.device)
    autocast(accelerator.device, config.dtype)  # refuses fp16 on CPU before any loading
    examples = _load_examples(config, spec)  # data errors come before the model is loaded
    model, processor = _load_model(config, spec)
    data = _Data(*(encode_for_task(spec, processor, part, config.max_length) for part in examples))
    pad_id = 0 if spec.is_image else processor.pad_token_id
    loop = LoopConfig(
        name="fine-tuning", epochs=config.epochs,
        batches_per_epoch=math.ceil(len(data.train) / config.batch_size),
        dtype=config.dtype, max_grad_norm=config.max_grad_norm, progress=config.progress,
    )  # fmt: skip
    steps = steps_per_epoch(loop.batches_per_epoch, accelerator.num_processes)
    optimizer, scheduler = _optimizer(model, config, steps * config.epochs)
    wrapped = accelerator.prepare_model(model)
    if accelerator.is_main_process:
        log.info(
            "fine-tuning %s on %s: %d train / %d held-out / %d dev examples, %d steps per epoch x %d epochs, "
            "%d process(es) on %s, %s",
            config.model, spec.name, len(data.train), len(data.heldout), len(data.dev), steps, config.epochs,
            accelerator.num_processes, accelerator.device, config.dtype,
        )  # fmt: skip

    def loss_fn(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": wrapped(**batch).loss}

    def epoch_batches(epoch: int):
        from sttabt.images import augmented_batches

        seed = config.seed * 1000 + epoch + 1  # epochs count from 1 here, as they always did
        epoch_data = batches(data.train, config.batch_size, pad_id, shuffle=True, seed=seed,
                             group_by_length=config.group_by_length)  # fmt: skip
        if spec.is_image and config.augment:
            return augmented_batches(epoch_data, seed, spec.name, processor)
        return epoch_data

    def evaluate() -> dict[str, Any]:
        metrics, rate, seconds = _evaluate(model, data.heldout, spec.name, accelerator, config, pad_id)
        return {"score": metrics[primary_metric(spec.name)], "heldout": metrics,
                "heldout_examples_per_s": rate, "heldout_seconds": seconds}  # fmt: skip

    result = train_loop(accelerator, model, loss_fn, optimizer, epoch_batches, loop,
                        evaluate=evaluate if data.heldout else None, scheduler=scheduler)  # fmt: skip
    dev_record = _dev_record(model, data.dev, spec.name, accelerator, config, pad_id)
    warmup = round(config.warmup_ratio * steps * config.epochs)
    record = _record(config, spec, data, result, dev_record, accelerator, steps, warmup)
    record["wall_seconds"] = time.perf_counter() - started
    record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if accelerator.is_main_process:
        _save(model, processor, config.output, record)
        log.info("saved the epoch-%d model to %s", record["best_epoch"], config.output)
    accelerator.wait_for_everyone()
    return record


def _load_model(config: FinetuneConfig, spec: Any) -> tuple[torch.nn.Module, Any]:
    """The backbone with a head for the task (drawn from the seed), checked against the run's lengths;
    with its tokenizer (text) or :class:`~sttabt.images.ImageTransform` (images)."""
    from sttabt.models import image_classifier_for_training, load_text_classifier

    set_seed(config.seed)  # the new classification head is drawn from this seed
    if spec.is_image:
        labels = spec.num_labels or _folder_labels(config, spec)
        return image_classifier_for_training(config.model, labels, LABEL_NAMES.get(spec.name))
    problem_type = "regression" if spec.is_regression else "single_label_classification"
    model, tokenizer = load_text_classifier(
        config.model, num_labels=spec.num_labels, problem_type=problem_type
    )
    _set_label_names(model, spec.name)
    if tokenizer.pad_token_id is None:
        raise SttabtError(f"the tokenizer of {config.model!r} has no padding token")
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and config.max_length > max_pos:
        raise SttabtError(f"max length {config.max_length} exceeds the model's {max_pos} positions")
    return model, tokenizer


def _folder_labels(config: FinetuneConfig, spec: Any) -> int:
    from sttabt.images import folder_num_labels

    labels = folder_num_labels(spec.name, config.data_dir)
    if labels is None:
        raise SttabtError(f"cannot tell how many classes {config.data_dir} has; use a local image folder")
    return labels


def _load_examples(config: FinetuneConfig, spec: Any) -> tuple[list[Any], list[Any], list[Any]]:
    """Train, held-out (a seeded slice of train) and dev examples."""
    pool = load_examples(spec.name, "train", config.data_dir, limit=config.max_train_examples)
    train_ex, held_ex = split_train_heldout(pool, config.heldout_fraction, config.seed)
    if config.max_heldout_examples is not None:
        held_ex = held_ex[: config.max_heldout_examples]
    dev_ex = load_examples(spec.name, "dev", config.data_dir) if config.eval_dev else []
    return train_ex, held_ex, dev_ex


def _optimizer(model: torch.nn.Module, config: FinetuneConfig, total_steps: int):
    """AdamW and the linear warm-up/decay schedule, stepped once per optimiser step."""
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    warmup = round(config.warmup_ratio * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


def _dev_record(model, features, task: str, accelerator, config: FinetuneConfig, pad_id: int):
    """The one score on the reported split, of the selected model (None when dev is skipped)."""
    if not features:
        return None
    metrics, rate, seconds = _evaluate(
        model, features, task, accelerator, config, pad_id, desc="dev evaluation"
    )
    return {"split": _DEV_FILE.get(task, "dev"), "examples": len(features), "metrics": metrics,
            "examples_per_s": rate, "seconds": seconds}  # fmt: skip


def _record(
    config, spec, data: _Data, result, dev_record, accelerator, steps: int, warmup: int
) -> dict[str, Any]:
    """The training log: config, data sizes, every epoch, the selected one, dev, throughput, environment."""
    from sttabt.models import resolve_model_path

    held_keys = ("heldout", "heldout_examples_per_s", "heldout_seconds")
    epochs = []
    for entry in result.epochs:
        evaluation = entry.get("evaluation") or {}
        epochs.append({**{k: v for k, v in entry.items() if k != "evaluation"},
                       **{k: evaluation[k] for k in held_keys if k in evaluation}})  # fmt: skip
    best_epoch = int(result.best["epoch"]) if result.best else len(epochs)
    rates = [e["train_examples_per_s"] for e in epochs]
    train_seconds = sum(e["train_seconds"] for e in epochs)
    return {
        "config": asdict(config),
        "task": asdict(spec),
        "model_path": resolve_model_path(config.model),
        "primary_metric": primary_metric(spec.name),
        "examples": {"train": len(data.train), "heldout": len(data.heldout), "dev": len(data.dev)},
        "steps_per_epoch": steps,
        "warmup_steps": warmup,
        "epochs": epochs,
        "best_epoch": best_epoch,
        "best_heldout": epochs[best_epoch - 1].get("heldout"),
        "dev": dev_record,
        "throughput": {
            "train_examples_per_s_mean": sum(rates) / len(rates),
            "train_examples_per_s_overall": sum(e["train_examples"] for e in epochs)
            / max(train_seconds, 1e-9),
            "dev_examples_per_s": dev_record["examples_per_s"] if dev_record else None,
        },
        "environment": {
            "processes": accelerator.num_processes,
            "device": str(accelerator.device),
            "mixed_precision": config.dtype if config.dtype != "fp32" else "no",
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "output": str(Path(config.output).resolve()),
    }


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


@torch.no_grad()
def _evaluate(
    model: torch.nn.Module,
    features: Sequence[dict[str, Any]],
    task: str,
    accelerator: Any,
    config: FinetuneConfig,
    pad_id: int,
    desc: str = "held-out evaluation",
) -> tuple[dict[str, float], float, float]:
    """Metrics on ``features``; each process scores a shard of length-sorted batches, then all gather."""
    spec = get_task(task)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    rank, procs = accelerator.process_index, accelerator.num_processes
    by_length = sorted(range(len(features)), key=lambda i: (-feature_length(features[i]), i))
    mine = by_length[rank::procs]
    width = spec.num_labels
    shard_len = math.ceil(len(features) / procs)
    out = torch.zeros(shard_len, width, dtype=torch.float32, device=accelerator.device)
    idx = torch.full((shard_len,), -1, dtype=torch.long, device=accelerator.device)
    starts = range(0, len(mine), config.eval_batch_size)
    show = config.progress and accelerator.is_local_main_process
    for start_i in track(starts, desc, enabled=show):
        chunk = mine[start_i : start_i + config.eval_batch_size]
        batch = next(batches([features[i] for i in chunk], len(chunk), pad_id))
        batch.pop("labels", None)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with autocast(accelerator.device, config.dtype):
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


def _save(model: Any, processor: Any, output: str, record: dict[str, Any]) -> None:
    """Write model (safetensors), tokenizer or image-processor config and log into a temp dir that
    replaces ``output`` at once."""
    from sttabt.images import ImageTransform, hf_processor_config

    kwargs = (
        {"safe_serialization": True}
        if "safe_serialization" in inspect.signature(model.save_pretrained).parameters
        else {}
    )  # transformers >= 5 always writes safetensors and has no such flag
    with atomic_directory(output) as tmp:
        model.save_pretrained(tmp, **kwargs)
        if isinstance(processor, ImageTransform):
            atomic_write_json(tmp / "preprocessor_config.json", hf_processor_config(processor))
        else:
            processor.save_pretrained(tmp)
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
