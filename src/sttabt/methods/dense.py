"""The unpruned model on the same runtime (the last layer still computes only CLS)."""

from sttabt.methods.registry import register_method
from sttabt.runtime import TokenSelector


@register_method("dense", "no pruning; every real token is kept")
def build_dense(adapter, options) -> TokenSelector:
    return TokenSelector()
