"""What the operator reads: progress through logging, each line tagged with the VM its thread
works on; one table renderer; the level that -q and -v choose.

Lines go to stdout (a terminal, a pipe, a log file), or above the live table while a fleet
run draws one (`live`), or to stderr while a task prints JSON on stdout (`json_on_stdout`).
Levels: DEBUG adds every probe (-v); INFO is each step and change
(the default); RESULT is what a run ended in, which --quiet still shows with the warnings.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from contextlib import contextmanager
from typing import Callable, Sequence

RESULT = 25
logging.addLevelName(RESULT, "RESULT")

log = logging.getLogger("xenkvm")
_vm: contextvars.ContextVar[str] = contextvars.ContextVar("vm", default="")
_json_on_stdout = False


def lines_stream():
    """Where progress lines (and a live table) go: stdout, or stderr while stdout carries JSON."""
    return sys.stderr if _json_on_stdout else sys.stdout


@contextmanager
def json_on_stdout(enabled: bool = True):
    """--json: stdout holds the JSON document alone (`| jq` reads it), every other line goes to stderr."""
    global _json_on_stdout
    previous, _json_on_stdout = _json_on_stdout, _json_on_stdout or enabled
    try:
        yield
    finally:
        _json_on_stdout = previous


def set_vm(name: str) -> None:
    """Tag this thread's lines with the VM it works on ("" for none): several VMs at once."""
    _vm.set(name)


class _Lines(logging.Handler):
    """Whole lines to `sink` (lines_stream(), looked up at each line, or the live table's console)."""

    def __init__(self, sink: Callable[[str], None] | None = None):
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        vm = _vm.get()
        text = record.getMessage()
        line = f"[{vm}] {text}" if vm else text
        if self.sink is not None:
            self.sink(line)
        else:
            stream = lines_stream()
            stream.write(line + "\n")
            stream.flush()


_plain = _Lines()
log.addHandler(_plain)
log.setLevel(logging.INFO)
log.propagate = False


@contextmanager
def level(quiet: bool, verbose: bool):
    """The level a task runs at: --quiet shows results and warnings, -v adds every probe."""
    previous = log.level
    log.setLevel(RESULT if quiet else logging.DEBUG if verbose else logging.INFO)
    try:
        yield
    finally:
        log.setLevel(previous)


@contextmanager
def live(print_line: Callable[[str], None]):
    """While a live table is drawn, lines go above it (rich's console) instead of to stdout."""
    handler = _Lines(print_line)
    log.removeHandler(_plain)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.addHandler(_plain)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]):
    """The one table layout: rich's Table, plain columns, no borders (a terminal, a log and a
    diff read it alike)."""
    from rich.table import Table

    grid = Table(*header, box=None, pad_edge=False, show_edge=False, header_style=None)
    for row in rows:
        grid.add_row(*(str(cell) for cell in row))
    return grid


def table_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The table as plain text, as wide as it needs, without trailing blanks."""
    import io

    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=10_000, color_system=None, highlight=False).print(table(header, rows))
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())
