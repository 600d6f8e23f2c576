"""ApproxNet distillation (METHODS.md §1.2): losses, the two training stages and attention quality.

``L_approx = L_att + w_hid·L_hid + w_emb·L_emb + w_pred·L_pred`` with, per the spec's table:

* ``L_att``: KL(A_teacher ‖ A_approx) per attention row (sum over keys), averaged over each sample's
  valid query rows, then over heads and the batch, then over layers (MiniLM-style "kldiv"). Padded keys
  have probability 0 in both maps and contribute nothing.
* ``L_hid``: MSE(P_l(ĥ_l), h_l) over ``hidden_states[0..L-1]`` (the last layer's output is not
  distilled), over real tokens only, averaged over layers.
* ``L_emb``: MSE(P_emb(ê), e) over real tokens, both embeddings recomputed from ``input_ids`` alone.
* ``L_pred``: MSE(softmax(ẑ), softmax(z)) over the classes (raw outputs for a one-output regression head).

Weights: 1 / 1 / 1 / 1 in task distillation; ``L_pred`` is off (0) in general distillation.

Stage 1 (general) distils on unlabeled text made GLUE-like by :mod:`sttabt.train.augment`; stage 2 (task)
distils on the task's training inputs (labels unused: the teacher's outputs are the targets). Images
(ViT/DeiT teachers) have no text augmentation: both stages distil on the training images under seeded
random shifts, flips and erasing (:func:`sttabt.images.augment_pixels`), stage 1 without L_pred. In both,
the checkpoint with the lowest attention KL on a held-out slice of the *training* data is kept (never the
dev split, Pitfall R14). Optimiser: AdamW, lr 1e-4, weight decay 1e-4 except on biases and LayerNorm
weights, gradient clipping at 0.5, constant learning rate.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sttabt.adapters.base import EncoderAdapter
from sttabt.adapters.lookup import adapter_for
from sttabt.approxnet import ApproxNet, EncoderTrace, trace_encoder
from sttabt.errors import SttabtError
from sttabt.train.loop import LoopConfig, LoopResult, make_accelerator, train_loop
from sttabt.utils import atomic_directory, atomic_write_json, autocast, set_seed

log = logging.getLogger(__name__)

Batch = Mapping[str, torch.Tensor]
MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


# -- losses --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossWeights:
    att: float = 1.0
    hid: float = 1.0
    emb: float = 1.0
    pred: float = 1.0


#: Text weights of the spec: general distillation has no prediction loss.
GENERAL_WEIGHTS = LossWeights(pred=0.0)
TASK_WEIGHTS = LossWeights()


def attention_kl(
    teacher_probs: Sequence[torch.Tensor], student_scores: Sequence[torch.Tensor], valid: torch.Tensor
) -> torch.Tensor:
    """L_att: KL(teacher ‖ student) per row, mean over valid rows, heads and batch, then over layers.

    ``student_scores`` are pre-softmax logits (with any additive padding mask); using them instead of
    probabilities keeps the log finite where a student probability underflows.
    """
    pairs = zip(teacher_probs, student_scores, strict=True)
    return torch.stack([_kl_per_sample(t, s, valid).mean() for t, s in pairs]).mean()


def _kl_per_sample(teacher: torch.Tensor, student_scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """KL per sample ``(B,)``: rows summed over keys, averaged over valid rows and over heads."""
    t = teacher.float()
    log_s = student_scores.float().log_softmax(dim=-1)
    rows = (torch.xlogy(t, t) - t * log_s).sum(dim=-1)  # (B, H, T)
    weight = valid.float()[:, None, :]
    return ((rows * weight).sum(dim=-1) / weight.sum(dim=-1).clamp(min=1)).mean(dim=1)


def _head_mean_kl(teacher: torch.Tensor, student: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """KL per sample between the head-averaged maps, what back-tracking reads (comparable across head
    counts); the student's mean is a probability mixture, floored before its log."""
    t = teacher.float().mean(dim=1, keepdim=True)
    s = student.float().mean(dim=1, keepdim=True).clamp(min=1e-12)
    return _kl_per_sample(t, s.log(), valid)


def _mse_per_sample(teacher: torch.Tensor, student: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Attention MSE per sample ``(B,)`` over valid (query, key) pairs and heads."""
    pairs = (valid[:, :, None] & valid[:, None, :]).float()[:, None]  # (B, 1, T, T)
    sq = (teacher.float() - student.float()).pow(2) * pairs
    return sq.sum(dim=(1, 2, 3)) / (pairs.sum(dim=(1, 2, 3)) * teacher.shape[1]).clamp(min=1)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """MSE over the real tokens of ``(B, T, d)`` tensors (padding excluded)."""
    weight = valid.float().unsqueeze(-1)
    sq = (prediction.float() - target.float()).pow(2) * weight
    return sq.sum() / (weight.sum() * prediction.shape[-1]).clamp(min=1)


def prediction_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """L_pred: MSE between class probabilities (raw outputs when the head has a single output)."""
    if student_logits.shape[-1] == 1:
        return F.mse_loss(student_logits.float(), teacher_logits.float())
    return F.mse_loss(student_logits.float().softmax(-1), teacher_logits.float().softmax(-1))


@dataclass
class DistillLoss:
    total: torch.Tensor
    att: torch.Tensor
    hid: torch.Tensor
    emb: torch.Tensor
    pred: torch.Tensor

    def item_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name).detach()) for f in fields(self)}


def distill_loss(
    approx: ApproxNet, batch: Batch, teacher: EncoderTrace, weights: LossWeights = TASK_WEIGHTS
) -> DistillLoss:
    """All four terms for one batch; ``teacher`` is :func:`teacher_targets` of the same batch."""
    valid = teacher.valid
    out = approx(batch, embeddings=weights.emb != 0)
    att = attention_kl([approx.pool_teacher_heads(t) for t in teacher.attentions], out.scores, valid)
    zero = att.new_zeros(())
    hid = zero
    if weights.hid:
        projected = approx.project_hidden(out.hidden_states)
        hid = torch.stack(
            [masked_mse(p, h, valid) for p, h in zip(projected, teacher.hidden_states[:-1], strict=True)]
        ).mean()
    emb = zero
    if weights.emb:
        emb = masked_mse(approx.project_embeddings(out.embeddings), teacher.embeddings, valid)
    pred = prediction_mse(out.logits, teacher.logits) if weights.pred else zero
    total = weights.att * att + weights.hid * hid + weights.emb * emb + weights.pred * pred
    return DistillLoss(total, att, hid, emb, pred)


def teacher_targets(teacher: nn.Module | EncoderAdapter, batch: Batch) -> EncoderTrace:
    """The teacher's attention, hidden states, embeddings and logits (no gradients)."""
    with torch.no_grad():
        return trace_encoder(teacher, batch, embeddings=True)


# -- attention quality ---------------------------------------------------------------------------------------
def attention_quality(
    approx: ApproxNet,
    teacher: nn.Module | EncoderAdapter,
    batches: Iterable[Batch],
    *,
    device: torch.device | None = None,
    dtype: str = "fp32",
) -> dict[str, float]:
    """Mean KL(teacher ‖ ApproxNet) and MSE of the attention maps over the examples of ``batches``.

    Per example: KL summed over keys and MSE averaged over valid keys, both averaged over valid query
    rows, heads and layers; then averaged over examples (PUBLISHED_RESULTS §3 reports these two numbers;
    the reference's exact normalisation is unconfirmed, so compare trends, not digits).
    """
    return _quality_means(quality_sums(approx, teacher, batches, device=device, dtype=dtype))


def sharded_quality(
    approx: ApproxNet,
    teacher: nn.Module | EncoderAdapter,
    batches: Sequence[Batch],
    accelerator: Any,
    dtype: str = "fp32",
) -> dict[str, float]:
    """:func:`attention_quality` with the batches split over the processes and the sums reduced."""
    rank, procs = accelerator.process_index, accelerator.num_processes
    sums = quality_sums(approx, teacher, batches[rank::procs], device=accelerator.device, dtype=dtype)
    return _quality_means(accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu())


def quality_sums(
    approx: ApproxNet,
    teacher: nn.Module | EncoderAdapter,
    batches: Iterable[Batch],
    *,
    device: torch.device | None = None,
    dtype: str = "fp32",
) -> torch.Tensor:
    """``[sum of per-example KL, sum of MSE, examples, sum of head-mean KL]`` (float64) over ``batches``."""
    adapter = adapter_for(teacher)
    device = device or next(approx.parameters()).device
    was_training = (approx.training, adapter.model.training)
    approx.eval()
    adapter.model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    try:
        with torch.no_grad(), autocast(device, dtype):
            for raw in batches:
                batch = _to_device(raw, device)
                target = trace_encoder(adapter, batch)
                valid = target.valid
                out = approx(batch, embeddings=False)
                targets = [approx.pool_teacher_heads(t) for t in target.attentions]
                layers = list(zip(targets, out.scores, out.attentions, strict=True))
                kl = torch.stack([_kl_per_sample(t, s, valid) for t, s, _ in layers]).mean(0)
                mse = torch.stack([_mse_per_sample(t, a, valid) for t, _, a in layers]).mean(0)
                mean_kl = torch.stack([_head_mean_kl(t, a, valid) for t, _, a in layers]).mean(0)
                sums += torch.stack([kl.double().sum(), mse.double().sum(), kl.new_tensor(valid.shape[0])
                                     .double(), mean_kl.double().sum()]).cpu()  # fmt: skip
    finally:
        approx.train(was_training[0])
        adapter.model.train(was_training[1])
    return sums


def _quality_means(sums: torch.Tensor) -> dict[str, float]:
    count = int(round(float(sums[2])))
    if count == 0:
        raise SttabtError("attention quality needs at least one example")
    means = {"kl": float(sums[0]) / count, "mse": float(sums[1]) / count, "examples": count}
    return {**means, "head_mean_kl": float(sums[3]) / count}


# -- training ------------------------------------------------------------------------------------------------
@dataclass
class StageConfig:
    """One distillation stage."""

    name: str  # "general" or "task"
    epochs: int
    weights: LossWeights
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.5
    dtype: str = "fp32"
    eval_every: int = 0  # steps between held-out evaluations (0: once per epoch)
    progress: bool = True


def build_optimizer(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases and LayerNorm (all 1-D parameters)."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or "layernorm" in name.lower():
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


class DistillObjective(nn.Module):
    """The ApproxNet and its loss in one forward, so that DDP sees every parameter the loss uses.

    The teacher is held outside the module tree: it is frozen and must not be wrapped or synchronised.
    """

    def __init__(self, approx: ApproxNet, teacher: EncoderAdapter, weights: LossWeights):
        super().__init__()
        self.approx = approx
        self._teacher = (teacher,)
        self.weights = weights

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        batch = {k: v for k, v in batch.items() if k in MODEL_KEYS}
        loss = distill_loss(self.approx, batch, teacher_targets(self._teacher[0], batch), self.weights)
        return {"loss": loss.total, "att": loss.att, "hid": loss.hid, "emb": loss.emb, "pred": loss.pred}


def run_stage(
    approx: ApproxNet,
    teacher: nn.Module,
    epoch_batches: Callable[[int], Iterable[Batch]],
    batches_per_epoch: int,
    heldout: Sequence[Batch],
    config: StageConfig,
    accelerator: Any,
    start: dict[str, Any] | None = None,
) -> LoopResult:
    """Train ``approx`` for ``config.epochs`` epochs and leave it at the best held-out attention KL.

    ``epoch_batches(epoch)`` yields the (already shuffled/augmented) batches of one epoch, the same on
    every process. The state at the start of the stage is a candidate too, so a stage can never make the
    kept model worse on held-out data; ``start`` is its held-out evaluation when already known (the
    previous stage's best).
    """
    adapter = adapter_for(teacher)
    teacher.eval()
    approx.to(accelerator.device)
    wrapped = accelerator.prepare_model(DistillObjective(approx, adapter, config.weights))

    def evaluate() -> dict[str, Any]:
        quality = sharded_quality(approx, adapter, heldout, accelerator, config.dtype)
        return {"score": -quality["kl"], "heldout_kl": quality["kl"], "heldout_mse": quality["mse"]}

    loop = LoopConfig(
        name=f"{config.name} stage", epochs=config.epochs, batches_per_epoch=batches_per_epoch,
        dtype=config.dtype, max_grad_norm=config.grad_clip, eval_every=config.eval_every, eval_at_start=True,
        progress=config.progress,
    )  # fmt: skip
    optimizer = build_optimizer(approx, config.lr, config.weight_decay)
    known = None if start is None else {k: start[k] for k in ("score", "heldout_kl", "heldout_mse")}
    result = train_loop(
        accelerator,
        approx,
        wrapped,
        optimizer,
        epoch_batches,
        loop,
        evaluate=evaluate,
        start_evaluation=known,
    )
    approx.eval()
    return result


def length_grouped_batches(
    features: Sequence[Mapping[str, Any]], batch_size: int, pad_token_id: int, seed: int, group: int = 50
) -> Iterator[Batch]:
    """Seeded shuffled batches of similar lengths: less padding, so fewer wasted teacher FLOPs.

    The features are shuffled, cut into pools of ``group`` batches, each pool sorted by length and cut
    into batches, and the batch order shuffled again (deterministic for a seed).
    """
    import numpy as np

    from sttabt.data import collate, feature_length

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(features)).tolist()
    pool = batch_size * group
    chunks: list[list[int]] = []
    for start in range(0, len(order), pool):
        members = sorted(order[start : start + pool], key=lambda i: feature_length(features[i]))
        chunks.extend(members[i : i + batch_size] for i in range(0, len(members), batch_size))
    for index in rng.permutation(len(chunks)).tolist():
        yield collate([features[i] for i in chunks[index]], pad_token_id)


def _to_device(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if k in MODEL_KEYS and v is not None}


# -- the whole run (what `sttabt distill` does) --------------------------------------------------------------
LOG_NAME = "distill_log.json"
GENERAL_SUBDIR = "general"


@dataclass
class DistillConfig:
    """Everything a distillation run depends on; saved verbatim in ``distill_log.json``."""

    teacher: str
    task: str
    output: str
    data_dir: str | None = None
    eval_data_dir: str | None = None  # where the dev split of the quality report is read (None: data_dir)
    factor: int | None = None  # None: 4, or the factor of --init
    heads: int | None = None  # the ApproxNet's heads (None: the teacher's, or those of --init)
    general_corpus: str | None = None
    general_teacher: str | None = None  # None: the task teacher
    general_epochs: int = 1
    epochs: int = 3
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.5
    batch_size: int = 16
    eval_batch_size: int = 64
    max_length: int = 128
    max_train_examples: int | None = None
    max_general_examples: int | None = None
    heldout_fraction: float = 0.1
    max_heldout_examples: int | None = 512
    quality_examples: int | None = None  # dev examples for the quality report (None: the whole split)
    eval_every: int = 0
    init: str | None = None
    init_mode: str = "random"
    seed: int = 0
    device: str = "auto"
    dtype: str = "fp32"
    progress: bool = True

    def validate(self) -> None:
        from sttabt.utils import DTYPES

        checks = [
            (self.factor is None or self.factor >= 1, f"factor must be >= 1, got {self.factor}"),
            (self.heads is None or self.heads >= 1, f"heads must be >= 1, got {self.heads}"),
            (self.general_epochs >= 0, f"general epochs must be >= 0, got {self.general_epochs}"),
            (self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}"),
            (self.lr > 0, f"learning rate must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.grad_clip >= 0, f"grad clip must be >= 0 (0 = off), got {self.grad_clip}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval batch size must be >= 1, got {self.eval_batch_size}"),
            (self.max_length >= 2, f"max length must be >= 2, got {self.max_length}"),
            (0.0 < self.heldout_fraction < 1.0,
             f"heldout fraction must be in (0, 1), got {self.heldout_fraction}"),
            (self.eval_every >= 0, f"eval-every must be >= 0, got {self.eval_every}"),
            (self.dtype in DTYPES, f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}"),
        ]  # fmt: skip
        limits = ("max_train_examples", "max_general_examples", "max_heldout_examples", "quality_examples")
        for name in limits:
            value = getattr(self, name)
            label = name.replace("_", " ")
            checks.append((value is None or value >= 1, f"{label} must be >= 1, got {value}"))
        for ok, message in checks:
            if not ok:
                raise SttabtError(message)
        if self.general_epochs == 0 and self.epochs == 0:
            raise SttabtError("nothing to do: both --general-epochs and --epochs are 0")


def general_lines(examples: Sequence[Any], limit: int | None = None) -> list[str]:
    """Unlabeled lines from a task's training inputs (both sentences of a pair), de-duplicated in order."""
    seen: dict[str, None] = {}
    for ex in examples:
        for text in (ex.text_a, ex.text_b):
            if text and text not in seen:
                seen[text] = None
                if limit is not None and len(seen) >= limit:
                    return list(seen)
    return list(seen)


@dataclass
class _Teacher:
    model: nn.Module
    tokenizer: Any  # text: the tokenizer; images: the model's ImageTransform
    path: str
    fingerprint: str
    spec: Any  # the task (TaskSpec)

    @property
    def is_image(self) -> bool:
        return self.spec.is_image

    @property
    def pad_id(self) -> int:
        return 0 if self.is_image else int(self.tokenizer.pad_token_id)

    def encode(self, examples: Sequence[Any], max_length: int) -> list[dict[str, Any]]:
        from sttabt.data import encode_for_task

        return encode_for_task(self.spec, self.tokenizer, examples, max_length)


@dataclass
class _Data:
    """The task's train features, held-out batches (selection) and dev batches (the quality report)."""

    train_examples: list[Any]
    train: list[dict[str, Any]]
    heldout: list[Batch]
    dev: list[Batch]
    counts: dict[str, int]


def distill(config: DistillConfig) -> dict[str, Any]:
    """Run general and/or task distillation, write the ApproxNet and its log; return the log.

    Under ``accelerate launch``/``torchrun`` every process trains on its share of each epoch's batches
    (``--batch-size`` per process) and evaluates its share of the held-out and dev batches; only the main
    process writes the output.
    """
    from sttabt.data import get_task, load_examples

    started = time.perf_counter()
    config.validate()
    spec = get_task(config.task)
    accelerator = make_accelerator(config.device, find_unused_parameters=True)
    autocast(accelerator.device, config.dtype)  # refuses fp16 on CPU before any loading
    set_seed(config.seed)
    pool = load_examples(spec.name, "train", config.data_dir, limit=config.max_train_examples)
    dev_ex = load_examples(spec.name, "dev", config.eval_data_dir or config.data_dir,
                           limit=config.quality_examples)  # fmt: skip
    general = config.general_epochs > 0 and not config.init
    corpus = _general_corpus(config, spec.name, pool) if general and not spec.is_image else None
    teacher = _load_teacher(config.teacher, spec)
    if config.max_length > int(getattr(teacher.model.config, "max_position_embeddings", config.max_length)):
        raise SttabtError(
            f"max length {config.max_length} exceeds the teacher's "
            f"{teacher.model.config.max_position_embeddings} positions"
        )
    teacher.model.to(accelerator.device).eval()
    data = _encode_data(config, pool, dev_ex, teacher)
    approx, start_label = _initial_approx(config, teacher)
    approx.to(accelerator.device)
    _info(
        accelerator, "distilling a factor-%d ApproxNet (%s) of %s for %s on %s (%s), %d process(es): "
        "%d train / %d held-out / %d dev examples", approx.factor,
        "from " + config.init if config.init else config.init_mode + " init", teacher.path, spec.name,
        accelerator.device, config.dtype, accelerator.num_processes, data.counts["train"],
        data.counts["heldout"], data.counts["dev"],
    )  # fmt: skip

    def quality(label: str) -> dict[str, float]:
        result = sharded_quality(approx, teacher.model, data.dev, accelerator, config.dtype)
        _info(
            accelerator, "%s ApproxNet, dev attention: KL %.4f MSE %.6f (head-mean KL %.4f)", label,
            result["kl"], result["mse"], result["head_mean_kl"],
        )  # fmt: skip
        return result

    qualities: dict[str, Any] = {"split": "dev", "examples": len(dev_ex), start_label: quality(start_label)}
    stages: dict[str, Any] = {}
    general_snapshot = None
    if corpus is not None or (general and teacher.is_image):
        stage = _general_image_stage if teacher.is_image else functools.partial(_general_stage, corpus=corpus)
        stages["general"], general_snapshot = stage(config, approx, teacher, data=data,
                                                    accelerator=accelerator)  # fmt: skip
        qualities["general"] = quality("general")
    if config.epochs > 0:
        start = stages["general"]["best"] if "general" in stages else None
        stages["task"] = _task_stage(config, approx, teacher, data, accelerator, start)
    approx.approx_config.teacher_path = teacher.path
    approx.approx_config.teacher_fingerprint = teacher.fingerprint
    qualities["distilled"] = quality("distilled")

    record = _record(config, spec.name, teacher, approx, data, stages, qualities, accelerator)
    record["wall_seconds"] = time.perf_counter() - started
    record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if accelerator.is_main_process:
        _write(config.output, approx, general_snapshot, record)
        log.info("saved the ApproxNet to %s", config.output)
    accelerator.wait_for_everyone()
    return record


def _info(accelerator: Any, message: str, *args: Any) -> None:
    if accelerator.is_main_process:
        log.info(message, *args)


def _load_teacher(name: str, spec: Any) -> _Teacher:
    from sttabt.approxnet import teacher_fingerprint
    from sttabt.models import load_image_classifier, load_text_classifier, resolve_model_path

    if spec.is_image:
        from sttabt.images import transform_for

        model, _ = load_image_classifier(name)
        path = resolve_model_path(name)
        transform = transform_for(model, path if Path(path).exists() else None)
        return _Teacher(model, transform, path, teacher_fingerprint(model), spec)
    model, tokenizer = load_text_classifier(name)
    if int(model.config.num_labels) != spec.num_labels:
        raise SttabtError(
            f"the teacher {name} has {model.config.num_labels} outputs but {spec.name} has "
            f"{spec.num_labels} labels; pass the teacher fine-tuned on {spec.name}"
        )
    if tokenizer.pad_token_id is None:
        raise SttabtError(f"the tokenizer of {name} has no padding token")
    return _Teacher(model, tokenizer, resolve_model_path(name), teacher_fingerprint(model), spec)


def _encode_data(config: DistillConfig, pool: list[Any], dev_ex: list[Any], teacher: _Teacher) -> _Data:
    """Encode train, held-out and dev; evaluation batches are grouped by length (less padding)."""
    from sttabt.data import batches, feature_length, split_train_heldout

    train_ex, held_ex = split_train_heldout(pool, config.heldout_fraction, config.seed)
    if config.max_heldout_examples is not None:
        held_ex = held_ex[: config.max_heldout_examples]

    def eval_batches(examples: list[Any]) -> list[Batch]:
        feats = sorted(teacher.encode(examples, config.max_length), key=feature_length)
        return list(batches(feats, config.eval_batch_size, teacher.pad_id))

    counts = {"train": len(train_ex), "heldout": len(held_ex), "dev": len(dev_ex)}
    train_f = teacher.encode(train_ex, config.max_length)
    return _Data(train_ex, train_f, eval_batches(held_ex), eval_batches(dev_ex), counts)


def _initial_approx(config: DistillConfig, teacher: _Teacher) -> tuple[ApproxNet, str]:
    """A saved general-stage ApproxNet (``--init``) or a new one for the teacher; and its quality label."""
    if config.init:
        approx = ApproxNet.load(config.init)
        approx.check_teacher(teacher.model, fingerprint=False)  # a general-stage net may come from the base
        if config.factor is not None and config.factor != approx.factor:
            raise SttabtError(
                f"--init {config.init} has factor {approx.factor}, not --factor {config.factor}"
            )
        if config.heads is not None and config.heads != approx.approx_config.num_heads:
            raise SttabtError(
                f"--init {config.init} has {approx.approx_config.num_heads} heads, not --heads {config.heads}"
            )
        return approx, "init"
    approx = ApproxNet.from_teacher(
        teacher.model, config.factor or 4, init=config.init_mode, heads=config.heads,
        teacher_path=teacher.path, fingerprint=teacher.fingerprint,
    )  # fmt: skip
    return approx, "untrained"


def _stage_config(config: DistillConfig, name: str, epochs: int, weights: LossWeights) -> StageConfig:
    return StageConfig(
        name=name, epochs=epochs, weights=weights, lr=config.lr, weight_decay=config.weight_decay,
        grad_clip=config.grad_clip, dtype=config.dtype, eval_every=config.eval_every,
        progress=config.progress,
    )  # fmt: skip


def _general_corpus(config: DistillConfig, task: str, pool: list[Any]) -> tuple[list[str], str]:
    """The general stage's lines (a corpus file, or the task's train inputs) and how to name them."""
    from pathlib import Path

    from sttabt.train.augment import read_corpus

    if config.general_corpus:
        lines = read_corpus(config.general_corpus, limit=config.max_general_examples)
        return lines, str(Path(config.general_corpus).resolve())
    from sttabt.data import split_train_heldout

    train_ex, _ = split_train_heldout(pool, config.heldout_fraction, config.seed)
    return general_lines(train_ex, config.max_general_examples), f"{task} train inputs"


def _general_teacher(config: DistillConfig, teacher: _Teacher, device: torch.device) -> tuple[nn.Module, str]:
    """The general stage's teacher: ``--general-teacher`` (same architecture) or the task teacher."""
    from sttabt.approxnet import teacher_architecture
    from sttabt.models import load_text_classifier, resolve_model_path

    if not config.general_teacher or config.general_teacher == config.teacher:
        return teacher.model, teacher.path
    # A base encoder (e.g. bert-base-uncased, as the reference uses) has no trained head: the general stage
    # never reads one (no prediction loss there), so a new head is allowed and stays unused.
    model, _ = load_text_classifier(config.general_teacher, allow_new_head=True)
    sizes = ("model_type", "num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size")
    general_arch, task_arch = teacher_architecture(model), teacher_architecture(teacher.model)
    if any(general_arch[k] != task_arch[k] for k in sizes):
        raise SttabtError(
            f"the general teacher {config.general_teacher} must have the task teacher's architecture "
            f"and vocabulary ({', '.join(sizes)})"
        )
    return model.to(device).eval(), resolve_model_path(config.general_teacher)


def _general_stage(
    config: DistillConfig, approx: ApproxNet, teacher: _Teacher, *, corpus: tuple[list[str], str],
    data: _Data, accelerator: Any,
) -> tuple[dict[str, Any], ApproxNet]:  # fmt: skip
    """Stage 1 on GLUE-like augmented text; returns its log entry and a CPU copy of the result."""
    from sttabt.approxnet import teacher_fingerprint
    from sttabt.data import Example, encode
    from sttabt.train.augment import GlueLikeAugmenter, SpecialTokens

    lines, corpus_name = corpus
    general_teacher, general_path = _general_teacher(config, teacher, accelerator.device)
    augmenter = GlueLikeAugmenter(lines, SpecialTokens.from_tokenizer(teacher.tokenizer), seed=config.seed)

    def general_batches(epoch: int) -> Iterator[Batch]:
        texts = [augmenter(i, epoch) for i in range(len(augmenter))]
        feats = encode(teacher.tokenizer, [Example(t, None, 0) for t in texts], config.max_length)
        return length_grouped_batches(
            feats, config.batch_size, teacher.pad_id, seed=config.seed * 7919 + epoch
        )

    _info(accelerator, "general stage: %d lines from %s, %d epoch(s)", len(lines), corpus_name,
          config.general_epochs)  # fmt: skip
    result = run_stage(
        approx, general_teacher, general_batches, math.ceil(len(lines) / config.batch_size), data.heldout,
        _stage_config(config, "general", config.general_epochs, GENERAL_WEIGHTS), accelerator,
    )  # fmt: skip
    approx.approx_config.stage = "general"
    approx.approx_config.history.append(
        {"stage": "general", "teacher": general_path, "corpus": corpus_name, **_best(result)}
    )
    if general_teacher is not teacher.model:
        approx.approx_config.teacher_path = general_path
        approx.approx_config.teacher_fingerprint = teacher_fingerprint(general_teacher)
    entry = {**result.to_dict(), "name": "general", "corpus": corpus_name, "lines": len(lines),
             "teacher": general_path}  # fmt: skip
    return entry, copy.deepcopy(approx).cpu()


def _augmented_image_batches(
    config: DistillConfig, data: _Data, teacher: _Teacher, seed: int
) -> Iterator[Batch]:
    """One epoch of seeded, augmented training images (shifts, flips, erasing): images have no
    GLUE-like text augmentation, so both stages see the training images under the teacher's kind of
    training augmentation."""
    from sttabt.data import batches
    from sttabt.images import augmented_batches

    epoch = batches(data.train, config.batch_size, 0, shuffle=True, seed=seed)
    return augmented_batches(epoch, seed, teacher.spec.name, teacher.tokenizer)


def _general_image_stage(
    config: DistillConfig, approx: ApproxNet, teacher: _Teacher, *, data: _Data, accelerator: Any
) -> tuple[dict[str, Any], ApproxNet]:
    """Stage 1 for images: the general weights (no prediction loss) on augmented training images."""
    _info(accelerator, "general stage: %d augmented training images, %d epoch(s)", len(data.train),
          config.general_epochs)  # fmt: skip
    def general_batches(epoch: int) -> Iterator[Batch]:
        return _augmented_image_batches(config, data, teacher, config.seed * 7919 + epoch)

    result = run_stage(
        approx, teacher.model, general_batches,
        math.ceil(len(data.train) / config.batch_size), data.heldout,
        _stage_config(config, "general", config.general_epochs, GENERAL_WEIGHTS), accelerator,
    )  # fmt: skip
    approx.approx_config.stage = "general"
    corpus = "augmented training images"
    approx.approx_config.history.append({"stage": "general", "teacher": teacher.path, "corpus": corpus,
                                         **_best(result)})  # fmt: skip
    entry = {**result.to_dict(), "name": "general", "corpus": corpus, "lines": len(data.train),
             "teacher": teacher.path}  # fmt: skip
    return entry, copy.deepcopy(approx).cpu()


def _task_stage(
    config: DistillConfig,
    approx: ApproxNet,
    teacher: _Teacher,
    data: _Data,
    accelerator: Any,
    start: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Stage 2 on the task's training inputs (the teacher's outputs are the targets)."""

    def task_batches(epoch: int) -> Iterator[Batch]:
        seed = config.seed * 7919 + 1000 + epoch
        if teacher.is_image:
            return _augmented_image_batches(config, data, teacher, seed)
        return length_grouped_batches(data.train, config.batch_size, teacher.pad_id, seed=seed)

    result = run_stage(
        approx, teacher.model, task_batches, math.ceil(len(data.train) / config.batch_size), data.heldout,
        _stage_config(config, "task", config.epochs, TASK_WEIGHTS), accelerator, start,
    )  # fmt: skip
    approx.approx_config.stage = "task"
    approx.approx_config.history.append({"stage": "task", "teacher": teacher.path, **_best(result)})
    return {
        **result.to_dict(),
        "name": "task",
        "examples_per_epoch": len(data.train),
        "teacher": teacher.path,
    }


def _best(result: LoopResult) -> dict[str, Any]:
    return {k: v for k, v in result.best.items() if k != "score"}


def _record(
    config: DistillConfig, task: str, teacher: _Teacher, approx: ApproxNet, data: _Data,
    stages: dict[str, Any], qualities: dict[str, Any], accelerator: Any,
) -> dict[str, Any]:  # fmt: skip
    """``distill_log.json``: config, teacher, the ApproxNet and its cost, stages, quality, environment."""
    import platform
    from pathlib import Path

    from sttabt.approxnet import teacher_architecture
    from sttabt.core.flops import dense_cost

    shape = approx.cost_shape()
    lengths = torch.tensor([128])
    approx_flops = float(dense_cost(shape, lengths).flops[0])
    teacher_shape = adapter_for(teacher.model).shape
    teacher_flops = float(dense_cost(teacher_shape, lengths).flops[0])
    tokens = _tokens(teacher.model) if teacher.is_image else 128
    at_tokens = torch.tensor([tokens])
    relative = float(dense_cost(shape, at_tokens).flops[0] / dense_cost(teacher_shape, at_tokens).flops[0])
    return {
        "config": asdict(config),
        "task": task,
        "teacher": {
            "path": teacher.path,
            "fingerprint": teacher.fingerprint,
            **teacher_architecture(teacher.model),
        },  # fmt: skip
        "approxnet": {
            **approx.approx_config.to_dict(),
            "shape": asdict(shape),
            "parameters": sum(p.numel() for p in approx.model.parameters()),
            "projection_parameters": sum(
                p.numel() for n, p in approx.named_parameters() if "projection" in n
            ),
            "flops_at_128_tokens": approx_flops,
            "teacher_flops_at_128_tokens": teacher_flops,
            "relative_flops_at_128_tokens": approx_flops / teacher_flops,
            "flops_tokens": tokens,  # 128 for text; an image's token count (prefix + patches)
            "relative_flops": relative,
        },
        "examples": data.counts,
        "stages": stages,
        "quality": qualities,
        "environment": {
            "processes": accelerator.num_processes,
            "device": str(accelerator.device),
            "dtype": config.dtype,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "output": str(Path(config.output).resolve()),
    }


def _tokens(model: nn.Module) -> int:
    """Tokens of one image: the prefix plus the patches."""
    adapter = adapter_for(model)
    (height, width), (patch_h, patch_w) = adapter.image_size, adapter.patch_size
    patches = (height // patch_h) * (width // patch_w)
    return adapter.prefix_tokens + patches


def _write(output: str, approx: ApproxNet, general: ApproxNet | None, record: dict[str, Any]) -> None:
    """The ApproxNet, its general-stage snapshot (``general/``) and the log, in one atomic directory."""
    approx.cpu()
    with atomic_directory(output) as tmp:
        approx.write_into(tmp)
        if general is not None:
            (tmp / GENERAL_SUBDIR).mkdir()
            general.write_into(tmp / GENERAL_SUBDIR)
        atomic_write_json(tmp / LOG_NAME, record)


def summary_line(record: dict[str, Any]) -> str:
    """One line for the terminal: dev attention quality before and after, the cost, the output."""
    q = record["quality"]
    start = "init" if "init" in q else "untrained"
    relative = record["approxnet"].get("relative_flops", record["approxnet"]["relative_flops_at_128_tokens"])
    parts = [f"{record['task']} f={record['approxnet']['factor']}: dev attention KL {q[start]['kl']:.4f}"]
    if "general" in q:
        parts.append(f" -> {q['general']['kl']:.4f} (general)")
    parts.append(
        f" -> {q['distilled']['kl']:.4f}, MSE {q[start]['mse']:.5f} -> {q['distilled']['mse']:.5f} | "
        f"{100 * relative:.2f} % of the teacher's FLOPs | "
        f"{record['wall_seconds']:.0f} s -> {record['output']}"
    )
    return "".join(parts)
