"""Accuracy vs FLOPs sweeps over keep ratios for several methods, with a table and a plot.

The top-k baseline follows METHODS.md §1.6: its per-layer schedule targets the average retention that
the oracle ABT run measured at the same nominal k (so both sit at comparable retention).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sttabt import validate
from sttabt.errors import SttabtError
from sttabt.evaluate import EvalConfig, run_evaluation, write_outputs
from sttabt.methods import MethodOptions
from sttabt.utils import atomic_write_json, atomic_write_text, save_figure

log = logging.getLogger(__name__)

DEFAULT_KEEPS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.625, 0.75)
SWEEP_METHODS = ("abt", "abt-oracle", "topk")
#: Evaluation settings that change a sweep's numbers: runs that differ in one cannot share a table.
NUMBER_SETTINGS = ("model", "task", "split", "data_dir", "max_length", "limit", "dtype", "protocol")
#: What a sweep writes into its directory (and removes there before a fresh sweep).
SUMMARY_FILES = ("summary.json", "summary.md", "accuracy_vs_flops.png")
_RUN_FILE = re.compile(r"^(dense|abt|abt-oracle|topk)(_k[0-9.e-]+)?\.json$")


def check_sweep(base: EvalConfig, keeps: Sequence[float], methods: Sequence[str], approx: str | None) -> None:
    """Every argument of a sweep, before any model is loaded or any run starts."""
    unknown = sorted(set(methods) - set(SWEEP_METHODS))
    if unknown or not methods:
        raise SttabtError(f"--methods must list some of {', '.join(SWEEP_METHODS)}; got {', '.join(unknown)}")
    if "abt" in methods and not approx:
        raise SttabtError("method abt needs --approx DIR")
    if approx and "abt" not in methods:
        raise SttabtError("--approx is only used by method abt, which --methods does not list")
    for keep in keeps:
        validate.keep_ratio(keep, "--keeps")
    base.validate()


def settings_of(config: dict[str, Any], provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The number-changing settings of one run's recorded config (plus its weights, when recorded)."""
    settings = {key: config.get(key) for key in NUMBER_SETTINGS}
    provenance = provenance or {}
    if provenance.get("weights_sha256"):
        settings["weights_sha256"] = provenance["weights_sha256"]
    if provenance.get("data_dir"):
        settings["data_dir"] = provenance["data_dir"]  # resolved: the default and its path are one
    return settings


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Settings that differ; with both weight fingerprints recorded, the model's spelling does not matter."""
    same_weights = "weights_sha256" in old and "weights_sha256" in new
    return [f"{key} {old[key]!r} vs {new[key]!r}" for key in new
            if key in old and old[key] != new[key] and not (key == "model" and same_weights)]  # fmt: skip


def previous_rows(out_dir: Path, settings: dict[str, Any], approx: str | None) -> list[dict[str, Any]]:
    """The rows of the sweep in ``out_dir`` (for ``--append``), refused if made with other settings."""
    summary_path = out_dir / "summary.json"
    if not summary_path.exists():
        return []
    summary = json.loads(summary_path.read_text())
    if approx and summary.get("approx") and summary["approx"] != approx and any(
        row["method"] == "abt" for row in summary["rows"]
    ):
        raise SttabtError(
            f"cannot --append: the sweep in {out_dir} used the ApproxNet {summary['approx']!r}, "
            f"not {approx!r}"
        )
    for row in summary["rows"]:
        path = out_dir / row["file"]
        if not path.is_file():
            raise SttabtError(f"cannot --append: {path} (listed in summary.json) is missing")
        report = json.loads(path.read_text())
        differ = _differences(settings_of(report["config"], report.get("provenance")), settings)
        if differ:
            raise SttabtError(
                f"cannot --append to {out_dir}: its runs were made with other settings "
                f"({'; '.join(differ)}); use another --output-dir or drop --append"
            )
    return summary["rows"]


def clear_sweep(out_dir: Path) -> None:
    """Remove the files an earlier sweep wrote in ``out_dir`` (and nothing else), for a fresh sweep."""
    if not out_dir.is_dir():
        return
    for path in out_dir.iterdir():
        if path.is_file() and (path.name in SUMMARY_FILES or _RUN_FILE.match(path.name)):
            path.unlink()


def run_sweep(
    base: EvalConfig,
    out_dir: str | Path,
    keeps: Sequence[float] = DEFAULT_KEEPS,
    methods: Sequence[str] = ("abt", "abt-oracle", "topk"),
    approx: str | None = None,
    model=None,
    tokenizer=None,
    append: bool = False,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Evaluate dense and every (method, k); write one JSON per run plus summary.json/.md and a plot.

    With ``append``, rows already in ``out_dir/summary.json`` are kept (the dense run and the oracle runs
    that top-k needs are reused instead of re-run) and new (method, k) rows replace old ones; a sweep made
    with other settings (:data:`NUMBER_SETTINGS`, the weights, the ApproxNet) is refused. Without it, an
    earlier sweep's files in ``out_dir`` are removed first, so no stale run is left beside the new ones.
    """
    from sttabt.approxnet import teacher_fingerprint
    from sttabt.data import get_task, resolved_data_dir
    from sttabt.evaluate import load_for_task, model_config_of

    check_sweep(base, keeps, methods, approx)
    out_dir = Path(out_dir)
    if model is None:
        base.check_model(model_config_of(base.model))
    model, tokenizer = load_for_task(base.model, get_task(base.task), model, tokenizer)
    base.check_model(getattr(model, "config", None))
    approxnet = None
    if "abt" in methods:
        from sttabt.approxnet import ApproxNet

        approxnet = ApproxNet.load(approx, teacher=model)
    provenance = {"weights_sha256": teacher_fingerprint(model),
                  "data_dir": resolved_data_dir(base.task, base.data_dir)}  # fmt: skip
    settings = settings_of(base.to_dict(), provenance)
    previous = previous_rows(out_dir, settings, approx) if append else []
    if not append:
        clear_sweep(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []

    def reuse(method: str, keep: Any) -> dict[str, Any] | None:
        row = next((r for r in previous if r["method"] == method and r["keep"] == keep), None)
        if row is None:
            return None
        rows.append(row)
        return json.loads((out_dir / row["file"]).read_text())

    def record(method: str, keep: Any, options: MethodOptions, name: str) -> dict[str, Any]:
        config = replace(base, method=method, options=options)
        run = run_evaluation(config, model, tokenizer)
        report = write_outputs(run, out_dir / f"{name}.json", command=command)
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
            counted = oracle.get("reference_protocol", oracle)  # the paper's rule counts padded retention
            target = min(1.0, counted["retention"])
            options = MethodOptions(keep=target, schedule="reference")
            record("topk", keep, options, f"topk_k{keep}")
    if "abt-oracle" not in methods and not append:
        rows = [r for r in rows if r["method"] != "abt-oracle"]
    seen = {(r["method"], r["keep"]) for r in rows}
    rows = [r for r in previous if (r["method"], r["keep"]) not in seen] + rows
    recorded = {**settings, "batch_size": base.batch_size, "device": base.device, "command": command,
                "topk_schedule": "reference, at the oracle's measured retention"}  # fmt: skip
    summary = {"task": base.task, "split": base.split, "model": base.model, "approx": approx,
               "settings": recorded, "rows": rows}  # fmt: skip
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "summary.md", summary_markdown(summary))
    plot_summary(summary, out_dir / "accuracy_vs_flops.png")
    return rows


def _settings_line(summary: dict[str, Any]) -> str:
    """The settings that change the numbers, for the table's caption."""
    settings = summary.get("settings") or {}
    keys = ("model", "split", "limit", "max_length", "dtype", "data_dir")
    parts = [f"{key}={settings[key] if settings[key] is not None else 'all' if key == 'limit' else 'default'}"
             for key in keys if key in settings]  # fmt: skip
    if summary.get("approx"):
        parts.append(f"approx={summary['approx']}")
    return "Settings: " + ", ".join(parts) if parts else ""


def primary_metric(metrics: dict[str, float]) -> tuple[str, float]:
    """The metric a table reports first: accuracy, else Matthews, Pearson or F1, else the first one."""
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
    metric_name, dense_value = primary_metric(dense["metrics"])
    lines = [
        f"{summary['task']} / {summary['split']}, metric = {metric_name} ×100; cells: metric / retention % / "
        f"rel. FLOPs % (real lengths, overhead included). Dense: {100 * dense_value:.2f} / 100 / "
        f"{100 * dense['relative_flops']:.1f}",
        *([_settings_line(summary)] if _settings_line(summary) else []),
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
            _, value = primary_metric(row["metrics"])
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
    metric_name, dense_value = primary_metric(dense["metrics"])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    styles = {"abt": ("ABT (ApproxNet)", "o-"), "abt-oracle": ("ABT oracle", "s--"), "topk": ("top-k", "^-")}
    for method, (label, style) in styles.items():
        points = sorted(
            (r["relative_flops"], primary_metric(r["metrics"])[1]) for r in rows if r["method"] == method
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
    save_figure(fig, path, "png")
    plt.close(fig)
