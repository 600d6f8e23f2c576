"""The four commands on images, end to end on scikit-learn's digits: finetune a ViT preset, distill its
ApproxNet, evaluate/visualize ABT and top-k; and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_checks import one_line_error, run_cli

COMMON = ["--no-progress"]


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vit") / "digits"
    argv = ["finetune", "--model", "vit-tiny-digits", "--task", "digits", "--output", str(out),
            "--epochs", "2", "--lr", "2e-3", "--batch-size", "64", "--max-train-examples", "400",
            *COMMON]  # fmt: skip
    assert run_cli(argv) == 0
    return out


@pytest.fixture(scope="module")
def digits_approx(digits_teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("approx") / "a"
    argv = ["distill", "--teacher", str(digits_teacher), "--task", "digits", "--output", str(out),
            "--factor", "2", "--general-epochs", "1", "--epochs", "1", "--batch-size", "64",
            "--max-train-examples", "200", "--quality-examples", "64", *COMMON]  # fmt: skip
    assert run_cli(argv) == 0
    return out


def test_finetune_saves_a_self_contained_image_classifier(digits_teacher):
    files = {p.name for p in digits_teacher.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "train_log.json"} <= files
    assert not any(name.endswith((".bin", ".pt")) for name in files)
    log = json.loads((digits_teacher / "train_log.json").read_text())
    assert log["examples"] == {"train": 360, "heldout": 40, "dev": 359} and log["dev"]["split"] == "test"
    config = json.loads((digits_teacher / "config.json").read_text())
    assert config["id2label"]["3"] == "3" and config["image_size"] == 8


def test_distill_records_an_image_approxnet(digits_approx):
    log = json.loads((digits_approx / "distill_log.json").read_text())
    assert log["approxnet"]["flops_tokens"] == 17  # CLS + 16 patches
    assert 0 < log["approxnet"]["relative_flops"] < 0.5
    assert set(log["stages"]) == {"general", "task"}
    assert log["stages"]["general"]["corpus"] == "augmented training images"
    assert log["quality"]["distilled"]["kl"] <= log["quality"]["untrained"]["kl"] + 1e-9


def test_evaluate_abt_and_topk_on_images(digits_teacher, digits_approx, tmp_path):
    reports = {}
    for name, extra in (("dense", []), ("topk", ["--keep", "0.5"]),
                        ("abt", ["--keep", "0.5", "--approx", str(digits_approx)])):  # fmt: skip
        out = tmp_path / f"{name}.json"
        argv = ["evaluate", "--model", str(digits_teacher), "--task", "digits", "--method", name, *extra,
                "--output", str(out), "--batch-size", "50", *COMMON]  # fmt: skip
        assert run_cli(argv) == 0
        reports[name] = json.loads(out.read_text())
    assert reports["dense"]["examples"] == 359
    assert reports["topk"]["flops"]["relative"] < reports["dense"]["flops"]["relative"]
    # layer 0 reads everything (its attention ranks the tokens); then CLS plus ceil(0.5 * 16) = 8 patches
    assert reports["topk"]["retention_per_layer"] == pytest.approx([1.0] + [9 / 17] * 3)
    assert reports["abt"]["flops"]["relative"] < 1.0


def test_visualize_writes_a_png_grid(digits_teacher, digits_approx, tmp_path):
    from PIL import Image

    out = tmp_path / "kept.png"
    argv = ["visualize", "--model", str(digits_teacher), "--task", "digits", "--method", "abt",
            "--keep", "0.4", "--approx", str(digits_approx), "--examples", "3",
            "--output", str(out)]  # fmt: skip
    assert run_cli(argv) == 0
    with Image.open(out) as picture:
        width, height = picture.size
    assert width > height > 100  # 3 rows, 5 columns (input + 4 layers)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["visualize", "--model", "M", "--task", "digits", "--output", "x.html"], "must be a .png file"),
        (["evaluate", "--model", "vit-tiny-digits", "--task", "digits", "--protocol", "reference",
          "--output", "r.json"], "images have no padding"),
        (["finetune", "--model", "nowhere/deep/dir", "--task", "digits", "--output", "o"], "does not exist"),
    ],
)  # fmt: skip
def test_image_commands_refuse_bad_input_in_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(argv) != 0
    assert message in one_line_error(capsys)


def test_sweep_config_on_images_records_agreement_with_dense(digits_teacher, digits_approx, tmp_path):
    import csv

    config = tmp_path / "grid.toml"
    config.write_text(
        f'task = "digits"\nsplit = "dev"\nmodel = "{digits_teacher}"\napprox = "{digits_approx}"\n'
        f'output_dir = "out"\nbatch_size = 100\nlimit = 120\n\n[methods]\nabt = {{ keep = [0.5] }}\n'
        'abt-oracle = { keep = [0.5] }\ntopk = { keep = [0.5] }\n'
    )
    assert run_cli(["sweep", "--config", str(config)]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert [r["method"] for r in rows] == ["dense", "abt", "abt-oracle", "topk"]
    assert float(rows[0]["agreement"]) == 1.0 and all(0 <= float(r["agreement"]) <= 1 for r in rows)
    assert "agrees with dense %" in (tmp_path / "out" / "summary.md").read_text()
    assert (tmp_path / "out" / "metric_vs_flops.png").is_file()


def test_evaluate_a_timm_directory_on_an_image_folder(tmp_path):
    timm = pytest.importorskip("timm")
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3)
    (tmp_path / "m").mkdir()
    save_file(model.state_dict(), str(tmp_path / "m" / "model.safetensors"))
    (tmp_path / "m" / "config.json").write_text(json.dumps({"architecture": "deit_tiny_patch16_224",
                                                            "num_classes": 3}))  # fmt: skip
    for i, name in enumerate(("ant", "bee", "cat")):
        (tmp_path / "data" / name).mkdir(parents=True)
        pixels = np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "data" / name / "x.png")
    reports = []
    for extra in ([], ["--method", "topk", "--keep", "0.5"]):
        out = tmp_path / f"r{len(reports)}.json"
        argv = ["evaluate", "--model", str(tmp_path / "m"), "--task", "imagefolder", "--data-dir",
                str(tmp_path / "data"), *extra, "--output", str(out), *COMMON]  # fmt: skip
        assert run_cli(argv) == 0
        reports.append(json.loads(out.read_text()))
    assert [r["examples"] for r in reports] == [3, 3]
    assert reports[1]["flops"]["relative"] < 0.7 * reports[0]["flops"]["relative"]


def test_visualize_text_writes_the_kept_token_page(tmp_path):
    from tiny_task import tiny_classifier, tiny_sst2

    model = tiny_classifier(tmp_path / "m", seed=0)
    (tmp_path / "glue").mkdir()
    data = tiny_sst2(tmp_path / "glue")
    out = tmp_path / "kept.html"
    argv = ["visualize", "--model", str(model), "--task", "sst2", "--data-dir", str(data), "--method", "topk",
            "--keep", "0.5", "--examples", "2", "--output", str(out)]  # fmt: skip
    assert run_cli(argv) == 0
    page = out.read_text()
    assert page.count("<h2>") == 2 and "S_0" in page and 'class="t d"' in page  # some tokens removed
