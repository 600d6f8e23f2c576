"""One progress helper for every command: a tqdm bar on a terminal, a periodic log line elsewhere.

A bar's ``\\r`` redraws turn a log file into one enormous line, and a silent job looks hung; so when
stderr is not a TTY (CI, ``nohup``, ``| tee``) nothing is drawn and a heartbeat line is logged every
``interval`` seconds instead (position, rate, elapsed time and the caller's current figures).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

log = logging.getLogger("sttabt.progress")

T = TypeVar("T")

#: Seconds between two heartbeat lines when stderr is not a terminal.
HEARTBEAT_SECONDS = 60.0


class Progress:
    """Counts steps of one job; draws a bar on a TTY, logs a heartbeat line otherwise, or stays silent.

    ``enabled=False`` silences both (e.g. on non-main processes). Use as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "step",
        enabled: bool = True,
        interval: float | None = None,
        stream: IO[str] | None = None,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.count = 0
        self.interval = HEARTBEAT_SECONDS if interval is None else interval
        self._postfix: dict[str, Any] = {}
        self._start = self._last = time.perf_counter()
        self._beats = 0
        stream = stream if stream is not None else sys.stderr
        tty = enabled and bool(getattr(stream, "isatty", lambda: False)())
        self._heartbeat = enabled and not tty
        self._bar = None
        if tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False, mininterval=1.0)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n``; ``postfix`` values (already formatted or numbers) show beside the count."""
        self.count += n
        if postfix:
            self._postfix = postfix
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
            self._bar.update(n)
        elif self._heartbeat:
            now = time.perf_counter()
            if now - self._last >= self.interval:
                self._last = now
                self._beats += 1
                log.info("%s", self.line())

    def line(self) -> str:
        """``desc: 12/40 steps (30 %), 1.9 steps/s, 6 s elapsed, loss 0.4123``."""
        elapsed = time.perf_counter() - self._start
        position = f"{self.count}/{self.total}" if self.total else str(self.count)
        percent = f" ({100 * self.count / self.total:.0f} %)" if self.total else ""
        rate = self.count / elapsed if elapsed > 0 else 0.0
        extra = "".join(f", {k} {_fmt(v)}" for k, v in self._postfix.items())
        units = _plural(self.unit)
        return (
            f"{self.desc}: {position} {units}{percent}, {rate:.2f} {units}/s, {elapsed:.0f} s elapsed{extra}"
        )

    def close(self) -> None:
        """Remove the bar; after a job long enough to have logged a heartbeat, log where it ended."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._heartbeat and self._beats:
            self._beats = 0
            log.info("%s (done)", self.line())
        self._heartbeat = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(
    items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "batch", enabled: bool = True
) -> Iterator[T]:
    """Iterate over ``items`` with a :class:`Progress` (``total`` defaults to ``len(items)``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit=unit, enabled=enabled) as progress:
        for item in items:
            yield item
            progress.update(1)


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
