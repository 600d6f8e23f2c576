"""Image-classification data: Fashion-MNIST, scikit-learn's digits, ImageNet and any image folder.

Sources
-------
* ``fashion-mnist``: the four IDX gzip files (``train-images-idx3-ubyte.gz``, ...) in ``--data-dir``
  (default ``$STTABT_DATA_DIR/fashion-mnist``, ``./shared/data/fashion-mnist`` or
  ``../shared/data/fashion-mnist``); 60,000 train / 10,000 test (``dev`` = ``test``).
* ``digits``: scikit-learn's 1,797 8x8 digits (values 0-16, scaled to 0-255); a fixed seeded 80/20
  train/test split (``dev`` = ``test``). For fast tests.
* ``imagenet`` and ``imagefolder``: ``--data-dir`` is one folder, or several joined with ``:``
  (concatenated in that order), each either the standard tree ``root/<class>/<image>`` or a folder with
  ``images/`` and ``labels.tsv`` (columns ``file``, ``label``; ``wnid`` optional). A folder that has split
  subfolders (``train``, ``val``/``validation``/``dev``, ``test``) is read per split; one without them is
  the same images for every split. ``imagenet`` labels are the standard ImageNet-1k indices (sorted WordNet
  ids, shipped with sttabt), so a tree with only some of the classes still gets the right ids;
  ``imagefolder`` labels are the sorted class folder names (or ``labels.tsv``'s labels as they are).
  ``hf:<dataset id>`` (e.g. ``hf:ILSVRC/imagenet-1k``) reads a Hub dataset with ``image``/``label``
  columns through the optional ``datasets`` package.

Images become ``pixel_values`` through :class:`ImageTransform`, read from the model (its Hugging Face
``preprocessor_config.json``, timm's ``pretrained_cfg``, or defaults from its image size): the same
resizing and normalisation the model was trained with.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sttabt.errors import SttabtError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SPLIT_FOLDERS = {
    "train": ("train",),
    "dev": ("val", "validation", "dev"),
    "validation": ("val", "validation", "dev"),
    "val": ("val", "validation", "dev"),
    "test": ("test", "val", "validation"),
}
IMAGE_SPLITS = tuple(SPLIT_FOLDERS)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
DIGIT_CLASSES = tuple(str(i) for i in range(10))
DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class ImageExample:
    """One labelled image: a file path, or pixels ``(H, W)`` / ``(H, W, C)`` uint8."""

    image: Any
    label: int


def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k WordNet ids in label order (sorted), as Hub and timm checkpoints number them."""
    text = resources.files("sttabt").joinpath("resources/imagenet_wnids.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


# --------------------------------------------------------------------------------------------- loading
def load_image_examples(
    task: str, split: str, data_dir: str | os.PathLike | None, limit: int | None = None
) -> list[ImageExample]:
    """Read one split of an image task (``limit``: its first N examples)."""
    if task == "fashion-mnist":
        examples = _fashion_mnist(split, data_dir)
    elif task == "digits":
        examples = _digits(split)
    elif data_dir is None:
        raise SttabtError(
            f"task {task} needs --data-dir (an image folder, several joined with ':', or hf:ID)"
        )
    elif str(data_dir).startswith("hf:"):
        return _hub_images(str(data_dir)[3:], split, limit)
    else:
        examples = []
        for folder in str(data_dir).split(os.pathsep):
            examples.extend(_folder_images(task, _split_folder(Path(folder), split)))
    return examples[:limit] if limit is not None else examples


def default_fashion_mnist_dir() -> Path:
    candidates = []
    if os.environ.get("STTABT_DATA_DIR"):
        candidates.append(Path(os.environ["STTABT_DATA_DIR"]) / "fashion-mnist")
    cwd = Path.cwd()
    candidates += [
        cwd / "shared" / "data" / "fashion-mnist",
        cwd.parent / "shared" / "data" / "fashion-mnist",
    ]
    return next((path for path in candidates if path.is_dir()), candidates[0])


def _fashion_mnist(split: str, data_dir: str | os.PathLike | None) -> list[ImageExample]:
    root = Path(data_dir) if data_dir is not None else default_fashion_mnist_dir()
    stem = "train" if split == "train" else "t10k"
    images = _idx(root / f"{stem}-images-idx3-ubyte.gz", 3)
    labels = _idx(root / f"{stem}-labels-idx1-ubyte.gz", 1)
    if len(images) != len(labels):
        raise SttabtError(f"{root}: {len(images)} {stem} images but {len(labels)} labels")
    return [ImageExample(image, int(label)) for image, label in zip(images, labels, strict=True)]


def _idx(path: Path, dims: int) -> np.ndarray:
    """An IDX array (uint8) from a gzip file, refusing anything that is not one."""
    if not path.is_file():
        raise SttabtError(
            f"Fashion-MNIST file not found: {path} (pass --data-dir with the four IDX .gz files)"
        )
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise SttabtError(f"{path}: not a gzip file ({exc})") from None
    if len(raw) < 4 + 4 * dims or raw[2] != 0x08 or raw[3] != dims:
        raise SttabtError(f"{path}: not a {dims}-dimensional uint8 IDX file")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise SttabtError(f"{path}: header says {shape} but the file holds {body.size} values")
    return body.reshape(shape)


def _digits(split: str) -> list[ImageExample]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.clip(np.round(data.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))
    n_test = round(DIGITS_TEST_FRACTION * len(images))
    chosen = order[n_test:] if split == "train" else order[:n_test]
    return [ImageExample(images[i], int(data.target[i])) for i in chosen]


def _split_folder(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise SttabtError(f"image folder not found: {root}")
    for name in SPLIT_FOLDERS.get(split, (split,)):
        if (root / name).is_dir() and name != "images":
            return root / name
    return root


def _folder_images(task: str, root: Path) -> list[ImageExample]:
    if (root / "labels.tsv").is_file():
        return _labelled_folder(task, root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not classes:
        raise SttabtError(f"{root}: neither labels.tsv nor class folders (root/<class>/<image>)")
    ids = _class_ids(task, classes, root)
    examples = []
    for name in classes:
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        examples.extend(ImageExample(f, ids[name]) for f in files)
    if not examples:
        raise SttabtError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    return examples


def _class_ids(task: str, classes: list[str], root: Path) -> dict[str, int]:
    if task != "imagenet":
        return {name: i for i, name in enumerate(classes)}
    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    unknown = [name for name in classes if name not in index]
    if unknown:
        raise SttabtError(f"{root}: class folders {', '.join(unknown[:3])} are not ImageNet-1k WordNet ids")
    return {name: index[name] for name in classes}


def _labelled_folder(task: str, root: Path) -> list[ImageExample]:
    """``images/`` plus ``labels.tsv`` (``file``, ``label``[, ``wnid``]), checked line by line."""
    lines = (root / "labels.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    if "file" not in header or "label" not in header:
        raise SttabtError(f"{root / 'labels.tsv'}: expected the columns file and label, got {header}")
    col_file, col_label = header.index("file"), header.index("label")
    examples = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            path, label = root / "images" / fields[col_file], int(fields[col_label])
        except (IndexError, ValueError):
            raise SttabtError(f"{root / 'labels.tsv'}:{lineno}: bad line {line[:80]!r}") from None
        if label < 0 or (task == "imagenet" and label >= 1000):
            raise SttabtError(f"{root / 'labels.tsv'}:{lineno}: label {label} out of range")
        if not path.is_file():
            raise SttabtError(f"{root / 'labels.tsv'}:{lineno}: image not found: {path}")
        examples.append(ImageExample(path, label))
    if not examples:
        raise SttabtError(f"{root / 'labels.tsv'}: no images listed")
    return examples


def _hub_images(dataset_id: str, split: str, limit: int | None) -> list[ImageExample]:
    try:
        import datasets
    except ImportError:
        raise SttabtError(
            f"reading hf:{dataset_id} needs the 'datasets' package (pip install datasets)"
        ) from None
    hub_split = {"dev": "validation", "val": "validation"}.get(split, split)
    try:
        table = datasets.load_dataset(dataset_id, split=hub_split)
    except Exception as exc:  # offline, gated, unknown id: all user-facing
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SttabtError(f"cannot load hf:{dataset_id} split {hub_split!r}: {first}") from exc
    rows = table if limit is None else table.select(range(min(limit, len(table))))
    return [ImageExample(row["image"], int(row["label"])) for row in rows]


def folder_num_labels(task: str, data_dir: str | os.PathLike | None) -> int | None:
    """How many classes an ``imagefolder`` has (from its train split), for a new head; None if unknown."""
    if data_dir is None or str(data_dir).startswith("hf:"):
        return None
    labels = {ex.label for ex in load_image_examples(task, "train", data_dir)}
    return max(labels) + 1


# ------------------------------------------------------------------------------------------- transform
@dataclass(frozen=True)
class ImageTransform:
    """From an image to the model's ``pixel_values``: optional resize, optional centre crop, normalise.

    ``resize`` is ``(height, width)``; ``resize_shorter`` scales the shorter side to that many pixels
    (aspect kept); ``crop`` is the centre crop ``(height, width)``; ``resample`` a Pillow filter number
    (2 bilinear, 3 bicubic).
    """

    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: tuple[int, int] | None = None
    resize_shorter: int | None = None
    crop: tuple[int, int] | None = None
    resample: int = 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __call__(self, image: Any) -> torch.Tensor:
        picture = _to_pil(image, self.channels)
        if self.resize_shorter is not None:
            width, height = picture.size
            scale = self.resize_shorter / min(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            picture = picture.resize(size, resample=self.resample)
        elif self.resize is not None and picture.size != (self.resize[1], self.resize[0]):
            picture = picture.resize((self.resize[1], self.resize[0]), resample=self.resample)
        if self.crop is not None:
            picture = _center_crop(picture, self.crop)
        array = np.asarray(picture, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1)).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return ((tensor - mean) / std).contiguous()

    def black(self) -> tuple[float, ...]:
        """The normalised value of a black pixel, per channel (the fill of padded crops)."""
        return tuple(-m / s for m, s in zip(self.mean, self.std, strict=True))

    def to_display(self, pixels: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation: ``pixels (B, C, H, W)`` back to [0, 1] RGB or grey, for pictures."""
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (pixels.float().cpu() * std + mean).clamp(0, 1)


def _to_pil(image: Any, channels: int):
    from PIL import Image

    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                picture = opened.copy()
        except OSError as exc:
            raise SttabtError(f"cannot read image {image}: {exc}") from None
    elif isinstance(image, np.ndarray):
        picture = Image.fromarray(image)
    else:
        picture = image  # a PIL image (Hub datasets)
    return picture.convert("L" if channels == 1 else "RGB")


def _center_crop(picture, crop: tuple[int, int]):
    width, height = picture.size
    top, left = max(0, (height - crop[0]) // 2), max(0, (width - crop[1]) // 2)
    return picture.crop((left, top, left + crop[1], top + crop[0]))


def transform_for(model: torch.nn.Module, model_dir: str | os.PathLike | None = None) -> ImageTransform:
    """The model's own preprocessing: its saved ``preprocessor_config.json`` (HF), its timm
    ``pretrained_cfg``, else defaults from its image size (3 channels: ImageNet's shorter side to size/0.875,
    centre crop, ImageNet mean/std; otherwise resize to the size, mean 0.5, std 0.5)."""
    from sttabt.adapters.lookup import adapter_for

    adapter = adapter_for(model)
    channels, size = adapter.image_channels, adapter.image_size
    if model_dir is not None and (Path(model_dir) / "preprocessor_config.json").is_file():
        return _from_hf_processor(Path(model_dir) / "preprocessor_config.json", channels, size)
    timm_cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(timm_cfg, dict) and timm_cfg.get("mean") is not None:
        crop_pct = float(timm_cfg.get("crop_pct", 0.875))
        return ImageTransform(
            channels, tuple(timm_cfg["mean"]), tuple(timm_cfg["std"]),
            resize_shorter=int(size[0] / crop_pct), crop=size,
            resample={"bilinear": 2, "bicubic": 3}.get(timm_cfg.get("interpolation"), 3),
        )  # fmt: skip
    if channels == 3:
        return ImageTransform(3, IMAGENET_MEAN, IMAGENET_STD, resize_shorter=int(size[0] / 0.875), crop=size)
    return ImageTransform(channels, (0.5,) * channels, (0.5,) * channels, resize=size, resample=2)


def _from_hf_processor(path: Path, channels: int, size: tuple[int, int]) -> ImageTransform:
    """ViT/DeiT image-processor settings (``size``, ``crop_size``, ``image_mean``/``image_std``)."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SttabtError(f"cannot read {path}: {exc}") from None
    mean = tuple(cfg.get("image_mean", IMAGENET_MEAN if channels == 3 else (0.5,) * channels))
    std = tuple(cfg.get("image_std", IMAGENET_STD if channels == 3 else (0.5,) * channels))
    resize, shorter, crop = None, None, None
    raw = cfg.get("size")
    if cfg.get("do_resize", True) and raw is not None:
        if isinstance(raw, dict) and "shortest_edge" in raw:
            shorter = int(raw["shortest_edge"])
        elif isinstance(raw, dict):
            resize = (int(raw["height"]), int(raw["width"]))
        else:
            resize = (int(raw), int(raw))
    if cfg.get("do_center_crop") and cfg.get("crop_size") is not None:
        raw_crop = cfg["crop_size"]
        crop = (int(raw_crop["height"]), int(raw_crop["width"])) if isinstance(raw_crop, dict) else (
            int(raw_crop), int(raw_crop))  # fmt: skip
    if resize is None and shorter is None and crop is None:
        resize = size
    return ImageTransform(channels, mean, std, resize, shorter, crop, int(cfg.get("resample", 3)))


def hf_processor_config(transform: ImageTransform) -> dict[str, Any]:
    """A ``preprocessor_config.json`` that Hugging Face's image processors read the same way (and
    :func:`transform_for` reads back): ``ViTImageProcessor`` for a plain resize, ``BitImageProcessor``
    for shorter side plus centre crop."""
    common = {
        "resample": transform.resample, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(transform.mean), "image_std": list(transform.std),
    }  # fmt: skip
    if transform.resize_shorter is not None:
        crop = transform.crop or (transform.resize_shorter,) * 2
        return {
            "image_processor_type": "BitImageProcessor", "do_resize": True,
            "size": {"shortest_edge": transform.resize_shorter}, "do_center_crop": True,
            "crop_size": {"height": crop[0], "width": crop[1]}, "do_convert_rgb": True, **common,
        }  # fmt: skip
    size = transform.resize or transform.crop
    return {"image_processor_type": "ViTImageProcessor", "do_resize": transform.resize is not None,
            "size": {"height": size[0], "width": size[1]}, **common}  # fmt: skip


def encode_images(transform: ImageTransform, examples: Sequence[ImageExample]) -> list[dict[str, Any]]:
    """Features ``{"pixel_values": (C, H, W) float32, "label": int}``, one per example."""
    return [{"pixel_values": transform(ex.image), "label": ex.label} for ex in examples]


# ----------------------------------------------------------------------------------------- augmentation
def augment_pixels(pixels: torch.Tensor, generator: torch.Generator, *, flip: bool = True,
                   shift: float = 0.125, erase: float = 0.25, fill: Sequence[float] | None = None,
                   ) -> torch.Tensor:  # fmt: skip
    """Seeded training augmentation on a normalised batch ``(B, C, H, W)``: a random translation of up to
    ``shift`` of the size (the uncovered border filled with ``fill`` per channel: pass the normalised
    value of black, :meth:`ImageTransform.black`, as a padded random crop does; default 0), a horizontal
    flip with probability 1/2, and with probability ``erase`` one random rectangle (up to a quarter of
    each side) set to 0 (the mean colour)."""
    batch, channels, height, width = pixels.shape
    border = torch.tensor(fill if fill is not None else [0.0] * channels, dtype=pixels.dtype)
    out = border.view(1, channels, 1, 1).expand_as(pixels).clone()
    max_dy, max_dx = int(shift * height), int(shift * width)
    dys = torch.randint(-max_dy, max_dy + 1, (batch,), generator=generator).tolist()
    dxs = torch.randint(-max_dx, max_dx + 1, (batch,), generator=generator).tolist()
    flips = (torch.rand(batch, generator=generator) < 0.5).tolist() if flip else [False] * batch
    erases = (torch.rand(batch, generator=generator) < erase).tolist()
    boxes = torch.rand(batch, 4, generator=generator).tolist()
    for i, (dy, dx) in enumerate(zip(dys, dxs, strict=True)):
        image = pixels[i].flip(-1) if flips[i] else pixels[i]
        src_y, dst_y = slice(max(0, -dy), height - max(0, dy)), slice(max(0, dy), height - max(0, -dy))
        src_x, dst_x = slice(max(0, -dx), width - max(0, dx)), slice(max(0, dx), width - max(0, -dx))
        out[i, :, dst_y, dst_x] = image[:, src_y, src_x]
        if erases[i]:
            eh, ew = max(1, int(boxes[i][0] * height / 4)), max(1, int(boxes[i][1] * width / 4))
            top, left = int(boxes[i][2] * (height - eh)), int(boxes[i][3] * (width - ew))
            out[i, :, top : top + eh, left : left + ew] = 0
    return out


#: Tasks whose images must not be mirrored (a flipped digit is another digit, or none).
NO_FLIP_TASKS = frozenset({"digits"})


def augmented_batches(batches, seed: int, task: str, transform: ImageTransform):
    """``batches`` with seeded :func:`augment_pixels` (the same for a seed, whatever the processes): shifts
    filled with the transform's black, flips unless the task forbids them, erasing."""
    generator = torch.Generator().manual_seed(seed)
    flip, fill = task not in NO_FLIP_TASKS, transform.black()
    for batch in batches:
        pixels = augment_pixels(batch["pixel_values"], generator, flip=flip, fill=fill)
        yield {**batch, "pixel_values": pixels}
