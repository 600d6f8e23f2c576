"""Train a learned pruning method, concrete masking (METHODS.md §1.4) or LTP (§2), and save it as a model.

* **concrete**: the backbone, the ApproxNet (from ``sttabt distill`` for this teacher) and one
  ``p_logit`` per layer (10× the learning rate, no weight decay) are trained together on
  task loss + :meth:`ConcreteState.regularizer`; soft masks first, hard masks for the last
  ``hard_fraction`` of the optimisation steps (the masked formulation of :func:`concrete_forward`).
* **ltp**: stage 1 trains the weights and the thresholds with soft masks and the λ penalty (the last
  state is kept, as the reference does); stage 2 freezes the thresholds and fine-tunes the weights with
  hard masks for ``hard_epochs`` epochs.

Both run on the shared loop (:mod:`sttabt.train.loop`): Accelerate, progress, JSON log, determinism for a
seed. Held-out selection scores the *inference* model (hard sets, tokens physically removed on the
runtime) on a seeded slice of train, never on the reported split, which is scored once at the end. The
output is a :class:`~sttabt.api.PrunedClassifier` directory (the backbone in Hugging Face format, the
method state and settings, for concrete the trained ApproxNet re-keyed to the trained backbone) plus
``train_log.json``, written atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sttabt import validate
from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.core import ltp as ltp_core
from sttabt.errors import SttabtError
from sttabt.methods.concrete import (
    ConcreteConfig,
    ConcreteSelector,
    ConcreteState,
    concrete_forward,
    uses_hard_masks,
)
from sttabt.methods.ltp import LTPConfig, LTPSelector, LTPState, ltp_masked_forward
from sttabt.runtime import SparseEncoder, TokenSelector
from sttabt.train.loop import LoopConfig, make_accelerator, steps_per_epoch, train_loop
from sttabt.utils import atomic_directory, atomic_write_json, autocast, set_seed

log = logging.getLogger(__name__)

LOG_NAME = "train_log.json"
METHODS = ("concrete", "ltp")
#: Tasks the STTABT reference clips gradients for (norm 0.5, METHODS.md §1.4); others train unclipped.
CLIP_TASKS = ("stsb", "sst2", "mnli", "qnli", "qqp")
#: Per-method defaults where the spec's recipes differ (§1.4 GLUE recipe; §2 stage 1).
_DEFAULTS = {
    "concrete": {"epochs": 2, "lr": 1e-5, "weight_decay": 5e-2},
    "ltp": {"epochs": 1, "lr": 2e-5, "weight_decay": 0.0},
}
#: Options only one method reads, with the flag a user would have typed.
_ONLY = {"p_init": ("concrete", "--p-init"), "hard_fraction": ("concrete", "--hard-fraction"),
         "approx": ("concrete", "--approx"), "lambda_": ("ltp", "--lambda"),
         "temperature": ("ltp", "--temperature"), "hard_epochs": ("ltp", "--hard-epochs")}  # fmt: skip


@dataclass
class LearnedConfig:
    """One ``sttabt train`` run; ``None`` means the method's default. Saved verbatim in the log."""

    method: str
    model: str
    task: str
    output: str
    approx: str | None = None  # concrete: the ApproxNet distilled from ``model``
    data_dir: str | None = None
    p_init: float | None = None  # concrete (default -1.0)
    hard_fraction: float | None = None  # concrete (default 0.2)
    lambda_: float | None = None  # ltp (default 0.1)
    temperature: float | None = None  # ltp (default 5e-4)
    hard_epochs: int | None = None  # ltp stage 2 (default 1)
    epochs: int | None = None  # concrete: all epochs (2); ltp: stage 1 (1)
    lr: float | None = None  # concrete 1e-5 (p_logits 10x), ltp 2e-5
    weight_decay: float | None = None
    max_grad_norm: float | None = None  # 0.5 for CLIP_TASKS, else 0 (off)
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    max_train_examples: int | None = None
    heldout_fraction: float = 0.1
    max_heldout_examples: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "fp32"
    eval_dev: bool = True
    progress: bool = True

    def validate(self) -> LearnedConfig:
        """Every check that needs no model or data; returns the config with the defaults filled in."""
        if self.method not in METHODS:
            raise SttabtError(f"unknown method {self.method!r} to train; choose one of {', '.join(METHODS)}")
        for name, (owner, flag) in _ONLY.items():
            if getattr(self, name) is not None and self.method != owner:
                raise SttabtError(f"{flag} is for method {owner!r}, not {self.method!r}; remove it")
        if self.method == "concrete" and not self.approx:
            raise SttabtError("method 'concrete' needs --approx DIR (an ApproxNet distilled from --model)")
        filled = dataclasses.replace(self, **self._defaults())
        filled._check_numbers()
        filled.method_config()  # p_init, λ and temperature ranges
        return filled

    def _defaults(self) -> dict[str, Any]:
        out = {k: v for k, v in _DEFAULTS[self.method].items() if getattr(self, k) is None}
        if self.max_grad_norm is None:
            from sttabt.data import get_task

            out["max_grad_norm"] = 0.5 if get_task(self.task).name in CLIP_TASKS else 0.0
        if self.method == "concrete" and self.hard_fraction is None:
            out["hard_fraction"] = ConcreteConfig.hard_fraction
        if self.method == "ltp" and self.hard_epochs is None:
            out["hard_epochs"] = 1
        return out

    def _check_numbers(self) -> None:
        validate.positive_int(self.epochs, "--epochs")
        for name, value in (("--batch-size", self.batch_size), ("--eval-batch-size", self.eval_batch_size)):
            validate.positive_int(value, name)
        validate.max_length(self.max_length, name="--max-length")
        if self.hard_epochs is not None:
            validate.non_negative_int(self.hard_epochs, "--hard-epochs")
        if (
            self.max_train_examples is not None
            and validate.positive_int(self.max_train_examples, "--max-train-examples") < 2
        ):
            raise SttabtError(f"--max-train-examples must be at least 2, got {self.max_train_examples}")
        if self.max_heldout_examples is not None:
            validate.positive_int(self.max_heldout_examples, "--max-heldout-examples")
        validate.fraction(self.heldout_fraction, "--heldout-fraction", high=0.99)
        if not (isinstance(self.lr, int | float) and 0 < self.lr < math.inf):
            raise SttabtError(f"--lr must be a positive number, got {self.lr!r}")
        validate.fraction(self.weight_decay, "--weight-decay", high=math.inf)
        validate.fraction(self.max_grad_norm, "--max-grad-norm", high=math.inf)
        validate.dtype(self.dtype, validate.device(self.device, "--device"), "--dtype")

    def method_config(self) -> ConcreteConfig | LTPConfig:
        """The method's own settings (validated: p_init, λ and temperature out of range fail here)."""
        if self.method == "concrete":
            base = ConcreteConfig()
            p_init = base.p_init if self.p_init is None else self.p_init
            fraction = base.hard_fraction if self.hard_fraction is None else self.hard_fraction
            return ConcreteConfig(p_init=p_init, hard_fraction=fraction).validate()
        base = LTPConfig()
        return LTPConfig(
            lambda_=base.lambda_ if self.lambda_ is None else self.lambda_,
            temperature=base.temperature if self.temperature is None else self.temperature,
        ).validate()


# -- the trained module -------------------------------------------------------------------------------------
class LearnedModule(nn.Module):
    """Backbone + method state (+ ApproxNet): the one module the loop trains, selects and restores."""

    def __init__(self, model: nn.Module, state: nn.Module, approx: nn.Module | None = None):
        super().__init__()
        self.model, self.state, self.approx = model, state, approx
        self.adapter = HFTextClassifierAdapter(model)
        self.predictor = SparseEncoder(approx.adapter) if approx is not None else None

    def forward(self, batch: Mapping[str, torch.Tensor], hard: bool = False) -> dict[str, torch.Tensor]:
        """Logits, the method's regulariser and the soft retention of one training batch."""
        if isinstance(self.state, ConcreteState):
            run = concrete_forward(self.adapter, self.predictor, self.state, batch, hard=hard)
            return {"logits": run.logits, "reg": self.state.regularizer(run.masks),
                    "retention": run.masks.retention().detach()}  # fmt: skip
        cfg = self.state.config
        run = ltp_masked_forward(self.adapter, batch, self.state.thresholds(), hard=hard,
                                 temperature=cfg.temperature, score_length=cfg.score_length)  # fmt: skip
        valid = batch["attention_mask"].bool()
        if hard:  # the kept fraction after each layer; soft: the mean soft mask of the pruning layers
            kept = torch.stack([k.sum(dim=1) for k in run.kept], dim=1).float()
            return {"logits": run.logits, "reg": run.logits.new_zeros(()),
                    "retention": (kept / valid.sum(dim=1, keepdim=True)).mean()}  # fmt: skip
        soft = ltp_core.mask_penalty(run.masks, valid).detach() / max(len(run.masks), 1)
        return {"logits": run.logits, "reg": self.state.regularizer(run, valid), "retention": soft}

    def selector(self) -> TokenSelector:
        """The inference method with the current state: hard sets, tokens physically removed."""
        if isinstance(self.state, ConcreteState):
            cfg = self.state.config
            return ConcreteSelector(self.predictor, self.state.p_logits, self.adapter.num_layers,
                                    p=cfg.p, temperature=cfg.temperature)  # fmt: skip
        cfg = self.state.config
        return LTPSelector(self.state.thresholds().detach(), self.adapter.num_heads, cfg.score_length)


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy for classes, MSE for scores (STS-B), in float32."""
    if regression:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())
    return F.cross_entropy(logits.float(), labels)


# -- the run ------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What every stage shares: the config, the loaded pieces, the encoded data."""

    config: LearnedConfig
    spec: Any
    accelerator: Any
    module: LearnedModule
    wrapped: nn.Module  # the module as Accelerate prepared it (DDP across processes)
    tokenizer: Any
    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    pad_id: int


def train_learned(config: LearnedConfig) -> dict[str, Any]:
    """Train, select on held-out, score dev once, save the :class:`PrunedClassifier`; return the log."""
    started = time.perf_counter()
    config = config.validate()
    run = _setup(config)
    stages = [_concrete_stage(run)] if config.method == "concrete" else _ltp_stages(run)
    dev = _dev_record(run) if config.eval_dev else None
    record = _record(run, stages, dev)
    record["wall_seconds"] = time.perf_counter() - started
    record["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    if run.accelerator.is_main_process:
        save_trained(run.module, run.tokenizer, config, record)
        log.info("saved the trained %s model to %s", config.method, config.output)
    run.accelerator.wait_for_everyone()
    return record


def _setup(config: LearnedConfig) -> _Run:
    """Data first (its errors need no model), then the teacher, its ApproxNet and the method state."""
    from sttabt.data import encode, get_task, load_examples, split_train_heldout

    spec = get_task(config.task)
    accelerator = make_accelerator(config.device, find_unused_parameters=True)
    autocast(accelerator.device, config.dtype)  # refuses fp16 on CPU before any loading
    pool = load_examples(spec.name, "train", config.data_dir, limit=config.max_train_examples)
    train_ex, held_ex = split_train_heldout(pool, config.heldout_fraction, config.seed)
    held_ex = held_ex[: config.max_heldout_examples] if config.max_heldout_examples else held_ex
    set_seed(config.seed)
    model, tokenizer, approx = _load(config, spec)
    layers = HFTextClassifierAdapter(model).num_layers
    method_config = config.method_config()
    state_type = ConcreteState if config.method == "concrete" else LTPState
    state = state_type(layers, method_config)
    module = LearnedModule(model, state, approx).to(accelerator.device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train, heldout = (encode(tokenizer, part, config.max_length) for part in (train_ex, held_ex))
    if accelerator.is_main_process:
        log.info("training %s on %s: %d train / %d held-out examples, %d process(es) on %s, %s",
                 config.method, spec.name, len(train), len(heldout), accelerator.num_processes,
                 accelerator.device, config.dtype)  # fmt: skip
    wrapped = accelerator.prepare_model(module)
    return _Run(config, spec, accelerator, module, wrapped, tokenizer, train, heldout, pad_id)


def _load(config: LearnedConfig, spec: Any) -> tuple[nn.Module, Any, nn.Module | None]:
    """The fine-tuned teacher (refused unless it fits the task) and, for concrete, its ApproxNet."""
    from sttabt.approxnet import ApproxNet
    from sttabt.models import check_task_fit, load_text_classifier

    model, tokenizer = load_text_classifier(config.model)
    check_task_fit(model.config, spec, config.model)
    validate.max_length(config.max_length, model.config, "--max-length")
    approx = ApproxNet.load(config.approx, teacher=model) if config.method == "concrete" else None
    return model, tokenizer, approx


def _loss_fn(run: _Run, hard_at) -> Any:
    """``loss_fn(batch)`` for the loop; ``hard_at(step)`` says whether a step trains with hard masks."""
    step = {"next": 0}
    regression = run.spec.is_regression

    def loss_fn(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hard = hard_at(step["next"])
        step["next"] += 1
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = run.wrapped(inputs, hard=hard)
        task = task_loss(out["logits"], labels, regression)
        return {"loss": task + out["reg"], "task": task.detach(), "reg": out["reg"].detach(),
                "retention": out["retention"], "hard": task.new_tensor(float(hard))}  # fmt: skip

    return loss_fn


def _epoch_batches(run: _Run, offset: int = 0):
    from sttabt.data import batches

    def epoch_batches(epoch: int):
        seed = run.config.seed * 1000 + offset + epoch + 1
        return batches(run.train, run.config.batch_size, run.pad_id, shuffle=True, seed=seed)

    return epoch_batches


def _stage(run: _Run, name: str, epochs: int, groups: list[dict[str, Any]], hard_at,
           *, select: bool, eval_at_start: bool = False, offset: int = 0) -> dict[str, Any]:  # fmt: skip
    """One call of the shared loop: AdamW with a linear decay over the stage, then its record."""
    from transformers import get_linear_schedule_with_warmup

    cfg = run.config
    per_epoch = math.ceil(len(run.train) / cfg.batch_size)
    loop = LoopConfig(name=name, epochs=epochs, batches_per_epoch=per_epoch, dtype=cfg.dtype,
                      max_grad_norm=cfg.max_grad_norm, eval_at_start=eval_at_start,
                      progress=cfg.progress)  # fmt: skip
    steps = steps_per_epoch(loop.batches_per_epoch, run.accelerator.num_processes)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps * epochs)
    result = train_loop(run.accelerator, run.module, _loss_fn(run, hard_at), optimizer,
                        _epoch_batches(run, offset), loop, scheduler=scheduler,
                        evaluate=_evaluator(run) if select else None)  # fmt: skip
    return {"name": name, "epochs": epochs, "steps_per_epoch": steps, "result": result.to_dict()}


def _evaluator(run: _Run):
    """The loop's held-out evaluation (None without a held-out slice: the last state is kept)."""
    return (lambda: heldout_evaluation(run)) if run.heldout else None


def _concrete_stage(run: _Run) -> dict[str, Any]:
    module, cfg = run.module, run.config
    groups = weight_groups([module.model, module.approx], cfg.weight_decay)
    groups.append(module.state.param_group(cfg.lr))
    steps = steps_per_epoch(math.ceil(len(run.train) / cfg.batch_size), run.accelerator.num_processes)
    total = steps * cfg.epochs
    fraction = module.state.config.hard_fraction
    record = _stage(run, "concrete", cfg.epochs, groups,
                    lambda step: uses_hard_masks(step, total, fraction), select=True)  # fmt: skip
    record["hard_from_step"] = total - round(fraction * total)
    return record


def _ltp_stages(run: _Run) -> list[dict[str, Any]]:
    """Stage 1 soft (weights + thresholds, last state kept), stage 2 hard with frozen thresholds."""
    module, cfg = run.module, run.config
    groups = weight_groups([module.model], cfg.weight_decay) + [module.state.param_group(cfg.lr)]
    soft = _stage(run, "LTP stage 1 (soft)", cfg.epochs, groups, lambda step: False, select=False)
    module.state.freeze()
    if cfg.hard_epochs == 0:
        soft["final_evaluation"] = heldout_evaluation(run) if run.heldout else None
        return [soft]
    groups = weight_groups([module.model], cfg.weight_decay)
    hard = _stage(run, "LTP stage 2 (hard)", cfg.hard_epochs, groups, lambda step: True,
                  select=True, eval_at_start=True, offset=cfg.epochs)  # fmt: skip
    return [soft, hard]


def weight_groups(modules: Sequence[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of the trainable weights: decay on matrices, none on biases and norms (< 2 dims)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]  # fmt: skip


# -- evaluation ---------------------------------------------------------------------------------------------
@torch.no_grad()
def heldout_evaluation(run: _Run) -> dict[str, Any]:
    """The inference model (hard sets, physical removal) on the held-out slice: metric and retention.

    Every process scores the whole slice (it is small), so all of them select the same state."""
    from sttabt.data import batches
    from sttabt.metrics import compute_metrics, primary_metric

    module, device = run.module, run.accelerator.device
    module.eval()
    started = time.perf_counter()
    runner, selector = SparseEncoder(module.adapter), module.selector()
    logits, retention = [], []
    for batch in batches(run.heldout, run.config.eval_batch_size, run.pad_id):
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        with autocast(device, run.config.dtype):
            out = runner(batch, selector)
        logits.append(out.logits.float().cpu())
        retention.append(out.retention().cpu())
    scores = torch.cat(logits)
    labels = [f["label"] for f in run.heldout]
    metrics = compute_metrics(run.spec.name, scores[:, 0] if run.spec.is_regression else scores, labels)
    return {"score": metrics[primary_metric(run.spec.name)], "heldout": metrics,
            "heldout_retention": float(torch.cat(retention).mean()),
            "heldout_seconds": time.perf_counter() - started}  # fmt: skip


def _dev_record(run: _Run) -> dict[str, Any]:
    """The one score on the reported split: ``sttabt evaluate``'s code path on the trained model."""
    from sttabt.evaluate import EvalConfig, run_evaluation
    from sttabt.methods import MethodOptions

    module, cfg = run.module, run.config
    extra = {"method_state": module.state.state_tensors(), "method_config": module.state.config.to_dict()}
    if module.approx is not None:
        extra["approxnet"] = module.approx
    options = MethodOptions(p=getattr(module.state.config, "p", 0.1), extra=extra)
    evaluation = EvalConfig(model=cfg.model, task=cfg.task, method=cfg.method, options=options,
                            data_dir=cfg.data_dir, batch_size=cfg.eval_batch_size, max_length=cfg.max_length,
                            device=cfg.device, dtype=cfg.dtype, progress=cfg.progress)  # fmt: skip
    report = run_evaluation(evaluation, model=module.model, tokenizer=run.tokenizer).report()
    module.train()
    return {key: report[key] for key in ("split", "examples", "metrics", "retention", "flops")}


# -- saving -------------------------------------------------------------------------------------------------
def pruned_classifier(module: LearnedModule, method: str, teacher: str | None = None):
    """The trained model as a :class:`PrunedClassifier`: the method state and settings attached, the
    ApproxNet re-keyed to the trained backbone (whose weights changed) so that it loads against it."""
    from sttabt.api import PrunedClassifier
    from sttabt.approxnet import teacher_fingerprint

    model = module.model.cpu().eval()
    approx = module.approx
    if approx is not None:
        approx = approx.cpu().eval()
        old = approx.approx_config
        history = [*old.history, {"stage": f"trained with {method}", "teacher": teacher}]
        approx.approx_config = dataclasses.replace(
            old, teacher_fingerprint=teacher_fingerprint(model), stage=method, history=history
        )
    pruned = PrunedClassifier(model, method=method, approx=approx, p=getattr(module.state.config, "p", 0.1))
    for name, tensor in module.state.state_tensors().items():
        pruned.method_state[name] = nn.Parameter(tensor, requires_grad=False)
    pruned.method_config, pruned.state_method = module.state.config.to_dict(), method
    return pruned


def save_trained(module: LearnedModule, tokenizer: Any, config: LearnedConfig, record: dict[str, Any]):
    """Write the :class:`PrunedClassifier` and the log into a temp dir that replaces ``output`` at once."""
    pruned = pruned_classifier(module, config.method, config.model)
    with atomic_directory(config.output) as tmp:
        pruned.write_into(tmp, tokenizer)
        atomic_write_json(tmp / LOG_NAME, record)


def _record(run: _Run, stages: list[dict[str, Any]], dev: dict[str, Any] | None) -> dict[str, Any]:
    from sttabt.models import resolve_model_path

    cfg = run.config
    return {
        "config": asdict(cfg),
        "method_config": run.module.state.config.to_dict(),
        "model_path": resolve_model_path(cfg.model),
        "task": run.spec.name,
        "examples": {"train": len(run.train), "heldout": len(run.heldout)},
        "stages": stages,
        "selected": stages[-1]["result"].get("best") or stages[-1].get("final_evaluation"),
        "state": {k: v.tolist() for k, v in run.module.state.state_tensors().items()},
        "dev": dev,
        "environment": {
            "processes": run.accelerator.num_processes,
            "device": str(run.accelerator.device),
            "dtype": cfg.dtype,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },  # fmt: skip
        "output": str(Path(cfg.output).resolve()),
    }


def summary_line(record: dict[str, Any]) -> str:
    """One line for the terminal: dev metrics, retention, relative FLOPs, the selected held-out score."""
    dev = record.get("dev")
    dev_txt = "dev not evaluated"
    if dev:
        metrics = " ".join(f"{k}={v:.4f}" for k, v in dev["metrics"].items())
        dev_txt = (f"{dev['split']} {metrics}, retention {dev['retention']:.3f}, "
                   f"relative FLOPs {dev['flops']['relative']:.3f}")  # fmt: skip
    chosen = record.get("selected") or {}
    held = f" | held-out score {chosen['score']:.4f} (epoch {chosen['epoch']:g})" if "score" in chosen else ""
    return (f"{record['config']['method']} {record['task']}: {dev_txt}{held} | "
            f"{record['wall_seconds']:.0f} s -> {record['output']}")  # fmt: skip
