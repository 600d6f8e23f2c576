"""Accuracy vs FLOPs sweeps over keep ratios for several methods, with a table and a plot.

The top-k baseline follows METHODS.md §1.6: its per-layer schedule targets the average retention that
the oracle ABT run measured at the same nominal k (so both sit at comparable retention).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sttabt.evaluate import EvalConfig, run_evaluation, write_outputs
from sttabt.methods import MethodOptions
from sttabt.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_KEEPS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.625, 0.75)


def run_sweep(
    base: EvalConfig,
    out_dir: str | Path,
    keeps: Sequence[float] = DEFAULT_KEEPS,
    methods: Sequence[str] = ("abt", "abt-oracle", "topk"),
    approx: str | None = None,
    model=None,
    tokenizer=None,
    append: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate dense and every (method, k); write one JSON per run plus summary.json/.md and a plot.

    With ``append``, rows already in ``out_dir/summary.json`` are kept (the dense run and the oracle runs
    that top-k needs are reused instead of re-run) and new (method, k) rows replace old ones.
    """
    from sttabt.models import load_text_classifier

    out_dir = Path(out_dir)
    if model is None:
        model, tokenizer = load_text_classifier(base.model)
    approxnet = None
    if "abt" in methods:
        from sttabt.approxnet import ApproxNet

        approxnet = ApproxNet.load(approx, teacher=model)

    previous: list[dict[str, Any]] = []
    if append and (out_dir / "summary.json").exists():
        previous = json.loads((out_dir / "summary.json").read_text())["rows"]
    rows: list[dict[str, Any]] = []

    def reuse(method: str, keep: Any) -> dict[str, Any] | None:
        row = next((r for r in previous if r["method"] == method and r["keep"] == keep), None)
        if row is None:
            return None
        rows.append(row)
        return json.loads((out_dir / row["file"]).read_text())

    def record(method: str, keep: Any, options: MethodOptions, name: str) -> dict[str, Any]:
        config = replace(base, method=method, options=options)
        report = write_outputs(run_evaluation(config, model, tokenizer), out_dir / f"{name}.json")
        row = {
            "method": method,
            "keep": keep,
            "metrics": report["metrics"],
            "retention": report["retention"],
            "relative_flops": report["flops"]["relative"],
            "file": f"{name}.json",
        }
        rows.append(row)
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items())
        log.info("%s%s: %s, retention %.1f %%, rel. FLOPs %.1f %% -> %s", method,
                 "" if keep is None else f" k={keep}", metrics, 100 * row["retention"],
                 100 * row["relative_flops"], row["file"])  # fmt: skip
        return report

    reuse("dense", None) or record("dense", None, MethodOptions(), "dense")
    for keep in keeps:
        oracle = None
        if "abt-oracle" in methods or "topk" in methods:
            oracle = reuse("abt-oracle", keep) if "abt-oracle" not in methods else None
            oracle = oracle or record("abt-oracle", keep, MethodOptions(keep=keep), f"abt-oracle_k{keep}")
        if "abt" in methods:
            options = MethodOptions(keep=keep, approx=approx, extra={"approxnet": approxnet})
            record("abt", keep, options, f"abt_k{keep}")
        if "topk" in methods:
            target = min(1.0, oracle["retention"])
            options = MethodOptions(keep=target, schedule="reference")
            record("topk", keep, options, f"topk_k{keep}")
    if "abt-oracle" not in methods and not append:
        rows = [r for r in rows if r["method"] != "abt-oracle"]
    seen = {(r["method"], r["keep"]) for r in rows}
    rows = [r for r in previous if (r["method"], r["keep"]) not in seen] + rows
    summary = {"task": base.task, "split": base.split, "model": base.model, "approx": approx, "rows": rows}
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "summary.md", summary_markdown(summary))
    plot_summary(summary, out_dir / "accuracy_vs_flops.png")
    return rows


def _primary(metrics: dict[str, float]) -> tuple[str, float]:
    for name in ("accuracy", "matthews", "pearson", "f1"):
        if name in metrics:
            return name, metrics[name]
    name = next(iter(metrics))
    return name, metrics[name]


def summary_markdown(summary: dict[str, Any]) -> str:
    """The PUBLISHED_RESULTS §1 style table: metric / retention % / relative FLOPs % per (k, method)."""
    rows = summary["rows"]
    methods = [m for m in ("abt", "abt-oracle", "topk") if any(r["method"] == m for r in rows)]
    dense = next(r for r in rows if r["method"] == "dense")
    metric_name, dense_value = _primary(dense["metrics"])
    lines = [
        f"{summary['task']} / {summary['split']}, metric = {metric_name} ×100; cells: metric / retention % / "
        f"rel. FLOPs % (real lengths, overhead included). Dense: {100 * dense_value:.2f} / 100 / "
        f"{100 * dense['relative_flops']:.1f}",
        "",
        "| k | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    keeps = sorted({r["keep"] for r in rows if r["keep"] is not None})
    for keep in keeps:
        cells = []
        for method in methods:
            row = next((r for r in rows if r["method"] == method and r["keep"] == keep), None)
            if row is None:
                cells.append("")
                continue
            _, value = _primary(row["metrics"])
            cells.append(
                f"{100 * value:.2f} / {100 * row['retention']:.1f} / {100 * row['relative_flops']:.1f}"
            )
        lines.append(f"| {keep} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_summary(summary: dict[str, Any], path: str | Path) -> None:
    """Accuracy vs relative FLOPs, one line per method, dense as a horizontal reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    dense = next(r for r in rows if r["method"] == "dense")
    metric_name, dense_value = _primary(dense["metrics"])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    styles = {"abt": ("ABT (ApproxNet)", "o-"), "abt-oracle": ("ABT oracle", "s--"), "topk": ("top-k", "^-")}
    for method, (label, style) in styles.items():
        points = sorted(
            (r["relative_flops"], _primary(r["metrics"])[1]) for r in rows if r["method"] == method
        )
        if points:
            ax.plot(
                [100 * x for x, _ in points], [100 * y for _, y in points], style, label=label, markersize=4
            )
    ax.axhline(100 * dense_value, color="gray", linestyle=":", label="dense")
    ax.axhline(100 * dense_value - 1, color="gray", linestyle=":", alpha=0.4, label="dense − 1")
    ax.set_xlabel("relative FLOPs % (incl. overhead)")
    ax.set_ylabel(f"{metric_name} ×100")
    ax.set_title(f"{summary['task']} {summary['split']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
