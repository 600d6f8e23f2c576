"""Where a result came from: package versions, the machine, the time and the command.

Shared by ``bench.json`` and ``results.json`` so that both record the same fields the same way.
"""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any

import torch

#: CPU features that decide reduced-precision speed (bf16 autocast is slow without native bf16).
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    """The device's name and, for a CPU, the features that decide its speed."""
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "index": device.index}
    flags = set((_cpuinfo_field("flags") or "").split())
    return {
        "type": "cpu",
        "name": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "features": [feature for feature in CPU_FEATURES if feature in flags],
    }


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def versions() -> dict[str, str]:
    """python, torch, transformers and sttabt versions (``unknown`` for an uninstalled source tree)."""
    import importlib.metadata

    import transformers

    try:
        sttabt_version = importlib.metadata.version("sttabt")
    except importlib.metadata.PackageNotFoundError:
        sttabt_version = "unknown"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sttabt": sttabt_version,
    }


def timestamp() -> str:
    """Now, in UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def run_provenance(device: torch.device) -> dict[str, Any]:
    """The fields every result file records about its run, besides what the command itself adds."""
    return {
        "versions": versions(),
        "timestamp": timestamp(),
        "device": str(device),
        "device_info": device_info(device),
        "threads": torch.get_num_threads(),
        "load_average": load_average(),
    }
