"""Wall clock of a method on real examples of a task, against the same model's unmodified forward.

Synthetic-shape timing lives in :mod:`sttabt.bench`; sweeps want the latency of each point on the inputs
its accuracy was measured on (real lengths, real kept counts of learned methods), so this times the first
N examples of the split in fixed batches, the method and the Hugging Face forward interleaved round-robin
(:func:`sttabt.bench.measure`), and reports the ratio measured in that one run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


def time_on_examples(
    grid: Any, method: str, options: Any, model_dir: Path | None, teacher: Any, tokenizer: Any
) -> dict[str, Any]:
    """Per ``(dtype, batch size)`` of ``grid.latency``: ms per example of the method and of HF dense."""
    from sttabt.adapters.lookup import adapter_for
    from sttabt.bench import measure
    from sttabt.methods import build_selector
    from sttabt.models import load_text_classifier
    from sttabt.provenance import run_provenance
    from sttabt.runtime import SparseEncoder
    from sttabt.utils import resolve_device

    settings = grid.latency
    device = resolve_device(grid.device)
    model = load_text_classifier(str(model_dir))[0] if model_dir is not None else teacher
    model = model.to(device).eval()
    adapter = adapter_for(model)
    selector = build_selector(method, adapter, options)
    encoder = SparseEncoder(adapter)
    features = _features(grid, tokenizer, settings.examples)
    previous = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        runs = [
            _time_one(model, encoder, selector, features, tokenizer, size, dtype, device, settings, measure)
            for dtype in settings.dtypes
            for size in settings.batch_sizes
        ]
    finally:
        torch.set_num_threads(previous)
    return {
        "examples": len(features),
        "threads": settings.threads,
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "runs": runs,
        "environment": run_provenance(device),
    }


def _features(grid: Any, tokenizer: Any, count: int) -> list[dict[str, Any]]:
    from sttabt.data import encode_for_task, get_task, load_examples

    examples = load_examples(grid.task, grid.split, grid.data_dir, limit=count)
    return encode_for_task(get_task(grid.task), tokenizer, examples, grid.max_length)


def _time_one(
    model,
    encoder,
    selector,
    features,
    tokenizer,
    size: int,
    dtype: str,
    device: torch.device,
    settings: Any,
    measure: Callable,
) -> dict[str, Any]:
    from sttabt.bench import _synchronizer
    from sttabt.data import collate
    from sttabt.utils import inference

    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    batches = []
    for start in range(0, len(features), size):
        batch = collate(features[start : start + size], pad_id)
        batches.append({k: v.to(device) for k, v in batch.items() if k != "labels"})
    calls = {
        "hf_dense": lambda: [model(**batch).logits for batch in batches],
        "method": lambda: [encoder(batch, selector).logits for batch in batches],
    }
    with inference(device, dtype):
        samples, _ = measure(calls, settings.warmup, settings.repeats, _synchronizer(device))
    dense_ms, method_ms = (float(np.median(samples[name])) for name in ("hf_dense", "method"))
    log.info(
        "latency %s b%d: method %.2f ms, dense %.2f ms per example",
        dtype,
        size,
        method_ms / len(features),
        dense_ms / len(features),
    )
    return {
        "dtype": dtype,
        "batch_size": size,
        "batches": len(batches),
        "method_ms_per_example": method_ms / len(features),
        "dense_ms_per_example": dense_ms / len(features),
        "speedup": dense_ms / method_ms,
        "samples_ms": {k: [round(v, 3) for v in s] for k, s in samples.items()},
    }
