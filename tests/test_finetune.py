"""sttabt finetune on a tiny random BERT: saved model and log, determinism, regression, errors."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sttabt.cli import main
from sttabt.errors import SttabtError
from sttabt.train.finetune import LOG_NAME, FinetuneConfig, finetune, summary_line

GOOD = ["good", "great", "fine", "lovely", "superb"]
BAD = ["bad", "awful", "poor", "dull", "boring"]
FILLER = ["the", "film", "was", "a", "story", "plot", "and", "very"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random BERT encoder (no classification head, like MiniLM) with a word-level vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizer

    root = tmp_path_factory.mktemp("tiny-bert")
    vocab = SPECIAL + GOOD + BAD + FILLER
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)})
    assert tokenizer("good film")["input_ids"] == [2, vocab.index("good"), vocab.index("film"), 3]
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def sentences(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, rng.randint(1, 5)) + [rng.choice(GOOD if label else BAD)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    for split, n, seed in (("train", 64, 0), ("dev", 16, 1)):
        path = root / "SST-2" / f"{split}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in sentences(n, seed)))
    stsb = root / "STS-B"
    stsb.mkdir()
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    for split, n, seed in (("train", 40, 2), ("dev", 12, 3)):
        rng = random.Random(seed)
        lines = [
            f"{i}\tg\tf\ty\t0\tn\tn\t{a}\t{b}\t{rng.uniform(0, 5):.2f}\n"
            for i, ((a, _), (b, _)) in enumerate(
                zip(sentences(n, seed), sentences(n, seed + 10), strict=True)
            )
        ]
        (stsb / f"{split}.tsv").write_text(header + "".join(lines))
    return root


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(tiny_model: Path, glue_dir: Path, output: Path, **overrides) -> FinetuneConfig:
    base = dict(
        model=str(tiny_model), task="sst2", output=str(output), data_dir=str(glue_dir), epochs=3, lr=3e-3,
        batch_size=8, max_length=16, seed=0, device="cpu", progress=False,
    )  # fmt: skip
    base.update(overrides)
    return FinetuneConfig(**base)


def test_finetune_saves_a_loadable_model_and_a_log(tiny_model, glue_dir, tmp_path):
    from sttabt.models import load_text_classifier

    out = tmp_path / "ft"
    record = finetune(config(tiny_model, glue_dir, out, epochs=8, lr=1e-2))
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json", LOG_NAME} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    assert not list(tmp_path.glob(".ft.*"))  # no temp dir left behind
    umask = os.umask(0)
    os.umask(umask)
    assert (out / LOG_NAME).stat().st_mode & 0o777 == 0o666 & ~umask  # not the temp file's owner-only mode
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask

    saved = json.loads((out / LOG_NAME).read_text())
    assert saved["examples"] == {"train": 58, "heldout": 6, "dev": 16}
    assert saved["config"]["lr"] == 1e-2 and saved["config"]["task"] == "sst2"
    assert [e["epoch"] for e in saved["epochs"]] == list(range(1, 9))
    assert all(e["train_examples"] == 58 and e["train_examples_per_s"] > 0 for e in saved["epochs"])
    best = saved["best_epoch"]
    held = [e["heldout"]["accuracy"] for e in saved["epochs"]]
    assert held[best - 1] == max(held) and best == held.index(max(held)) + 1  # first best epoch kept
    assert saved["best_heldout"] == saved["epochs"][best - 1]["heldout"]
    assert set(saved["dev"]["metrics"]) == {"accuracy"} and saved["dev"]["examples"] == 16
    assert saved["dev"]["split"] == "dev" and saved["throughput"]["train_examples_per_s_overall"] > 0
    assert saved["wall_seconds"] > 0 and saved["dev"] == record["dev"]
    # A separable toy task: the tiny model learns it (after a plateau, hence 8 epochs at a high rate).
    assert saved["dev"]["metrics"]["accuracy"] >= 0.75

    model, tokenizer = load_text_classifier(str(out))
    assert model.config.num_labels == 2 and model.config.id2label[1] == "positive"
    assert model.config.problem_type == "single_label_classification"
    assert tokenizer.pad_token_id == 0
    line = summary_line(record)
    assert line.startswith("sst2: dev accuracy=") and f"best epoch {best}/8" in line and str(out) in line


def test_same_seed_gives_identical_weights_cli_and_library(tiny_model, glue_dir, tmp_path, capsys):
    argv = [
        "finetune", "--model", str(tiny_model), "--task", "SST-2", "--data-dir", str(glue_dir),
        "--output", str(tmp_path / "a"), "--epochs", "2", "--lr", "3e-3", "--batch-size", "8",
        "--max-length", "16", "--seed", "5", "--device", "cpu", "--no-progress", "--no-dev-eval",
    ]  # fmt: skip
    assert main(argv) == 0
    assert "sst2: dev not evaluated | best epoch" in capsys.readouterr().out
    finetune(config(tiny_model, glue_dir, tmp_path / "b", epochs=2, seed=5, eval_dev=False))
    finetune(config(tiny_model, glue_dir, tmp_path / "c", epochs=2, seed=6, eval_dev=False))
    a, b, c = (load_file(tmp_path / name / "model.safetensors") for name in "abc")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_regression_task_in_bf16_without_heldout(tiny_model, glue_dir, tmp_path):
    out = tmp_path / "stsb"
    cfg = config(tiny_model, glue_dir, out, task="stsb", epochs=2, dtype="bf16", heldout_fraction=0.0)
    cfg.group_by_length = True
    record = finetune(cfg)
    assert record["environment"]["mixed_precision"] == "bf16"
    assert record["best_epoch"] == 2 and record["best_heldout"] is None  # no held-out slice: last epoch
    assert set(record["dev"]["metrics"]) == {"pearson", "spearman"}
    from transformers import AutoConfig

    saved = AutoConfig.from_pretrained(out)
    assert saved.num_labels == 1 and saved.problem_type == "regression"
    weights = load_file(out / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())  # mixed precision keeps fp32 weights


def test_bad_inputs_are_user_errors(tiny_model, glue_dir, tmp_path, capsys):
    with pytest.raises(SttabtError, match="unknown task"):
        finetune(config(tiny_model, glue_dir, tmp_path / "x", task="sst3"))
    with pytest.raises(SttabtError, match="epochs must be >= 1"):
        finetune(config(tiny_model, glue_dir, tmp_path / "x", epochs=0))
    with pytest.raises(SttabtError, match="max length 100 exceeds the model's 64 positions"):
        finetune(config(tiny_model, glue_dir, tmp_path / "x", max_length=100))
    with pytest.raises(SttabtError, match="model path does not exist"):
        finetune(config(tmp_path / "no-model", glue_dir, tmp_path / "x"))
    (tmp_path / "file").write_text("")
    with pytest.raises(SttabtError, match="not a directory"):
        finetune(config(tiny_model, glue_dir, tmp_path / "file"))
    argv = ["finetune", "--model", str(tiny_model), "--task", "rte", "--data-dir", str(glue_dir),
            "--output", str(tmp_path / "y"), "--device", "cpu", "--max-length", "16"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sttabt finetune: error: GLUE task folder not found") and err.count("\n") == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_off_a_terminal_training_and_dev_evaluation_log_heartbeats(
    tiny_model, glue_dir, tmp_path, caplog, monkeypatch, capsys
):
    import logging

    from sttabt import progress

    monkeypatch.setattr(progress, "HEARTBEAT_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="sttabt")
    finetune(config(tiny_model, glue_dir, tmp_path / "hb", epochs=1, eval_batch_size=4, progress=True))
    beats = [r.getMessage() for r in caplog.records if r.name == "sttabt.progress"]
    assert any(line.startswith("fine-tuning: 8/8 steps (100 %)") and "loss" in line for line in beats)
    assert any(line.startswith("dev evaluation: 4/4 batches") for line in beats)  # 16 dev / 4 per batch
    err = capsys.readouterr().err  # (transformers' own loading bars are the CLI's to silence)
    assert "fine-tuning" not in err and "dev evaluation" not in err  # no bar of ours


@pytest.mark.slow
def test_finetune_under_torchrun_with_two_processes(tiny_model, glue_dir, tmp_path):
    """Two CPU processes (gloo) through the shared loop: half the steps each, one saved model and log."""
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun is not installed")
    out = tmp_path / "ddp"
    argv = [
        torchrun, "--standalone", "--nproc_per_node", "2", "-m", "sttabt.cli", "finetune",
        "--model", str(tiny_model), "--task", "sst2", "--data-dir", str(glue_dir), "--output", str(out),
        "--epochs", "2", "--lr", "3e-3", "--batch-size", "8", "--max-length", "16", "--device", "cpu",
        "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("sst2: dev accuracy=") == 1
    saved = json.loads((out / LOG_NAME).read_text())
    assert saved["environment"]["processes"] == 2
    assert saved["steps_per_epoch"] == 4  # 58 train examples = 8 batches of <= 8 -> 4 per process
    assert saved["dev"]["examples"] == 16
