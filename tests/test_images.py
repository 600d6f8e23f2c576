"""Image tasks: loaders (IDX, digits, image folders, labels.tsv, ImageNet ids), transforms, augmentation."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sttabt import images
from sttabt.data import collate, get_task, load_examples
from sttabt.errors import SttabtError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FMNIST = SHARED / "fashion-mnist"


def _png(path: Path, value: int, size=(12, 10)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)
    return path


@pytest.mark.skipif(not FMNIST.is_dir(), reason="needs ../shared/data/fashion-mnist")
def test_fashion_mnist_reads_the_idx_files():
    train = load_examples("fashion-mnist", "train", str(FMNIST))
    test = load_examples("fashion-mnist", "dev", str(FMNIST), limit=100)
    assert len(train) == 60000 and len(test) == 100
    assert train[0].image.shape == (28, 28) and train[0].image.dtype == np.uint8
    assert {ex.label for ex in train} == set(range(10))
    assert np.bincount([ex.label for ex in train]).tolist() == [6000] * 10  # the published class balance


def test_idx_files_that_are_not_idx_are_refused(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 8))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(SttabtError, match="not a 3-dimensional uint8 IDX file"):
        load_examples("fashion-mnist", "train", str(tmp_path))
    with pytest.raises(SttabtError, match="Fashion-MNIST file not found"):
        load_examples("fashion-mnist", "test", str(tmp_path))


def test_digits_split_is_fixed_and_disjoint():
    train, test = load_examples("digits", "train"), load_examples("digits", "test")
    assert (len(train), len(test)) == (1438, 359)
    assert load_examples("digits", "dev")[0].label == test[0].label
    seen = {ex.image.tobytes() for ex in train}
    assert sum(ex.image.tobytes() in seen for ex in test) < 10  # (the digits data has a few duplicates)
    assert max(int(ex.image.max()) for ex in train) == 255


def test_image_folder_tree_labels_tsv_several_folders_and_splits(tmp_path):
    tree = tmp_path / "tree"
    _png(tree / "train" / "cat" / "a.png", 10)
    _png(tree / "train" / "dog" / "b.png", 20)
    _png(tree / "val" / "dog" / "c.png", 30)
    table = tmp_path / "table"
    _png(table / "images" / "x.png", 40)
    (table / "labels.tsv").write_text("file\tlabel\twnid\nx.png\t1\tn0\n")
    train = load_examples("imagefolder", "train", str(tree))
    assert [(Path(ex.image).name, ex.label) for ex in train] == [("a.png", 0), ("b.png", 1)]
    dev = load_examples("imagefolder", "dev", f"{tree}:{table}")  # val/ of the tree, then the table
    assert [(Path(ex.image).name, ex.label) for ex in dev] == [("c.png", 0), ("x.png", 1)]
    assert images.folder_num_labels("imagefolder", str(tree)) == 2


def test_imagenet_tree_uses_the_standard_ids_and_refuses_other_folders(tmp_path):
    wnids = images.imagenet_wnids()
    assert len(wnids) == 1000 and wnids[0] == "n01440764" and list(wnids) == sorted(wnids)
    _png(tmp_path / "in" / "n01443537" / "goldfish.png", 50)  # ImageNet class 1, the only folder here
    assert load_examples("imagenet", "dev", str(tmp_path / "in"))[0].label == 1
    _png(tmp_path / "bad" / "cats" / "a.png", 50)
    with pytest.raises(SttabtError, match="not ImageNet-1k WordNet ids"):
        load_examples("imagenet", "dev", str(tmp_path / "bad"))
    with pytest.raises(SttabtError, match="needs --data-dir"):
        load_examples("imagenet", "dev", None)


@pytest.mark.parametrize(
    ("content", "message"),
    [("file\tlabel\nmissing.png\t0\n", "image not found"), ("name\tclass\n", "expected the columns"),
     ("file\tlabel\nx.png\tcat\n", "bad line")],
)  # fmt: skip
def test_bad_labels_tsv_is_one_line_error(tmp_path, content, message):
    _png(tmp_path / "images" / "x.png", 1)
    (tmp_path / "labels.tsv").write_text(content)
    with pytest.raises(SttabtError, match=message):
        load_examples("imagefolder", "dev", str(tmp_path))


def test_transform_resizes_crops_normalises_and_reads_back_its_processor_config(tmp_path):
    transform = images.ImageTransform(3, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2), resize_shorter=16, crop=(8, 8))
    pixels = transform(_png(tmp_path / "a.png", 255, size=(40, 20)))
    assert pixels.shape == (3, 8, 8)
    assert torch.allclose(pixels[:, 0, 0], torch.tensor([2.5, 3.0, 3.5]))
    assert torch.allclose(transform.to_display(pixels[None])[0], torch.ones(3, 8, 8))
    config = images.hf_processor_config(transform)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    assert images._from_hf_processor(tmp_path / "preprocessor_config.json", 3, (8, 8)) == transform


def test_plain_resize_matches_hugging_face_vit_image_processor(tmp_path):
    from PIL import Image
    from transformers import ViTImageProcessor

    transform = images.ImageTransform(3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), resize=(16, 16))
    processor = ViTImageProcessor(**{k: v for k, v in images.hf_processor_config(transform).items()
                                     if k != "image_processor_type"})  # fmt: skip
    array = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ours = transform(array)
    theirs = processor(Image.fromarray(array), return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_augmentation_is_seeded_and_fills_borders_with_black():
    pixels = torch.randn(6, 1, 8, 8)
    first = images.augment_pixels(pixels, torch.Generator().manual_seed(3), fill=(-9.0,), erase=0.0)
    again = images.augment_pixels(pixels, torch.Generator().manual_seed(3), fill=(-9.0,), erase=0.0)
    assert torch.equal(first, again)
    moved = [i for i in range(6) if not torch.equal(first[i], pixels[i]) and not torch.equal(first[i],
             pixels[i].flip(-1))]  # fmt: skip
    assert moved and all((first[i] == -9.0).any() for i in moved)  # the uncovered border is black


def test_collate_stacks_pixels_and_tasks_know_their_modality():
    batch = collate([{"pixel_values": torch.zeros(1, 4, 4), "label": 3}] * 2, pad_token_id=0)
    assert batch["pixel_values"].shape == (2, 1, 4, 4) and batch["labels"].tolist() == [3, 3]
    assert get_task("imagenet").num_labels == 1000 and get_task("digits").is_image
    assert not get_task("sst2").is_image
