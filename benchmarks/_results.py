"""What every benchmark script does with its result: record the command, write the JSON, print it."""

from __future__ import annotations

import json
import sys
from typing import Any

from sttabt.utils import atomic_write_text


def command_line(script: str, argv: list[str] | None) -> str:
    """The command that reproduces this run (``argv`` as given to ``main``, else the process's)."""
    return f"python benchmarks/{script} " + " ".join(sys.argv[1:] if argv is None else argv)


def emit(result: dict[str, Any], output: str | None, summary: Any = None) -> None:
    """Write ``result`` atomically to ``output`` (when given) and print ``summary`` (default: the result)."""
    text = json.dumps(result, indent=1)
    if output:
        atomic_write_text(output, text + "\n")
    print(text if summary is None else json.dumps(summary))
