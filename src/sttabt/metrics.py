"""Task metrics, as fractions: every value is on the [0, 1] scale (correlations on [-1, 1]), never x100.

``PUBLISHED_RESULTS.md`` quotes metrics x100; multiply by 100 only when printing a comparison.

* accuracy: every classification task (MRPC and QQP report it as the primary metric, as the reference
  protocol does, with F1 of the positive class beside it);
* CoLA: Matthews correlation (primary) and accuracy;
* STS-B: Pearson (primary) and Spearman correlation;
* BBC News: accuracy (primary) and macro-averaged F1.

Degenerate inputs get defined values rather than NaN, so logs stay valid JSON: a correlation with a
constant prediction or label vector is 0.0 (as scikit-learn does for Matthews), and F1 with no positive
prediction is 0.0.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from sttabt.data import get_task
from sttabt.errors import SttabtError


def primary_metric(task: str) -> str:
    """The metric that model selection and one-line summaries use."""
    return get_task(task).metric_names[0]


def compute_metrics(task: str, predictions: Any, labels: Any) -> dict[str, float]:
    """Score ``predictions`` against ``labels`` with the task's metrics (keys: ``TaskSpec.metric_names``).

    ``predictions`` may be class ids (N,), logits (N, C) (arg-maxed), or scores (N,) / (N, 1) for STS-B.
    """
    from scipy import stats
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    spec = get_task(task)
    pred = _as_array(predictions)
    gold = _as_array(labels)
    if gold.ndim != 1:
        raise SttabtError(f"labels must be one-dimensional, got shape {gold.shape}")
    if spec.is_regression:
        if pred.ndim == 2 and pred.shape[1] == 1:
            pred = pred[:, 0]
        pred = pred.astype(np.float64)
        gold = gold.astype(np.float64)
    else:
        if pred.ndim == 2:
            pred = pred.argmax(axis=1)
        if not np.all(np.equal(np.mod(gold, 1), 0)) or not np.all(np.equal(np.mod(pred, 1), 0)):
            raise SttabtError(f"{spec.name} needs integer class ids (or logits) as predictions and labels")
        pred = pred.astype(np.int64)
        gold = gold.astype(np.int64)
        too_big = spec.num_labels and gold.max(initial=0) >= spec.num_labels  # 0: set by the data
        if gold.min(initial=0) < 0 or too_big:
            raise SttabtError(
                f"labels outside 0..{spec.num_labels - 1} for {spec.name} (unlabelled test split?)"
            )
    if pred.ndim != 1 or pred.shape[0] != gold.shape[0]:
        raise SttabtError(f"predictions of shape {pred.shape} do not match {gold.shape[0]} labels")
    if gold.shape[0] == 0:
        raise SttabtError("cannot compute metrics on zero examples")

    out: dict[str, float] = {}
    for name in spec.metric_names:
        if name == "accuracy":
            out[name] = float(accuracy_score(gold, pred))
        elif name == "f1":
            out[name] = float(f1_score(gold, pred, pos_label=1, average="binary", zero_division=0))
        elif name == "macro_f1":
            out[name] = float(
                f1_score(gold, pred, labels=list(range(spec.num_labels)) or None, average="macro",
                         zero_division=0)  # fmt: skip
            )
        elif name == "matthews_corr":
            out[name] = float(matthews_corrcoef(gold, pred))
        elif name == "pearson":
            out[name] = _correlation(stats.pearsonr, pred, gold)
        elif name == "spearman":
            out[name] = _correlation(stats.spearmanr, pred, gold)
        else:  # pragma: no cover - TASKS and this function are kept in step
            raise AssertionError(f"metric {name} has no implementation")
    return out


def _as_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values)


def _correlation(fn: Any, pred: np.ndarray, gold: np.ndarray) -> float:
    if pred.shape[0] < 2 or np.ptp(pred) == 0 or np.ptp(gold) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(fn(pred, gold)[0])
    return 0.0 if np.isnan(value) else value
