"""sttabt.metrics against values worked out by hand (fractions, not x100)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sttabt.data import TASKS
from sttabt.errors import SttabtError
from sttabt.metrics import compute_metrics, primary_metric


def test_accuracy_from_ids_and_from_logits():
    assert compute_metrics("sst2", [0, 1, 1, 0], [0, 1, 0, 0]) == {"accuracy": 0.75}
    logits = torch.tensor([[2.0, -1.0], [0.1, 0.3], [-3.0, 4.0], [1.0, 0.0]])  # argmax 0, 1, 1, 0
    assert compute_metrics("SST-2", logits, torch.tensor([0, 1, 0, 0])) == {"accuracy": 0.75}
    assert compute_metrics("mnli", np.eye(3)[[0, 1, 2, 2]], [0, 1, 2, 1])["accuracy"] == 0.75


def test_mrpc_and_qqp_report_accuracy_and_f1():
    # TP = 2, FP = 1, FN = 1 -> precision = recall = 2/3 -> F1 = 2/3; 3 of 5 right.
    out = compute_metrics("mrpc", [1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert out == pytest.approx({"accuracy": 0.6, "f1": 2 / 3})
    assert list(out) == ["accuracy", "f1"]
    assert compute_metrics("qqp", [0, 0], [1, 0]) == {"accuracy": 0.5, "f1": 0.0}  # no positive prediction


def test_cola_matthews_correlation():
    # TP 1, TN 2, FP 1, FN 0: (1*2 - 1*0) / sqrt((1+1)(1+0)(2+1)(2+0)) = 2 / sqrt(12)
    out = compute_metrics("cola", [1, 1, 0, 0], [1, 0, 0, 0])
    assert out["matthews_corr"] == pytest.approx(2 / math.sqrt(12))
    assert out["accuracy"] == 0.75
    assert compute_metrics("cola", [1, 1, 1, 1], [1, 0, 0, 0])["matthews_corr"] == 0.0


def test_stsb_pearson_and_spearman():
    # dx = (-1.5, -0.5, 0.5, 1.5), dy = (-3.25, -1.25, 0.75, 3.75): r = 11.5 / sqrt(5 * 26.75)
    out = compute_metrics("stsb", [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0])
    assert out["pearson"] == pytest.approx(11.5 / math.sqrt(5 * 26.75))
    assert out["spearman"] == pytest.approx(1.0)
    column = torch.tensor([[4.0], [3.0], [2.0], [1.0]])  # (N, 1) regression output, reversed ranking
    assert compute_metrics("stsb", column, [2.0, 4.0, 6.0, 9.0])["spearman"] == pytest.approx(-1.0)
    assert compute_metrics("stsb", [3.0, 3.0, 3.0], [1.0, 2.0, 5.0]) == {"pearson": 0.0, "spearman": 0.0}


def test_bbc_accuracy_and_macro_f1():
    # Per-class F1: 2/3, 2/3, 1, 2/3, 0 -> macro 3/5; 4 of 6 right.
    out = compute_metrics("bbc", [0, 1, 2, 3, 3, 1], [0, 1, 2, 3, 4, 0])
    assert out == pytest.approx({"accuracy": 4 / 6, "macro_f1": 0.6})


def test_primary_metric_is_the_first_metric_name():
    assert primary_metric("cola") == "matthews_corr"
    assert primary_metric("stsb") == "pearson"
    assert primary_metric("mrpc") == "accuracy"
    assert primary_metric("bbc") == "accuracy"
    for name, spec in TASKS.items():
        assert primary_metric(name) == spec.metric_names[0]


def test_every_task_returns_its_metric_names_as_floats():
    for name, spec in TASKS.items():
        labels = [0.5, 2.0, 4.5] if spec.is_regression else [0, 1, 1]
        out = compute_metrics(name, [0.0, 1.0, 1.0] if spec.is_regression else [0, 1, 0], labels)
        assert tuple(out) == spec.metric_names
        assert all(isinstance(v, float) and -1.0 <= v <= 1.0 for v in out.values())


def test_bad_inputs_are_user_errors():
    with pytest.raises(SttabtError, match="do not match"):
        compute_metrics("sst2", [0, 1, 1], [0, 1])
    with pytest.raises(SttabtError, match="outside 0..1"):
        compute_metrics("sst2", [0, 1], [-1, -1])  # an unlabelled test split
    with pytest.raises(SttabtError, match="zero examples"):
        compute_metrics("sst2", [], [])
    with pytest.raises(SttabtError, match="integer class ids"):
        compute_metrics("sst2", [0.5, 1.0], [0, 1])
    with pytest.raises(SttabtError, match="unknown task"):
        compute_metrics("imdb", [0], [0])
