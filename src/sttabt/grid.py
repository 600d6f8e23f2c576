"""Sweeps from a config file: a grid over methods and budgets, trained where a method learns, resumable.

One file (TOML or YAML) names the teacher, the task and, per method, the budgets to run:

* ``abt``, ``abt-oracle``, ``topk``: keep ratios k (top-k at the oracle's measured retention, METHODS §1.6);
* ``concrete``: ``p_init`` values; ``ltp``: ``lambda`` values. Each point is a ``sttabt train`` run into
  ``models_dir`` (skipped when a complete model is already there), then evaluated on the split.

Every point writes its own JSON (evaluation report plus, when ``[latency]`` is set, wall clock on real
examples of the split against the unmodified model, interleaved); a point whose JSON exists with the same
settings is reused, so an interrupted sweep resumes. The table (``results.csv``, ``results.json``,
``summary.md``) and the plots (metric vs relative FLOPs and vs latency, Pareto points ringed, PNG + SVG)
are rebuilt from the point files at the end.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sttabt import validate
from sttabt.errors import SttabtError
from sttabt.protocol import check_protocol
from sttabt.sweep import primary_metric
from sttabt.utils import atomic_write_json, atomic_write_text, save_figure

log = logging.getLogger(__name__)

#: The budget each method is swept over, as the config spells it.
BUDGETS = {"abt": "keep", "abt-oracle": "keep", "topk": "keep", "concrete": "p_init", "ltp": "lambda"}
LEARNED = ("concrete", "ltp")
#: Per-method training options a config may fix beside the swept budget.
METHOD_TRAIN_OPTIONS = {"concrete": ("hard_fraction",), "ltp": ("temperature", "hard_epochs")}
#: ``sttabt train`` settings the ``[train]`` table may set (LearnedConfig fields).
TRAIN_OPTIONS = (
    "epochs",
    "lr",
    "weight_decay",
    "max_grad_norm",
    "batch_size",
    "eval_batch_size",
    "max_train_examples",
    "heldout_fraction",
    "max_heldout_examples",
    "seed",
    "dtype",
)
TOP_KEYS = (
    "protocol",
    "task",
    "model",
    "approx",
    "output_dir",
    "models_dir",
    "split",
    "data_dir",
    "max_length",
    "batch_size",
    "limit",
    "device",
    "dtype",
    "methods",
    "train",
    "latency",
)
PLOT_FORMATS = ("png", "svg")
#: The number-changing settings recorded in every point file (a point made otherwise is not reused).
POINT_SETTINGS = ("task", "split", "data_dir", "max_length", "limit", "dtype", "protocol")


@dataclass
class LatencySettings:
    """Wall clock per point: the first ``examples`` examples of the split, in batches of each size."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    examples: int = 64
    threads: int | None = 1
    warmup: int = 1
    repeats: int = 3

    def validate(self, device: str) -> None:
        for size in self.batch_sizes:
            validate.positive_int(size, "latency.batch_sizes")
        if not self.batch_sizes:
            raise SttabtError("latency.batch_sizes must list at least one batch size")
        for dtype in self.dtypes:
            validate.dtype(dtype, device, "latency.dtypes")
        validate.positive_int(self.examples, "latency.examples")
        if self.threads is not None:
            validate.positive_int(self.threads, "latency.threads")
        validate.non_negative_int(self.warmup, "latency.warmup")
        validate.positive_int(self.repeats, "latency.repeats")
        if self.examples < max(self.batch_sizes):
            raise SttabtError(
                f"latency.examples ({self.examples}) must be at least the largest batch size "
                f"({max(self.batch_sizes)})"
            )


@dataclass(frozen=True)
class GridPoint:
    """One run of the grid: a method at one budget value (``None`` for dense)."""

    method: str
    value: float | None = None

    @property
    def budget(self) -> str | None:
        return BUDGETS.get(self.method)

    @property
    def name(self) -> str:
        return self.method if self.value is None else f"{self.method}_{_short(self.budget)}{self.value:g}"


def _short(budget: str | None) -> str:
    return {"keep": "k", "p_init": "p", "lambda": "lambda"}.get(budget or "", "")


@dataclass
class GridConfig:
    """A whole sweep, as read from the config file (paths relative to the file are resolved)."""

    task: str
    model: str
    output_dir: str
    methods: dict[str, dict[str, Any]]
    approx: str | None = None
    models_dir: str | None = None
    split: str = "dev"
    data_dir: str | None = None
    max_length: int = 128
    batch_size: int = 32
    limit: int | None = None
    device: str = "auto"
    dtype: str = "fp32"
    protocol: str = "real"
    train: dict[str, Any] = field(default_factory=dict)
    latency: LatencySettings | None = None

    def points(self) -> list[GridPoint]:
        """Dense first, then each method's budgets in the order given."""
        points = [GridPoint("dense")]
        for method, spec in self.methods.items():
            points += [GridPoint(method, float(value)) for value in spec[BUDGETS[method]]]
        return points

    def validate(self) -> GridConfig:
        """Every check that needs no model or data: unknown methods, budgets out of range, missing paths."""
        from sttabt.train.learned import LearnedConfig

        if not self.methods:
            raise SttabtError("the config's [methods] table is empty: name at least one method")
        for method, spec in self.methods.items():
            self._check_method(method, spec)
            check_protocol(self.protocol, method)
        if any(m in self.methods for m in ("abt", "concrete")) and not self.approx:
            raise SttabtError("methods abt and concrete need `approx` (an ApproxNet directory) in the config")
        if any(m in self.methods for m in LEARNED) and not self.models_dir:
            raise SttabtError(
                "learned methods need `models_dir` (where their trained models go) in the config"
            )
        unknown = sorted(set(self.train) - set(TRAIN_OPTIONS))
        if unknown:
            raise SttabtError(f"unknown [train] setting {unknown[0]!r}; known: {', '.join(TRAIN_OPTIONS)}")
        for point in self.points():  # each training run's settings, checked like `sttabt train` checks them
            if point.method in LEARNED:
                LearnedConfig(**self.train_settings(point), output="unused").validate()
        self.eval_config("dense").validate()
        if self.latency is not None:
            self.latency.validate(self.device)
        return self

    def _check_method(self, method: str, spec: dict[str, Any]) -> None:
        if method not in BUDGETS:
            raise SttabtError(f"unknown method {method!r} in [methods]; choose from {', '.join(BUDGETS)}")
        budget = BUDGETS[method]
        allowed = {budget, *METHOD_TRAIN_OPTIONS.get(method, ())}
        extra = sorted(set(spec) - allowed)
        if extra:
            raise SttabtError(
                f"methods.{method}: unknown setting {extra[0]!r}; it takes {', '.join(allowed)}"
            )
        values = spec.get(budget)
        if not isinstance(values, list) or not values:
            raise SttabtError(f"methods.{method} needs a non-empty list `{budget}`")
        if len(set(values)) != len(values):
            raise SttabtError(f"methods.{method}.{budget} lists a value twice: {values}")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise SttabtError(f"methods.{method}.{budget}: {value!r} is not a number")
            if budget == "keep":
                validate.keep_ratio(float(value), f"methods.{method}.keep")

    def train_settings(self, point: GridPoint) -> dict[str, Any]:
        """The ``sttabt train`` config of a learned point (without its output directory)."""
        fixed = {key: value for key, value in self.methods[point.method].items() if key != point.budget}
        budget = {"p_init": point.value} if point.method == "concrete" else {"lambda_": point.value}
        approx = {"approx": self.approx} if point.method == "concrete" else {}
        return {
            "method": point.method,
            "model": self.model,
            "task": self.task,
            "data_dir": self.data_dir,
            "max_length": self.max_length,
            "device": self.device,
            "progress": False,
            **approx,
            **self.train,
            **fixed,
            **budget,
        }

    def model_dir(self, point: GridPoint) -> Path:
        return Path(self.models_dir or ".") / point.name

    def eval_config(self, method: str, model: str | None = None, options: Any = None):
        from sttabt.evaluate import EvalConfig
        from sttabt.methods import MethodOptions

        return EvalConfig(
            model=model or self.model,
            task=self.task,
            method=method,
            options=options or MethodOptions(),
            data_dir=self.data_dir,
            split=self.split,
            batch_size=self.batch_size,
            max_length=self.max_length,
            limit=self.limit,
            device=self.device,
            dtype=self.dtype,
            progress=False,
            protocol=self.protocol,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- reading the file ---------------------------------------------------------------------------------------
def load_grid_config(path: str | Path) -> GridConfig:
    """Read and check a TOML (``.toml``) or YAML (``.yaml``/``.yml``) sweep config; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise SttabtError(f"config file not found: {path}")
    data = _parse(path)
    if not isinstance(data, dict):
        raise SttabtError(f"{path}: the config must be a table of settings, not {type(data).__name__}")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise SttabtError(f"{path}: unknown setting {unknown[0]!r}; known: {', '.join(TOP_KEYS)}")
    missing = [key for key in ("task", "model", "output_dir", "methods") if key not in data]
    if missing:
        raise SttabtError(f"{path}: missing required setting {missing[0]!r}")
    for table in ("methods", "train", "latency"):
        if table in data and not isinstance(data[table], dict):
            raise SttabtError(f"{path}: `{table}` must be a table")
    for method, spec in data["methods"].items():
        if not isinstance(spec, dict):
            raise SttabtError(f"{path}: methods.{method} must be a table such as {{ keep = [0.1, 0.3] }}")
    latency = data.pop("latency", None)
    if latency is not None:
        names = {f.name for f in LatencySettings.__dataclass_fields__.values()}
        bad = sorted(set(latency) - names)
        if bad:
            raise SttabtError(
                f"{path}: unknown [latency] setting {bad[0]!r}; known: {', '.join(sorted(names))}"
            )
        latency = LatencySettings(**latency)
    base = path.parent
    for key in ("model", "approx", "output_dir", "models_dir"):
        if isinstance(data.get(key), str):
            data[key] = _relative_to(base, data[key])
    source = data.get("data_dir")
    if isinstance(source, str):  # image folders may be several, joined with os.pathsep
        parts = [source] if source.startswith("hf:") else source.split(os.pathsep)
        data["data_dir"] = os.pathsep.join(_relative_to(base, part) for part in parts)
    try:
        config = GridConfig(**data, latency=latency)
    except TypeError as exc:
        raise SttabtError(f"{path}: {exc}") from exc
    return config.validate()


def _parse(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
    except Exception as exc:  # tomllib and yaml each raise their own error types
        first = str(exc).strip().splitlines()
        raise SttabtError(f"{path}: not valid {suffix[1:].upper()}: {first[0] if first else exc!r}") from exc
    raise SttabtError(f"{path}: a sweep config is .toml, .yaml or .yml, not {suffix or 'no suffix'!r}")


def _relative_to(base: Path, value: str) -> str:
    """A path relative to the config file, when it exists there or names no Hub id (``org/name``)."""
    from sttabt.models import IMAGE_PRESETS

    named = value.startswith(("random:", "minilm", "timm:", "hf:")) or value in IMAGE_PRESETS
    if named or Path(value).is_absolute():
        return value
    candidate = base / value
    hub_like = value.count("/") == 1 and not value.startswith(".") and not candidate.exists()
    return value if hub_like and not (Path.cwd() / value).exists() else str(candidate)


# -- running ------------------------------------------------------------------------------------------------
def run_grid(config: GridConfig, command: str | None = None) -> list[dict[str, Any]]:
    """Run (or resume) every point, then write the table and the plots; returns the rows."""
    from sttabt.data import get_task
    from sttabt.evaluate import load_for_task

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", {"config": config.to_dict(), "command": command})
    teacher, tokenizer = load_for_task(config.model, get_task(config.task))
    runner = _PointRunner(config, teacher, tokenizer, out, command)
    for point in config.points():
        runner.ensure(point)
    rows = [runner.row(point) for point in config.points()]
    write_tables(rows, out, config)
    return rows


class _PointRunner:
    """Evaluates, trains and times points, reusing point files that are already there."""

    def __init__(self, config: GridConfig, teacher: Any, tokenizer: Any, out: Path, command: str | None):
        from sttabt.approxnet import teacher_fingerprint

        self.config, self.teacher, self.tokenizer, self.out, self.command = (
            config,
            teacher,
            tokenizer,
            out,
            command,
        )
        self.fingerprint = teacher_fingerprint(teacher)
        self._approxnet = None

    def path(self, point: GridPoint) -> Path:
        return self.out / f"{point.name}.json"

    def settings(self, point: GridPoint) -> dict[str, Any]:
        """What makes this point's numbers: the evaluation settings, the teacher, the training run."""
        settings = {key: getattr(self.config, key) for key in POINT_SETTINGS}
        settings["teacher_sha256"] = self.fingerprint
        if point.method in ("abt", "concrete"):
            settings["approx"] = self.config.approx
        if point.method in LEARNED:
            settings["train"] = self.config.train_settings(point)
        return settings

    def load(self, point: GridPoint) -> dict[str, Any] | None:
        """The point's existing file, when it was made with these settings (else a one-line error)."""
        path = self.path(point)
        if not path.is_file():
            return None
        report = json.loads(path.read_text())
        recorded = report.get("grid", {}).get("settings")
        if recorded != json.loads(json.dumps(self.settings(point))):
            raise SttabtError(
                f"{path} was made with other settings than this config's; "
                "use another output_dir, or delete that file to re-run it"
            )
        return report

    def ensure(self, point: GridPoint) -> dict[str, Any]:
        report = self.load(point)
        if report is None:
            report = self.evaluate(point)
        if self.config.latency is not None and "latency" not in report:
            report["latency"] = self.time(point)
            atomic_write_json(self.path(point), report)
        return report

    def evaluate(self, point: GridPoint) -> dict[str, Any]:
        from sttabt.evaluate import run_evaluation

        log.info("grid point %s", point.name)
        model, options = self.model_and_options(point)
        config = self.config.eval_config(point.method, str(model) if model else None, options)
        run = run_evaluation(config, None if model else self.teacher, None if model else self.tokenizer)
        report = run.report()
        report["grid"] = {
            "point": asdict(point),
            "name": point.name,
            "settings": self.settings(point),
            "command": self.command,
        }
        if model is not None:
            report["grid"]["train_log"] = json.loads((Path(model) / "train_log.json").read_text())
        if run.logits.shape[-1] > 1:  # class predictions, for the agreement with dense
            report["grid"]["predictions"] = run.logits.argmax(dim=-1).tolist()
        atomic_write_json(self.path(point), report)
        return report

    def model_and_options(self, point: GridPoint) -> tuple[Path | None, Any]:
        """The learned point's trained model directory (trained now if missing), or the method options."""
        from sttabt.methods import MethodOptions

        if point.method in LEARNED:
            return self.trained(point), MethodOptions()
        if point.method == "dense":
            return None, MethodOptions()
        if point.method == "abt":
            return None, MethodOptions(
                keep=point.value, approx=self.config.approx, extra={"approxnet": self.approxnet()}
            )
        if point.method == "abt-oracle":
            return None, MethodOptions(keep=point.value)
        oracle = self.ensure(GridPoint("abt-oracle", point.value))  # top-k at the oracle's retention (§1.6)
        counted = oracle.get("reference_protocol", oracle)  # under the paper's protocol, its own retention
        return None, MethodOptions(keep=min(1.0, counted["retention"]), schedule="reference")

    def approxnet(self):
        from sttabt.approxnet import ApproxNet

        if self._approxnet is None:
            self._approxnet = ApproxNet.load(self.config.approx, teacher=self.teacher)
        return self._approxnet

    def trained(self, point: GridPoint) -> Path:
        """Train the point's model unless a complete one with the same settings is already there."""
        from sttabt.train.learned import LearnedConfig, train_learned

        directory = self.config.model_dir(point)
        wanted = LearnedConfig(**self.config.train_settings(point), output=str(directory)).validate()
        log_path = directory / "train_log.json"
        if log_path.is_file():
            recorded = json.loads(log_path.read_text())["config"]
            if recorded != json.loads(json.dumps(asdict(wanted))):
                raise SttabtError(
                    f"{directory} holds a model trained with other settings; use another "
                    "models_dir, or delete it to retrain"
                )
            log.info("reusing the trained model in %s", directory)
            return directory
        log.info("training %s into %s", point.name, directory)
        train_learned(wanted)
        return directory

    def time(self, point: GridPoint) -> dict[str, Any]:
        from sttabt.latency import time_on_examples

        model, options = self.model_and_options(point)
        return time_on_examples(self.config, point.method, options, model, self.teacher, self.tokenizer)

    def row(self, point: GridPoint) -> dict[str, Any]:
        report = self.load(point)
        if report is None:
            raise SttabtError(f"point {point.name} has no results file")  # ensure() ran: cannot happen
        row = point_row(point, report)
        dense = self.load(GridPoint("dense"))
        ours, theirs = (r.get("grid", {}).get("predictions") if r else None for r in (report, dense))
        if ours is not None and theirs is not None and len(ours) == len(theirs):
            row["agreement"] = sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(ours)
        return row


def point_row(point: GridPoint, report: dict[str, Any]) -> dict[str, Any]:
    """One flat table row from a point file."""
    name, value = primary_metric(report["metrics"])
    row = {
        "method": point.method,
        "budget": point.budget,
        "value": point.value,
        "metric": name,
        "score": value,
        "retention": report["retention"],
        "relative_flops": report["flops"]["relative"],
        "file": f"{point.name}.json",
    }
    if "reference_protocol" in report:
        row["reference_retention"] = report["reference_protocol"]["retention"]
        row["reference_relative_flops"] = report["reference_protocol"]["relative"]
    for entry in report.get("latency", {}).get("runs", []):
        key = f"{entry['dtype']}_b{entry['batch_size']}"
        row[f"ms_{key}"] = entry["method_ms_per_example"]
        row[f"speedup_{key}"] = entry["speedup"]
    return row


# -- tables and plots ---------------------------------------------------------------------------------------
def pareto(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (cost, score) points no other point beats: cost no higher and score no lower, one strictly."""
    return [not any((c2 <= c and s2 >= s) and (c2 < c or s2 > s) for c2, s2 in points) for c, s in points]


def cheapest_within(
    rows: Sequence[dict[str, Any]], dense_score: float, margin: float = 0.01, cost: str = "relative_flops"
) -> dict | None:
    """The lowest-``cost`` row scoring at least ``dense − margin`` (PUBLISHED_RESULTS §1.6), or None."""
    good = [row for row in rows if row["score"] >= dense_score - margin - 1e-12]
    return min(good, key=lambda row: row[cost], default=None)


def write_tables(rows: list[dict[str, Any]], out: Path, config: GridConfig) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buffer.getvalue())
    atomic_write_json(
        out / "results.json",
        {"task": config.task, "split": config.split, "model": config.model, "rows": rows},
    )
    atomic_write_text(out / "summary.md", summary_markdown(rows, config))
    plot_grid(rows, out, config)


def summary_markdown(rows: list[dict[str, Any]], config: GridConfig) -> str:
    dense = next(row for row in rows if row["method"] == "dense")
    speed_keys = [key for key in dense if key.startswith("speedup_")]
    head = ["method", "budget", dense["metric"] + " ×100", "retention %", "rel. FLOPs %", "Pareto"]
    agreement = "agreement" in dense
    head += ["agrees with dense %"] if agreement else []
    ref_keys = [key for key in ("reference_retention", "reference_relative_flops") if key in dense]
    head += ["paper's retention %", "paper's rel. FLOPs %"] if ref_keys else []
    head += [key.replace("speedup_", "speed-up ") for key in speed_keys]
    flags = pareto([(row["relative_flops"], row["score"]) for row in rows])
    lines = [
        f"{config.task} / {config.split}: teacher {config.model}; real lengths, overhead included"
        + ("; beside them the paper's padded-length protocol (sttabt.protocol)." if ref_keys else "."),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row, flag in zip(rows, flags, strict=True):
        budget = "" if row["value"] is None else f"{row['budget']}={row['value']:g}"
        cells = [
            row["method"],
            budget,
            f"{100 * row['score']:.2f}",
            f"{100 * row['retention']:.1f}",
            f"{100 * row['relative_flops']:.1f}",
            "yes" if flag else "",
        ]
        cells += [f"{100 * row['agreement']:.1f}"] if agreement else []
        cells += [f"{100 * row[key]:.1f}" if key in row else "" for key in ref_keys]
        cells += [f"{row[key]:.2f}×" if key in row else "" for key in speed_keys]
        lines.append("| " + " | ".join(cells) + " |")
    costs = [("relative_flops", "real-length FLOPs")]
    costs += [("reference_relative_flops", "the paper's padded-length FLOPs")] if ref_keys else []
    for cost, label in costs:
        lines += ["", f"Cheapest point within 1 point of dense ({100 * dense['score']:.2f}), by {label}:", ""]
        lines += _cheapest_lines(rows, dense["score"], cost)
    return "\n".join(lines) + "\n"


def _cheapest_lines(rows: list[dict[str, Any]], dense_score: float, cost: str) -> list[str]:
    lines = []
    for method in dict.fromkeys(row["method"] for row in rows if row["method"] != "dense"):
        best = cheapest_within([r for r in rows if r["method"] == method], dense_score, cost=cost)
        if best is None:
            text = "none in the grid"
        else:
            score, flops = 100 * best["score"], 100 * best[cost]
            text = f"{best['budget']}={best['value']:g}: {score:.2f} at {flops:.1f} % FLOPs"
        lines.append(f"- {method}: {text}")
    return lines


STYLES = {
    "abt": ("ABT (ApproxNet)", "o-"),
    "abt-oracle": ("ABT oracle", "s--"),
    "topk": ("top-k", "^-"),
    "concrete": ("STTABT concrete", "D-"),
    "ltp": ("LTP", "v-"),
}


def plot_grid(rows: list[dict[str, Any]], out: Path, config: GridConfig) -> None:
    """Metric vs relative FLOPs, and vs latency for each timed (dtype, batch): one line per method."""
    plot_against(rows, out / "metric_vs_flops", "relative_flops", "relative FLOPs % (incl. overhead)", config)
    dense = next(row for row in rows if row["method"] == "dense")
    for key in (k for k in dense if k.startswith("ms_")):
        label = key[3:].replace("_b", ", batch ")
        plot_against(rows, out / f"metric_vs_latency_{key[3:]}", key, f"ms per example ({label})", config)


def plot_against(
    rows: list[dict[str, Any]], stem: Path, x_key: str, x_label: str, config: GridConfig
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 100.0 if x_key == "relative_flops" else 1.0
    dense = next(row for row in rows if row["method"] == "dense")
    usable = [row for row in rows if row.get(x_key) is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method in dict.fromkeys(row["method"] for row in usable if row["method"] != "dense"):
        label, style = STYLES.get(method, (method, "o-"))
        points = sorted((row[x_key] * scale, 100 * row["score"]) for row in usable if row["method"] == method)
        ax.plot([x for x, _ in points], [y for _, y in points], style, label=label, markersize=4)
    ax.axhline(100 * dense["score"], color="gray", linestyle=":", label="dense")
    ax.axhline(100 * dense["score"] - 1, color="gray", linestyle=":", alpha=0.4, label="dense − 1")
    if x_key != "relative_flops":
        ax.axvline(dense[x_key], color="gray", linestyle="--", alpha=0.4)
    costs = [(row[x_key] * scale, 100 * row["score"]) for row in usable]
    front = [point for point, flag in zip(costs, pareto(costs), strict=True) if flag]
    ax.scatter(
        [x for x, _ in front],
        [y for _, y in front],
        s=90,
        facecolors="none",
        edgecolors="black",
        linewidths=1.0,
        label="Pareto",
        zorder=5,
    )
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"{dense['metric']} ×100")
    ax.set_title(f"{config.task} {config.split}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    for fmt in PLOT_FORMATS:
        save_figure(fig, stem.with_suffix(f".{fmt}"), fmt)
    plt.close(fig)
