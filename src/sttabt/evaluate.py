"""Evaluate a classifier with a pruning method on a task split: metrics, retention and FLOPs per example.

Batches are formed from examples sorted by length (less padding); because every per-sample decision is
independent of the batch, the results equal a batch-1 run, and predictions are written in split order.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sttabt import validate
from sttabt.adapters.lookup import adapter_for
from sttabt.core.flops import dense_cost
from sttabt.errors import SttabtError
from sttabt.methods import MethodOptions, build_selector
from sttabt.methods.registry import validate_method
from sttabt.progress import track
from sttabt.protocol import check_protocol, padded_lengths, reference_figures
from sttabt.runtime import RATIO_LENGTHS, SparseEncoder
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
    protocol: str = "real"  # "reference": also count as the STTABT paper does (sttabt.protocol)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = {k: v for k, v in self.options.to_dict().items() if k != "extra"}
        return data

    def validate(self) -> None:
        """Every check that needs neither the model nor the data, so a typo fails in milliseconds."""
        from sttabt.data import check_split, get_task

        validate.positive_int(self.batch_size, "--batch-size")
        validate.max_length(self.max_length, name="--max-length")
        if self.limit is not None:
            validate.positive_int(self.limit, "--limit")
        validate_method(self.method, self.options, strict=True)
        check_protocol(self.protocol, self.method)
        check_split(self.task, self.split)
        if self.protocol == "reference" and get_task(self.task).is_image:
            raise SttabtError("--protocol reference is for text (padded lengths); images have no padding")
        validate.dtype(self.dtype, validate.device(self.device, "--device"), "--dtype")

    def check_model(self, model_config: Any) -> None:
        """The model fits the task (labels) and the inputs (``max_length`` within its positions)."""
        from sttabt.data import get_task
        from sttabt.models import check_task_fit

        task = get_task(self.task)
        if model_config is None:  # timm: no config to check against; its head size is checked on load
            return
        if not task.is_image:
            validate.max_length(self.max_length, model_config, "--max-length")
        check_task_fit(model_config, task, self.model)


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
    provenance: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] | None = None  # the paper's padded-length figures (--protocol reference)

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
            **({"reference_protocol": self.reference} if self.reference is not None else {}),
            "config": self.config.to_dict(),
            "provenance": self.provenance,
        }


def run_evaluation(config: EvalConfig, model=None, tokenizer=None) -> EvalRun:
    """Run ``config``; pass ``model``/``tokenizer`` to reuse an already loaded classifier (for image
    tasks ``tokenizer`` is the :class:`~sttabt.images.ImageTransform`; None: the model's own)."""
    from sttabt.data import collate, encode_for_task, feature_length, get_task, load_examples
    from sttabt.metrics import compute_metrics

    config.validate()
    task = get_task(config.task)
    config.check_model(model_config_of(config.model, model))
    examples = load_examples(task.name, config.split, config.data_dir, config.limit)
    if not examples:
        raise SttabtError(f"no examples in {task.name}/{config.split}")
    model, tokenizer = load_for_task(config.model, task, model, tokenizer)
    device = resolve_device(config.device)
    model = model.to(device).eval()
    provenance = _provenance(config, model, device)
    adapter = adapter_for(model)
    runner = SparseEncoder(adapter)
    selector = build_selector(config.method, adapter, config.options)

    features = encode_for_task(task, tokenizer, examples, config.max_length)
    reference = config.protocol == "reference"
    padded = padded_lengths([len(f["input_ids"]) for f in features]) if reference else None
    order = sorted(range(len(features)), key=lambda i: -feature_length(features[i]))
    count, layers = len(features), adapter.num_layers
    logits = None
    retention = torch.zeros(count, dtype=torch.float64)
    layer_retention = torch.zeros(count, layers, dtype=torch.float64)
    flops = torch.zeros(count, dtype=torch.float64)
    macs = torch.zeros(count, dtype=torch.float64)
    dense_flops = torch.zeros(count, dtype=torch.float64)
    dense_macs = torch.zeros(count, dtype=torch.float64)
    layer_counts = torch.zeros(count, layers, 3, dtype=torch.long)
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    started = time.perf_counter()
    chunks = [order[i : i + config.batch_size] for i in range(0, count, config.batch_size)]
    bar = track(chunks, f"{config.method} {task.name}", unit="batch", enabled=config.progress)
    with inference(device, config.dtype):
        for chunk in bar:
            batch = collate([features[i] for i in chunk], pad_id)
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            idx = torch.tensor(chunk)
            if reference:
                batch[RATIO_LENGTHS] = padded[idx].to(device)
            out = runner(batch, selector)
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
            layer_counts[idx] = out.counts.cpu().long()
    seconds = time.perf_counter() - started
    labels = [ex.label for ex in examples]
    predictions = logits.squeeze(-1).tolist() if task.is_regression else logits.argmax(dim=-1).tolist()
    metrics = compute_metrics(task.name, predictions, labels)
    log.info("%s on %s/%s: %s", config.method, task.name, config.split, metrics)
    real = torch.tensor([feature_length(f) for f in features])
    figures = (reference_figures(config.method, selector, adapter.shape, layer_counts, real, padded)
               if reference else None)  # fmt: skip
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
        provenance,
        figures,
    )


def model_config_of(name: str, model: Any = None) -> Any:
    """The HF config to check against the task, without loading weights; None for timm models."""
    from sttabt.models import TIMM_PREFIX, load_model_config, timm_directory

    if model is not None:
        return getattr(model, "config", None)
    if str(name).startswith(TIMM_PREFIX) or timm_directory(str(name)) is not None:
        return None
    return load_model_config(name)


def load_for_task(name: str, task: Any, model: Any = None, processor: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for text, ``(model, ImageTransform)`` for images; what is given is kept."""
    from sttabt.models import load_image_classifier, load_text_classifier, resolve_model_path

    if not task.is_image:
        return (model, processor) if model is not None else load_text_classifier(name)
    if model is None:
        model, _ = load_image_classifier(name)
    if processor is None:
        from sttabt.images import transform_for

        path = None if str(name).startswith("timm:") else resolve_model_path(name)
        processor = transform_for(model, path if path and Path(path).exists() else None)
    return model, processor


def _provenance(config: EvalConfig, model: torch.nn.Module, device: torch.device) -> dict[str, Any]:
    """Versions, machine and time, plus the resolved model (path and weight fingerprint) and data."""
    from sttabt.approxnet import teacher_fingerprint
    from sttabt.data import resolved_data_dir
    from sttabt.models import resolve_model_path
    from sttabt.provenance import run_provenance

    try:
        model_path = resolve_model_path(config.model)
    except SttabtError:  # an in-memory model passed by the caller, labelled with a name that is no path
        model_path = config.model
    if Path(model_path).exists():
        model_path = str(Path(model_path).resolve())
    return {
        **run_provenance(device),
        "model_path": model_path,
        "weights_sha256": teacher_fingerprint(model),
        "data_dir": resolved_data_dir(config.task, config.data_dir),
    }


def write_outputs(
    run: EvalRun, output: str | Path, predictions: str | Path | None = None, command: str | None = None
) -> dict[str, Any]:
    """Write ``results.json`` (and optionally ``preds.jsonl``) atomically; returns the report.

    ``command`` (the command line that made the run) goes into the report's provenance.
    """
    from sttabt.data import LABEL_NAMES

    report = run.report()
    if command is not None:
        report["provenance"] = {**report["provenance"], "command": command}
    atomic_write_json(output, report)
    if predictions is not None:
        names = LABEL_NAMES.get(run.config.task)
        lines = [json.dumps(_prediction_row(i, label, row, names)) for i, (label, row) in
                 enumerate(zip(run.labels, run.logits.tolist(), strict=True))]  # fmt: skip
        atomic_write_text(predictions, "\n".join(lines) + "\n")
    return report


def _prediction_row(index: int, label: Any, logits: list[float], names: Sequence[str] | None) -> dict:
    """One ``preds.jsonl`` line; class tasks also name the label and the prediction (test labels: null)."""
    if len(logits) == 1:
        return {"index": index, "label": label, "prediction": logits[0], "logits": logits}
    prediction = int(max(range(len(logits)), key=logits.__getitem__))
    row = {"index": index, "label": label, "prediction": prediction}
    if names is not None:
        row["label_name"] = names[label] if 0 <= label < len(names) else None
        row["prediction_name"] = names[prediction]
    row["logits"] = logits
    return row
