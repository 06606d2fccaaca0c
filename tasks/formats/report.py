"""`fab report`: the moves of each VM, from the audit log and the journals, as a timeline chart
(inline SVG) and a table in one self-contained HTML page.

A move's phases come from its `downtime` record when the move wrote one (measured: shutdown,
switch, boot, and the downtime), else from its commands in the audit log: the shutdown sent on
the source, the demotion there, the start on the target (derived: the boot is only the start
command, since nothing saw the guest come up, so the downtime is not measured). The journal of
each move gives its VM, direction, window and outcome. Pure: text and data in, text out.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping

from ..errors import quoted
from . import FormatError
from .templating import template

PHASES = ("shutdown", "switch", "boot")


def _slack(stamp: str) -> timedelta:
    """How far a journal time may be off the audit log's: journals wrote whole seconds before
    they wrote milliseconds (as the audit log always did)."""
    return timedelta(milliseconds=10) if "." in stamp else timedelta(seconds=1)


@dataclass(frozen=True)
class Command:
    host: str
    argv: tuple[str, ...]
    start: datetime
    end: datetime


@dataclass
class Move:
    vm: str
    source: str
    target: str
    started: datetime
    outcome: str                                   # done, rolled-back, rollback-failed, running, ...
    phases: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    downtime: float | None = None                  # seconds, when measured

    @property
    def measured(self) -> bool:
        return self.downtime is not None

    def seconds(self, phase: str) -> float | None:
        span = self.phases.get(phase)
        return None if span is None else (span[1] - span[0]).total_seconds()


@dataclass(frozen=True)
class VmNames:
    """What names a VM in a command: its domain name, its cfg path, its DRBD resources."""

    name: str
    cfg: str
    resources: frozenset[str]


def parse_time(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def parse_since(text: str, now: datetime) -> datetime:
    """--since: an ISO-8601 date or time (UTC unless it says otherwise), or an age: 30m, 12h, 7d."""
    age = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if age:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[age.group(2)]
        return now - timedelta(**{unit: int(age.group(1))})
    try:
        return parse_time(text.strip())
    except ValueError:
        raise FormatError(f"--since {quoted(text)} is neither an ISO-8601 date or time nor an age such as 12h or 7d") from None


def argv_of(command: str) -> tuple[str, ...]:
    """A logged command line without its `sudo -n --` and `env VAR=...` prefix."""
    try:
        words = shlex.split(command)
    except ValueError:
        return ()
    if words[:3] == ["sudo", "-n", "--"]:
        words = words[3:]
    if words[:1] == ["env"]:
        words = words[1:]
        while words and "=" in words[0]:
            words = words[1:]
    return tuple(words)


def read_audit(lines: Iterable[str]) -> tuple[list[Command], list[dict], int]:
    """The audit log's change commands, its downtime records, and how many lines were unreadable."""
    commands, downtimes, bad = [], [], 0
    for line in lines:
        try:
            entry = json.loads(line)
            when = parse_time(entry["time"])
            if entry.get("kind") == "downtime":
                downtimes.append({**entry, "time": when, **{k: float(entry[k]) for k in ("down", *PHASES)}})
            elif entry.get("kind") == "change":
                end = when
                commands.append(Command(str(entry["host"]), argv_of(str(entry["command"])),
                                        end - timedelta(seconds=float(entry.get("duration") or 0)), end))
        except (ValueError, KeyError, TypeError, AttributeError):
            bad += 1
    return commands, downtimes, bad


def _verb(argv: tuple[str, ...]) -> str | None:
    """xl/xm VERB ..., virsh -c URI VERB ...: the verb."""
    if argv[:1] in (("xl",), ("xm",)):
        return argv[1] if len(argv) > 1 else None
    if argv[:2] == ("virsh", "-c"):
        return argv[3] if len(argv) > 3 else None
    return None


def _shutdown(argv: tuple[str, ...], vm: VmNames) -> bool:
    return _verb(argv) == "shutdown" and argv[-1] == vm.name


def _start(argv: tuple[str, ...], vm: VmNames) -> bool:
    """`xl create CFG` names the VM by its cfg, `virsh start NAME` by its name."""
    return (_verb(argv) == "create" and argv[-1] == vm.cfg) or (_verb(argv) == "start" and argv[-1] == vm.name)


def _drbd(argv: tuple[str, ...], verb: str, vm: VmNames) -> bool:
    return argv[:2] == ("drbdadm", verb) and bool(vm.resources & set(argv[2:]))


def derive_phases(move: Move, vm: VmNames, commands: list[Command], window: tuple[datetime, datetime]) -> None:
    """Phases from the move's commands inside its window, in the order a move sends them:
    shutdown (until the demotion, sent once the guest was seen gone), switch (until the start
    command), boot (the start command alone)."""
    inside = [c for c in commands if window[0] <= c.start <= window[1]]

    def first(host: str, matches, after: datetime) -> Command | None:
        return next((c for c in inside if c.host == host and c.start >= after and matches(c.argv, vm)), None)

    stop = first(move.source, _shutdown, window[0])
    demote = stop and first(move.source, lambda argv, names: _drbd(argv, "secondary", names), stop.start)
    start = demote and first(move.target, _start, demote.start)
    if stop and demote:
        move.phases["shutdown"] = (stop.start, demote.start)
    if demote and start:
        move.phases["switch"] = (demote.start, start.start)
        move.phases["boot"] = (start.start, start.end)


def measure_phases(move: Move, record: Mapping) -> None:
    """Phases from a downtime record, written when the guest answered on the target."""
    end = record["time"]
    begin = end - timedelta(seconds=record["down"])
    move.phases["shutdown"] = (begin, begin + timedelta(seconds=record["shutdown"]))
    switch_end = move.phases["shutdown"][1] + timedelta(seconds=record["switch"])
    move.phases["switch"] = (move.phases["shutdown"][1], switch_end)
    move.phases["boot"] = (switch_end, end)
    move.downtime = record["down"]


def collect_moves(journals: list[dict], commands: list[Command], downtimes: list[dict],
                  names: Mapping[str, VmNames]) -> list[Move]:
    """One Move per journal (a move's run), each with its downtime record when one falls in its
    window, else phases derived from its commands; plus a Move per downtime record no journal
    claims (journals moved away). In time order."""
    moves, claimed = [], set()
    for journal in journals:
        started = parse_time(journal["started"])
        finished = journal.get("finished")
        window = (started - _slack(journal["started"]),
                  parse_time(finished) + _slack(finished) if finished else started + timedelta(days=1))
        move = Move(journal["vm"], journal["source"], journal["target"], started, journal["status"])
        found = next((i for i, d in enumerate(downtimes)
                      if i not in claimed and d.get("vm") == move.vm and d.get("from") == move.source
                      and d.get("to") == move.target and window[0] <= d["time"] <= window[1]), None)
        if found is not None:
            claimed.add(found)
            measure_phases(move, downtimes[found])
        elif move.vm in names:
            derive_phases(move, names[move.vm], commands, window)
        moves.append(move)
    for i, downtime in enumerate(downtimes):
        if i not in claimed:
            move = Move(str(downtime.get("vm")), str(downtime.get("from")), str(downtime.get("to")),
                        downtime["time"] - timedelta(seconds=downtime["down"]), "done")
            measure_phases(move, downtime)
            moves.append(move)
    return sorted(moves, key=lambda m: (m.started, m.vm))


# -- the page ------------------------------------------------------------------------------------

LABEL_WIDTH = 230     # px: each row's label left of the chart
PLOT_WIDTH = 640      # px: the longest move of the VM
ROW_HEIGHT = 34
BAR_HEIGHT = 14
TOP = 24              # room for the downtime marks above the first bar
MARK_ROOM = 110       # px right of the longest move: its "down 14.2 s" or "not measured"


def _ticks(span: float) -> list[float]:
    """About five round steps from 0 to span (seconds)."""
    step = next((s for s in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600) if span / s <= 6), 7200)
    return [round(i * step, 3) for i in range(int(span / step) + 1)]


@dataclass(frozen=True)
class Bar:
    phase: str
    x: float
    width: float
    seconds: float


@dataclass(frozen=True)
class Row:
    move: Move
    y: float
    bars: list[Bar]

    @property
    def mark_end(self) -> float:
        """Where the move's last phase ends on the chart (its downtime mark ends there)."""
        return max((bar.x + bar.width for bar in self.bars), default=LABEL_WIDTH)


def chart(moves: list[Move]) -> dict:
    """One VM's timeline: a row per move, its phases as bars on a shared scale from the move's
    first phase (seconds), its downtime marked above them; the geometry the template draws."""
    spans = [(min(s for s, _ in m.phases.values()), max(e for _, e in m.phases.values())) for m in moves if m.phases]
    span = max([(end - begin).total_seconds() for begin, end in spans] + [1.0])
    scale = PLOT_WIDTH / span
    rows = []
    for index, move in enumerate(moves):
        origin = min((s for s, _ in move.phases.values()), default=move.started)
        bars = [Bar(phase, LABEL_WIDTH + (begin - origin).total_seconds() * scale,
                    max((end - begin).total_seconds() * scale, 1.0), (end - begin).total_seconds())
                for phase, (begin, end) in move.phases.items()]
        rows.append(Row(move, TOP + index * ROW_HEIGHT, bars))
    return {"rows": rows, "width": LABEL_WIDTH + PLOT_WIDTH + MARK_ROOM, "height": TOP + len(moves) * ROW_HEIGHT + 30,
            "ticks": [{"x": LABEL_WIDTH + t * scale, "label": f"{t:g} s"} for t in _ticks(span)],
            "axis_y": TOP + len(moves) * ROW_HEIGHT, "bar_height": BAR_HEIGHT, "label_width": LABEL_WIDTH}


def render_report(moves: list[Move], *, generated: datetime, since: datetime | None, sources: list[str],
                  notes: list[str]) -> str:
    """The HTML page: per VM its chart and its table; nothing in it is fetched from anywhere."""
    by_vm: dict[str, list[Move]] = {}
    for move in moves:
        by_vm.setdefault(move.vm, []).append(move)
    vms = [{"name": name, "chart": chart(vm_moves), "moves": vm_moves} for name, vm_moves in sorted(by_vm.items())]
    return template("report.html.j2", autoescape=True).render(
        vms=vms, phases=PHASES, generated=generated.isoformat(timespec="seconds"),
        since=since.isoformat(timespec="seconds") if since else None, sources=sources, notes=notes,
        any_derived=any(not m.measured for m in moves))
