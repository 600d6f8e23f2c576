"""The shared progress helper: a bar on a terminal, heartbeat log lines (never ``\\r``) elsewhere."""

from __future__ import annotations

import io
import logging

import pytest

from sttabt import progress
from sttabt.progress import Progress, track


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_it_logs_heartbeats_and_draws_nothing(caplog):
    stream = io.StringIO()
    caplog.set_level(logging.INFO, logger="sttabt.progress")
    with Progress(4, "job", stream=stream, interval=0.0) as bar:
        for _ in range(4):
            bar.update(1, loss=0.5)
    assert stream.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("job: 1/4 steps (25 %)") and "loss 0.5" in lines[0]
    assert lines[-1].startswith("job: 4/4 steps (100 %)") and lines[-1].endswith("(done)")


def test_heartbeats_are_spaced_by_the_interval(caplog):
    caplog.set_level(logging.INFO, logger="sttabt.progress")
    with Progress(100, "slow", stream=io.StringIO(), interval=3600.0) as bar:
        for _ in range(100):
            bar.update()
    assert caplog.records == []  # a short job says nothing, not even "done"


def test_on_a_terminal_it_draws_a_bar_and_logs_nothing(caplog):
    stream = FakeTTY()
    caplog.set_level(logging.INFO, logger="sttabt.progress")
    with Progress(3, "tty", stream=stream, interval=0.0) as bar:
        for _ in range(3):
            bar.update(1, loss=0.25)
    assert "tty" in stream.getvalue() and "\r" in stream.getvalue()
    assert caplog.records == []


def test_disabled_is_silent(caplog):
    stream = FakeTTY()
    caplog.set_level(logging.INFO, logger="sttabt.progress")
    assert list(track(range(5), "off", enabled=False)) == list(range(5))
    with Progress(2, "off", stream=stream, enabled=False, interval=0.0) as bar:
        bar.update(2)
    assert stream.getvalue() == "" and caplog.records == []


def test_track_yields_everything_and_uses_the_module_interval(caplog, monkeypatch):
    monkeypatch.setattr(progress, "HEARTBEAT_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger="sttabt.progress")
    assert list(track(["a", "b"], "items", unit="batch")) == ["a", "b"]
    assert any(r.getMessage().startswith("items: 2/2 batches (100 %)") for r in caplog.records)


@pytest.mark.parametrize("total", [None, 0])
def test_unknown_total(caplog, total):
    caplog.set_level(logging.INFO, logger="sttabt.progress")
    with Progress(total, "open", stream=io.StringIO(), interval=0.0) as bar:
        bar.update(3)
    assert caplog.records[0].getMessage().startswith("open: 3 steps,")
