"""Small shared helpers: devices, precision, seeding and atomic file writes."""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sttabt.errors import SttabtError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unknown name or a CUDA request without CUDA is refused
    (:func:`sttabt.validate.device`)."""
    from sttabt.validate import device as valid_device

    text = valid_device(name, "--device")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(text)


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Autocast for ``bf16``/``fp16`` (weights stay fp32); a no-op for ``fp32``."""
    from sttabt.validate import dtype as valid_dtype

    valid_dtype(dtype, device.type, "--dtype")
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


@contextlib.contextmanager
def inference(device: torch.device, dtype: str) -> Iterator[None]:
    """No autograd, plus autocast for ``bf16``/``fp16``: the context of every evaluated or timed forward.

    With autocast this is ``torch.no_grad``, not ``torch.inference_mode``: under inference mode autocast
    does not reuse its reduced-precision copies of the weights, so every call re-casts every weight
    (measured on a 2-core AVX512-BF16 CPU: a 768x768 linear on 32 rows took 209 µs instead of 142 µs;
    ``benchmarks/gemm_rows.py``). Under ``no_grad`` the copies live as long as the context, so keep one
    context around many calls.
    """
    precision = autocast(device, dtype)
    grad_off = torch.inference_mode() if dtype == "fp32" else torch.no_grad()
    with grad_off, precision:
        yield


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _umask_mode(base: int) -> int:
    """``base`` (0o666 for files, 0o777 for folders) less the process umask, as a plain open() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write through a temporary file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, _umask_mode(0o666))  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_figure(fig: Any, path: str | os.PathLike, fmt: str | None = None, **kwargs: Any) -> None:
    """``fig.savefig`` through a hidden temporary file and a rename (readers never see half a picture)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or path.suffix.lstrip(".") or "png"
    tmp = path.with_name(f".{path.name}.tmp.{fmt}")
    try:
        fig.savefig(tmp, format=fmt, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final`` (a directory or nothing).

    An existing *file* at ``final`` is refused before anything is written: a file is never replaced by
    a directory. The previous directory is moved aside under a unique hidden name, restored if the swap
    fails, and removed afterwards, so no ``.name.old`` debris is left behind.
    """
    import shutil

    final = Path(final)
    if final.exists() and not final.is_dir():
        raise SttabtError(f"{str(final)!r} is a file, not a directory; refusing to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o777))  # mkdtemp creates 0700 folders
        _swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an old ``final`` directory goes aside first and is deleted after."""
    import shutil

    if not final.exists():
        os.replace(tmp, final)
        return
    aside = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
    backup = aside / "previous"
    os.replace(final, backup)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(backup, final)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
