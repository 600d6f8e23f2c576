"""Training loops: task fine-tuning of the dense backbone (:mod:`sttabt.train.finetune`).

Nothing is re-exported here: a function named ``finetune`` on this package would shadow the
``sttabt.train.finetune`` module (``import sttabt.train.finetune as m`` would then give the function).
Import from the submodules: ``from sttabt.train.finetune import FinetuneConfig, finetune``.
"""
