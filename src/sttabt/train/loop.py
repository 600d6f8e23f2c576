"""The one training loop behind ``sttabt finetune`` and ``sttabt distill`` (and later learned pruning).

It owns what every trainer here must get right in the same way:

* **Accelerate**: one process or several (``accelerate launch`` / ``torchrun``); the trained module is
  wrapped for DDP by :meth:`Accelerator.prepare_model`, every process takes every P-th batch of the same
  seeded batch order (the last ``n_batches % P`` batches of an epoch are skipped so that all processes
  step together), losses are summed over processes, and only the main process should write files.
* **Precision**: autocast from :func:`sttabt.utils.autocast` (weights stay fp32; a gradient scaler for
  fp16 on CUDA). Accelerate's own mixed precision is not used: it is a process-wide setting that cannot
  change between two runs in one process.
* **Held-out selection** (METHODS.md pitfall R14): ``evaluate`` scores a held-out slice of *train*; the
  state with the best score is kept and restored at the end; never the reported split.
* **Determinism**: the caller seeds; the loop draws no random numbers of its own, so two runs with the same
  seed and thread count on CPU give bit-identical weights.
* **Progress**: :class:`sttabt.progress.Progress` (a bar on a TTY, a heartbeat line otherwise).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from sttabt.errors import SttabtError
from sttabt.progress import Progress
from sttabt.utils import autocast, resolve_device

log = logging.getLogger(__name__)

Batch = Mapping[str, torch.Tensor]
#: ``loss_fn(batch) -> {"loss": scalar, other terms...}``: the scalar is optimised, all terms are logged.
LossFn = Callable[[Batch], Mapping[str, torch.Tensor]]
#: ``evaluate() -> {"score": higher is better, ...}``: a held-out evaluation, recorded as returned.
EvalFn = Callable[[], dict[str, Any]]


def make_accelerator(device: str, *, find_unused_parameters: bool = False):
    """An ``Accelerator`` on ``device`` (``auto``/``cpu``/``cuda``) that leaves precision to the loop.

    ``find_unused_parameters`` is for modules whose loss leaves some parameters unused (DDP would hang).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    resolved = resolve_device(device)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)]
    try:
        accelerator = Accelerator(cpu=resolved.type == "cpu", kwargs_handlers=handlers)
    except ValueError as exc:  # e.g. a CPU run after a CUDA run in the same process
        raise SttabtError(f"cannot set up Accelerate: {str(exc).splitlines()[0]}") from exc
    if accelerator.mixed_precision != "no":
        raise SttabtError(
            f"Accelerate is configured for {accelerator.mixed_precision} mixed precision; launch without "
            "--mixed_precision and pass --dtype to the command instead"
        )
    return accelerator


@dataclass
class LoopConfig:
    """How one training run steps; ``batches_per_epoch`` counts the batches of all processes together."""

    name: str
    epochs: int
    batches_per_epoch: int
    dtype: str = "fp32"
    max_grad_norm: float = 0.0
    eval_every: int = 0  # steps between extra held-out evaluations inside an epoch (0: none)
    eval_at_start: bool = False  # the starting state is a candidate too (a stage never makes it worse)
    progress: bool = True


@dataclass
class LoopResult:
    """What happened: per-epoch means, every evaluation, the kept one, and the time spent."""

    steps: int = 0
    examples: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0  # optimisation steps only (no evaluations)
    examples_per_s: float = 0.0
    best: dict[str, Any] = field(default_factory=dict)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steps_per_epoch(batches_per_epoch: int, processes: int) -> int:
    """Optimiser steps each process takes per epoch; refuses a split that leaves a process idle."""
    steps = batches_per_epoch // processes
    if steps == 0:
        raise SttabtError(f"{batches_per_epoch} batches per epoch are fewer than the {processes} processes")
    return steps


def train_loop(
    accelerator: Any,
    module: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    epoch_batches: Callable[[int], Iterable[Batch]],
    config: LoopConfig,
    *,
    evaluate: EvalFn | None = None,
    scheduler: Any = None,
    start_evaluation: dict[str, Any] | None = None,
) -> LoopResult:
    """Train ``module`` (the unwrapped parameters ``optimizer`` updates) and leave it at its best state.

    ``loss_fn`` runs the (possibly DDP-wrapped) forward; ``epoch_batches(epoch)`` (0-based) yields the
    same shuffled batches on every process. Without ``evaluate`` the last state is kept.
    ``start_evaluation``: what ``evaluate`` would return for the starting state, when the caller already
    knows it (a stage that starts where another ended), so that ``eval_at_start`` costs nothing.
    """
    trainer = _Trainer(accelerator, module, loss_fn, optimizer, scheduler, config, evaluate)
    return trainer.run(epoch_batches, start_evaluation)


class _Trainer:
    """The state of one :func:`train_loop` call, split into small steps."""

    def __init__(self, accelerator, module, loss_fn, optimizer, scheduler, config: LoopConfig, evaluate):
        self.acc, self.module, self.loss_fn = accelerator, module, loss_fn
        self.optimizer, self.scheduler, self.config, self.evaluate_fn = optimizer, scheduler, config, evaluate
        self.device = accelerator.device
        self.steps = steps_per_epoch(config.batches_per_epoch, accelerator.num_processes)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.dtype == "fp16")
        self.result = LoopResult()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_score = -math.inf
        self.global_step = 0

    def run(
        self, epoch_batches: Callable[[int], Iterable[Batch]], known: dict[str, Any] | None
    ) -> LoopResult:
        start = time.perf_counter()
        if self.config.eval_at_start:
            self._evaluate(0.0, known)
        total = self.steps * self.config.epochs
        show = self.config.progress and self.acc.is_local_main_process
        with Progress(total, self.config.name, enabled=show) as progress:
            for epoch in range(self.config.epochs):
                record = self._epoch(epoch, epoch_batches(epoch), progress)
                self.result.epochs.append(record)
                record["evaluation"] = self._evaluate(float(epoch + 1))
        result = self.result
        result.seconds = time.perf_counter() - start
        result.examples = sum(e["train_examples"] for e in result.epochs)
        result.examples_per_s = result.examples / result.train_seconds if result.train_seconds > 0 else 0.0
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)
        return result

    def _epoch(self, epoch: int, batches: Iterable[Batch], progress: Progress) -> dict[str, Any]:
        rank, procs = self.acc.process_index, self.acc.num_processes
        sums: dict[str, torch.Tensor] = {}
        seen = torch.zeros((), dtype=torch.float64, device=self.device)
        taken = 0
        seconds = 0.0
        self.module.train()
        for index, raw in enumerate(batches):
            if taken >= self.steps:
                break
            if index % procs != rank:
                continue
            step_start = time.perf_counter()
            batch = {k: v.to(self.device) for k, v in raw.items() if v is not None}
            terms = self._step(batch)
            n = int(batch_size_of(batch))
            for key, value in terms.items():
                sums[key] = sums.get(key, torch.zeros_like(seen)) + value.detach().double() * n
            seen += n
            taken += 1
            self.global_step += 1
            seconds += time.perf_counter() - step_start
            self.result.train_seconds += time.perf_counter() - step_start
            rate = seen.item() * procs / max(seconds, 1e-9)
            progress.update(1, loss=float(terms["loss"].detach()), ex_s=f"{rate:.1f}")
            if (
                self.config.eval_every
                and self.global_step % self.config.eval_every == 0
                and taken < self.steps
            ):
                self._evaluate(epoch + taken / self.steps)
                self.module.train()
        self.result.steps = self.global_step
        return self._epoch_record(epoch, taken, seen, sums, seconds)

    def _step(self, batch: dict[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        with autocast(self.device, self.config.dtype):
            terms = self.loss_fn(batch)
        loss = terms["loss"]
        if not torch.isfinite(loss.detach()):
            raise SttabtError(
                f"{self.config.name}: training diverged at step {self.global_step} (loss {float(loss)}); "
                "lower --lr or use --dtype fp32"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.acc.backward(self.scaler.scale(loss))
        if self.config.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return terms

    def _epoch_record(self, epoch: int, taken: int, seen, sums: dict[str, torch.Tensor], seconds: float):
        keys = sorted(sums)
        totals = self.acc.reduce(torch.stack([seen, *(sums[k] for k in keys)]), reduction="sum")
        examples = float(totals[0].item())
        means = {f"train_{k}": float(totals[i + 1].item()) / max(examples, 1.0) for i, k in enumerate(keys)}
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "steps": taken,
            "train_examples": int(examples),
            "train_seconds": seconds,
            "train_examples_per_s": examples / seconds if seconds > 0 else float("nan"),
            **means,
        }
        if self.scheduler is not None:
            record["lr_end"] = float(self.scheduler.get_last_lr()[0])
        if self.acc.is_main_process:
            terms = ", ".join(f"{k[6:]} {v:.4f}" for k, v in means.items())
            log.info("%s: epoch %d/%d, %s, %.1f examples/s", self.config.name, epoch + 1,
                     self.config.epochs, terms, record["train_examples_per_s"])  # fmt: skip
        return record

    def _evaluate(self, epoch: float, known: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Score the current state; keep a copy when it is the best so far (first best wins)."""
        if self.evaluate_fn is None:
            return None
        was_training = self.module.training
        scores = dict(known) if known is not None else self.evaluate_fn()
        record = {"epoch": epoch, "step": self.global_step, **scores}
        self.module.train(was_training)
        self.result.evaluations.append(record)
        improved = record["score"] > self.best_score
        if improved:
            self.best_score = record["score"]
            self.result.best = dict(record)
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()
            }
        if self.acc.is_main_process:
            shown = _figures(record) or f"score {record['score']:.4f}"
            log.info("%s: step %d held-out %s%s", self.config.name, self.global_step, shown,
                     " (best)" if improved else "")  # fmt: skip
        return record


def batch_size_of(batch: Batch) -> int:
    """Examples in a batch: the first dimension of its inputs (token ids or pixels)."""
    inputs = batch.get("input_ids", batch.get("pixel_values"))
    if inputs is None:
        raise SttabtError("a training batch needs input_ids or pixel_values")
    return int(inputs.shape[0])


def _figures(record: Mapping[str, Any]) -> str:
    """``heldout_kl 0.4123, accuracy 0.9000``: the quality figures of an evaluation (nested ones too)."""
    hidden = ("step", "epoch", "score")
    parts = []
    for key, value in record.items():
        if isinstance(value, Mapping):
            parts.append(_figures(value))
        elif _is_number(value) and key not in hidden and not key.endswith(("_seconds", "_per_s")):
            parts.append(f"{key} {value:.4f}")
    return ", ".join(p for p in parts if p)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
