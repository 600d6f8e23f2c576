"""--protocol reference: the STTABT paper's padded-length counting, on hand-computed and tiny examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_checks import one_line_error, run_cli
from tiny_task import tiny_approx_dir, tiny_classifier, tiny_sst2

from sttabt.core.tokens import keep_counts_per_layer
from sttabt.errors import SttabtError
from sttabt.evaluate import EvalConfig, run_evaluation
from sttabt.methods import MethodOptions
from sttabt.protocol import check_protocol, padded_lengths, reference_counts


def test_padded_lengths_follow_1024_example_chunks_in_split_order():
    lengths = [3] * 1000 + [9] + [4] * 100
    padded = padded_lengths(lengths)
    assert padded[:1024].unique().tolist() == [9]  # the longest of the first chunk
    assert padded[1024:].unique().tolist() == [4]
    assert padded_lengths([2, 7, 5], chunk=2).tolist() == [7, 7, 5]


def test_keep_ratio_of_the_padded_length_is_capped_at_the_real_length():
    real = torch.tensor([4, 8])
    padded = torch.tensor([10, 10])
    counts = keep_counts_per_layer([0.5, 0.2], real, padded)
    assert counts.tolist() == [[4, 5], [2, 2]]  # ceil(0.5·10)=5 (capped at 4 real), ceil(0.2·10)=2
    assert keep_counts_per_layer([0.5], real).tolist() == [[2, 4]]  # real lengths: ceil(0.5·n)


def test_reference_counts_by_hand():
    real, padded = torch.tensor([4, 8]), torch.tensor([10, 10])
    # ABT (planned), 2 layers, k = 0.5 -> m = 5 per layer. Sample 0 (4 real tokens): every set is all 4
    # real tokens, which the reference fills up to 5 with pads. Sample 1: sets of 5 and 5 real tokens stay.
    counts = torch.tensor([[[4, 4, 4], [4, 1, 1]], [[5, 5, 5], [5, 1, 1]]])
    ref = reference_counts("abt", counts, real, padded, [0.5, 0.5])
    assert ref.tolist() == [[[5, 5, 5], [5, 1, 1]], [[5, 5, 5], [5, 1, 1]]]
    # top-k (online): layer 0 reads all T tokens and keeps m_0; the top layer reads m_0.
    counts = torch.tensor([[[4, 4, 4], [4, 4, 1]]])
    ref = reference_counts("topk", counts, real[:1], padded[:1], [0.5, 0.5])
    assert ref.tolist() == [[[10, 10, 5], [5, 4, 1]]]
    # dense: every full-length count is the padded length, the CLS-only top layer stays.
    ref = reference_counts("dense", torch.tensor([[[4, 4, 4], [4, 1, 1]]]), real[:1], padded[:1], None)
    assert ref.tolist() == [[[10, 10, 10], [10, 1, 1]]]


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, Path]:
    teacher = tiny_classifier(tmp_path_factory.mktemp("teacher"), 0)
    return {"teacher": teacher, "approx": tiny_approx_dir(teacher, tmp_path_factory.mktemp("approx")),
            "glue": tiny_sst2(tmp_path_factory.mktemp("glue"))}  # fmt: skip


def _run(task, method: str, protocol: str, **options):
    config = EvalConfig(model=str(task["teacher"]), task="sst2", method=method, data_dir=str(task["glue"]),
                        options=MethodOptions(**options), batch_size=4, max_length=32, device="cpu",
                        progress=False, protocol=protocol)  # fmt: skip
    return run_evaluation(config).report()


@pytest.mark.parametrize("method", ["abt", "topk", "dense"])
def test_reference_run_keeps_ceil_k_of_the_padded_length(task, method):
    options = {} if method == "dense" else {"keep": 0.3}
    if method == "abt":
        options["approx"] = str(task["approx"])
    real = _run(task, method, "real", **options)
    ref = _run(task, method, "reference", **options)
    figures = ref["reference_protocol"]
    assert 0 < figures["retention"] <= 1 and 0 < figures["relative"] <= 1.0 + 1e-9
    assert figures["padded_length_mean"] >= 3  # every dev sentence padded to the chunk's longest
    if method == "dense":
        assert ref["metrics"] == real["metrics"] and ref["retention"] == real["retention"]
        return
    # k of a longer (padded) length keeps at least as many real tokens as k of the real length.
    assert ref["retention"] >= real["retention"]
    assert figures["retention"] < ref["retention"]  # over padded lengths and 13 entries: lower


def test_reference_protocol_is_refused_for_learned_methods(task, capsys):
    with pytest.raises(SttabtError, match="covers dense, abt, abt-oracle, topk"):
        check_protocol("reference", "concrete")
    argv = ["evaluate", "--model", str(task["teacher"]), "--task", "sst2", "--data-dir", str(task["glue"]),
            "--method", "ltp", "--protocol", "reference", "--output", "x.json"]  # fmt: skip
    assert run_cli(argv) != 0
    assert "--protocol reference covers" in one_line_error(capsys)
