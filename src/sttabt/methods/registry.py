"""The method registry and the options every method is built from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sttabt.adapters.base import EncoderAdapter
from sttabt.errors import SttabtError
from sttabt.runtime import TokenSelector


@dataclass
class MethodOptions:
    """Options shared by all methods; each method reads the ones it needs.

    ``keep`` is a fraction of each example's real length (a float, a per-layer list, or ``"dynamic"``).
    """

    keep: float | list[float] | str | None = None
    schedule: str = "constant"  # top-k: "constant" or "reference" (METHODS.md §1.6)
    approx: str | None = None  # ApproxNet directory for ABT
    p: float = 0.1
    head_reduction: str = "mean"
    token_reduction: str = "mean"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    factory: Callable[[EncoderAdapter, MethodOptions], TokenSelector]
    description: str
    needs_keep: bool = False
    needs_approx: bool = False


METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str, description: str, *, needs_keep: bool = False, needs_approx: bool = False
) -> Callable[[Callable[[EncoderAdapter, MethodOptions], TokenSelector]], Callable]:
    """Decorator: register a selector factory ``(adapter, options) -> TokenSelector`` under ``name``."""

    def wrap(factory: Callable[[EncoderAdapter, MethodOptions], TokenSelector]):
        METHODS[name] = MethodSpec(name, factory, description, needs_keep, needs_approx)
        return factory

    return wrap


def method_names() -> list[str]:
    return sorted(METHODS)


def validate_method(name: str, options: MethodOptions) -> MethodSpec:
    """Check a method name and its options without a model, so bad input fails before any loading."""
    spec = METHODS.get(name)
    if spec is None:
        raise SttabtError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
    if spec.needs_keep and options.keep is None:
        raise SttabtError(f"method {name!r} needs --keep")
    if spec.needs_approx and not options.approx:
        raise SttabtError(f"method {name!r} needs --approx DIR (a distilled ApproxNet)")
    if options.keep is not None and not isinstance(options.keep, str):
        ratios = options.keep if isinstance(options.keep, list) else [options.keep]
        for ratio in ratios:
            if not 0.0 < float(ratio) <= 1.0:
                raise SttabtError(f"keep ratio must be in (0, 1], got {ratio}")
    if isinstance(options.keep, str) and options.keep != "dynamic":
        raise SttabtError(f"--keep must be a ratio in (0, 1] or 'dynamic', got {options.keep!r}")
    return spec


def build_selector(name: str, adapter: EncoderAdapter, options: MethodOptions | None = None) -> TokenSelector:
    options = options or MethodOptions()
    return validate_method(name, options).factory(adapter, options)


def parse_keep(text: str | None) -> float | list[float] | str | None:
    """CLI form of ``--keep``: ``0.3``, ``dynamic``, or a comma list ``0.9,0.8,...`` (one per layer)."""
    if text is None:
        return None
    if text == "dynamic":
        return text
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError as exc:
        raise SttabtError(
            f"--keep must be a number in (0, 1], a comma list, or 'dynamic'; got {text!r}"
        ) from exc
    return values[0] if len(values) == 1 else values
