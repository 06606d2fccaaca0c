"""`fab report`: the moves recorded on this control machine as one HTML page (formats/report.py):
the audit log's commands and downtime records, and the journals of the moves (finished ones are
kept in STATE_DIR/journal/done). Contacts no host."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from . import inventory
from .cli import task
from .errors import InputError, ToolError, reading, shown
from .formats.report import VmNames, collect_moves, parse_since, parse_time, read_audit, render_report
from .journal import journal_dir, parse_journal
from .output import RESULT, log
from .remote import audit_path


def read_journals(directory: Path) -> tuple[list[dict], list[str]]:
    """Every journal, unfinished and finished; a file of a wrong shape is left out, and said so."""
    journals, notes = [], []
    for path in sorted([*directory.glob("*.json"), *directory.glob("done/*.json")]):
        try:
            raw = path.read_bytes()
            vm = json.loads(raw).get("vm")
            journal = parse_journal(raw, str(path), vm if isinstance(vm, str) else "")
            for key in ("started", "finished"):
                if key in journal:
                    parse_time(journal[key])
            journals.append(journal)
        except ToolError as exc:   # names the file and what is wrong with it
            notes.append(f"left out {exc}")
        except (OSError, ValueError, AttributeError) as exc:
            notes.append(f"left out {path}: not a journal ({type(exc).__name__})")
    return sorted(journals, key=lambda journal: parse_time(journal["started"])), notes


def read_audit_log(path: Path) -> list[str]:
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return fh.readlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ToolError(f"{path}: cannot read the audit log ({exc.strerror})") from None


def write_page(path: Path, page: str) -> None:
    """Beside the target first, then renamed over it: a browser never opens half a page."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ToolError(f"{path}: cannot write the report ({exc.strerror})") from None


@task(help={"html": "the HTML file to write (one self-contained page)",
            "since": "only moves begun since then: an ISO-8601 date or time (UTC unless it says), or an age "
                     "such as 12h or 7d (default: every move recorded)"})
def report(c, html, since=None):
    """The moves of every VM from the audit log and the journals: per VM a timeline chart of each
    move's shutdown, switch and boot (downtime marked where it was measured) and a table."""
    inv = inventory.from_context(c)
    now = datetime.now(timezone.utc)
    with reading("--since"):
        since_at = parse_since(since, now) if since else None
    target = Path(html)
    if not target.parent.is_dir():
        raise InputError(f"--html {shown(html)}: no such directory {shown(str(target.parent))}")
    audit, journals_at = audit_path(c), journal_dir(c)
    commands, downtimes, unreadable = read_audit(read_audit_log(audit))
    journals, notes = read_journals(journals_at)
    if unreadable:
        notes.append(f"{unreadable} line(s) of {audit} are not audit records and were left out")
    names = {vm.name: VmNames(vm.name, vm.cfg, frozenset(d.resource for d in vm.resources)) for vm in inv.vms.values()}
    moves = [m for m in collect_moves(journals, commands, downtimes, names) if since_at is None or m.started >= since_at]
    write_page(target, render_report(moves, generated=now, since=since_at, sources=[str(audit), str(journals_at)],
                                     notes=notes))
    for note in notes:
        log.warning(f"! {note}")
    log.log(RESULT, f"== report: {len(moves)} move(s) of {len({m.vm for m in moves})} VM(s) in {html}")
