"""sttabt: token pruning for Transformer encoders that physically removes tokens between layers."""

from sttabt.api import PrunedClassifier, PrunedConfig
from sttabt.errors import SttabtError
from sttabt.methods import MethodOptions, build_selector, method_names
from sttabt.models import load_text_classifier
from sttabt.runtime import SparseEncoder, SparseOutput, TokenSelector

__version__ = "0.1.0"

__all__ = [
    "MethodOptions",
    "PrunedClassifier",
    "PrunedConfig",
    "SparseEncoder",
    "SparseOutput",
    "SttabtError",
    "TokenSelector",
    "build_selector",
    "load_text_classifier",
    "method_names",
]
