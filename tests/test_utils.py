"""The shared inference context: no autograd, autocast for reduced precision, weight casts reused."""

from __future__ import annotations

import pytest
import torch

from sttabt.errors import SttabtError
from sttabt.utils import inference

CPU = torch.device("cpu")


def test_fp32_runs_in_inference_mode_without_autocast():
    with inference(CPU, "fp32"):
        assert torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
        assert not torch.is_autocast_enabled("cpu")
    assert torch.is_grad_enabled()


def test_bf16_runs_under_no_grad_and_autocast():
    """Not inference mode: there autocast would re-cast every weight on every call."""
    with inference(CPU, "bf16"):
        assert not torch.is_inference_mode_enabled() and not torch.is_grad_enabled()
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        layer = torch.nn.Linear(8, 4)
        assert layer(torch.randn(3, 8)).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu") and torch.is_grad_enabled()


def test_fp16_on_cpu_and_unknown_dtypes_are_refused():
    with pytest.raises(SttabtError, match="fp16 autocast is not supported on CPU"), inference(CPU, "fp16"):
        pass
    with pytest.raises(SttabtError, match="unknown dtype"), inference(CPU, "int8"):
        pass


def test_atomic_directory_never_replaces_a_file_and_leaves_no_debris(tmp_path):
    from sttabt.utils import atomic_directory

    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(SttabtError, match="is a file"), atomic_directory(afile) as folder:
        (folder / "x").write_text("1")
    assert afile.read_text() == "mine"
    out = tmp_path / "out"
    for value in ("1", "2"):
        with atomic_directory(out) as folder:
            (folder / "x").write_text(value)
    assert (out / "x").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "out"]


def test_resolve_device_refuses_an_unknown_device_in_one_line():
    from sttabt.utils import resolve_device

    with pytest.raises(SttabtError, match="--device must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu")
