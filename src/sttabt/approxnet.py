"""The STTABT ApproxNet (METHODS.md §1.2): a thin copy of the teacher that predicts its attention cheaply.

ABT runs it once per input at full length and reads every layer's attention probabilities from it; only
its attention is used at inference (its head is not), so its cost is that of its encoder.

Architecture: the teacher's own model class and depth, the same number of heads, hidden and FFN sizes
divided by the factor ``f`` (head dim = d_h / f), the same vocabulary, positions and token types (text)
or image size, patches and prefix tokens (Hugging Face ViT/DeiT; §1.2 of the spec, with R12's
interpolated init available as ``init="interpolate"``). ``heads`` (a divisor of the teacher's head count)
gives a narrower-headed ApproxNet: each of its heads is distilled against the mean of a group of
H/heads consecutive teacher heads, so the mean over its heads, which back-tracking reads, still predicts the
teacher's head mean, and its full-length softmax costs heads/H of the teacher's (ABT's max head reduction
then takes the max over group means, not over the teacher's heads). Extra
trainable projections exist only for the distillation losses: ``P_l: Linear(d/f -> d)``, **one per
layer** l = 0..L-1 for ``hidden_states[0..L-1]`` (L_hid), and ``P_emb: Linear(d/f -> d)`` (L_emb).

Initialisation: ``init="random"`` (the default) is the reference's BERT behaviour (standard HF init, from
the global torch RNG). ``init="interpolate"`` resizes each teacher tensor to the student's element count
by 1-D linear interpolation of its flattened values and reshapes it, the reference's ViT initialisation
(Pitfall R12); for an embedding table that keeps (about) every f-th column of each row. On MiniLM-L6 /
SST-2 at f = 4 neither helps before training (dev attention KL 1.31 random vs 1.33 interpolated) and after
100 task-distillation steps random led at lr 1e-4 (KL 0.62 vs 0.69) and tied at lr 1e-3 (0.50 vs 0.49),
matching PUBLISHED_RESULTS §3: distillation is what matters.

Attention maps come from :func:`trace_encoder`, a dense full-length forward that drives the model through
its adapter (:func:`~sttabt.adapters.lookup.adapter_for`: the same submodules and the same attention
product as :class:`~sttabt.runtime.SparseEncoder`). Unlike the sparse runtime, whose last layer computes
only CLS, it computes every query row of every layer, which distillation needs; the tests check it against
the Hugging Face eager forward with ``output_attentions=True`` and against ``SparseEncoder``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sttabt.adapters.base import EncoderAdapter
from sttabt.adapters.lookup import adapter_for
from sttabt.core.flops import EncoderShape
from sttabt.errors import SttabtError
from sttabt.utils import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "approxnet.json"
PROJECTIONS_NAME = "projections.safetensors"
#: Additive logit on padded keys in the returned pre-softmax scores (the reference's convention).
PAD_LOGIT = -10000.0
INIT_MODES = ("interpolate", "random")
STAGES = ("untrained", "general", "task")


# -- a dense, full-length forward that exposes everything distillation needs -------------------------------
@dataclass
class EncoderTrace:
    """One dense forward at full length.

    ``attentions[l]`` are probabilities ``(B, H, T, T)`` in float32 (row = query; padded keys get exactly 0);
    ``scores[l]`` the pre-softmax logits including :data:`PAD_LOGIT` on padded keys; ``hidden_states`` is
    HF-style (index 0 = embedding output, index i = output of layer i); ``embeddings`` (when requested) is
    the embedding output recomputed from ``input_ids`` alone (no token types), as L_emb uses it.
    """

    logits: torch.Tensor
    attentions: list[torch.Tensor]
    scores: list[torch.Tensor]
    hidden_states: list[torch.Tensor]
    embeddings: torch.Tensor | None = None
    valid: torch.Tensor | None = None  # (B, T) real tokens (text: the attention mask; images: all)


def _adapter(model_or_adapter: nn.Module | EncoderAdapter) -> EncoderAdapter:
    return adapter_for(model_or_adapter)


def _is_image(adapter: EncoderAdapter) -> bool:
    return adapter.image_size is not None


def trace_encoder(
    model_or_adapter: nn.Module | EncoderAdapter,
    batch: Mapping[str, torch.Tensor],
    *,
    embeddings: bool = False,
) -> EncoderTrace:
    """Run a classifier (BERT family, ViT/DeiT) densely and keep every layer's attention and hidden states.

    Respects the model's train/eval mode (dropout) and the caller's grad mode.
    """
    adapter = _adapter(model_or_adapter)
    if _is_image(adapter):
        hidden = adapter.embed(batch)
        valid = adapter.valid_mask(batch, hidden)
    else:
        if "input_ids" not in batch or "attention_mask" not in batch:
            raise SttabtError("a batch needs input_ids and attention_mask")
        valid = batch["attention_mask"].bool()
        inputs = {"input_ids": batch["input_ids"]}
        if batch.get("token_type_ids") is not None:
            inputs["token_type_ids"] = batch["token_type_ids"]
        hidden = adapter.embed(inputs)
    bias = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device).masked_fill(~valid, PAD_LOGIT)
    bias = bias[:, None, None, :]
    hidden_states, attentions, scores = [hidden], [], []
    for layer in range(adapter.num_layers):
        q, k, v = adapter.qkv(layer, hidden, hidden)
        logits = torch.matmul(q, k.transpose(-1, -2)).float() * adapter.attention_scale(layer) + bias
        probs = logits.softmax(dim=-1)
        p_drop = adapter.attention_dropout(layer) if adapter.training else 0.0
        mixed = F.dropout(probs, p=p_drop) if p_drop > 0 else probs
        context = torch.matmul(mixed.to(v.dtype), v)
        batch_size, heads, length, head_dim = context.shape
        context = context.transpose(1, 2).reshape(batch_size, length, heads * head_dim)
        hidden = adapter.finish(layer, context, hidden)
        hidden_states.append(hidden)
        attentions.append(probs)
        scores.append(logits)
    logits = adapter.head(hidden[:, : adapter.readout_tokens])
    emb = None
    if embeddings:  # text: recomputed without token types (L_emb); images: the embedding output itself
        emb = hidden_states[0] if _is_image(adapter) else adapter.embed({"input_ids": batch["input_ids"]})
    return EncoderTrace(logits, attentions, scores, hidden_states, emb, valid)


# -- teacher identity ----------------------------------------------------------------------------------------
def teacher_architecture(model: nn.Module) -> dict[str, Any]:
    """The sizes that an ApproxNet depends on: from a Hugging Face config, or (timm) from the adapter."""
    adapter = _adapter(model)  # refuses unsupported models with a clear message
    cfg = getattr(model, "config", None)
    if cfg is None:  # timm
        shape = adapter.shape
        return {
            "model_type": f"timm:{type(model).__name__}", "num_layers": shape.num_layers,
            "hidden_size": shape.hidden_size, "num_heads": shape.num_heads,
            "intermediate_size": shape.intermediate_size, "num_labels": int(model.num_classes),
            **_image_geometry(adapter),
        }  # fmt: skip
    arch = {
        "model_type": cfg.model_type,
        "num_layers": int(cfg.num_hidden_layers),
        "hidden_size": int(cfg.hidden_size),
        "num_heads": int(cfg.num_attention_heads),
        "intermediate_size": int(cfg.intermediate_size),
        "num_labels": int(cfg.num_labels),
    }
    if _is_image(adapter):
        return {**arch, **_image_geometry(adapter)}
    return {
        **arch,
        "vocab_size": int(cfg.vocab_size),
        "max_position_embeddings": int(cfg.max_position_embeddings),
        "type_vocab_size": int(getattr(cfg, "type_vocab_size", 1) or 1),
    }


def _image_geometry(adapter: EncoderAdapter) -> dict[str, Any]:
    return {"image_size": list(adapter.image_size), "patch_size": list(adapter.patch_size),
            "num_channels": int(adapter.image_channels)}  # fmt: skip


def teacher_fingerprint(model: nn.Module) -> str:
    """sha256 over the architecture and the raw bytes of every state-dict tensor, in name order.

    Floating tensors are hashed as float32 and from CPU memory, so the fingerprint does not depend on the
    device or on keeping fp32 weights in another float container (a bf16-rounded copy does differ).
    Measured on one CPU core: 0.1 s for MiniLM-L6, 0.5 s for BERT-base.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(teacher_architecture(model), sort_keys=True).encode())
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        if tensor.is_floating_point():
            tensor = tensor.float()
        tensor = tensor.cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


# -- configuration -------------------------------------------------------------------------------------------
@dataclass
class ApproxNetConfig:
    """What an ApproxNet is and where it came from; stored as ``approxnet.json`` next to the weights."""

    factor: int
    model_type: str
    teacher_layers: int
    teacher_hidden: int
    teacher_heads: int
    teacher_intermediate: int
    num_labels: int
    vocab_size: int  # 0 for image models
    teacher_fingerprint: str
    stage: str = "untrained"
    teacher_path: str | None = None
    init: str = "random"
    hidden_projections: str = "per-layer"  # P_l, one Linear(d/f -> d) per layer l = 0..L-1
    format_version: int = FORMAT_VERSION
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per distillation stage
    #: Image teachers: ``image_size``, ``patch_size``, ``num_channels`` (None for text).
    image_geometry: dict[str, Any] | None = None
    #: The ApproxNet's own attention heads (None: the teacher's; each predicts a group's mean).
    heads: int | None = None

    @property
    def num_heads(self) -> int:
        return self.heads or self.teacher_heads

    def architecture(self) -> dict[str, Any]:
        arch = {
            "model_type": self.model_type,
            "num_layers": self.teacher_layers,
            "hidden_size": self.teacher_hidden,
            "num_heads": self.teacher_heads,
            "intermediate_size": self.teacher_intermediate,
            "num_labels": self.num_labels,
        }
        if self.image_geometry is not None:
            return {**arch, **self.image_geometry}
        return {**arch, "vocab_size": self.vocab_size}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> ApproxNetConfig:
        names = {f.name for f in fields(cls)}
        missing = sorted(f.name for f in fields(cls) if not _has_default(f) and f.name not in payload)
        if missing:
            raise SttabtError(f"ApproxNet config is missing {', '.join(missing)}")
        if int(payload.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
            raise SttabtError(
                f"ApproxNet format version {payload['format_version']} is newer than this sttabt "
                f"({FORMAT_VERSION}); upgrade sttabt"
            )
        return cls(**{k: v for k, v in payload.items() if k in names})


def _has_default(f: Any) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def _short(fingerprint: str) -> str:
    return fingerprint[:12]


def _describe(arch: Mapping[str, Any]) -> str:
    inputs = (f"vocab={arch['vocab_size']}" if "vocab_size" in arch else
              f"image={arch['image_size']} patch={arch['patch_size']}")  # fmt: skip
    return (
        f"{arch['model_type']} L={arch['num_layers']} d={arch['hidden_size']} H={arch['num_heads']} "
        f"d_ff={arch['intermediate_size']} labels={arch['num_labels']} {inputs}"
    )


# -- the model -----------------------------------------------------------------------------------------------
@dataclass
class ApproxOutput:
    """What :meth:`ApproxNet.forward` returns (see :class:`EncoderTrace` for each field)."""

    logits: torch.Tensor
    attentions: list[torch.Tensor]
    scores: list[torch.Tensor]
    hidden_states: list[torch.Tensor]
    embeddings: torch.Tensor | None


class ApproxNet(nn.Module):
    """A thin copy of a classifier plus the projections its distillation losses use.

    Build with :meth:`from_teacher`, persist with :meth:`save` / :meth:`load`. ``model`` is the inner
    Hugging Face model, of the teacher's own class (``*ForSequenceClassification``, ViT/DeiT image
    classifiers), with eager attention, so ``output_attentions`` works there too.
    """

    def __init__(self, model: nn.Module, approx_config: ApproxNetConfig):
        super().__init__()
        self.model = model
        self.approx_config = approx_config
        self.adapter = adapter_for(model)
        small = int(model.config.hidden_size)
        big = int(approx_config.teacher_hidden)
        self.hidden_projections = nn.ModuleList(nn.Linear(small, big) for _ in range(self.adapter.num_layers))
        self.embedding_projection = nn.Linear(small, big)

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_teacher(
        cls,
        teacher: nn.Module,
        factor: int,
        *,
        init: str = "random",
        heads: int | None = None,
        teacher_path: str | None = None,
        fingerprint: str | None = None,
    ) -> ApproxNet:
        """Build an untrained ApproxNet for ``teacher``, in eval mode on the teacher's device.

        ``heads`` (default: the teacher's) must divide the teacher's head count. The projections (and
        everything, with ``init="random"``) are drawn from the global torch RNG.
        """
        if getattr(teacher, "config", None) is None:
            raise SttabtError(
                f"an ApproxNet needs a Hugging Face teacher; {type(teacher).__name__} (timm) is not "
                "supported yet: use abt-oracle or topk on it, or convert it to a transformers ViT/DeiT"
            )
        arch = teacher_architecture(teacher)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise SttabtError(f"ApproxNet factor must be a positive integer, got {factor!r}")
        if init not in INIT_MODES:
            raise SttabtError(f"unknown ApproxNet init {init!r}; choose one of {', '.join(INIT_MODES)}")
        d, d_ff, teacher_heads = arch["hidden_size"], arch["intermediate_size"], arch["num_heads"]
        heads = checked_heads(heads, teacher_heads)
        if d % factor or d_ff % factor or (d // factor) % heads:
            raise SttabtError(
                f"factor {factor} does not divide the teacher's sizes evenly (hidden {d}, FFN {d_ff}, "
                f"{heads} heads: the ApproxNet needs hidden/f divisible by the head count)"
            )
        cfg = copy.deepcopy(teacher.config)
        cfg.num_attention_heads = heads
        cfg.hidden_size = d // factor
        cfg.intermediate_size = d_ff // factor
        embedding_size = getattr(cfg, "embedding_size", None)  # ELECTRA factorised embeddings
        if embedding_size is not None:
            if embedding_size % factor:
                raise SttabtError(f"factor {factor} does not divide the embedding size {embedding_size}")
            cfg.embedding_size = embedding_size // factor
        model = type(teacher)._from_config(cfg, attn_implementation="eager")
        if init == "interpolate":
            _interpolate_from(model, teacher)
        config = ApproxNetConfig(
            factor=factor,
            model_type=arch["model_type"],
            teacher_layers=arch["num_layers"],
            teacher_hidden=d,
            teacher_heads=teacher_heads,
            teacher_intermediate=d_ff,
            num_labels=arch["num_labels"],
            vocab_size=arch.get("vocab_size", 0),
            teacher_fingerprint=fingerprint or teacher_fingerprint(teacher),
            teacher_path=teacher_path or getattr(teacher.config, "_name_or_path", None) or None,
            init=init,
            image_geometry={k: arch[k] for k in ("image_size", "patch_size", "num_channels")}
            if "image_size" in arch else None,
            heads=None if heads == teacher_heads else heads,
        )
        approx = cls(model, config)
        return approx.to(next(teacher.parameters()).device).eval()

    # -- forward ---------------------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor], embeddings: bool = True) -> ApproxOutput:
        trace = trace_encoder(self.adapter, batch, embeddings=embeddings)
        return ApproxOutput(
            trace.logits, trace.attentions, trace.scores, trace.hidden_states, trace.embeddings
        )

    def attention_probs(self, batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """L attention maps ``(B, H, T, T)`` (probabilities, rows = queries) at full length, for ABT."""
        return self.forward(batch, embeddings=False).attentions

    def pool_teacher_heads(self, attention: torch.Tensor) -> torch.Tensor:
        """A teacher map ``(B, H, T, T)`` as this ApproxNet's targets: the mean of each group of heads."""
        heads = self.approx_config.num_heads
        if attention.shape[1] == heads:
            return attention
        batch, teacher_heads, *rows = attention.shape
        return attention.reshape(batch, heads, teacher_heads // heads, *rows).mean(dim=2)

    def project_hidden(self, hidden_states: list[torch.Tensor]) -> list[torch.Tensor]:
        """``P_l(h_l)`` for l = 0..L-1 (the last layer's output is not distilled)."""
        return [proj(h) for proj, h in zip(self.hidden_projections, hidden_states[:-1], strict=False)]

    def project_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.embedding_projection(embeddings)

    def cost_shape(self) -> EncoderShape:
        """The ApproxNet's sizes for the FLOPs counter; ``head_macs=0``: its head is unused at inference."""
        return dataclasses.replace(self.adapter.shape, head_macs=0)

    @property
    def factor(self) -> int:
        return self.approx_config.factor

    # -- teacher checks --------------------------------------------------------------------------------------
    def check_teacher(self, teacher: nn.Module, *, fingerprint: bool = True) -> None:
        """Raise :class:`SttabtError` unless ``teacher`` is the model this ApproxNet was distilled from."""
        if isinstance(teacher, EncoderAdapter):
            teacher = teacher.model
        saved = self.approx_config
        source = saved.teacher_path or "an unnamed teacher"
        arch = teacher_architecture(teacher)
        expected = saved.architecture()
        mismatched = [k for k in expected if arch.get(k) != expected[k]]
        if mismatched:
            raise SttabtError(
                f"ApproxNet was distilled from {source} ({_describe(expected)}), not from this teacher "
                f"({_describe(arch)}): {', '.join(mismatched)} differ"
            )
        if fingerprint:
            actual = teacher_fingerprint(teacher)
            if actual != saved.teacher_fingerprint:
                raise SttabtError(
                    f"ApproxNet was distilled from {source} "
                    f"(fingerprint {_short(saved.teacher_fingerprint)}), "
                    f"not from this teacher (fingerprint {_short(actual)}): same architecture, different "
                    "weights; distill a new ApproxNet for this teacher with `sttabt distill`"
                )

    # -- persistence -----------------------------------------------------------------------------------------
    def write_into(self, directory: str | Path) -> None:
        """Write the files into an existing directory (callers make it atomic)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        self.model.save_pretrained(directory)
        projections = {k: v.detach().cpu().contiguous() for k, v in self._projection_state().items()}
        save_file(projections, str(directory / PROJECTIONS_NAME))
        atomic_write_json(directory / CONFIG_NAME, self.approx_config.to_dict())

    def save(self, directory: str | Path) -> Path:
        """Save atomically: a reader never sees a half-written ApproxNet."""
        with atomic_directory(directory) as tmp:
            self.write_into(tmp)
        return Path(directory)

    def _projection_state(self) -> dict[str, torch.Tensor]:
        state = {}
        for name, tensor in self.state_dict().items():
            if name.startswith(("hidden_projections.", "embedding_projection.")):
                state[name] = tensor
        return state

    @classmethod
    def load(cls, directory: str | Path, teacher: nn.Module | None = None) -> ApproxNet:
        """Load a saved ApproxNet; with ``teacher``, refuse one distilled from a different model."""
        from safetensors.torch import load_file

        if not str(directory).strip():
            raise SttabtError("no ApproxNet directory given")
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not directory.is_dir():
            raise SttabtError(f"ApproxNet directory does not exist: {directory}")
        if not config_path.is_file():
            raise SttabtError(
                f"{directory} is not an ApproxNet directory (no {CONFIG_NAME}); run `sttabt distill`"
            )
        try:
            payload = json.loads(config_path.read_text(encoding="utf-8"))
            config = ApproxNetConfig.from_dict(payload)
        except (OSError, ValueError, TypeError) as exc:
            raise SttabtError(f"cannot read {config_path}: {exc}") from exc
        try:
            model = _saved_model_class(directory).from_pretrained(
                directory, attn_implementation="eager", dtype=torch.float32
            )
            projections = load_file(str(directory / PROJECTIONS_NAME))
        except (OSError, ValueError, RuntimeError) as exc:
            raise SttabtError(f"cannot load the ApproxNet weights in {directory}: {exc}") from exc
        if int(model.config.num_attention_heads) != config.num_heads:
            raise SttabtError(
                f"{directory}: the model has {model.config.num_attention_heads} heads but "
                f"{CONFIG_NAME} says {config.num_heads}"
            )
        approx = cls(model, config)
        missing, unexpected = approx.load_state_dict(projections, strict=False)
        missing = [m for m in missing if m.startswith(("hidden_projections.", "embedding_projection."))]
        if missing or unexpected:
            raise SttabtError(
                f"{directory / PROJECTIONS_NAME} does not match this ApproxNet "
                f"(missing {missing[:3]}, unexpected {list(unexpected)[:3]})"
            )
        if teacher is not None:
            approx.check_teacher(teacher)
        return approx.eval()


def checked_heads(heads: Any, teacher_heads: int) -> int:
    """The ApproxNet's head count: the teacher's by default, else a divisor of it (one group per head)."""
    if heads is None:
        return teacher_heads
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or teacher_heads % heads:
        raise SttabtError(
            f"ApproxNet heads must be a positive divisor of the teacher's {teacher_heads} heads, "
            f"got {heads!r}"
        )
    return heads


def _saved_model_class(directory: Path):
    """The transformers class a saved ApproxNet was built as (its ``config.json`` architectures)."""
    import transformers

    try:
        saved = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    names = saved.get("architectures") or []
    model_class = getattr(transformers, names[0], None) if names else None
    return model_class or transformers.AutoModelForSequenceClassification


def _interpolate_from(student: nn.Module, teacher: nn.Module) -> None:
    """1-D interpolation init (Pitfall R12): flatten, resize linearly to the student's size, reshape."""
    source = dict(teacher.named_parameters())
    with torch.no_grad():
        for name, param in student.named_parameters():
            origin = source.get(name)
            if origin is None:
                continue
            origin = origin.detach().float().to(param.device)
            if origin.shape == param.shape:
                param.copy_(origin)
                continue
            flat = origin.reshape(1, 1, -1)
            resized = F.interpolate(flat, size=param.numel(), mode="linear", align_corners=True)
            param.copy_(resized.reshape(param.shape))
