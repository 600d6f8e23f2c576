"""The ``sttabt`` command line. Each sub-command lives in ``sttabt.commands.<name>``.

User errors (:class:`~sttabt.errors.SttabtError`) print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import sys

from sttabt.errors import SttabtError

COMMANDS = ["finetune", "distill", "train", "evaluate", "sweep", "bench", "visualize"]


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line, ``sttabt <command>: error: ...``, like every other error; exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="sttabt", description="Token pruning that physically removes tokens.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name in COMMANDS:
        importlib.import_module(f"sttabt.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["sttabt", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    _quiet_dependencies()
    for noisy in ("transformers", "accelerate", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except SttabtError as exc:
        print(f"sttabt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sttabt {args.command}: interrupted", file=sys.stderr)
        return 130


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("sttabt")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree, not installed
        return "unknown (not installed)"


def _quiet_dependencies() -> None:
    """Hide transformers' weight-loading bars and load reports: the CLI reports what matters itself."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


if __name__ == "__main__":
    sys.exit(main())
