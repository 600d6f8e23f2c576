"""Where a learned method finds its trained state: the ``sttabt train`` checkpoint it was loaded from.

The checkpoint format itself (``sttabt_config.json`` with the method's settings, ``sttabt_state.safetensors``
with its tensors, the ApproxNet in ``approxnet/``) is :mod:`sttabt.api`'s, the one format for every method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
