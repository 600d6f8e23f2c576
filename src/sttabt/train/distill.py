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
distils on the task's training inputs (labels unused: the teacher's outputs are the targets). In both,
the checkpoint with the lowest attention KL on a held-out slice of the *training* data is kept (never the
dev split, Pitfall R14). Optimiser: AdamW, lr 1e-4, weight decay 1e-4 except on biases and LayerNorm
weights, gradient clipping at 0.5, constant learning rate.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.approxnet import ApproxNet, EncoderTrace, trace_encoder
from sttabt.errors import SttabtError
from sttabt.utils import autocast

log = logging.getLogger(__name__)

Batch = Mapping[str, torch.Tensor]
MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


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
    valid = batch["attention_mask"].bool()
    out = approx(batch, embeddings=weights.emb != 0)
    att = attention_kl(teacher.attentions, out.scores, valid)
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


def teacher_targets(teacher: nn.Module | HFTextClassifierAdapter, batch: Batch) -> EncoderTrace:
    """The teacher's attention, hidden states, embeddings and logits (no gradients)."""
    with torch.no_grad():
        return trace_encoder(teacher, batch, embeddings=True)


# -- attention quality ---------------------------------------------------------------------------------------
def attention_quality(
    approx: ApproxNet,
    teacher: nn.Module | HFTextClassifierAdapter,
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
    adapter = teacher if isinstance(teacher, HFTextClassifierAdapter) else HFTextClassifierAdapter(teacher)
    device = device or next(approx.parameters()).device
    was_training = (approx.training, adapter.model.training)
    approx.eval()
    adapter.model.eval()
    kl_sum = mse_sum = 0.0
    count = 0
    try:
        with torch.no_grad(), autocast(device, dtype):
            for raw in batches:
                batch = _to_device(raw, device)
                valid = batch["attention_mask"].bool()
                target = trace_encoder(adapter, batch)
                out = approx(batch, embeddings=False)
                layers = list(zip(target.attentions, out.scores, out.attentions, strict=True))
                kl = torch.stack([_kl_per_sample(t, s, valid) for t, s, _ in layers]).mean(0)
                mse = torch.stack([_mse_per_sample(t, a, valid) for t, _, a in layers]).mean(0)
                kl_sum += float(kl.double().sum())
                mse_sum += float(mse.double().sum())
                count += int(valid.shape[0])
    finally:
        approx.train(was_training[0])
        adapter.model.train(was_training[1])
    if count == 0:
        raise SttabtError("attention quality needs at least one example")
    return {"kl": kl_sum / count, "mse": mse_sum / count, "examples": count}


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


@dataclass
class StageResult:
    name: str
    steps: int
    examples: int
    seconds: float
    best: dict[str, Any]
    train_seconds: float = 0.0  # optimisation steps only (no evaluations)
    examples_per_s: float = 0.0
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def run_stage(
    approx: ApproxNet,
    teacher: nn.Module,
    epoch_batches: Callable[[int], Iterator[Batch]],
    steps_per_epoch: int,
    heldout: Sequence[Batch],
    config: StageConfig,
    device: torch.device,
) -> StageResult:
    """Train ``approx`` for ``config.epochs`` epochs and leave it at the best held-out attention KL.

    ``epoch_batches(epoch)`` yields the (already shuffled/augmented) batches of one epoch. The state at the
    start of the stage is a candidate too, so a stage can never make the kept model worse on held-out data.
    """
    from tqdm.auto import tqdm

    adapter = HFTextClassifierAdapter(teacher)
    teacher.eval()
    optimizer = build_optimizer(approx, config.lr, config.weight_decay)
    result = StageResult(config.name, 0, 0, 0.0, best={})

    def evaluate(epoch: float, step: int) -> None:
        quality = attention_quality(approx, adapter, heldout, device=device, dtype=config.dtype)
        record = {"epoch": epoch, "step": step, "heldout_kl": quality["kl"], "heldout_mse": quality["mse"]}
        result.evaluations.append(record)
        improved = not result.best or quality["kl"] < result.best["heldout_kl"]
        if improved:
            result.best = dict(record)
            best_state[0] = {k: v.detach().to("cpu", copy=True) for k, v in approx.state_dict().items()}
        log.info(
            "%s stage: epoch %.2f step %d held-out KL %.4f MSE %.6f%s",
            config.name, epoch, step, quality["kl"], quality["mse"], " (best)" if improved else "",
        )  # fmt: skip

    best_state: list[dict[str, torch.Tensor] | None] = [None]
    evaluate(0.0, 0)
    start = time.perf_counter()
    total_steps = steps_per_epoch * config.epochs
    desc = f"distill[{config.name}]"
    show_bar = config.progress and sys.stderr.isatty()
    bar = tqdm(total=total_steps, desc=desc, disable=not show_bar, mininterval=2.0)
    step = 0
    train_seconds = 0.0
    last_report = time.perf_counter()
    try:
        for epoch in range(config.epochs):
            approx.train()
            sums: dict[str, float] = {}
            n_batches = 0
            for raw in epoch_batches(epoch):
                step_start = time.perf_counter()
                batch = _to_device(raw, device)
                with autocast(device, config.dtype):
                    target = teacher_targets(adapter, batch)
                    loss = distill_loss(approx, batch, target, config.weights)
                if not torch.isfinite(loss.total):
                    raise SttabtError(
                        f"{config.name} distillation diverged at step {step} (loss {float(loss.total)}); "
                        "lower --lr or use --dtype fp32"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.total.backward()
                if config.grad_clip > 0:
                    nn.utils.clip_grad_norm_(approx.parameters(), config.grad_clip)
                optimizer.step()
                step += 1
                n_batches += 1
                result.examples += int(batch["input_ids"].shape[0])
                for key, value in loss.item_dict().items():
                    sums[key] = sums.get(key, 0.0) + value
                now = time.perf_counter()
                train_seconds += now - step_start
                rate = result.examples / max(train_seconds, 1e-9)
                bar.update(1)
                total, att = float(loss.total.detach()), float(loss.att.detach())
                bar.set_postfix(loss=f"{total:.4f}", att=f"{att:.4f}", ex_s=f"{rate:.1f}", refresh=False)
                if config.progress and not show_bar and now - last_report >= 60.0:
                    last_report = now
                    log.info(
                        "%s stage: step %d/%d, loss %.4f (att %.4f), %.1f examples/s",
                        config.name, step, total_steps, total, att, rate,
                    )  # fmt: skip
                if config.eval_every and step % config.eval_every == 0 and step % steps_per_epoch:
                    evaluate(epoch + n_batches / max(steps_per_epoch, 1), step)
                    approx.train()
            means = {f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()}
            result.epochs.append({"epoch": epoch + 1, "steps": n_batches, **means})
            log.info(
                "%s stage: epoch %d/%d train loss %.4f (att %.4f hid %.4f emb %.4f pred %.4f)",
                config.name, epoch + 1, config.epochs, means.get("train_total", math.nan),
                means.get("train_att", math.nan), means.get("train_hid", math.nan),
                means.get("train_emb", math.nan), means.get("train_pred", math.nan),
            )  # fmt: skip
            evaluate(float(epoch + 1), step)
    finally:
        bar.close()
    result.steps = step
    result.seconds = time.perf_counter() - start
    result.train_seconds = train_seconds
    result.examples_per_s = result.examples / train_seconds if train_seconds > 0 else 0.0
    if best_state[0] is not None:
        approx.load_state_dict(best_state[0])
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

    from sttabt.data import collate

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(features)).tolist()
    pool = batch_size * group
    chunks: list[list[int]] = []
    for start in range(0, len(order), pool):
        members = sorted(order[start : start + pool], key=lambda i: len(features[i]["input_ids"]))
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
    factor: int | None = None  # None: 4, or the factor of --init
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


def distill(config: DistillConfig) -> dict[str, Any]:
    """Run general and/or task distillation, write the ApproxNet and its log; return the log."""
    import platform
    from datetime import UTC, datetime
    from pathlib import Path

    from sttabt.approxnet import teacher_architecture, teacher_fingerprint
    from sttabt.core.flops import dense_cost
    from sttabt.data import Example, batches, encode, get_task, load_examples, split_train_heldout
    from sttabt.models import load_text_classifier, resolve_model_path
    from sttabt.train.augment import GlueLikeAugmenter, SpecialTokens, read_corpus
    from sttabt.utils import atomic_directory, atomic_write_json, resolve_device, set_seed

    started = time.perf_counter()
    config.validate()
    spec = get_task(config.task)
    device = resolve_device(config.device)
    if config.dtype == "fp16" and device.type == "cpu":
        raise SttabtError("fp16 is not supported on CPU; use --dtype bf16")
    set_seed(config.seed)

    teacher, tokenizer = load_text_classifier(config.teacher)
    if int(teacher.config.num_labels) != spec.num_labels:
        raise SttabtError(
            f"the teacher {config.teacher} has {teacher.config.num_labels} outputs but {spec.name} has "
            f"{spec.num_labels} labels; pass the teacher fine-tuned on {spec.name}"
        )
    max_pos = int(getattr(teacher.config, "max_position_embeddings", config.max_length))
    if config.max_length > max_pos:
        raise SttabtError(f"max length {config.max_length} exceeds the teacher's {max_pos} positions")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise SttabtError(f"the tokenizer of {config.teacher} has no padding token")
    teacher.to(device).eval()
    teacher_path = resolve_model_path(config.teacher)
    fingerprint = teacher_fingerprint(teacher)

    pool = load_examples(spec.name, "train", config.data_dir, limit=config.max_train_examples)
    train_ex, held_ex = split_train_heldout(pool, config.heldout_fraction, config.seed)
    if config.max_heldout_examples is not None:
        held_ex = held_ex[: config.max_heldout_examples]
    dev_ex = load_examples(spec.name, "dev", config.data_dir, limit=config.quality_examples)
    train_f = encode(tokenizer, train_ex, config.max_length)
    held_f = encode(tokenizer, held_ex, config.max_length)

    # Quality is a per-example mean, so evaluation batches can be grouped by length (less padding).
    def by_length(feats: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(feats, key=lambda f: len(f["input_ids"]))

    held_batches = list(batches(by_length(held_f), config.eval_batch_size, pad_id))
    dev_f = encode(tokenizer, dev_ex, config.max_length)
    dev_batches = list(batches(by_length(dev_f), config.eval_batch_size, pad_id))

    if config.init:
        approx = ApproxNet.load(config.init)
        approx.check_teacher(teacher, fingerprint=False)  # a general-stage net may come from the base model
        if config.factor is not None and config.factor != approx.factor:
            raise SttabtError(
                f"--init {config.init} has factor {approx.factor}, not --factor {config.factor}"
            )
        start_label = "init"
    else:
        approx = ApproxNet.from_teacher(
            teacher, config.factor or 4, init=config.init_mode, teacher_path=teacher_path,
            fingerprint=fingerprint,
        )  # fmt: skip
        start_label = "untrained"
    approx.to(device)
    factor = approx.factor
    log.info(
        "distilling a factor-%d ApproxNet (%s) of %s for %s on %s (%s): "
        "%d train / %d held-out / %d dev examples",
        factor, "from " + config.init if config.init else config.init_mode + " init", teacher_path, spec.name,
        device, config.dtype, len(train_f), len(held_ex), len(dev_ex),
    )  # fmt: skip

    def quality() -> dict[str, float]:
        return attention_quality(approx, teacher, dev_batches, device=device, dtype=config.dtype)

    qualities: dict[str, Any] = {"split": "dev", "examples": len(dev_ex), start_label: quality()}
    log.info("%s ApproxNet, dev attention: KL %.4f MSE %.6f", start_label, qualities[start_label]["kl"],
             qualities[start_label]["mse"])  # fmt: skip

    def stage_config(name: str, epochs: int, weights: LossWeights) -> StageConfig:
        return StageConfig(
            name=name, epochs=epochs, weights=weights, lr=config.lr, weight_decay=config.weight_decay,
            grad_clip=config.grad_clip, dtype=config.dtype, eval_every=config.eval_every,
            progress=config.progress,
        )  # fmt: skip

    stages: dict[str, Any] = {}
    general_snapshot: ApproxNet | None = None
    if config.general_epochs > 0 and not config.init:
        if config.general_teacher and config.general_teacher != config.teacher:
            general_teacher, _ = load_text_classifier(config.general_teacher)
            general_teacher.to(device).eval()
            general_teacher_path = resolve_model_path(config.general_teacher)
            sizes = ("model_type", "num_layers", "hidden_size", "num_heads", "intermediate_size",
                     "vocab_size")  # fmt: skip
            general_arch, task_arch = teacher_architecture(general_teacher), teacher_architecture(teacher)
            if any(general_arch[k] != task_arch[k] for k in sizes):
                raise SttabtError(
                    f"the general teacher {config.general_teacher} must have the task teacher's architecture "
                    f"and vocabulary ({', '.join(sizes)})"
                )
        else:
            general_teacher, general_teacher_path = teacher, teacher_path
        if config.general_corpus:
            lines = read_corpus(config.general_corpus, limit=config.max_general_examples)
            corpus_name = str(Path(config.general_corpus).resolve())
        else:
            lines = general_lines(train_ex, config.max_general_examples)
            corpus_name = f"{spec.name} train inputs"
        augmenter = GlueLikeAugmenter(lines, SpecialTokens.from_tokenizer(tokenizer), seed=config.seed)

        def general_batches(epoch: int) -> Iterator[Batch]:
            texts = [augmenter(i, epoch) for i in range(len(augmenter))]
            feats = encode(tokenizer, [Example(t, None, 0) for t in texts], config.max_length)
            return length_grouped_batches(feats, config.batch_size, pad_id, seed=config.seed * 7919 + epoch)

        steps = math.ceil(len(lines) / config.batch_size)
        log.info(
            "general stage: %d lines from %s, %d epoch(s)", len(lines), corpus_name, config.general_epochs
        )
        result = run_stage(
            approx, general_teacher, general_batches, steps, held_batches,
            stage_config("general", config.general_epochs, GENERAL_WEIGHTS), device,
        )  # fmt: skip
        stages["general"] = {**result.to_dict(), "corpus": corpus_name, "lines": len(lines),
                             "teacher": general_teacher_path}  # fmt: skip
        approx.approx_config.stage = "general"
        approx.approx_config.history.append(
            {"stage": "general", "teacher": general_teacher_path, "corpus": corpus_name, **result.best}
        )
        if general_teacher is not teacher:
            approx.approx_config.teacher_path = general_teacher_path
            approx.approx_config.teacher_fingerprint = teacher_fingerprint(general_teacher)
        general_snapshot = copy.deepcopy(approx).cpu()
        qualities["general"] = quality()
        log.info("after general distillation, dev attention: KL %.4f MSE %.6f", qualities["general"]["kl"],
                 qualities["general"]["mse"])  # fmt: skip

    if config.epochs > 0:

        def task_batches(epoch: int) -> Iterator[Batch]:
            seed = config.seed * 7919 + 1000 + epoch
            return length_grouped_batches(train_f, config.batch_size, pad_id, seed=seed)

        steps = math.ceil(len(train_f) / config.batch_size)
        result = run_stage(
            approx, teacher, task_batches, steps, held_batches,
            stage_config("task", config.epochs, TASK_WEIGHTS), device,
        )  # fmt: skip
        stages["task"] = {**result.to_dict(), "examples_per_epoch": len(train_f), "teacher": teacher_path}
        approx.approx_config.stage = "task"
        approx.approx_config.history.append({"stage": "task", "teacher": teacher_path, **result.best})
    approx.approx_config.teacher_path = teacher_path
    approx.approx_config.teacher_fingerprint = fingerprint
    final_label = "distilled"
    qualities[final_label] = quality()
    log.info("distilled ApproxNet, dev attention: KL %.4f MSE %.6f", qualities[final_label]["kl"],
             qualities[final_label]["mse"])  # fmt: skip

    shape = approx.cost_shape()
    lengths = torch.tensor([128])
    approx_flops = float(dense_cost(shape, lengths).flops[0])
    teacher_flops = float(dense_cost(HFTextClassifierAdapter(teacher).shape, lengths).flops[0])
    record: dict[str, Any] = {
        "config": asdict(config),
        "task": spec.name,
        "teacher": {"path": teacher_path, "fingerprint": fingerprint, **teacher_architecture(teacher)},
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
        },
        "examples": {"train": len(train_f), "heldout": len(held_ex), "dev": len(dev_ex)},
        "stages": stages,
        "quality": qualities,
        "environment": {
            "device": str(device),
            "dtype": config.dtype,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "output": str(Path(config.output).resolve()),
    }
    record["wall_seconds"] = time.perf_counter() - started
    record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    approx.cpu()
    with atomic_directory(config.output) as tmp:
        approx.write_into(tmp)
        if general_snapshot is not None:
            (tmp / GENERAL_SUBDIR).mkdir()
            general_snapshot.write_into(tmp / GENERAL_SUBDIR)
        atomic_write_json(tmp / LOG_NAME, record)
    log.info("saved the ApproxNet to %s", config.output)
    return record


def summary_line(record: dict[str, Any]) -> str:
    """One line for the terminal: dev attention quality before and after, the cost, the output."""
    q = record["quality"]
    start = "init" if "init" in q else "untrained"
    parts = [f"{record['task']} f={record['approxnet']['factor']}: dev attention KL {q[start]['kl']:.4f}"]
    if "general" in q:
        parts.append(f" -> {q['general']['kl']:.4f} (general)")
    parts.append(
        f" -> {q['distilled']['kl']:.4f}, MSE {q[start]['mse']:.5f} -> {q['distilled']['mse']:.5f} | "
        f"{100 * record['approxnet']['relative_flops_at_128_tokens']:.2f} % of the teacher's FLOPs | "
        f"{record['wall_seconds']:.0f} s -> {record['output']}"
    )
    return "".join(parts)
