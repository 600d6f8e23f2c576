"""One validator per kind of argument, shared by the CLI, the Python API, the demo and the trainers.

Every check here is cheap and runs before any model or data is loaded, so bad input fails in
milliseconds with one line. Each validator takes ``name``, the argument's name as the caller's user
knows it (``"--keep"`` on the command line, ``"keep"`` in the Python API), and raises
:class:`~sttabt.errors.SttabtError` naming it. The ``*_arg`` functions are ``argparse`` types built on
the same validators.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sttabt.errors import SttabtError

Keep = float | list[float] | str | None

DTYPE_NAMES = ("fp32", "bf16", "fp16")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")


# ------------------------------------------------------------------------------------------- numbers
def positive_int(value: Any, name: str) -> int:
    """A whole number >= 1 (batch sizes, lengths, counts of examples)."""
    return _int_at_least(value, name, 1)


def non_negative_int(value: Any, name: str) -> int:
    """A whole number >= 0 (epochs where 0 skips a stage, warm-up rounds)."""
    return _int_at_least(value, name, 0)


def _int_at_least(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral | str):
        raise SttabtError(f"{name} must be a whole number, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise SttabtError(f"{name} must be a whole number, got {value!r}") from None
    if number < low:
        raise SttabtError(f"{name} must be at least {low}, got {number}")
    return number


def fraction(value: Any, name: str, *, low: float = 0.0, high: float = 1.0) -> float:
    """A finite number in ``[low, high]`` (ABT's ``p``, dropout-like constants)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SttabtError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise SttabtError(f"{name} must be a finite number in [{low:g}, {high:g}], got {value!r}")
    return number


def p_value(value: Any, name: str = "p") -> float:
    """ABT's impact-mixing constant ``p``: a finite number in [0, 1]."""
    return fraction(value, name)


# ----------------------------------------------------------------------------------------- keep ratio
def keep_ratio(value: Any, name: str = "keep") -> Keep:
    """``None``, ``"dynamic"``, a ratio in (0, 1], or a per-layer list of them; text forms are parsed.

    ``"0.3"``, ``"0.9,0.7,0.5"`` and ``"dynamic"`` are accepted as strings (the CLI form).
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text == "dynamic":
            return text
        try:
            parts = [float(part) for part in text.split(",")]
        except ValueError:
            raise SttabtError(
                f"{name}: keep ratio must be in (0, 1], a comma list of ratios, or 'dynamic'; got {value!r}"
            ) from None
        return _ratios(parts, name, value)[0] if len(parts) == 1 else _ratios(parts, name, value)
    if isinstance(value, Sequence):
        if not value:
            raise SttabtError(f"{name}: keep ratio list must not be empty")
        return _ratios(list(value), name, value)
    return _ratios([value], name, value)[0]


def _ratios(values: list[Any], name: str, original: Any) -> list[float]:
    out = []
    for item in values:
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise SttabtError(f"{name}: keep ratio must be in (0, 1] or 'dynamic', got {original!r}")
        ratio = float(item)
        if not math.isfinite(ratio) or not 0.0 < ratio <= 1.0:
            raise SttabtError(f"{name}: keep ratio must be in (0, 1], got {item!r}")
        out.append(ratio)
    return out


def keep_list(text: str, name: str = "--keeps") -> list[float]:
    """A sweep's comma list of keep ratios, each in (0, 1], without duplicates."""
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts:
        raise SttabtError(f"{name} must list at least one keep ratio")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise SttabtError(f"{name} must be a comma list of ratios in (0, 1], got {text!r}") from None
    ratios = _ratios(values, name, text)
    if len(set(ratios)) != len(ratios):
        raise SttabtError(f"{name} lists a keep ratio twice: {text!r}")
    return ratios


# ------------------------------------------------------------------------------------ device and dtype
def device(value: Any, name: str = "device") -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a CUDA request on a machine without CUDA is refused."""
    text = str(value).strip() if value is not None else "auto"
    if not _DEVICE_RE.match(text):
        raise SttabtError(f"{name} must be auto, cpu, cuda or cuda:N, got {value!r}")
    if text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SttabtError(f"{name} {text!r} requested but CUDA is not available on this machine")
        index = int(text.split(":", 1)[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise SttabtError(f"{name} {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def resolved_device_type(value: str) -> str:
    """``cpu`` or ``cuda``: what ``auto`` (and a valid device name) will run on."""
    if value == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return value.split(":", 1)[0]


def dtype(value: Any, device_name: str = "auto", name: str = "dtype") -> str:
    """``fp32``, ``bf16`` or ``fp16``; fp16 autocast is refused on CPU (torch does not support it)."""
    if value not in DTYPE_NAMES:
        raise SttabtError(f"{name}: unknown dtype {value!r}; choose one of {', '.join(DTYPE_NAMES)}")
    if value == "fp16" and resolved_device_type(device(device_name)) == "cpu":
        raise SttabtError(f"{name}: fp16 autocast is not supported on CPU; use bf16")
    return value


# ---------------------------------------------------------------------------------------- max length
def max_positions(model_config: Any) -> int | None:
    """The longest input a model's position embeddings allow (RoBERTa offsets positions by pad + 1)."""
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is None:
        return None
    limit = int(limit)
    if getattr(model_config, "model_type", None) in _ROBERTA_LIKE:
        limit -= int(getattr(model_config, "pad_token_id", 1) or 0) + 1
    return limit


def max_length(value: Any, model_config: Any = None, name: str = "max length") -> int:
    """At least 2 (CLS plus a token) and, given the model's config, within its position embeddings."""
    length = positive_int(value, name)
    if length < 2:
        raise SttabtError(f"{name} must be at least 2 (CLS plus one token), got {length}")
    limit = max_positions(model_config) if model_config is not None else None
    if limit is not None and length > limit:
        raise SttabtError(f"{name} {length} exceeds the model's maximum of {limit} positions")
    return length


# --------------------------------------------------------------------------------------- output paths
def output_file(value: Any, name: str = "output") -> Path:
    """A file path that can be written: not a directory, under a writable (or creatable) folder."""
    if value is None or not str(value).strip():
        raise SttabtError(f"{name} must be a file path")
    path = Path(value)
    if path.is_dir():
        raise SttabtError(f"{name} {str(path)!r} is a directory; give a file path")
    if str(value).endswith(os.sep):
        raise SttabtError(f"{name} {str(value)!r} names a directory; give a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise SttabtError(f"{name} {str(path)!r} is not writable")
    _writable_parent(path, name)
    return path


def output_dir(
    value: Any, name: str = "output", *, owned_by: str | Sequence[str] = (), overwrite: bool = False
) -> Path:
    """A directory that may be (re)written without deleting anything the user did not ask to lose.

    Missing or empty: fine. An existing file: always refused (a file is never replaced by a directory).
    A non-empty directory: fine when it holds one of ``owned_by`` (the marker files an earlier run of the
    same command writes, e.g. ``train_log.json``), or with ``overwrite``; refused otherwise.
    """
    if value is None or not str(value).strip():
        raise SttabtError(f"{name} must be a directory path")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise SttabtError(f"{name} {str(path)!r} is a file, not a directory; choose another path")
    if path.is_dir():
        markers = [owned_by] if isinstance(owned_by, str) else list(owned_by)
        earlier = any((path / marker).exists() for marker in markers)
        if any(path.iterdir()) and not earlier and not overwrite:
            raise SttabtError(
                f"{name} {str(path)!r} is not empty and not an earlier output of this command; "
                "pass --overwrite to replace it, or choose another directory"
            )
        if not os.access(path, os.W_OK):
            raise SttabtError(f"{name} {str(path)!r} is not writable")
    _writable_parent(path, name)
    return path


def _writable_parent(path: Path, name: str) -> None:
    """The nearest existing ancestor must be a writable directory (missing folders are created later)."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise SttabtError(f"{name} {str(path)!r}: {str(parent)!r} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SttabtError(f"{name} {str(path)!r}: the directory {str(parent)!r} is not writable")


# ------------------------------------------------------------------------------------ argparse types
def arg_type(validator: Callable[..., Any], **kwargs: Any) -> Callable[[str], Any]:
    """An ``argparse`` type from a validator: its message becomes argparse's one-line usage error."""

    def parse(text: str) -> Any:
        try:
            return validator(text, "value", **kwargs)
        except SttabtError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("value ")) from None

    parse.__name__ = validator.__name__
    return parse


positive_int_arg = arg_type(positive_int)
non_negative_int_arg = arg_type(non_negative_int)
p_arg = arg_type(p_value)


def same_path(a: Any, b: Any) -> bool:
    """Whether two output paths name the same file (after resolving ``..`` and links)."""
    return Path(a).absolute().resolve() == Path(b).absolute().resolve()
