"""Training loops: task fine-tuning of the dense backbone (:mod:`sttabt.train.finetune`)."""

from sttabt.train.finetune import FinetuneConfig, finetune, summary_line

__all__ = ["FinetuneConfig", "finetune", "summary_line"]
