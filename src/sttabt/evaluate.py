"""Evaluate a classifier with a pruning method on a task split: metrics, retention and FLOPs per example.

Batches are formed from examples sorted by length (less padding); because every per-sample decision is
independent of the batch, the results equal a batch-1 run, and predictions are written in split order.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.core.flops import dense_cost
from sttabt.errors import SttabtError
from sttabt.methods import MethodOptions, build_selector
from sttabt.methods.registry import validate_method
from sttabt.runtime import SparseEncoder
from sttabt.utils import atomic_write_json, atomic_write_text, inference, resolve_device

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    model: str
    task: str
    method: str = "dense"
    options: MethodOptions = field(default_factory=MethodOptions)
    data_dir: str | None = None
    split: str = "dev"
    batch_size: int = 32
    max_length: int = 128
    limit: int | None = None
    device: str = "auto"
    dtype: str = "fp32"
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = {k: v for k, v in self.options.to_dict().items() if k != "extra"}
        return data


@dataclass
class EvalRun:
    """In-memory outcome of :func:`run_evaluation` (the JSON report is :meth:`report`)."""

    config: EvalConfig
    metrics: dict[str, float]
    logits: torch.Tensor  # (N, C) in split order
    labels: list[Any]
    retention: torch.Tensor  # (N,)
    layer_retention: torch.Tensor  # (N, L): |S_l| / n per layer
    flops: torch.Tensor  # (N,) method FLOPs incl. overhead
    macs: torch.Tensor
    dense_flops: torch.Tensor  # (N,) the unmodified model
    dense_macs: torch.Tensor
    seconds: float

    def report(self) -> dict[str, Any]:
        relative = float(self.flops.sum() / self.dense_flops.sum())
        return {
            "task": self.config.task,
            "split": self.config.split,
            "method": self.config.method,
            "examples": len(self.labels),
            "metrics": self.metrics,
            "retention": float(self.retention.mean()),
            "retention_per_layer": self.layer_retention.mean(dim=0).tolist(),
            "flops": {
                "dense_per_example": float(self.dense_flops.mean()),
                "per_example": float(self.flops.mean()),
                "relative": relative,
                "dense_macs_per_example": float(self.dense_macs.mean()),
                "macs_per_example": float(self.macs.mean()),
                "relative_macs": float(self.macs.sum() / self.dense_macs.sum()),
                "convention": "real (unpadded) lengths; FLOPs = 2 x MACs + LayerNorm/GELU/softmax; "
                "method FLOPs include its overhead (ApproxNet forward, set construction)",
            },
            "seconds": self.seconds,
            "config": self.config.to_dict(),
        }


def run_evaluation(config: EvalConfig, model=None, tokenizer=None) -> EvalRun:
    """Run ``config``; pass ``model``/``tokenizer`` to reuse an already loaded classifier."""
    from sttabt.data import collate, encode, get_task, load_examples
    from sttabt.metrics import compute_metrics
    from sttabt.models import load_text_classifier

    if config.batch_size < 1:
        raise SttabtError(f"--batch-size must be >= 1, got {config.batch_size}")
    if config.max_length < 2:
        raise SttabtError(f"--max-length must be >= 2, got {config.max_length}")
    validate_method(config.method, config.options)
    task = get_task(config.task)
    examples = load_examples(task.name, config.split, config.data_dir, config.limit)
    if not examples:
        raise SttabtError(f"no examples in {task.name}/{config.split}")
    if model is None:
        model, tokenizer = load_text_classifier(config.model)
    if int(model.config.num_labels) != task.num_labels:
        raise SttabtError(
            f"model {config.model!r} has {model.config.num_labels} labels but task {task.name} has "
            f"{task.num_labels}; fine-tune it on the task first (sttabt finetune)"
        )
    device = resolve_device(config.device)
    model = model.to(device).eval()
    adapter = HFTextClassifierAdapter(model)
    runner = SparseEncoder(adapter)
    selector = build_selector(config.method, adapter, config.options)

    features = encode(tokenizer, examples, config.max_length)
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    count, layers = len(features), adapter.num_layers
    logits = None
    retention = torch.zeros(count, dtype=torch.float64)
    layer_retention = torch.zeros(count, layers, dtype=torch.float64)
    flops = torch.zeros(count, dtype=torch.float64)
    macs = torch.zeros(count, dtype=torch.float64)
    dense_flops = torch.zeros(count, dtype=torch.float64)
    dense_macs = torch.zeros(count, dtype=torch.float64)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    started = time.perf_counter()
    chunks = [order[i : i + config.batch_size] for i in range(0, count, config.batch_size)]
    bar = tqdm(chunks, desc=f"{config.method} {task.name}", unit="batch", disable=not config.progress)
    with inference(device, config.dtype):
        for chunk in bar:
            batch = collate([features[i] for i in chunk], pad_id)
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            out = runner(batch, selector)
            idx = torch.tensor(chunk)
            if logits is None:
                logits = torch.zeros(count, out.logits.shape[-1], dtype=torch.float32)
            logits[idx] = out.logits.float().cpu()
            real = out.real_lengths.double().cpu()
            sizes = torch.stack([s.sum(dim=1) for s in out.key_sets[:-1]], dim=1).double().cpu()
            layer_retention[idx] = sizes / real.unsqueeze(1)
            retention[idx] = layer_retention[idx].mean(dim=1)
            flops[idx] = out.cost.flops.cpu()
            macs[idx] = out.cost.macs.cpu()
            dense = dense_cost(adapter.shape, out.real_lengths.cpu())
            dense_flops[idx] = dense.flops
            dense_macs[idx] = dense.macs
    seconds = time.perf_counter() - started
    labels = [ex.label for ex in examples]
    predictions = logits.squeeze(-1).tolist() if task.is_regression else logits.argmax(dim=-1).tolist()
    metrics = compute_metrics(task.name, predictions, labels)
    log.info("%s on %s/%s: %s", config.method, task.name, config.split, metrics)
    return EvalRun(
        config,
        metrics,
        logits,
        labels,
        retention,
        layer_retention,
        flops,
        macs,
        dense_flops,
        dense_macs,
        seconds,
    )


def write_outputs(run: EvalRun, output: str | Path, predictions: str | Path | None = None) -> dict[str, Any]:
    """Write ``results.json`` (and optionally ``preds.jsonl``) atomically; returns the report."""
    report = run.report()
    atomic_write_json(output, report)
    if predictions is not None:
        regression = run.logits.shape[-1] == 1
        lines = []
        for index, (label, row) in enumerate(zip(run.labels, run.logits.tolist(), strict=True)):
            prediction = row[0] if regression else int(max(range(len(row)), key=row.__getitem__))
            lines.append(
                json.dumps({"index": index, "label": label, "prediction": prediction, "logits": row})
            )
        atomic_write_text(predictions, "\n".join(lines) + "\n")
    return report
