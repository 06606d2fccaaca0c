"""The undo journal, the VM's lock on this machine, and the undo table.

Each step of a move records its undo here before it starts; a failure, a stop request or
`fab rollback` after a crash undoes the recorded steps in reverse order.  Every undo looks at
live state first, so running one twice, or one whose step never got far, is harmless.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, Mapping

from . import drbd, hypervisors
from .errors import GuardError, ToolError, quoted
from .hostlock import holder, operator
from .hypervisors import SHUTDOWN_POLL, wait_until
from .inventory import SIDES, VM, other
from .output import log
from .remote import make_private_dir, read_record, state_dir

if TYPE_CHECKING:
    from .flows import Ctx, Step


class Journal:
    """One run's steps and their undos, rewritten atomically after every change of state."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data

    @classmethod
    def start(cls, directory: Path, vm: VM, target_side: str) -> "Journal":
        data = {
            "vm": vm.name, "run": os.urandom(6).hex(), "pid": os.getpid(),
            "who": operator(),
            "started": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "source": vm.host_for(other(target_side)), "target": vm.host_for(target_side),
            "to": target_side, "status": "running", "steps": [],
        }
        journal = cls(directory / f"{vm.name}.json", data)
        journal.save()
        return journal

    @classmethod
    def load(cls, directory: Path, vm_name: str) -> "Journal | None":
        path = directory / f"{vm_name}.json"
        raw = read_record(path, MAX_JOURNAL_BYTES, "journal")
        return None if raw is None else cls(path, parse_journal(raw, str(path), vm_name))

    def save(self) -> None:
        """A temp file, fsynced, renamed over the journal, the directory fsynced: what a step
        will do is on disk before it starts, whatever happens to this machine then."""
        try:
            make_private_dir(self.path.parent)
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w") as fh:
                fh.write(json.dumps(self.data, indent=1))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise JournalError(f"the journal {self.path} cannot be written ({exc.strerror})") from None

    def begin(self, step: "Step") -> dict:
        entry = {"name": step.name, "host": step.host, "status": "started", "undo": step.undo}
        self.data["steps"].append(entry)
        try:
            self.save()
        except JournalError:
            self.data["steps"].remove(entry)   # not recorded, so not started: nothing of it to undo
            raise
        return entry

    def mark(self, entry: dict, status: str) -> None:
        entry["status"] = status
        self.save()

    def mark_in_undo(self, entry: dict, status: str) -> None:
        """An undo goes on when its record cannot be written (a full disk): it says so instead."""
        try:
            self.mark(entry, status)
        except JournalError as exc:
            log.warning(f"! {exc}: the undo goes on without it")

    def finish(self, status: str) -> None:
        """Close the run and move the journal to the history folder."""
        self.data["status"] = status
        self.data["finished"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        self.save()
        try:
            done = make_private_dir(self.path.parent / "done")
            os.replace(self.path, done / f"{self.data['vm']}-{self.data['run']}.json")
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise JournalError(f"the journal {self.path} cannot be closed ({exc.strerror})") from None

    def summary(self) -> str:
        last = next((s for s in reversed(self.data["steps"])), None)
        at = f", last step '{last['name']}' ({last['status']})" if last else ""
        return (f"run {self.data['run']} by {self.data['who']} started {self.data['started']}, "
                f"{self.data['source']} -> {self.data['target']}{at}")


class JournalError(ToolError):
    """The journal cannot be written: no step may start without its record."""


MAX_JOURNAL_BYTES = 1 << 20    # a run's journal is a few kB
MAX_JOURNAL_TEXT = 200
_JOURNAL_FIELDS = {"vm": str, "run": str, "who": str, "started": str, "source": str, "target": str,
                   "to": str, "status": str, "steps": list}
_STEP_FIELDS = {"name": str, "host": str, "status": str}
STEP_STATUSES = ("started", "done", "failed", "undone")


def parse_journal(raw: bytes, path: str, vm_name: str) -> dict:
    """A journal file's data, checked whole before anything acts on it.

    A file cut short by a full disk, edited by hand or not written by this tool would
    otherwise crash `rollback` and `migrate` halfway, or undo the wrong thing on the wrong
    side; every such file is refused in one line that names it.
    """
    def refused(problem: str) -> ToolError:
        return ToolError(f"{path}: not a journal this tool can use ({problem}); inspect it, then move it away")

    def check_fields(record: dict, fields: Mapping[str, type], where: str) -> None:
        for key, kind in fields.items():
            value = record.get(key)
            if not isinstance(value, kind):
                raise refused(f"{where}{key}: expected {kind.__name__}, got {type(value).__name__}")
            if isinstance(value, str) and not (len(value) <= MAX_JOURNAL_TEXT and value.isprintable()):
                raise refused(f"{where}{key}: {quoted(value)} is not one short line")

    if len(raw) > MAX_JOURNAL_BYTES:
        raise refused(f"larger than {MAX_JOURNAL_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:   # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise refused(f"not JSON: {str(exc).split(';')[0]}") from None
    if not isinstance(data, dict):
        raise refused(f"a JSON {type(data).__name__}, not an object")
    check_fields(data, _JOURNAL_FIELDS, "")
    if data["vm"] != vm_name:
        raise refused(f"it is the journal of VM {quoted(data['vm'])}")
    if not re.fullmatch(r"[0-9a-f]{1,32}", data["run"]):   # it names the file kept in done/
        raise refused(f"run: {quoted(data['run'])} is not a run id")
    if data["to"] not in SIDES:
        raise refused(f"to: {quoted(data['to'])} is not one of {', '.join(SIDES)}")
    for number, step in enumerate(data["steps"]):
        where = f"steps[{number}]"
        if not isinstance(step, dict):
            raise refused(f"{where}: expected an object, got {type(step).__name__}")
        check_fields(step, _STEP_FIELDS, f"{where}.")
        if step["status"] not in STEP_STATUSES:
            raise refused(f"{where}.status: {quoted(step['status'])} is not one of {', '.join(STEP_STATUSES)}")
        undo = step.get("undo")
        if undo is not None and not (isinstance(undo, dict) and isinstance(undo.get("op"), str)
                                     and undo["op"] in UNDO_OPS and undo.get("side") in SIDES):
            raise refused(f"{where}.undo: expected null or an undo this tool knows, got {quoted(undo)}")
    return data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class VmLock:
    """One run per VM at a time: an flock the kernel releases if the process dies."""

    def __init__(self, directory: Path, vm_name: str):
        self.path = make_private_dir(directory) / f"{vm_name}.lock"
        self.vm_name = vm_name
        self.fh: IO[str] | None = None

    def __enter__(self) -> "VmLock":
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            who = fh.read().strip() or "another process"
            fh.close()
            raise GuardError(f"{self.vm_name} is already being handled by {who}; wait for it to finish") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{holder()}\n")
        fh.flush()
        self.fh = fh
        return self

    def __exit__(self, *exc) -> None:
        assert self.fh is not None
        self.fh.truncate(0)
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def journal_dir(c) -> Path:
    return state_dir(c) / "journal"


def lock_dir(c) -> Path:
    return state_dir(c) / "locks"


def consoles_dir(c) -> Path:
    """Where the last console lines of a guest that did not come up are kept."""
    return state_dir(c) / "consoles"


# -- the undo table: what undoes each kind of step ------------------------------------------------

def _start(ctx: Ctx, undo: dict) -> None:
    """The restart where the guest ran. If its shutdown had been requested, it may still be going
    down: wait for that first (up to rollback_timeout), or the restart would find it running and
    the guest would then stop for good. The start guard's facts are probed, as nothing before
    established them. A guest it starts must prove itself up there too (flows.Ctx.prove_restart)."""
    side = undo["side"]
    host = ctx.vm.host_for(side)
    if undo.get("shutdown_requested") and ctx.running(side):
        gone = wait_until(lambda max_age: not ctx.running(side, max_age), ctx.rollback_timeout, SHUTDOWN_POLL,
                          f"{host}: waiting for the shutdown already requested of {ctx.vm.name} to end",
                          ctx.interruption)
        if not gone:
            log.info(f"* {host}: {ctx.vm.name} still runs {ctx.rollback_timeout:.0f}s after its shutdown was "
                f"requested: it ignored the request ... ok")
            return
    proof = ctx.proof(side)
    proof.mark_console()

    def start_and_prove() -> None:
        ctx.launch(side)
        ctx.prove_restart(proof)

    drbd.start_guarded(ctx.site, ctx.vm, host, start_and_prove)


def _demote(ctx: Ctx, undo: dict) -> None:
    host = ctx.vm.host_for(undo["side"])
    drbd.demote(ctx.site.host(host), ctx.vm, host, domain_running=ctx.running(undo["side"]))


def _undefine(ctx: Ctx, undo: dict) -> None:
    kvm = hypervisors.kvm(ctx.site, ctx.vm.kvm_host)
    if not kvm.running(ctx.vm.name):
        kvm.undefine(ctx.vm.name)


UNDO_OPS: dict[str, Callable[[Ctx, dict], None]] = {
    "start": _start,
    "stop": lambda ctx, undo: ctx.stop_in_undo(undo["side"]),
    "primary": lambda ctx, undo: ctx.promote(undo["side"]),
    "secondary": _demote,
    "undefine": _undefine,
}


def undo_steps(ctx: Ctx, journal: Journal) -> tuple[list[str], list[str]]:
    """Undo every step that ran, even in part, in reverse order: (what was undone, what failed).

    A failed step may have half happened (one of two resources demoted), so it is undone
    too; each undo looks at live state and skips what is not needed.  An undo that fails
    (its host stopped answering) does not end the others: the hosts that answer are put
    back as far as the guards allow.
    """
    undone, failed = [], []
    ctx.entry = None
    with ctx.interruption.shield():
        for entry in reversed(journal.data["steps"]):
            if entry["status"] not in ("started", "done", "failed") or not entry.get("undo"):
                continue
            log.info(f"  undo: {entry['name']}")
            try:
                UNDO_OPS[entry["undo"]["op"]](ctx, entry["undo"])
            except ToolError as exc:
                log.warning(f"! undo of '{entry['name']}' failed: {exc}")
                failed.append(f"{entry['name']} ({exc})")
                continue
            journal.mark_in_undo(entry, "undone")
            undone.append(entry["name"])
    return undone, failed
