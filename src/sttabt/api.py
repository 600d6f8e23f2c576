"""A small Python API: wrap a Hugging Face classifier once, set the budget as a plain attribute.

    >>> model, tokenizer = sttabt.load_text_classifier("minilm", num_labels=2)
    >>> pruned = sttabt.PrunedClassifier(model, method="topk", keep=0.5)
    >>> out = pruned(tokenizer(["a sentence", "another one"], return_tensors="pt", padding=True))
    >>> out.logits, out.kept_positions(0)       # logits, and sample 0's kept positions per layer
    >>> pruned.keep = 0.25                         # a new budget for the next call

The wrapped model is not modified: ``model(**batch)`` still runs the unmodified dense forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.methods import MethodOptions, build_selector
from sttabt.runtime import SparseEncoder, SparseOutput


class PrunedClassifier:
    """Runs ``model`` on the sparse-token runtime with a registered method.

    Attributes ``method``, ``keep``, ``schedule``, ``p`` may be changed between calls. An ApproxNet given
    as ``approx`` (a directory or a loaded :class:`~sttabt.approxnet.ApproxNet`) is loaded once.
    """

    def __init__(
        self, model: nn.Module, method: str = "dense", keep: Any = None, approx: Any = None, **options
    ):
        self.model = model
        self.adapter = HFTextClassifierAdapter(model)
        self.runner = SparseEncoder(self.adapter)
        self.method = method
        self.keep = keep
        self.schedule = options.pop("schedule", "constant")
        self.p = options.pop("p", 0.1)
        self.head_reduction = options.pop("head_reduction", "mean")
        self.token_reduction = options.pop("token_reduction", "mean")
        if options:
            raise TypeError(f"unknown options: {', '.join(options)}")
        self._approx = self._load_approx(approx)

    def _load_approx(self, approx: Any):
        if approx is None or not isinstance(approx, str):
            return approx
        from sttabt.approxnet import ApproxNet

        return ApproxNet.load(approx, teacher=self.model)

    def selector(self):
        options = MethodOptions(
            keep=self.keep,
            schedule=self.schedule,
            p=self.p,
            head_reduction=self.head_reduction,
            token_reduction=self.token_reduction,
            approx="<loaded>" if self._approx is not None else None,
            extra={"approxnet": self._approx} if self._approx is not None else {},
        )
        return build_selector(self.method, self.adapter, options)

    # no_grad rather than inference_mode: under inference mode a caller's autocast context would re-cast
    # every weight on every call instead of reusing its copies (see sttabt.utils.inference).
    @torch.no_grad()
    def __call__(self, batch: Mapping[str, torch.Tensor]) -> SparseOutput:
        device = self.adapter.device
        inputs = {
            k: v.to(device)
            for k, v in batch.items()
            if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        return self.runner(inputs, self.selector())
