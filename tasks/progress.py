"""Live progress on a terminal: a DRBD resync as bars."""

from __future__ import annotations


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
