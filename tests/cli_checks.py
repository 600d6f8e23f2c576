"""Shared by the CLI tests: run a command like the console script, and read its one-line error."""

from __future__ import annotations

from sttabt.cli import main


def run_cli(argv: list[str]) -> int:
    """``sttabt ARGV``'s exit status (argparse's own exits included)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def one_line_error(capsys) -> str:
    """The command's stderr, asserted to be a single line and no traceback."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err
