"""Live progress for several VMs at once: a table on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import threading
import time

from . import remote


class FleetView:
    """Tracks each VM's current step and elapsed time; draws them live when stdout is a terminal.

    Plain output (a pipe, a log file, CI) gets nothing extra: every step already
    prints its own line, tagged with the VM.
    """

    def __init__(self, names: list[str], live: bool | None = None):
        self.rows = {name: ["waiting", None, ""] for name in names}   # step, started, result
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
            row[0] = name
            row[1] = row[1] or time.monotonic()
        self._refresh()

    def finish(self, vm: str, ok: bool, where: str) -> None:
        with self._lock:
            self.rows[vm][0] = where
            self.rows[vm][2] = "ok" if ok else "FAILED"
            started = self.rows[vm][1]
            self.rows[vm][1] = -(time.monotonic() - started) if started else None   # frozen elapsed
        self._refresh()

    def _refresh(self) -> None:
        if self._display is not None:
            self._display.update(self._table())

    def _table(self):
        from rich.table import Table

        table = Table("VM", "step", "elapsed", "result")
        with self._lock:
            for name, (step, started, result) in self.rows.items():
                if started is None:
                    elapsed = ""
                else:
                    elapsed = f"{-started if started < 0 else time.monotonic() - started:.1f}s"
                table.add_row(name, step, elapsed, result)
        return table
