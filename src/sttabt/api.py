"""The Python API: one ``nn.Module`` wraps a classifier and a method; the budget is a plain attribute.

    >>> model, tokenizer = sttabt.load_text_classifier("runs/minilm-sst2")
    >>> pruned = sttabt.PrunedClassifier(model, method="topk", keep=0.5)
    >>> out = pruned(tokenizer(["a sentence", "another one"], return_tensors="pt", padding=True))
    >>> out.logits, out.kept_positions(0)       # logits, and sample 0's kept positions per layer
    >>> pruned.keep = 0.25                         # a new budget for the next call (validated now)
    >>> pruned.save_pretrained("runs/pruned")      # backbone + method settings + method state
    >>> again = sttabt.PrunedClassifier.from_pretrained("runs/pruned")

The wrapped model is not modified: ``model(**batch)`` still runs the unmodified dense forward.

A saved directory is a normal Hugging Face model directory (the backbone's ``config.json`` and
safetensors weights, plus the tokenizer when given), so ``AutoModelForSequenceClassification`` loads the
backbone from it, and:

* ``sttabt_config.json``: :class:`PrunedConfig` (format version, method, options, what state is saved);
* ``approxnet/``: the ApproxNet of ``abt``, in its own format (:meth:`ApproxNet.save`);
* ``sttabt_state.safetensors``: the method's own tensors (``method_state``), for learned methods
  (per-layer ``p_logit``\\s, thresholds); listed with their shapes in the config and checked on load,
  beside the settings they were trained with (``method_config``: the concrete gate temperature, LTP's
  score length, ...). The state belongs to the saved method: another learned method is refused.

A model loaded from such a directory (``load_text_classifier(DIR)``, as ``sttabt evaluate`` and
``sttabt bench`` do) brings its learned state along: the ``concrete`` and ``ltp`` factories read it from
the model's own directory (:func:`saved_method_extra`) when the caller passes none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sttabt import validate
from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.errors import SttabtError
from sttabt.methods import MethodOptions, build_selector, method_names
from sttabt.methods.registry import METHODS
from sttabt.runtime import SparseEncoder, SparseOutput
from sttabt.utils import atomic_directory, atomic_write_json

FORMAT_VERSION = 1
CONFIG_NAME = "sttabt_config.json"
APPROX_DIR = "approxnet"
STATE_NAME = "sttabt_state.safetensors"
#: The method settings that are plain, validated attributes of a :class:`PrunedClassifier`.
OPTION_NAMES = ("method", "keep", "schedule", "p", "head_reduction", "token_reduction")
#: Methods whose state is learned (``sttabt train``): a state trained for one is refused by the other.
LEARNED_METHODS = ("concrete", "ltp")
_DEFAULTS = {"schedule": "constant", "p": 0.1, "head_reduction": "mean", "token_reduction": "mean"}
_CHOICES = {"schedule": ("constant", "reference"), "head_reduction": ("mean", "max"),
            "token_reduction": ("mean", "max")}  # fmt: skip


@dataclass
class PrunedConfig:
    """What ``sttabt_config.json`` holds: the method, its options and the state saved beside them."""

    method: str
    keep: float | list[float] | str | None = None
    schedule: str = "constant"
    p: float = 0.1
    head_reduction: str = "mean"
    token_reduction: str = "mean"
    approxnet: str | None = None  # subfolder of the ApproxNet, when the method uses one
    state: dict[str, list[int]] = field(default_factory=dict)  # method-state tensor name -> shape
    method_config: dict[str, Any] = field(default_factory=dict)  # the settings the state was trained with
    format_version: int = FORMAT_VERSION

    @classmethod
    def read(cls, directory: Path) -> PrunedConfig:
        path = directory / CONFIG_NAME
        if not path.is_file():
            raise SttabtError(
                f"{directory} is not a saved PrunedClassifier (no {CONFIG_NAME}); load a plain classifier "
                "with sttabt.load_text_classifier"
            )
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            version = int(payload.get("format_version", 0))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise SttabtError(f"cannot read {path}: {exc}") from exc
        if not 1 <= version <= FORMAT_VERSION:
            raise SttabtError(
                f"{path} has format version {version}; this sttabt reads versions 1 to {FORMAT_VERSION}"
                + ("; upgrade sttabt" if version > FORMAT_VERSION else "")
            )
        names = {f.name for f in fields(cls)}
        if "method" not in payload:
            raise SttabtError(f"{path} names no method")
        return cls(**{k: v for k, v in payload.items() if k in names})


class PrunedClassifier(nn.Module):
    """Runs ``model`` on the sparse-token runtime with a registered method.

    ``method``, ``keep``, ``schedule``, ``p``, ``head_reduction`` and ``token_reduction`` are plain
    attributes that may change between calls; each change is validated at once. ``approx`` (a directory
    or a loaded :class:`~sttabt.approxnet.ApproxNet`, checked against ``model``) becomes the submodule
    ``approx``, so ``.to()``, ``.eval()`` and ``state_dict()`` cover the backbone and the ApproxNet.
    ``method_state`` holds a learned method's own tensors (saved in ``sttabt_state.safetensors``),
    ``method_config`` the settings they were trained with, and ``state_method`` the method they belong
    to (set by :meth:`from_pretrained` and ``sttabt train``; another learned method is then refused).
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "dense",
        keep: Any = None,
        approx: Any = None,
        **options: Any,
    ):
        super().__init__()
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise SttabtError(
                f"unknown option(s) {', '.join(unknown)}; PrunedClassifier takes {', '.join(OPTION_NAMES)}"
            )
        self.model = model
        self.adapter = HFTextClassifierAdapter(model)  # refuses unsupported models with a clear message
        self.runner = SparseEncoder(self.adapter)
        self.approx = _load_approx(approx, model)
        self.method_state = nn.ParameterDict()
        self.method_config: dict[str, Any] = {}
        self.state_method: str | None = None
        settings = {**_DEFAULTS, "method": method, "keep": keep, **options}
        checked = {
            name: _check_option(name, settings[name], self.adapter.num_layers) for name in OPTION_NAMES
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        _check_combination(checked, self.approx is not None)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in OPTION_NAMES and "adapter" in self.__dict__:
            value = _check_option(name, value, self.adapter.num_layers)
            _check_combination({**self.options(), name: value}, self.approx is not None)
        super().__setattr__(name, value)

    def options(self) -> dict[str, Any]:
        """The current method settings, as :class:`PrunedConfig` stores them."""
        return {name: getattr(self, name) for name in OPTION_NAMES}

    def selector(self):
        extra: dict[str, Any] = {"approxnet": self.approx} if self.approx is not None else {}
        if self.method_state:
            _check_state_method(self.state_method, self.method, "this PrunedClassifier")
            extra["method_state"] = {name: tensor.detach() for name, tensor in self.method_state.items()}
            extra["method_config"] = dict(self.method_config)
        options = MethodOptions(
            keep=self.keep,
            schedule=self.schedule,
            p=self.p,
            head_reduction=self.head_reduction,
            token_reduction=self.token_reduction,
            approx="<loaded>" if self.approx is not None else None,
            extra=extra,
        )
        return build_selector(self.method, self.adapter, options)

    # no_grad rather than inference_mode: under inference mode a caller's autocast context would re-cast
    # every weight on every call instead of reusing its copies (see sttabt.utils.inference).
    @torch.no_grad()
    def forward(self, batch: Mapping[str, torch.Tensor]) -> SparseOutput:
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise SttabtError("PrunedClassifier takes a tokenizer's batch: a mapping with input_ids")
        device = self.adapter.device
        names = ("input_ids", "attention_mask", "token_type_ids")
        inputs = {k: v.to(device) for k, v in batch.items() if k in names}
        if "attention_mask" not in inputs:
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        return self.runner(inputs, self.selector())

    # -- persistence ----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, tokenizer: Any = None) -> Path:
        """Write the backbone (HF format, safetensors), the method config and state, atomically."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise SttabtError(f"{directory} is a file, not a directory")
        with atomic_directory(directory) as tmp:
            self.write_into(tmp, tokenizer)
        return directory

    def write_into(self, directory: str | Path, tokenizer: Any = None) -> None:
        """Write the files of :meth:`save_pretrained` into an existing, empty directory (callers that add
        files of their own, like ``sttabt train``, make it atomic)."""
        directory = Path(directory)
        config = PrunedConfig(**self.options())
        config.state = {name: list(t.shape) for name, t in self.method_state.items()}
        config.method_config = dict(self.method_config) if self.method_state else {}
        self.model.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        if self.approx is not None:
            config.approxnet = APPROX_DIR
            (directory / APPROX_DIR).mkdir()
            self.approx.write_into(directory / APPROX_DIR)
        if self.method_state:
            from safetensors.torch import save_file

            tensors = {k: v.detach().cpu().contiguous() for k, v in self.method_state.items()}
            save_file(tensors, str(directory / STATE_NAME))
        atomic_write_json(
            directory / CONFIG_NAME, {"format_version": FORMAT_VERSION, **_without_version(config)}
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> PrunedClassifier:
        """Load what :meth:`save_pretrained` wrote; ``overrides`` replace saved options (e.g. ``keep``)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise SttabtError(f"saved PrunedClassifier directory does not exist: {directory}")
        config = PrunedConfig.read(directory)
        approx_dir = directory / config.approxnet if config.approxnet else None
        if approx_dir is not None and not approx_dir.is_dir():
            raise SttabtError(
                f"{directory}: the method state {config.approxnet}/ listed in {CONFIG_NAME} is missing"
            )
        state = _read_state(directory, config)
        options = {name: getattr(config, name) for name in OPTION_NAMES}
        if state:
            _check_state_method(config.method, overrides.get("method", config.method), str(directory))
        model = _load_backbone(directory)
        pruned = cls(model, approx=str(approx_dir) if approx_dir else None, **{**options, **overrides})
        for name, tensor in state.items():
            pruned.method_state[name] = nn.Parameter(tensor, requires_grad=False)
        if state:
            pruned.method_config, pruned.state_method = dict(config.method_config), config.method
        return pruned.eval()

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in OPTION_NAMES)


def _check_state_method(trained: str | None, method: str, where: str) -> None:
    """A learned state only serves the method it was trained for; training-free methods ignore it."""
    if trained is None or method == trained or method not in LEARNED_METHODS:
        return
    raise SttabtError(
        f"{where} was trained with method {trained!r}; it cannot run method {method!r} "
        f"(train it with `sttabt train --method {method}`)"
    )


def saved_method_extra(model: nn.Module, method: str, *, approx: bool = True) -> dict[str, Any]:
    """The learned state of ``method`` saved with ``model``'s own directory (``model.name_or_path``), as
    the ``extra`` of :class:`MethodOptions`: ``approxnet``, ``method_state``, ``method_config``.

    Empty when that directory is not a saved :class:`PrunedClassifier`; a directory saved for another
    method, or whose state is missing or does not fit, is a one-line error. ``approx=False`` leaves the
    saved ApproxNet out (the caller brings its own).
    """
    from sttabt.approxnet import ApproxNet

    directory = Path(str(getattr(model, "name_or_path", "") or ""))
    if not str(directory) or not (directory / CONFIG_NAME).is_file():
        return {}
    config = PrunedConfig.read(directory)
    state = _read_state(directory, config)
    if not state:
        raise SttabtError(f"{directory} holds no learned method state for method {method!r}")
    _check_state_method(config.method, method, str(directory))
    extra: dict[str, Any] = {"method_state": state, "method_config": dict(config.method_config)}
    if approx and config.approxnet:
        extra["approxnet"] = ApproxNet.load(directory / config.approxnet, teacher=model)
    return extra


def _load_backbone(directory: Path) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(directory, dtype=torch.float32)
    except Exception as exc:  # safetensors, transformers and torch raise many types for a bad checkpoint
        first = str(exc).strip().splitlines()
        raise SttabtError(f"cannot load the backbone in {directory}: {first[0] if first else exc!r}") from exc
    return model.eval()


def _load_approx(approx: Any, model: nn.Module) -> nn.Module | None:
    """An ApproxNet from a directory (checked against ``model``), a loaded one, or None."""
    from sttabt.approxnet import ApproxNet

    if approx is None:
        return None
    if isinstance(approx, ApproxNet):
        approx.check_teacher(model)
        return approx
    if isinstance(approx, str | Path):
        return ApproxNet.load(approx, teacher=model)
    raise SttabtError(f"approx must be an ApproxNet directory or an ApproxNet, got {type(approx).__name__}")


def _check_option(name: str, value: Any, num_layers: int) -> Any:
    """One setting on its own; returns it normalised (a keep text like ``"0.3"`` becomes 0.3)."""
    if name == "method":
        if not isinstance(value, str) or value not in METHODS:
            raise SttabtError(f"unknown method {value!r}; choose one of {', '.join(method_names())}")
        return value
    if name == "keep":
        keep = validate.keep_ratio(value, "keep")
        if isinstance(keep, list) and len(keep) != num_layers:
            raise SttabtError(f"keep: got {len(keep)} per-layer ratios for a model with {num_layers} layers")
        return keep
    if name == "p":
        return validate.p_value(value, "p")
    if value not in _CHOICES[name]:
        raise SttabtError(f"{name} must be one of {', '.join(_CHOICES[name])}, got {value!r}")
    return value


def _check_combination(options: Mapping[str, Any], has_approx: bool) -> None:
    """Settings that only make sense together: a method's required budget and ApproxNet."""
    spec = METHODS[options["method"]]
    if spec.needs_keep and options["keep"] is None:
        raise SttabtError(f"method {spec.name!r} needs a keep ratio: set keep=0.3 (for example)")
    if spec.needs_approx and not has_approx:
        raise SttabtError(f"method {spec.name!r} needs an ApproxNet: pass approx=DIR (from `sttabt distill`)")
    if options["keep"] == "dynamic" and spec.name not in ("abt", "abt-oracle"):
        raise SttabtError(f"keep='dynamic' is for back-tracking methods, not {spec.name!r}")


def _read_state(directory: Path, config: PrunedConfig) -> dict[str, torch.Tensor]:
    """The method-state tensors the config lists, with the listed shapes (nothing more, nothing less)."""
    if not config.state:
        return {}
    path = directory / STATE_NAME
    if not path.is_file():
        raise SttabtError(f"{directory}: the method state {STATE_NAME} listed in {CONFIG_NAME} is missing")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise SttabtError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
    shapes = {name: list(t.shape) for name, t in tensors.items()}
    if shapes != {k: list(v) for k, v in config.state.items()}:
        raise SttabtError(
            f"{path} does not match {CONFIG_NAME}: it holds {shapes}, the config lists {config.state}"
        )
    return tensors


def _without_version(config: PrunedConfig) -> dict[str, Any]:
    payload = asdict(config)
    payload.pop("format_version")
    return payload
