"""The method registry and the options every method is built from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from sttabt import validate
from sttabt.adapters.base import EncoderAdapter
from sttabt.adapters.lookup import adapter_for
from sttabt.errors import SttabtError
from sttabt.runtime import TokenSelector

#: Options a built-in method reads (the rest of :class:`MethodOptions` it ignores). A method registered
#: with ``uses=`` declares its own; a method in neither place is not checked.
_BUILTIN_USES: dict[str, frozenset[str]] = {
    "dense": frozenset(),
    "topk": frozenset({"keep", "schedule"}),
    "abt": frozenset({"keep", "approx", "p", "head_reduction", "token_reduction"}),
    "abt-oracle": frozenset({"keep", "p", "head_reduction", "token_reduction"}),
}
#: The value of each option when the user did not set it.
_UNSET: dict[str, Any] = {
    "keep": None, "schedule": "constant", "approx": None, "p": 0.1,
    "head_reduction": "mean", "token_reduction": "mean",
}  # fmt: skip


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
    uses: frozenset[str] | None = None


METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    description: str,
    *,
    needs_keep: bool = False,
    needs_approx: bool = False,
    uses: set[str] | frozenset[str] | None = None,
) -> Callable[[Callable[[EncoderAdapter, MethodOptions], TokenSelector]], Callable]:
    """Decorator: register a selector factory ``(adapter, options) -> TokenSelector`` under ``name``.

    ``uses`` names the :class:`MethodOptions` fields the method reads, so that a user who sets another
    one (``--method dense --keep 0.3``) is told instead of silently ignored.
    """

    def wrap(factory: Callable[[EncoderAdapter, MethodOptions], TokenSelector]):
        declared = frozenset(uses) if uses is not None else _BUILTIN_USES.get(name)
        METHODS[name] = MethodSpec(name, factory, description, needs_keep, needs_approx, declared)
        return factory

    return wrap


def method_names() -> list[str]:
    return sorted(METHODS)


def validate_method(name: str, options: MethodOptions, *, strict: bool = False) -> MethodSpec:
    """Check a method name and its options without a model, so bad input fails before any loading.

    ``strict`` also refuses options the method does not use (the command line sets it: an ignored
    ``--keep`` would otherwise be recorded in the results as if it had been applied).
    """
    spec = METHODS.get(name)
    if spec is None:
        raise SttabtError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
    if spec.needs_keep and options.keep is None:
        raise SttabtError(f"method {name!r} needs --keep")
    if spec.needs_approx and not options.approx:
        raise SttabtError(f"method {name!r} needs --approx DIR (a distilled ApproxNet)")
    validate.keep_ratio(options.keep, "--keep")
    validate.p_value(options.p, "--p")
    if strict:
        unused = unused_options(spec, options)
        if unused:
            flags = ", ".join("--" + option.replace("_", "-") for option in unused)
            raise SttabtError(f"method {name!r} does not use {flags}; remove it")
    return spec


def unused_options(spec: MethodSpec, options: MethodOptions) -> list[str]:
    """The options set to something other than their default that ``spec``'s method does not read."""
    if spec.uses is None:
        return []
    return [
        option
        for option, unset in _UNSET.items()
        if option not in spec.uses and getattr(options, option) != unset
    ]


def build_selector(
    name: str, adapter: EncoderAdapter | nn.Module, options: MethodOptions | None = None
) -> TokenSelector:
    """The selector of method ``name`` for ``adapter`` (or a model, whose adapter the lookup finds)."""
    options = options or MethodOptions()
    spec = validate_method(name, options)
    return spec.factory(adapter_for(adapter), options)


def parse_keep(text: str | None) -> float | list[float] | str | None:
    """CLI form of ``--keep``: ``0.3``, ``dynamic``, or a comma list ``0.9,0.8,...`` (one per layer)."""
    return validate.keep_ratio(text, "--keep")
