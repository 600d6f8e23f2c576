"""The shared argument validators: one line per bad value, naming the argument."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from sttabt import validate
from sttabt.errors import SttabtError


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, math.nan, math.inf, "abc", "0.3,2", [], True, "nan"])
def test_keep_ratio_refuses(bad):
    with pytest.raises(SttabtError, match="^--keep"):
        validate.keep_ratio(bad, "--keep")


def test_keep_ratio_forms():
    assert validate.keep_ratio(None) is None
    assert validate.keep_ratio("dynamic") == "dynamic"
    assert validate.keep_ratio("0.3") == 0.3
    assert validate.keep_ratio("0.9,0.5") == [0.9, 0.5]
    assert validate.keep_ratio([1, 0.5]) == [1.0, 0.5]
    assert validate.keep_ratio(1) == 1.0
    import numpy as np

    assert validate.keep_ratio(np.float32(0.5)) == 0.5
    assert validate.positive_int(np.int64(3), "n") == 3


def test_keep_list():
    assert validate.keep_list("0.1, 0.3") == [0.1, 0.3]
    for bad in ("0,2", "", "0.1,0.1", "x"):
        with pytest.raises(SttabtError, match="^--keeps"):
            validate.keep_list(bad)


@pytest.mark.parametrize("bad", [-5, math.nan, 1.5, "x", None])
def test_p_must_be_finite_in_unit_interval(bad):
    with pytest.raises(SttabtError, match="^--p must"):
        validate.p_value(bad, "--p")


def test_p_accepts_the_interval():
    assert validate.p_value("0") == 0.0 and validate.p_value(1) == 1.0


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "gpu", ""])
def test_device_refuses_unknown_names(bad):
    with pytest.raises(SttabtError, match="--device must be auto, cpu, cuda or cuda:N"):
        validate.device(bad, "--device")


def test_device_refuses_cuda_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SttabtError, match="CUDA is not available"):
        validate.device("cuda:0")
    with pytest.raises(SttabtError, match="--dtype: fp16 autocast is not supported on CPU"):
        validate.dtype("fp16", "auto", "--dtype")
    assert validate.dtype("bf16", "cpu") == "bf16"
    with pytest.raises(SttabtError, match="--dtype: unknown dtype"):
        validate.dtype("fp8", "cpu", "--dtype")


def test_positive_ints():
    assert validate.positive_int("3", "--batch-size") == 3
    for bad in (0, "-1", "1.5", 2.0, True):
        with pytest.raises(SttabtError, match="^--batch-size"):
            validate.positive_int(bad, "--batch-size")
    assert validate.non_negative_int(0, "--epochs") == 0


def test_max_length_against_the_model():
    from types import SimpleNamespace

    bert = SimpleNamespace(max_position_embeddings=512, model_type="bert")
    roberta = SimpleNamespace(max_position_embeddings=514, model_type="roberta", pad_token_id=1)
    assert validate.max_length(512, bert) == 512
    assert validate.max_positions(roberta) == 512
    with pytest.raises(SttabtError, match="--max-length 100000 exceeds the model's maximum of 512"):
        validate.max_length(100000, bert, "--max-length")
    with pytest.raises(SttabtError, match="at least 2"):
        validate.max_length(1)


def test_output_file(tmp_path):
    assert validate.output_file(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    with pytest.raises(SttabtError, match="is a directory"):
        validate.output_file(tmp_path, "--output")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SttabtError, match="is a file, not a directory"):
        validate.output_file(tmp_path / "afile" / "r.json", "--output")


def test_output_file_refuses_an_unwritable_folder(tmp_path, monkeypatch):
    """Permissions as the OS reports them (as root every folder is writable, so the answer is faked)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = validate.os.access
    def access(path, mode):
        return Path(path) != locked and real_access(path, mode)

    monkeypatch.setattr(validate.os, "access", access)
    with pytest.raises(SttabtError, match="not writable"):
        validate.output_file(locked / "r.json", "--output")
    with pytest.raises(SttabtError, match="not writable"):
        validate.output_file(locked / "new" / "r.json", "--output")  # the nearest existing folder counts
    assert validate.output_file(tmp_path / "r.json", "--output")


def test_output_dir(tmp_path):
    assert validate.output_dir(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert validate.output_dir(empty)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    with pytest.raises(SttabtError, match="not empty and not an earlier output.*--overwrite"):
        validate.output_dir(mine, "--output", owned_by="train_log.json")
    assert validate.output_dir(mine, overwrite=True)
    (mine / "train_log.json").write_text("{}")
    assert validate.output_dir(mine, owned_by=("train_log.json",))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SttabtError, match="is a file"):
        validate.output_dir(tmp_path / "afile", overwrite=True)


def test_argparse_types_give_one_line_usage_errors(capsys):
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--n", type=validate.positive_int_arg)
    parser.add_argument("--p", type=validate.p_arg)
    assert parser.parse_args(["--n", "2", "--p", "0.5"]).n == 2
    for argv in (["--n", "0"], ["--p", "nan"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("x: error: argument") and "must" in err
