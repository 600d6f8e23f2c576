"""Wall-clock latency of the unmodified model, the runtime's dense path and a pruning method.

FLOPs say what a method *could* save; this module measures what it *does* save on a given device. The
three variants run in one process on identical inputs, interleaved round-robin (with the order rotated
every round) so that a noisy neighbour or thermal drift affects all of them alike:

* ``hf_dense``: the unmodified Hugging Face forward, ``model(**batch).logits`` (the baseline);
* ``runtime_dense``: :class:`~sttabt.runtime.SparseEncoder` with the dense selector (the runtime's own
  overhead; note it already computes only CLS in the last layer; ``--skip-runtime-dense`` leaves it out);
* ``method``: the runtime with the method's selector. Everything a method does per batch (for ABT the
  ApproxNet forward and the construction of every token set, which happen in ``prepare()``) runs inside
  the timed runtime call; nothing is precomputed outside it.

Inputs are random token ids with CLS first. By default every sample has real length ``seq_len`` (no
padding); ``length_jitter = j`` draws each real length uniformly from ``[ceil((1-j)·seq_len), seq_len]``
and right-pads to the longest sample, as dynamic padding would. With ``task`` they are real examples
instead (:func:`task_inputs`), so that a trained ApproxNet chooses the sets it would choose on real text.
FLOPs always use the real lengths.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sttabt import validate
from sttabt.adapters.base import EncoderAdapter
from sttabt.adapters.hf_vision import BASES
from sttabt.adapters.lookup import adapter_for
from sttabt.core.flops import dense_cost, dense_counts, macs_by_kind
from sttabt.errors import SttabtError
from sttabt.methods.registry import MethodOptions, build_selector, validate_method
from sttabt.provenance import CPU_FEATURES, device_info, load_average, versions  # noqa: F401  (re-exported)
from sttabt.runtime import SparseEncoder
from sttabt.utils import atomic_write_json, autocast, inference, resolve_device, set_seed

log = logging.getLogger(__name__)

RANDOM_PREFIX = "random:"
#: Randomly initialised ``BertForSequenceClassification`` shapes for ``--model random:<name>``.
RANDOM_SHAPES: dict[str, dict[str, int]] = {
    "bert-base": {
        "num_hidden_layers": 12,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "minilm": {
        "num_hidden_layers": 6,
        "hidden_size": 384,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
    },
}
#: Randomly initialised ``ViTForImageClassification`` shapes (224x224, patch 16, 1000 classes).
RANDOM_VISION_SHAPES: dict[str, dict[str, int]] = {
    "deit-tiny": {"num_hidden_layers": 12, "hidden_size": 192, "num_attention_heads": 3,
                  "intermediate_size": 768},
    "deit-small": {"num_hidden_layers": 12, "hidden_size": 384, "num_attention_heads": 6,
                   "intermediate_size": 1536},
    "vit-base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12,
                 "intermediate_size": 3072},
}  # fmt: skip
RANDOM_VOCAB = 30522
RANDOM_NUM_LABELS = 2
#: [CLS] of the BERT uncased vocabulary, used when there is no tokenizer to ask.
BERT_CLS_ID = 101
#: Variants in the order of the first round; later rounds rotate it.
VARIANTS = ("hf_dense", "runtime_dense", "method")
_ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")


@dataclass
class BenchConfig:
    """One benchmark: a model, a method with its options, an input shape and a measurement protocol.

    ``model_config`` (a ``transformers`` config) builds a randomly initialised classifier of that config
    instead of loading ``model``; ``model`` is then only a label. Tests use it for tiny models.
    """

    model: str
    method: str
    keep: float | list[float] | str | None = None
    schedule: str = "constant"
    approx: str | None = None
    p: float = 0.1
    batch_size: int = 1
    seq_len: int = 128
    length_jitter: float = 0.0
    device: str = "auto"
    dtype: str = "fp32"
    warmup: int = 3
    repeats: int = 10
    threads: int | None = None
    seed: int = 0
    task: str | None = None  # real examples of this text task's split instead of random ids
    split: str = "dev"
    data_dir: str | None = None
    output: str | None = None
    breakdown: bool = False
    runtime_dense: bool = True  # also time the runtime's own dense pass (its overhead over HF)
    model_config: Any = field(default=None, repr=False)

    def method_options(self) -> MethodOptions:
        return MethodOptions(keep=self.keep, schedule=self.schedule, approx=self.approx, p=self.p)

    def random_approx(self) -> tuple[int, int | None] | None:
        """``(F, H)`` of ``--approx random[:F[xH]]``: a random-init factor-F ApproxNet with H heads (default:
        the model's), for timing without training; None for a directory."""
        if self.approx is None or not (self.approx == "random" or self.approx.startswith(RANDOM_PREFIX)):
            return None
        text = self.approx[len(RANDOM_PREFIX) :] if self.approx.startswith(RANDOM_PREFIX) else "4"
        factor, has_heads, heads = text.partition("x")
        bad_heads = has_heads and (not heads.isdigit() or int(heads) < 1)
        if not factor.isdigit() or int(factor) < 1 or bad_heads:
            raise SttabtError(
                "--approx random:F[xH] needs a positive integer factor F (and head count H), "
                f"got {self.approx!r}"
            )
        return int(factor), int(heads) if heads else None

    def validate(self) -> None:
        """Cheap checks before any model is loaded, so a typo fails in milliseconds with a clear message."""
        validate_method(self.method, self.method_options(), strict=True)
        self.random_approx()
        validate.positive_int(self.batch_size, "--batch-size")
        validate.max_length(self.seq_len, name="--seq-len")
        if not 0.0 <= self.length_jitter < 1.0:
            raise SttabtError(f"--length-jitter must be in [0, 1), got {self.length_jitter}")
        validate.non_negative_int(self.warmup, "--warmup")
        validate.positive_int(self.repeats, "--repeats")
        if self.threads is not None:
            validate.positive_int(self.threads, "--threads")
        validate.dtype(self.dtype, validate.device(self.device, "--device"), "--dtype")
        if self.task is not None:
            self._validate_task()
        if self.model_config is None and self.model.startswith(RANDOM_PREFIX):
            name = self.model[len(RANDOM_PREFIX) :]
            if name not in RANDOM_SHAPES and name not in RANDOM_VISION_SHAPES:
                raise SttabtError(
                    f"unknown random model {self.model!r}; choose one of "
                    + ", ".join(RANDOM_PREFIX + n for n in (*RANDOM_SHAPES, *RANDOM_VISION_SHAPES))
                )

    def _validate_task(self) -> None:
        from sttabt.data import check_split, get_task

        spec = get_task(self.task)
        if spec.is_image:
            raise SttabtError(
                f"bench --task takes a text task, got the image task {spec.name!r} (time real images with a "
                "sweep's [latency] table)"
            )
        if self.length_jitter:
            raise SttabtError("--length-jitter draws random lengths; with --task every sample has --seq-len")
        if self.model_config is None and self.model.startswith(RANDOM_PREFIX):
            raise SttabtError(f"--task needs a model with a tokenizer, not {self.model!r}")
        check_split(spec.name, self.split)

    def command_line(self) -> str:
        """A canonical ``sttabt bench`` invocation that reproduces this benchmark."""
        args = ["sttabt", "bench", "--model", self.model, "--method", self.method]
        if self.keep is not None:
            keep = self.keep
            args += ["--keep", ",".join(str(k) for k in keep) if isinstance(keep, list) else str(keep)]
        if self.method == "topk":
            args += ["--schedule", self.schedule]
        if self.approx:
            args += ["--approx", self.approx, "--p", str(self.p)]
        args += ["--batch-size", str(self.batch_size), "--seq-len", str(self.seq_len)]
        if self.length_jitter:
            args += ["--length-jitter", str(self.length_jitter)]
        args += ["--device", self.device, "--dtype", self.dtype]
        args += ["--warmup", str(self.warmup), "--repeats", str(self.repeats)]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        args += ["--seed", str(self.seed)]
        if self.task is not None:
            args += ["--task", self.task, "--split", self.split]
            if self.data_dir is not None:
                args += ["--data-dir", self.data_dir]
        if self.breakdown:
            args.append("--breakdown")
        if not self.runtime_dense:
            args.append("--skip-runtime-dense")
        if self.output:
            args += ["--output", str(self.output)]
        return shlex.join(args)


# -- model and inputs ---------------------------------------------------------------------------------------
def build_model(config: BenchConfig) -> tuple[torch.nn.Module, int, Any]:
    """The classifier to time (in eval mode, on CPU), the id to put first in every sample and the
    tokenizer (None for random or image models)."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    tokenizer = None
    vision = _vision_model(config)
    if vision is not None:
        return vision.eval(), 0, None
    if config.model_config is not None:
        model = AutoModelForSequenceClassification.from_config(config.model_config)
    elif config.model.startswith(RANDOM_PREFIX):
        shape = RANDOM_SHAPES[config.model[len(RANDOM_PREFIX) :]]
        model = BertForSequenceClassification(
            BertConfig(vocab_size=RANDOM_VOCAB, num_labels=RANDOM_NUM_LABELS, **shape)
        )
    else:
        from sttabt.models import load_text_classifier

        model, tokenizer = load_text_classifier(config.model)
    cls_id = getattr(tokenizer, "cls_token_id", None)
    if cls_id is None:
        cls_id = BERT_CLS_ID if model.config.vocab_size > 1000 else 1
    return model.eval(), int(cls_id), tokenizer


def _vision_model(config: BenchConfig) -> torch.nn.Module | None:
    """An image classifier to time: ``random:deit-small`` etc., ``timm:<arch>`` (random weights: timing
    only), or an HF/timm image-classifier directory; None for text models."""
    import transformers

    from sttabt.models import TIMM_PREFIX, load_image_classifier, timm_directory

    name = config.model
    if config.model_config is not None:
        is_image = getattr(config.model_config, "model_type", None) in ("vit", "deit")
        return transformers.ViTForImageClassification(config.model_config) if is_image else None
    if name.startswith(RANDOM_PREFIX) and name[len(RANDOM_PREFIX) :] in RANDOM_VISION_SHAPES:
        shape = RANDOM_VISION_SHAPES[name[len(RANDOM_PREFIX) :]]
        return transformers.ViTForImageClassification(transformers.ViTConfig(num_labels=1000, **shape))
    if name.startswith(TIMM_PREFIX):
        return load_image_classifier(name, random_weights=True)[0]
    if timm_directory(name) is not None:
        return load_image_classifier(name)[0]
    config_file = Path(name) / "config.json"
    saved = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if saved.get("model_type") in BASES:
        return load_image_classifier(name)[0]
    return None


def image_inputs(adapter: Any, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Standard-normal ``pixel_values`` of the model's image size (every token is real)."""
    height, width = adapter.image_size
    pixels = torch.randn(batch_size, adapter.image_channels, height, width, generator=generator)
    return {"pixel_values": pixels}


def dense_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The unmodified model's logits: Hugging Face models take keywords, timm models the pixels."""
    if hasattr(model, "config"):
        return model(**batch).logits
    return model(batch["pixel_values"])


def max_sequence_length(model_config: Any) -> int:
    """The longest input the model's position embeddings allow (RoBERTa offsets positions by pad+1)."""
    limit = int(getattr(model_config, "max_position_embeddings", 10**9))
    if getattr(model_config, "model_type", None) in _ROBERTA_LIKE:
        limit -= int(getattr(model_config, "pad_token_id", 1) or 0) + 1
    return limit


def make_inputs(
    config: BenchConfig, vocab_size: int, cls_id: int, pad_id: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Random ids, CLS first, right padding; real lengths ``seq_len`` unless ``length_jitter`` > 0."""
    batch, seq_len = config.batch_size, config.seq_len
    if config.length_jitter > 0:
        shortest = max(2, math.ceil((1.0 - config.length_jitter) * seq_len))
        lengths = torch.randint(shortest, seq_len + 1, (batch,), generator=generator)
    else:
        lengths = torch.full((batch,), seq_len, dtype=torch.long)
    width = int(lengths.max())
    # Avoid the low ids where BERT/RoBERTa vocabularies keep special tokens.
    low = min(1000, vocab_size // 2)
    ids = torch.randint(low, vocab_size, (batch, width), generator=generator)
    if low <= pad_id < vocab_size:  # RoBERTa derives positions from ids != pad: real tokens must not be pad
        ids = torch.where(ids == pad_id, torch.full_like(ids, low if pad_id != low else low + 1), ids)
    ids[:, 0] = cls_id
    mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    ids = torch.where(mask, ids, torch.full_like(ids, pad_id))
    return {"input_ids": ids, "attention_mask": mask.long()}


def task_inputs(config: BenchConfig, tokenizer: Any, examples: list[Any]) -> dict[str, torch.Tensor]:
    """``batch_size`` of the task's ``examples``, drawn with ``seed`` from those at least ``seq_len``
    tokens long and truncated to it: real text at the same shape as random ids (no padding)."""
    from sttabt.data import collate, encode, get_task

    if tokenizer is None:
        raise SttabtError(f"--task needs a model with a tokenizer; {config.model} has none")
    features = encode(tokenizer, examples, config.seq_len)
    full = [feature for feature in features if len(feature["input_ids"]) == config.seq_len]
    if len(full) < config.batch_size:
        longest = max((len(feature["input_ids"]) for feature in features), default=0)
        raise SttabtError(
            f"{get_task(config.task).name}/{config.split} has {len(full)} examples of at least "
            f"{config.seq_len} tokens, fewer than --batch-size {config.batch_size} (its longest has "
            f"{longest}); lower --seq-len"
        )
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(config.seed))
    chosen = [full[int(i)] for i in order[: config.batch_size]]
    batch = collate(chosen, int(getattr(tokenizer, "pad_token_id", 0) or 0))
    batch.pop("labels", None)
    return batch


def _method_options(config: BenchConfig, model: torch.nn.Module) -> MethodOptions:
    """The method's options, with a freshly drawn ApproxNet (seeded) for ``--approx random[:F[xH]]``."""
    options = config.method_options()
    spec = config.random_approx()
    if spec is not None:
        from sttabt.approxnet import ApproxNet

        torch.manual_seed(config.seed + 1)
        factor, heads = spec
        options.extra["approxnet"] = ApproxNet.from_teacher(model, factor, heads=heads, fingerprint="random")
    return options


# -- measurement --------------------------------------------------------------------------------------------
def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _stats(samples: list[float]) -> dict[str, Any]:
    values = np.asarray(samples, dtype=np.float64)
    return {
        "median_ms": float(np.median(values)),
        "p10_ms": float(np.percentile(values, 10)),
        "p90_ms": float(np.percentile(values, 90)),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
        "samples_ms": [round(float(v), 4) for v in values],
    }


def measure(
    calls: dict[str, Callable[[], Any]],
    warmup: int,
    repeats: int,
    sync: Callable[[], None],
    desc: str | None = None,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time each call ``warmup + repeats`` times, round-robin, rotating the order; returns ms and outputs.

    With ``desc``, progress is shown between rounds (never inside a timed call).
    """
    from sttabt.progress import track

    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, Any] = {}
    gc.collect()
    rounds = range(warmup + repeats)
    for round_ in track(rounds, desc or "timing", unit="round", enabled=desc is not None):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            out = calls[name]()
            sync()
            elapsed = (time.perf_counter() - start) * 1e3
            if round_ >= warmup:
                samples[name].append(elapsed)
            outputs[name] = out
    return samples, outputs


# Moved to sttabt.provenance (shared with results.json); the old names stay importable from here.
_load_average = load_average
_versions = versions


def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    """Time HF dense, runtime dense and the method on the same inputs; write JSON when ``output`` is set."""
    config.validate()
    device = resolve_device(config.device)
    autocast(device, config.dtype)  # refuses fp16 on CPU before the model is built
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        result = _run(config, device)
    finally:
        torch.set_num_threads(previous_threads)
    if config.output:
        atomic_write_json(config.output, result)  # the command prints "wrote ..." once
    return result


@dataclass
class _Setup:
    """Everything one benchmark times: the model and its adapter, the inputs and the calls by variant."""

    model: torch.nn.Module
    adapter: EncoderAdapter
    batch: dict[str, torch.Tensor]
    calls: dict[str, Callable[[], Any]]
    real_lengths: torch.Tensor  # (B,) tokens per sample (images: prefix + patches)


def _setup(config: BenchConfig, device: torch.device) -> _Setup:
    set_seed(config.seed)
    examples = None
    if config.task is not None:  # read before the model loads, so that a bad data path fails at once
        from sttabt.data import load_examples

        examples = load_examples(config.task, config.split, config.data_dir)
    model, cls_id, tokenizer = build_model(config)
    adapter = adapter_for(model)
    image = adapter.image_size is not None
    limit = 10**9 if image else max_sequence_length(model.config)
    if config.seq_len > limit:
        raise SttabtError(f"--seq-len {config.seq_len} exceeds the model's maximum of {limit} positions")
    model.to(device)
    selector = build_selector(config.method, adapter, _method_options(config, model))
    encoder = SparseEncoder(adapter)
    generator = torch.Generator().manual_seed(config.seed)
    if image:
        batch = image_inputs(adapter, config.batch_size, generator)
    elif config.task is not None:
        batch = task_inputs(config, tokenizer, examples)
    else:
        pad_id = int(getattr(model.config, "pad_token_id", 0) or 0)
        batch = make_inputs(config, int(model.config.vocab_size), cls_id, pad_id, generator)
    batch = {key: value.to(device) for key, value in batch.items()}
    with torch.no_grad():
        lengths = adapter.valid_mask(batch, adapter.embed(batch)).sum(dim=1).cpu()
    calls: dict[str, Callable[[], Any]] = {"hf_dense": lambda: dense_logits(model, batch)}
    if config.runtime_dense:
        dense_selector = build_selector("dense", adapter)
        calls["runtime_dense"] = lambda: encoder(batch, dense_selector)
    calls["method"] = lambda: encoder(batch, selector)
    return _Setup(model, adapter, batch, calls, lengths)


def _run(config: BenchConfig, device: torch.device) -> dict[str, Any]:
    setup = _setup(config, device)
    load_start = _load_average()
    log.info(
        "timing %s / %s on %s (%s), batch %d x %d tokens, %d warm-up + %d rounds",
        config.model, config.method, device, config.dtype, config.batch_size, int(setup.real_lengths.max()),
        config.warmup, config.repeats,
    )  # fmt: skip
    with inference(device, config.dtype):
        samples, outputs = measure(
            setup.calls, config.warmup, config.repeats, _synchronizer(device), desc=f"bench {config.method}"
        )
        breakdown = None
        if config.breakdown:  # up to 3 profiled calls each, fewer where one call takes seconds
            slowest = max(float(np.median(times)) for times in samples.values())
            rounds = max(1, min(3, config.repeats, int(3000.0 / max(slowest, 1e-3))))
            breakdown = profile_breakdown(setup.calls, device, rounds=rounds)
    result = _describe(config, device, setup)
    result["load_average"] = {"start": load_start, "end": _load_average()}
    result.update(_speed(setup, samples, outputs))
    if breakdown is not None:
        method_out = outputs["method"]
        result["breakdown"] = _with_macs(breakdown, setup.adapter, setup.real_lengths, method_out)
    result["command"] = config.command_line()
    return result


def _describe(config: BenchConfig, device: torch.device, setup: _Setup) -> dict[str, Any]:
    """What was measured, where and how (everything but the timings)."""
    shape, model_cfg, real = setup.adapter.shape, getattr(setup.model, "config", None), setup.real_lengths
    return {
        "model": config.model,
        "dense_reference": "HF dense" if model_cfg is not None else "timm dense",
        "model_shape": {
            "num_layers": shape.num_layers,
            "hidden_size": shape.hidden_size,
            "intermediate_size": shape.intermediate_size,
            "num_heads": shape.num_heads,
            "model_type": getattr(model_cfg, "model_type", None),
            "attn_implementation": getattr(model_cfg, "_attn_implementation", None),
        },
        "method": config.method,
        "options": {"keep": config.keep, "schedule": config.schedule, "approx": config.approx, "p": config.p},
        "batch_size": config.batch_size,
        "seq_len": None if "pixel_values" in setup.batch else config.seq_len,
        "inputs": _inputs_description(config, setup) | {
            "real_length_min": int(real.min()),
            "real_length_mean": float(real.float().mean()),
            "real_length_max": int(real.max()),
        },
        "device": str(device),
        "device_info": device_info(device),
        "dtype": config.dtype,
        "threads": torch.get_num_threads(),
        "versions": _versions(),
        "warmup": config.warmup,
        "repeats": config.repeats,
        "seed": config.seed,
        "variants": list(setup.calls),
        "protocol": (
            "same process and inputs; round-robin over variants with the order rotated each round; "
            "time.perf_counter around each call"
            + (" with torch.cuda.synchronize before and after" if device.type == "cuda" else "")
            + (
                "; torch.inference_mode"
                if config.dtype == "fp32"
                else f"; torch.no_grad and {config.dtype} autocast (weights stay fp32, cast once per context)"
            )
        ),
    }


def _inputs_description(config: BenchConfig, setup: _Setup) -> dict[str, Any]:
    if "pixel_values" in setup.batch:
        return {"pixel_values": "standard normal", "image_size": list(setup.adapter.image_size),
                "patch_size": list(setup.adapter.patch_size), "prefix_tokens": setup.adapter.prefix_tokens}
    if config.task is not None:
        return {"token_ids": f"real examples of {config.task}/{config.split}, at least --seq-len tokens, "
                "truncated to it, drawn with --seed", "task": config.task, "split": config.split,
                "padded_length": int(setup.batch["input_ids"].shape[1])}  # fmt: skip
    return {"token_ids": "uniform random, CLS first, right padding", "length_jitter": config.length_jitter,
            "padded_length": int(setup.batch["input_ids"].shape[1])}  # fmt: skip


def _speed(setup: _Setup, samples: dict[str, list[float]], outputs: dict[str, Any]) -> dict[str, Any]:
    """Timings, speed-up against HF dense, the FLOPs-ideal speed-up and the logit checks."""
    timings = {name: _stats(samples[name]) for name in setup.calls}
    hf_ms, method_ms = timings["hf_dense"]["median_ms"], timings["method"]["median_ms"]
    method_out, dense_out = outputs["method"], outputs.get("runtime_dense")
    dense_flops = float(dense_cost(setup.adapter.shape, setup.real_lengths.cpu()).flops.mean())
    method_flops = float(method_out.cost.flops.mean())
    speedup, ideal = hf_ms / method_ms, dense_flops / method_flops
    hf_logits = outputs["hf_dense"].float()
    runtime_ms = timings["runtime_dense"]["median_ms"] if dense_out is not None else None
    return {
        "timings": timings,
        "speedup": speedup,
        "speedup_vs_runtime_dense": None if runtime_ms is None else runtime_ms / method_ms,
        "runtime_overhead": None if runtime_ms is None else runtime_ms / hf_ms,
        "flops": {
            "dense_per_example": dense_flops,
            "per_example": method_flops,
            "relative": method_flops / dense_flops,
            "runtime_dense_per_example": None if dense_out is None else float(dense_out.cost.flops.mean()),
        },
        "ideal_speedup": ideal,
        "efficiency": speedup / ideal,
        "retention": float(method_out.retention().mean()),
        "logit_check": {
            "runtime_dense_vs_hf_max_abs_diff": (
                None if dense_out is None else float((dense_out.logits.float() - hf_logits).abs().max())
            ),
            "method_vs_hf_max_abs_diff": float((method_out.logits.float() - hf_logits).abs().max()),
        },
        "breakdown": None,
    }


# -- where the time goes -------------------------------------------------------------------------------------
#: Operator names (without the ``aten::`` prefix) by the kind of work they do.
LINEAR_OPS = frozenset({"addmm", "mm", "_mkl_linear", "mkldnn_linear", "_addmm_activation"})
ATTENTION_OPS = frozenset({
    "bmm", "baddbmm", "_softmax", "_softmax_out",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_efficient_attention_forward", "_flash_attention_forward",
})  # fmt: skip


def op_kind(name: str) -> str:
    """``linear`` (projection/FFN GEMMs), ``attention`` (QKᵀ, softmax, A·V) or ``other``."""
    short = name.split("::", 1)[-1]
    if short in LINEAR_OPS:
        return "linear"
    if short in ATTENTION_OPS:
        return "attention"
    return "other"


def profile_breakdown(
    calls: dict[str, Callable[[], Any]], device: torch.device, rounds: int = 3
) -> dict[str, dict[str, Any]]:
    """Mean self time per call by kind of operator, over ``rounds`` profiled calls of each variant.

    Milliseconds of CPU time (device time on CUDA). The profiler adds a few microseconds per operator,
    so read the split and the ratios between variants; take latencies from the timed rounds.
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    result: dict[str, dict[str, Any]] = {}
    for name in calls:
        with profile(activities=activities) as prof:
            for _ in range(rounds):
                calls[name]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        totals = {"linear": 0.0, "attention": 0.0, "other": 0.0}
        operators = 0
        for event in prof.key_averages():
            if not event.key.startswith("aten::"):
                continue
            micros = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
            totals[op_kind(event.key)] += micros / 1e3 / rounds
            operators += event.count
        result[name] = {f"{kind}_ms": round(ms, 4) for kind, ms in totals.items()}
        result[name]["aten_ops"] = operators // rounds
    result["profiled_calls"] = rounds  # type: ignore[assignment]
    return result


def _with_macs(breakdown: dict, adapter: EncoderAdapter, real_lengths: torch.Tensor, method_out: Any) -> dict:
    """Add MACs by kind and the *linear-only* speed-up, ideal and efficiency of the method over HF dense."""
    lengths = real_lengths.cpu()
    shape = adapter.shape
    dense = macs_by_kind(shape, dense_counts(lengths, shape.num_layers, readout_last=False))
    method = macs_by_kind(shape, method_out.counts.cpu())
    for name, macs in (("hf_dense", dense), ("method", method)):
        breakdown[name].update({f"{kind}_macs": float(value.mean()) for kind, value in macs.items()})
    hf, ours = breakdown["hf_dense"], breakdown["method"]
    if ours["linear_ms"] > 0 and ours["linear_macs"] > 0:
        speedup = hf["linear_ms"] / ours["linear_ms"]
        ideal = hf["linear_macs"] / ours["linear_macs"]
        breakdown["linear_speedup"] = speedup
        breakdown["linear_ideal_speedup"] = ideal
        breakdown["linear_efficiency"] = speedup / ideal
    breakdown["note"] = (
        "mean self time per call by operator kind over profiled calls (profiler overhead included); "
        "method MACs are the encoder's own (a method's overhead, e.g. an ApproxNet, is timed but not in "
        "its MACs here)"
    )
    return breakdown


def format_summary(result: dict[str, Any]) -> str:
    """A few human-readable lines about one benchmark result."""
    t = result["timings"]
    options = result["options"]
    keep = "" if options.get("keep") is None else f" keep={options['keep']}"
    device = f"{result['device']} ({result['device_info']['name']}) {result['dtype']}"
    inputs = result["inputs"]
    if "image_size" in inputs:
        size = inputs["image_size"][0]
        shape = f"batch {result['batch_size']} x {inputs['real_length_max']} tokens ({size}px)"
    else:
        shape = f"batch {result['batch_size']} x seq {result['seq_len']}"
    lines = [
        f"{result['model']} / {result['method']}{keep} | {device} threads={result['threads']} "
        f"| {shape} | {result['warmup']} warm-up + {result['repeats']} rounds",
    ]
    upstream = result.get("dense_reference", "HF dense")
    for name, label in (("hf_dense", upstream), ("runtime_dense", "runtime dense"), ("method", "method")):
        if name not in t:
            continue
        s = t[name]
        lines.append(
            f"  {label:<14}{s['median_ms']:10.2f} ms  (p10 {s['p10_ms']:.2f}, p90 {s['p90_ms']:.2f})"
        )
    flops = result["flops"]
    overhead = result.get("runtime_overhead")
    lines.append(
        ("  " if overhead is None else f"  runtime overhead x{overhead:.3f} | ")
        + f"relative FLOPs {flops['relative']:.3f} "
        f"| speed-up {result['speedup']:.2f}x of ideal {result['ideal_speedup']:.2f}x "
        f"-> efficiency {result['efficiency']:.2f}"
    )
    breakdown = result.get("breakdown")
    if breakdown:
        for name in (variant for variant in VARIANTS if variant in breakdown):
            part = breakdown[name]
            lines.append(
                f"  profile {name:<14} linear {part['linear_ms']:.2f} | attention {part['attention_ms']:.2f} "
                f"| other {part['other_ms']:.2f} ms | {part['aten_ops']} aten ops"
            )
        if "linear_efficiency" in breakdown:
            lines.append(
                f"  linear GEMMs alone: speed-up {breakdown['linear_speedup']:.2f}x of ideal "
                f"{breakdown['linear_ideal_speedup']:.2f}x -> efficiency {breakdown['linear_efficiency']:.2f}"
            )
    return "\n".join(lines)
