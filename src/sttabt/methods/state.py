"""A learned method's saved state: its settings (a dataclass as JSON) and its tensors (safetensors).

Two files in a directory, written by :func:`write_state` into a directory the caller makes atomic (e.g.
:func:`sttabt.utils.atomic_directory`):

* ``method_state.json``: ``format_version``, ``method``, ``config`` (the method's settings) and
  ``tensors`` (each tensor's shape);
* ``method_state.safetensors``: the tensors themselves (``p_logits`` for concrete, ``thresholds`` for LTP).

:func:`read_state` refuses, in one line, a missing or unreadable file, an unknown format version, a state
saved by another method than the one asked for, and tensors that differ from the listed ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sttabt.errors import SttabtError
from sttabt.utils import atomic_write_json

FORMAT_VERSION = 1
CONFIG_NAME = "method_state.json"
TENSORS_NAME = "method_state.safetensors"


@dataclass(frozen=True)
class SavedState:
    """What :func:`read_state` returns."""

    method: str
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def write_state(
    directory: str | Path, method: str, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> None:
    """Write a method's state into the existing ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if not directory.is_dir():
        raise SttabtError(f"cannot save the {method} state: {directory} is not a directory")
    plain = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    save_file(plain, str(directory / TENSORS_NAME))
    payload = {
        "format_version": FORMAT_VERSION,
        "method": method,
        "config": dict(config),
        "tensors": {name: list(tensor.shape) for name, tensor in plain.items()},
    }
    atomic_write_json(directory / CONFIG_NAME, payload)


def read_state(directory: str | Path, method: str | None = None) -> SavedState:
    """Read what :func:`write_state` wrote; with ``method``, refuse a state saved by another method."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise SttabtError(f"{directory} holds no learned method state (no {CONFIG_NAME})")
    payload = _read_json(path)
    version = payload.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise SttabtError(
            f"{path} has format version {version!r}; this sttabt reads versions 1 to {FORMAT_VERSION}"
        )
    saved = payload.get("method")
    if method is not None and saved != method:
        raise SttabtError(f"{directory} holds the state of method {saved!r}, not of {method!r}")
    config, listed = payload.get("config"), payload.get("tensors")
    if not isinstance(config, dict) or not isinstance(listed, dict):
        raise SttabtError(f"{path} lacks the method's config or its list of tensors")
    tensors = _read_tensors(directory / TENSORS_NAME)
    shapes = {name: list(tensor.shape) for name, tensor in tensors.items()}
    if shapes != {name: list(shape) for name, shape in listed.items()}:
        raise SttabtError(f"{directory / TENSORS_NAME} holds {shapes}, but {CONFIG_NAME} lists {listed}")
    return SavedState(method=str(saved), config=config, tensors=tensors)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SttabtError(f"cannot read {path}: {exc}") from exc
    if not isinstance(payload, dict):
        raise SttabtError(f"{path} is not a JSON object")
    return payload


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise SttabtError(f"the method state's tensors are missing: no {path}")
    try:
        return load_file(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()
        raise SttabtError(f"cannot read {path}: {first[0] if first else exc!r}") from exc


def config_from(config_type: type, payload: Mapping[str, Any], what: str) -> Any:
    """Build and validate a method's config dataclass from saved settings, refusing unknown names."""
    try:
        config = config_type(**payload)
    except TypeError as exc:
        raise SttabtError(f"the saved {what} settings do not fit this sttabt: {exc}") from exc
    return config.validate()


def with_saved_state(
    extra: Mapping[str, Any], model: Any, method: str, keys: tuple[str, ...], *, approx: bool = True
) -> dict[str, Any]:
    """``extra`` completed from the learned state saved in ``model``'s own directory, when ``extra``
    gives none of ``keys`` (a model loaded from a ``sttabt train`` output by ``sttabt evaluate`` or
    ``bench``); what ``extra`` gives wins. ``approx=False``: the caller brings its own ApproxNet."""
    if any(extra.get(key) is not None for key in keys):
        return dict(extra)
    from sttabt.api import saved_method_extra

    saved = saved_method_extra(model, method, approx=approx and extra.get("approxnet") is None)
    return {**saved, **{key: value for key, value in extra.items() if value is not None}}
