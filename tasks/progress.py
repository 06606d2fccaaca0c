"""Live progress for several VMs at once: a table on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass

from . import remote


@dataclass
class _Row:
    step: str = "waiting"
    started: float | None = None
    ended: float | None = None
    result: str = ""

    def elapsed(self) -> str:
        if self.started is None:
            return ""
        return f"{(self.ended or time.monotonic()) - self.started:.1f}s"


class FleetView:
    """Tracks each VM's current step and elapsed time; draws them live when stdout is a terminal.

    Plain output (a pipe, a log file, CI) gets nothing extra: every step already
    prints its own line, tagged with the VM.
    """

    def __init__(self, names: list[str], live: bool | None = None):
        self.rows = {name: _Row() for name in names}
        self.live = sys.stdout.isatty() if live is None else live
        self._lock = threading.Lock()
        self._display = None

    def __enter__(self) -> "FleetView":
        if self.live:
            from rich.live import Live

            self._display = Live(self._table(), refresh_per_second=4, transient=False)
            self._display.__enter__()
            remote.set_sink(self._display.console.print)
        return self

    def __exit__(self, *exc) -> None:
        if self._display is not None:
            self._display.update(self._table())
            self._display.__exit__(*exc)
            remote.set_sink(None)

    def step(self, vm: str, name: str) -> None:
        with self._lock:
            row = self.rows[vm]
            row.step = name
            row.started = row.started or time.monotonic()
        self._refresh()

    def finish(self, vm: str, ok: bool, where: str) -> None:
        with self._lock:
            row = self.rows[vm]
            row.step, row.result, row.ended = where, "ok" if ok else "FAILED", time.monotonic()
        self._refresh()

    def _refresh(self) -> None:
        if self._display is not None:
            self._display.update(self._table())

    def _table(self):
        from rich.table import Table

        table = Table("VM", "step", "elapsed", "result")
        with self._lock:
            for name, row in self.rows.items():
                table.add_row(name, row.step, row.elapsed(), row.result)
        return table


class SyncBars:
    """A DRBD resync as one progress bar per resource, on a terminal (`drbd.wait-sync`).

    Elsewhere it draws nothing: the wait already prints a plain line every few seconds.
    """

    def __init__(self, resources: list[str], console=None):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  TextColumn("{task.percentage:>5.1f}%"), TimeElapsedColumn(), console=console)
        self._bars = {name: self._progress.add_task(name, total=100) for name in resources}

    def __enter__(self) -> "SyncBars":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def update(self, states: dict) -> None:
        """states: resource -> DrbdState; an UpToDate pair is 100%, else its sync percentage."""
        for name, state in states.items():
            done = 100.0 if state.is_uptodate_pair else (state.sync_percent or 0.0)
            self._progress.update(self._bars[name], completed=done)
