"""Pruning methods as token selectors behind one registry.

Each method is a :class:`~sttabt.runtime.TokenSelector` factory registered under a name; the CLI,
``evaluate`` and ``bench`` only ever go through :func:`build_selector`.
"""

from sttabt.methods.registry import METHODS, MethodOptions, build_selector, method_names, register_method

# Importing the modules registers their methods.
from sttabt.methods import dense as _dense  # noqa: E402,F401  isort: skip
from sttabt.methods import topk as _topk  # noqa: E402,F401  isort: skip
from sttabt.methods import abt as _abt  # noqa: E402,F401  isort: skip
from sttabt.methods import concrete as _concrete  # noqa: E402,F401  isort: skip
from sttabt.methods import ltp as _ltp  # noqa: E402,F401  isort: skip

__all__ = ["METHODS", "MethodOptions", "build_selector", "method_names", "register_method"]
