"""Flows: migrate a VM between its Xen and KVM hosts, roll back, report status.

Check before change (Ganeti's CheckPrereq / Exec): every read-only check on
both hosts runs first; only then does anything change.  Each change records
its undo in a journal on the control machine before it starts; a failure
undoes the completed steps in reverse order.  Undo operations look at live
state first, so `rollback` works after a crash as well as after a failure.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from invoke import task

from . import drbd, inventory, kvmhost, localdisk, xenhost
from .errors import GuardError, InputError, ToolError, quoted
from .hostlock import holder, operator
from .interrupt import Interrupted, Interruption
from .inventory import VM, Inventory
from .progress import FleetView
from .remote import (RemoteError, Site, concurrently, make_private_dir, say, set_output_prefix, site_from_context,
                     state_dir)

SIDES = ("xen", "kvm")
ROLLBACK_TIMEOUT = 120.0


def other(side: str) -> str:
    return "kvm" if side == "xen" else "xen"


def _stage(side: str):
    return xenhost if side == "xen" else kvmhost


def running_on(site: Site, inv: Inventory, vm: VM, side: str, max_age: float = 0.0) -> bool:
    host = inv.host(vm.host_for(side))
    return _stage(side).domain_running(site.host(host.name), host, vm.name, max_age)


def where_running(site: Site, inv: Inventory, vm: VM) -> list[str]:
    """The hosts where the VM's domain runs now (probes both)."""
    return where_seen(site, inv, vm)[0]


def where_seen(site: Site, inv: Inventory, vm: VM) -> tuple[list[str], str]:
    """The hosts where the VM's domain runs now, and its state on the KVM host (`not found`
    when undefined there), from one listing per host: a move needs both before it plans."""
    kvm = inv.host(vm.kvm_host)
    kvm_state, on_xen = concurrently(lambda: kvmhost.domain_state(site.host(kvm.name), kvm, vm.name),
                                     lambda: running_on(site, inv, vm, "xen"))
    running = {"xen": on_xen, "kvm": kvm_state not in kvmhost.STOPPED}
    return [vm.host_for(side) for side in SIDES if running[side]], kvm_state


# -- journal and lock ---------------------------------------------------------------------------

class Journal:
    """One run's steps and their undos, rewritten atomically after every change of state."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data

    @classmethod
    def start(cls, directory: Path, vm: VM, target_side: str) -> "Journal":
        import uuid

        data = {
            "vm": vm.name, "run": uuid.uuid4().hex[:12], "pid": os.getpid(),
            "who": operator(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": vm.host_for(other(target_side)), "target": vm.host_for(target_side),
            "to": target_side, "status": "running", "steps": [],
        }
        journal = cls(directory / f"{vm.name}.json", data)
        journal.save()
        return journal

    @classmethod
    def load(cls, directory: Path, vm_name: str) -> "Journal | None":
        path = directory / f"{vm_name}.json"
        try:
            with path.open("rb") as file:
                raw = file.read(MAX_JOURNAL_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ToolError(f"{path}: unreadable journal ({exc.strerror}); inspect it, then move it away") from None
        return cls(path, parse_journal(raw, str(path), vm_name))

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
            say(f"! {exc}: the undo goes on without it")

    def finish(self, status: str) -> None:
        """Close the run and move the journal to the history folder."""
        self.data["status"] = status
        self.data["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
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

    def check_fields(record: dict, fields: dict[str, type], where: str) -> None:
        for key, kind in fields.items():
            value = record.get(key)
            if not isinstance(value, kind):
                raise refused(f"{where}{key}: expected {kind.__name__}, got {type(value).__name__}")
            if kind is str and not (len(value) <= MAX_JOURNAL_TEXT and value.isprintable()):
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
        self.fh = None

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
        self.fh.truncate(0)
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def journal_dir(c) -> Path:
    return state_dir(c) / "journal"


def lock_dir(c) -> Path:
    return state_dir(c) / "locks"


# -- undo operations: each looks at live state first, so running one twice is harmless -------------

@dataclass
class Ctx:
    site: Site
    inv: Inventory
    vm: VM
    timeout: float = xenhost.DEFAULT_SHUTDOWN_TIMEOUT
    force: bool = False
    on_step: Callable[[str], None] = lambda name: None    # live progress of a fleet run
    start_gate: Callable[[str], AbstractContextManager] = lambda host: nullcontext()   # HostSlots.starting
    rollback_timeout: float = ROLLBACK_TIMEOUT
    journal: "Journal | None" = None     # the running move's, while a step runs
    entry: dict | None = None            # the running step's journal entry

    @property
    def interruption(self) -> Interruption:
        return self.site.interruption

    def note_undo(self, **facts) -> None:
        """What the running step has done so far, for its undo (a shutdown already requested)."""
        if self.journal is not None and self.entry is not None and self.entry.get("undo"):
            self.entry["undo"].update(facts)
            self.journal.save()


def _start(ctx: Ctx, undo: dict) -> None:
    """The undo's restart where the guest ran. If its shutdown had been requested, it may still
    be going down: wait for that first (up to rollback_timeout), or the restart would find it
    running and the guest would then stop for good. The start guard's facts are probed, as
    nothing before established them."""
    side = undo["side"]
    host = ctx.vm.host_for(side)
    if undo.get("shutdown_requested") and running_on(ctx.site, ctx.inv, ctx.vm, side):
        gone = xenhost.wait_until(lambda max_age: not running_on(ctx.site, ctx.inv, ctx.vm, side, max_age),
                                  ctx.rollback_timeout, xenhost.SHUTDOWN_POLL,
                                  f"{host}: waiting for the shutdown already requested of {ctx.vm.name} to end",
                                  ctx.interruption)
        if not gone:
            say(f"* {host}: {ctx.vm.name} still runs {ctx.rollback_timeout:.0f}s after its shutdown was "
                f"requested: it ignored the request ... ok")
            return
    drbd.start_guarded(ctx.site, ctx.vm, host, lambda: _launch(ctx, side))


def _launch(ctx: Ctx, side: str) -> None:
    """Start the domain, within its host's `max_starts` (a fleet run's other VMs share it)."""
    host = ctx.inv.host(ctx.vm.host_for(side))
    remote = ctx.site.host(host.name)
    with ctx.start_gate(host.name):
        if side == "xen":
            xenhost.start_domain(remote, host, ctx.vm)
        else:
            kvmhost.start_domain(remote, host, ctx.vm.name)


def _stop(ctx: Ctx, side: str, timeout: float, force: bool) -> None:
    host = ctx.inv.host(ctx.vm.host_for(side))
    _stage(side).shutdown_domain(ctx.site.host(host.name), host, ctx.vm.name, timeout=timeout, force=force,
                                 on_requested=lambda: ctx.note_undo(shutdown_requested=True))


def _promote(ctx: Ctx, side: str) -> None:
    host = ctx.vm.host_for(side)
    drbd.promote(ctx.site.host(host), ctx.vm, host)


def _demote(ctx: Ctx, side: str, stopped_just_now: bool = False) -> None:
    """Demote on one side; the domain is probed unless the step before saw it gone.

    After that step the demotion is a bare `drbdadm secondary`, keeping a probe and a
    status read out of the guest's downtime: making a resource Secondary cannot cause
    two Primaries, it changes nothing where it is Secondary already, and DRBD itself
    refuses to demote a device that is held open.
    """
    host = ctx.vm.host_for(side)
    if stopped_just_now:
        drbd.demote_stopped(ctx.site.host(host), ctx.vm)
        return
    running = running_on(ctx.site, ctx.inv, ctx.vm, side)
    drbd.demote(ctx.site.host(host), ctx.vm, host, domain_running=running)


def _undefine(ctx: Ctx, side: str) -> None:
    host = ctx.inv.host(ctx.vm.kvm_host)
    remote = ctx.site.host(host.name)
    if not kvmhost.domain_running(remote, host, ctx.vm.name):
        kvmhost.undefine_domain(remote, host, ctx.vm.name)


UNDO_OPS: dict[str, Callable[[Ctx, dict], None]] = {
    "start": _start,
    "stop": lambda ctx, undo: _stop(ctx, undo["side"], ctx.rollback_timeout, True),
    "primary": lambda ctx, undo: _promote(ctx, undo["side"]),
    "secondary": lambda ctx, undo: _demote(ctx, undo["side"]),
    "undefine": lambda ctx, undo: _undefine(ctx, undo["side"]),
}


def run_undo(ctx: Ctx, undo: dict) -> None:
    UNDO_OPS[undo["op"]](ctx, undo)


# -- the plan ------------------------------------------------------------------------------------

@dataclass
class Established:
    """What a move's steps proved for its start guard: the target's resources made Primary (promote
    returns only then) and the domain seen gone from the source. The start checks these instead of
    probing again inside the guest's downtime."""

    primary: tuple[str, ...] = ()
    gone_from_source: bool = False

    def start(self, ctx: Ctx, side: str) -> None:
        drbd.check_start(ctx.vm, ctx.vm.host_for(side), dict.fromkeys(self.primary, "Primary"),
                         ctx.vm.host_for(other(side)), other_running=not self.gone_from_source)
        _launch(ctx, side)


@dataclass
class Step:
    name: str
    host: str
    shows: list[str]                     # the commands, for the printed plan
    action: Callable[[], object]
    undo: dict | None = None             # {"op": ..., "side": ...}, recorded before the step runs
    # False for a start: refused (its command failed, or a guard), it started nothing, and a
    # domain running there now was started by someone else: the undo must not stop it.
    undo_if_refused: bool = True


def plan_move(ctx: Ctx, target_side: str, xml: str | None, kvm_state: str) -> list[Step]:
    """The steps of one move, mirror images for the two directions; `kvm_state` is the domain's
    state on the KVM host as resolve_target just saw it, under the VM's lock.

    The KVM domain is defined and the target's swap matched before the guest stops, so
    the guest's downtime holds only the shutdown, the DRBD switch and the start.
    """
    vm, inv, site = ctx.vm, ctx.inv, ctx.site
    source_side = other(target_side)
    src, dst = vm.host_for(source_side), vm.host_for(target_side)
    target_host, target = inv.host(dst), site.host(dst)
    resources = " ".join(d.resource for d in vm.resources)
    stop_cmd = (f"xl|xm shutdown {vm.name}" if source_side == "xen" else f"virsh shutdown {vm.name}")
    steps = []
    if target_side == "kvm":
        is_new = kvm_state == "not found"   # undefine on undo only if this run creates the definition
        steps.append(Step(f"define {vm.name} on {dst}", dst,
                          [f"upload {kvmhost.XML_DIR}/{vm.name}.xml",
                           f"virsh define --validate {kvmhost.XML_DIR}/{vm.name}.xml"],
                          lambda: kvmhost.define_domain(target, target_host, vm.name, xml, was_new=is_new),
                          undo={"op": "undefine", "side": "kvm"} if is_new else None))
    for swap in localdisk.plan_swap_matches(site, vm, src, dst):
        steps.append(Step(f"give {dst}:{swap.path} the UUID of {vm.name}'s swap", dst,
                          [f"mkswap -U {swap.uuid} {swap.path}"],
                          lambda swap=swap: localdisk.format_swap(target, swap)))
    established = Established()

    def stop_source() -> None:
        _stop(ctx, source_side, ctx.timeout, ctx.force)
        established.gone_from_source = True

    def promote_target() -> None:
        _promote(ctx, target_side)
        established.primary = tuple(d.resource for d in vm.resources)

    steps += [
        Step(f"shut {vm.name} down on {src}", src,
             [stop_cmd, f"wait until gone (up to {ctx.timeout:.0f}s{', then destroy' if ctx.force else ''})"],
             stop_source, undo={"op": "start", "side": source_side}),
        Step(f"demote DRBD on {src}", src, [f"drbdadm secondary {resources}"],
             lambda: _demote(ctx, source_side, stopped_just_now=True), undo={"op": "primary", "side": source_side}),
        Step(f"promote DRBD on {dst}", dst, [f"drbdadm primary {resources}"],
             promote_target, undo={"op": "secondary", "side": target_side}),
    ]
    start_cmd = f"virsh start {vm.name}" if target_side == "kvm" else f"xl|xm create {vm.cfg}"
    steps.append(Step(f"start {vm.name} on {dst}", dst, [start_cmd], lambda: established.start(ctx, target_side),
                      undo={"op": "stop", "side": target_side}, undo_if_refused=False))
    steps.append(Step(f"verify {vm.name} runs on {dst}", dst, ["domain state probe"],
                      lambda: _verify(ctx, target_side)))
    return steps


def _verify(ctx: Ctx, side: str) -> None:
    if not running_on(ctx.site, ctx.inv, ctx.vm, side):
        raise ToolError(f"{ctx.vm.host_for(side)}: {ctx.vm.name} is not running after start")


# -- checks ----------------------------------------------------------------------------------------

def check_move(ctx: Ctx, target_side: str, runs_on: list[str], drbd_states: dict[str, dict]) -> str | None:
    """Every read-only check of a move, on both hosts; returns the domain XML for a move to KVM.

    `runs_on` is where the VM was just seen running (resolve_target, under the VM's lock), and
    `drbd_states` each host's DRBD states (drbd.check_movable, under the same lock).
    """
    vm, inv, site = ctx.vm, ctx.inv, ctx.site
    source_side = other(target_side)
    src, dst = vm.host_for(source_side), vm.host_for(target_side)
    for host in (src, dst):
        site.host(host)
    say(f"  ok: {src} and {dst} reachable")
    if dst in runs_on:
        raise GuardError(f"{vm.name} already runs on {dst}: refusing to start it twice")
    if src not in runs_on:
        raise GuardError(f"{vm.name} is not running on {src}: nothing to move (start it there first)")
    say(f"  ok: {vm.name} runs on {src}, not on {dst}")
    for host, role in ((src, "Primary"), (dst, "Secondary")):
        states = drbd_states[host]
        for disk in vm.resources:
            st = states[disk.resource]
            if st.role != role:
                raise GuardError(f"{host}: DRBD {disk.resource} is {st.role}, expected {role}")
            if st.connection != "Connected":
                raise GuardError(f"{host}: DRBD {disk.resource} is {st.connection}, not Connected")
            if not st.is_uptodate_pair:
                raise GuardError(f"{host}: DRBD {disk.resource} is {st.disk}/{'/'.join(st.peer_disks) or '?'}, "
                                 f"not UpToDate/UpToDate")
    say(f"  ok: DRBD {', '.join(d.resource for d in vm.resources)} Connected, UpToDate/UpToDate, "
        f"Primary on {src}")
    if target_side == "kvm":
        xml = kvmhost.render_checked(kvmhost.vm_spec(site, inv, vm))
        say(f"  ok: domain XML for {vm.name} renders and is valid")
        if vm.boot == "direct-kernel":
            version = kvmhost.require_fetched_kernel(site.host(dst), vm)
            say(f"  ok: {dst} has kernel {version} and its initrd for {vm.name}'s direct boot")
        return xml
    if site.host(dst).read_file(vm.cfg) is None:
        raise GuardError(f"{dst}: {vm.cfg} does not exist: run `fab xenhost.prepare-cfg --vm {vm.name}`")
    say(f"  ok: {dst}:{vm.cfg} present")
    return None


# -- running a move --------------------------------------------------------------------------------

@dataclass
class Outcome:
    vm: str
    ok: bool
    runs_on: list[str]
    message: str
    code: int = 1      # the exit code a failure gives when it is the run's only VM (3: a guard refused)


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
            say(f"  undo: {entry['name']}")
            try:
                run_undo(ctx, entry["undo"])
            except ToolError as exc:
                say(f"! undo of '{entry['name']}' failed: {exc}")
                failed.append(f"{entry['name']} ({exc})")
                continue
            journal.mark_in_undo(entry, "undone")
            undone.append(entry["name"])
    return undone, failed


def move(ctx: Ctx, to: str | None, journals: Path, locks: Path, dry_run: bool = False) -> Outcome:
    """Check, then change: the whole move of one VM, with undo on failure.

    `to` is "kvm" or "xen", or None for the side where the VM does not run.
    """
    vm = ctx.vm
    with VmLock(locks, vm.name), ctx.site.vm_lock(vm):
        refuse_unfinished(journals, vm.name)   # first: after a crash the VM may run nowhere
        drbd_states = drbd.check_movable(ctx.site, vm)
        target_side, runs_on, kvm_state = resolve_target(ctx.site, ctx.inv, vm, to)
        if target_side is None:
            return Outcome(vm.name, True, runs_on, f"{vm.name}: already on {', '.join(runs_on)}")
        src, dst = vm.host_for(other(target_side)), vm.host_for(target_side)
        say(f"== {vm.name}: {src} -> {dst}{' (dry run)' if dry_run else ''}")
        say("checks:")
        ctx.on_step("checks")
        xml = check_move(ctx, target_side, runs_on, drbd_states)
        steps = plan_move(ctx, target_side, xml, kvm_state)
        say("plan:")
        for number, step in enumerate(steps, 1):
            say(f"  {number}. {step.name}: " + "; ".join(step.shows))
        if dry_run:
            if xml is not None:
                host = ctx.inv.host(dst)
                kvmhost.define_domain(ctx.site.host(dst), host, vm.name, xml, was_new=kvm_state == "not found")
            return Outcome(vm.name, True, [src], "dry run: nothing changed")
        if ctx.interruption.requested:
            return Outcome(vm.name, False, [src], f"{vm.name}: {ctx.interruption.reason} before any change; "
                                                  f"it runs on {src}")
        return _execute(ctx, steps, Journal.start(journals, vm, target_side), dst)


def refuse_unfinished(journals: Path, vm_name: str) -> None:
    """An interrupted run must be rolled back before anything else moves the VM."""
    pending = Journal.load(journals, vm_name)
    if pending is not None:
        raise GuardError(f"{vm_name} has an unfinished run ({pending.summary()}): "
                         f"run `fab rollback --vm {vm_name}` first")


def _execute(ctx: Ctx, steps: list[Step], journal: Journal, dst: str) -> Outcome:
    """Each step recorded before it starts; a stop request (Ctrl-C, a journal or audit log that
    cannot be written) is looked at before each one, and any failure undoes what ran."""
    vm = ctx.vm
    started = time.monotonic()
    ctx.journal = journal
    for step in steps:
        ctx.entry = None
        try:
            ctx.interruption.check()
            ctx.on_step(step.name)
            ctx.entry = journal.begin(step)
            step.action()
            journal.mark(ctx.entry, "done")
        except (Exception, KeyboardInterrupt) as exc:
            return _fail(ctx, journal, step, exc)
    journal.finish("done")
    message = f"{vm.name} now runs on {dst} ({time.monotonic() - started:.1f}s)"
    say(f"== {message}")
    return Outcome(vm.name, True, [dst], message)


def _fail(ctx: Ctx, journal: Journal, step: Step, exc: BaseException) -> Outcome:
    """Record how the step ended, then undo what ran."""
    if isinstance(exc, JournalError):   # no further record can be trusted: every move stops
        ctx.interruption.request(str(exc))
    reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
    entry = ctx.entry
    if isinstance(exc, Interrupted) and entry is None:
        what = f"{reason} before step '{step.name}'"
    elif entry is None:
        what = f"step '{step.name}' not started: {reason}"
    else:
        if not step.undo_if_refused and isinstance(exc, (RemoteError, GuardError)):
            entry["undo"] = None
        if entry["status"] == "started":
            journal.mark_in_undo(entry, "failed")
        what = f"step '{step.name}' failed: {reason}"
    say(f"! {what}")
    return _roll_back_after_failure(ctx, journal, what)


def _roll_back_after_failure(ctx: Ctx, journal: Journal, what: str) -> Outcome:
    vm = ctx.vm
    undone, undo_failures = undo_steps(ctx, journal)
    with ctx.interruption.shield():
        runs_on = _where_now(ctx)
    where = f"{vm.name} now runs on {', '.join(runs_on) or 'no host'}"
    if undo_failures:
        _close(journal, "rollback-failed", keep=True)
        raise ToolError(f"{vm.name}: {what}; the undo failed too ({'; '.join(undo_failures)}); {where}; "
                        f"the journal is kept: fix the cause, then `fab rollback --vm {vm.name}`") from None
    _close(journal, "rolled-back")
    return Outcome(vm.name, False, runs_on, f"{vm.name}: {what}; undone: {', '.join(undone) or 'nothing'}; {where}")


def _where_now(ctx: Ctx) -> list[str]:
    """Where the guest runs after an undo, for the last line; '?' for a host that does not answer."""
    def seen(side: str) -> list[str]:
        try:
            return [ctx.vm.host_for(side)] if running_on(ctx.site, ctx.inv, ctx.vm, side) else []
        except ToolError:
            return [f"{ctx.vm.host_for(side)}?"]
    return [host for side in SIDES for host in seen(side)]


def _close(journal: Journal, status: str, keep: bool = False) -> None:
    """End the run's journal; one that cannot be written is left as it is, and said so."""
    try:
        if keep:
            journal.data["status"] = status
            journal.save()
        else:
            journal.finish(status)
    except JournalError as exc:
        say(f"! {exc}: `fab rollback --vm {journal.data['vm']}` will find nothing left to undo")


def rollback_vm(ctx: Ctx, journals: Path, locks: Path) -> Outcome:
    """Bring a VM back to where an interrupted run found it, from the journal and live state."""
    vm = ctx.vm
    with VmLock(locks, vm.name), ctx.site.vm_lock(vm):
        journal = Journal.load(journals, vm.name)
        if journal is None:
            runs_on = where_running(ctx.site, ctx.inv, vm)
            return Outcome(vm.name, True, runs_on, f"{vm.name}: no unfinished run; it runs on "
                                                    f"{', '.join(runs_on) or 'no host'}")
        say(f"== rollback {vm.name}: {journal.summary()}")
        undone, failed = undo_steps(ctx, journal)
        if failed:
            raise ToolError(f"{vm.name}: the rollback could not finish ({'; '.join(failed)}); the journal is "
                            f"kept: fix the cause, then run `fab rollback --vm {vm.name}` again")
        journal.finish("rolled-back")
        runs_on = _where_now(ctx)
        return Outcome(vm.name, True, runs_on, f"{vm.name}: rolled back ({', '.join(undone) or 'nothing to undo'}); "
                                               f"runs on {', '.join(runs_on) or 'no host'}")


# -- tasks -------------------------------------------------------------------------------------------

def select_vms(inv: Inventory, vm: str | None, all_vms: bool, from_host: str | None) -> list[VM]:
    """The VMs a fleet run moves: named, all, or every VM of one host."""
    if sum(map(bool, (vm, all_vms, from_host))) != 1:
        raise InputError("give exactly one of --vm NAME[,NAME...], --all or --from-host HOST")
    if from_host:
        if from_host not in inv.hosts:
            raise InputError(f"--from-host: no host named {from_host!r} in {inv.path}")
        return [v for v in inv.vms.values() if from_host in (v.xen_host, v.kvm_host)]
    return inv.select(None if all_vms else vm)


def resolve_target(site: Site, inv: Inventory, vm: VM, to: str | None) -> tuple[str | None, list[str], str]:
    """Which side the VM goes to (None when it is already there), where it runs now, and its
    state on the KVM host."""
    runs_on, kvm_state = where_seen(site, inv, vm)
    if len(runs_on) == 2:
        raise GuardError(f"{vm.name} runs on BOTH {' and '.join(runs_on)}: stop one by hand now")
    if to is None:
        if not runs_on:
            raise GuardError(f"{vm.name} runs on no host: cannot tell which way to move it (give --to)")
        return ("kvm" if runs_on[0] == vm.xen_host else "xen"), runs_on, kvm_state
    return (None if runs_on == [vm.host_for(to)] else to), runs_on, kvm_state


class HostSlots:
    """At most `max_parallel` VMs of each host on the move at once, and at most `max_starts`
    domains starting on it at once (inventory, per host).

    A start is a burst of the host's CPU (qemu and libvirt's handshake with it); on a host
    with few cores, starts at once each take twice as long as one alone or more.  Queued,
    most guests are up sooner; waiting for a start slot is downtime, so it is opt-in.
    """

    def __init__(self, inv: Inventory, interruption: Interruption):
        self._slots = {name: threading.BoundedSemaphore(h.max_parallel) for name, h in inv.hosts.items()}
        self._starts = {name: (threading.BoundedSemaphore(h.max_starts), h.max_starts)
                        for name, h in inv.hosts.items() if h.max_starts}
        self._interruption = interruption   # a stop request ends every wait for a slot

    @contextmanager
    def starting(self, host: str):
        """Hold one of the host's start slots, saying so when a start has to wait for one."""
        if host not in self._starts:
            yield
            return
        gate, limit = self._starts[host]
        if not gate.acquire(blocking=False):
            say(f"* {host}: waiting for a start slot (max_starts {limit}) ...")
            self._interruption.acquire(gate)
        try:
            yield
        finally:
            gate.release()

    @contextmanager
    def hold(self, vm: VM):
        hosts = sorted({vm.xen_host, vm.kvm_host})   # one order everywhere: no deadlock
        held = []
        try:
            for host in hosts:
                self._interruption.acquire(self._slots[host])
                held.append(host)
            yield
        finally:
            for host in reversed(held):
                self._slots[host].release()


def run_fleet(c, inv: Inventory, vms: list[VM], *, to: str | None, from_host: str | None, timeout: float,
              force: bool, dry_run: bool, parallel: int, fail_fast: bool,
              interruption: Interruption | None = None) -> list[Outcome]:
    """Move every VM, `parallel` at a time over the shared per-host connections; each VM alone
    is locked, journaled and rolled back, so one failure touches no other VM.

    Ctrl-C or SIGTERM starts no further VM and stops the moving ones at their next step or
    wait; each undoes what it did (moves already done stay done).
    """
    interruption = interruption or Interruption()
    site = site_from_context(c, inv, dry_run, interruption)
    side = other(inv.host(from_host).role) if from_host else to
    slots = HostSlots(inv, interruption)
    stop = threading.Event()
    tag = len(vms) > 1
    view = FleetView([vm.name for vm in vms], live=None if tag else False)

    def one(vm: VM) -> Outcome:
        if stop.is_set() or interruption.requested:
            why = "--fail-fast after a failure" if stop.is_set() else interruption.reason
            with interruption.shield():
                runs_on = _where_now(Ctx(site, inv, vm))
            view.finish(vm.name, False, f"not started, on {', '.join(runs_on) or 'no host'}")
            return Outcome(vm.name, False, runs_on, f"{vm.name}: not started ({why}); it runs on "
                                                    f"{', '.join(runs_on) or 'no host'}")
        set_output_prefix(vm.name if tag else "")
        try:
            with slots.hold(vm):
                ctx = Ctx(site, inv, vm, timeout, force, on_step=lambda name: view.step(vm.name, name),
                          start_gate=slots.starting)
                outcome = move(ctx, side, journal_dir(c), lock_dir(c), dry_run)
        except ToolError as exc:
            outcome = Outcome(vm.name, False, [], f"{vm.name}: {exc}", exc.code)
        finally:
            set_output_prefix("")
        if not outcome.ok and fail_fast:
            stop.set()
        view.finish(vm.name, outcome.ok, ", ".join(outcome.runs_on) or "?")
        return outcome

    from concurrent.futures import ThreadPoolExecutor

    try:
        with interruption.on_signals(), view, ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            return list(pool.map(one, vms))
    finally:
        site.close()


def _migrate(c, vm, to, all_vms, from_host, timeout, force, dry_run, parallel, fail_fast) -> None:
    if to not in (None, "kvm", "xen"):
        raise InputError(f"--to must be kvm or xen, got {to!r}")
    if int(parallel) < 1:
        raise InputError(f"--parallel must be at least 1, got {parallel}")
    inv = inventory.from_context(c)
    vms = select_vms(inv, vm, all_vms, from_host)
    inventory.check_sharers_selected(inv, vms)
    interruption = Interruption()
    outcomes = run_fleet(c, inv, vms, to=to, from_host=from_host, timeout=float(timeout), force=force,
                         dry_run=dry_run, parallel=int(parallel), fail_fast=fail_fast, interruption=interruption)
    failed = [o for o in outcomes if not o.ok]
    code = interruption.code if interruption.requested else 1
    if len(outcomes) == 1:
        if failed:
            raise ToolError(failed[0].message, code if interruption.requested else failed[0].code)
        if interruption.requested:
            raise ToolError(f"{interruption.reason} after the move was done: {outcomes[0].message}", code)
        return
    say(f"== {len(outcomes) - len(failed)} of {len(outcomes)} VMs done")
    for outcome in outcomes:
        say(f"  {'ok    ' if outcome.ok else 'FAILED'} {outcome.message}")
    if failed or interruption.requested:
        stopped = f"{interruption.reason}: " if interruption.requested else ""
        raise ToolError(f"{stopped}{len(failed)} of {len(outcomes)} VMs failed: "
                        f"{', '.join(o.vm for o in failed) or 'none'}", code)


_MOVE_HELP = {
    "vm": "VM name from the inventory, or several: a,b,c",
    "all": "every VM in the inventory",
    "from_host": "every VM of this host (moved off it: to KVM from a Xen host, to Xen from a KVM host)",
    "parallel": "how many VMs move at once (default 4; each host's max_parallel also applies)",
    "fail_fast": "start no further VM after one fails",
    "timeout": f"seconds to wait for a guest to shut down (default {xenhost.DEFAULT_SHUTDOWN_TIMEOUT:.0f})",
    "force": "destroy a guest that has not shut down after --timeout",
    "dry_run": "run every check and print the plan and diffs; change nothing",
}


@task(help={**_MOVE_HELP, "to": "kvm or xen; default: the side where each VM does not run"})
def migrate(c, vm=None, to=None, all=False, from_host=None, parallel=4, fail_fast=False,
            timeout=xenhost.DEFAULT_SHUTDOWN_TIMEOUT, force=False, dry_run=False):
    """Move VMs to the other hypervisor: shutdown, DRBD switch, start there."""
    _migrate(c, vm, to, all, from_host, timeout, force, dry_run, parallel, fail_fast)


@task(help=_MOVE_HELP)
def migrate_to_kvm(c, vm=None, all=False, from_host=None, parallel=4, fail_fast=False,
                   timeout=xenhost.DEFAULT_SHUTDOWN_TIMEOUT, force=False, dry_run=False):
    """Move VMs from their Xen host to their KVM host."""
    _migrate(c, vm, "kvm", all, from_host, timeout, force, dry_run, parallel, fail_fast)


@task(help=_MOVE_HELP)
def migrate_to_xen(c, vm=None, all=False, from_host=None, parallel=4, fail_fast=False,
                   timeout=xenhost.DEFAULT_SHUTDOWN_TIMEOUT, force=False, dry_run=False):
    """Move VMs from their KVM host back to their Xen host."""
    _migrate(c, vm, "xen", all, from_host, timeout, force, dry_run, parallel, fail_fast)


@task(help={"vm": "VM name from the inventory"})
def rollback(c, vm):
    """Undo an interrupted or failed run of a VM, from its journal and the live state.

    It is all undo: Ctrl-C or SIGTERM is answered with a line and does not stop it."""
    inv = inventory.from_context(c)
    model = inv.vm(vm)
    site = site_from_context(c, inv)
    try:
        with site.interruption.on_signals():
            outcome = rollback_vm(Ctx(site, inv, model), journal_dir(c), lock_dir(c))
    finally:
        site.close()
    say(f"== {outcome.message}")


STATUS_HEADER = ("VM", "runs on", "resource", "host", "role", "conn", "disk/peer", "sync")


def _connect_error(site: Site, host: str) -> str | None:
    """Why the host cannot be reached, or None once its connection is open."""
    try:
        site.host(host)
    except ToolError as exc:
        return str(exc)
    return None


def status_rows(site: Site, inv: Inventory, vm: VM, unreachable: set[str]) -> tuple[list[tuple], list[str]]:
    """The VM's rows of `fab status` and what could not be read; a host in `unreachable`, or one
    whose probe fails, shows as such (`HOST?` where it may run) instead of ending the report."""
    problems = []

    def ask(host: str, probe: Callable[[], object]):
        if host in unreachable:
            return None
        try:
            return probe()
        except ToolError as exc:
            problems.append(str(exc))
            return None

    running = {side: ask(vm.host_for(side), lambda side=side: running_on(site, inv, vm, side)) for side in SIDES}
    runs_on = ", ".join([vm.host_for(side) for side in SIDES if running[side]]
                        + [f"{vm.host_for(side)}?" for side in SIDES if running[side] is None]) or "-"
    rows = []
    for host in (vm.xen_host, vm.kvm_host):
        states = ask(host, lambda host=host: drbd.resource_states(site.host(host), vm, host))
        for disk in vm.resources:
            if states is None:
                rows.append((vm.name, runs_on, disk.resource, host,
                             "unreachable" if host in unreachable else "unknown", "", "", ""))
                continue
            st = states[disk.resource]
            sync = f"{st.sync_percent:.1f}%" if st.sync_percent is not None else ""
            rows.append((vm.name, runs_on, disk.resource, host, st.role, st.connection,
                         f"{st.disk}/{'/'.join(st.peer_disks) or '?'}", sync))
    return rows, problems


@task(help={"vm": "VM name (default: every VM in the inventory)"})
def status(c, vm=None):
    """Where each VM runs, its DRBD roles and states, and unfinished runs. A host that does not
    answer is shown so and the rest still reported; the exit code then says it was incomplete."""
    inv = inventory.from_context(c)
    models = inv.select(vm)
    site = site_from_context(c, inv)
    rows, notes, failed = [STATUS_HEADER], [], []
    try:
        hosts = sorted({host for model in models for host in (model.xen_host, model.kvm_host)})
        errors = concurrently(*(lambda host=host: _connect_error(site, host) for host in hosts)) if hosts else []
        unreachable = [host for host, error in zip(hosts, errors) if error]
        notes += [f"! {error}" for error in errors if error]
        for model in models:
            vm_rows, problems = status_rows(site, inv, model, set(unreachable))
            rows += vm_rows
            notes += [f"! {problem}" for problem in problems]
            failed += problems
            pending = Journal.load(journal_dir(c), model.name)
            if pending is not None:
                notes.append(f"! {model.name}: unfinished run ({pending.summary()}): `fab rollback --vm {model.name}`")
    finally:
        site.close()
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    for note in notes:
        print(note)
    if unreachable or failed:
        missing = [f"{host} unreachable" for host in unreachable] + ([f"{len(failed)} probe(s) failed"] if failed else [])
        raise ToolError(f"status incomplete: {', '.join(missing)}")


def match_swaps(site: Site, inv: Inventory, vm: VM, to: str) -> list[localdisk.SwapMatch]:
    """Before a guest boots on the `to` side by hand: that host's own swap gets the UUID of
    the swap the guest used on the other side, as `migrate` does in its plan."""
    src, dst = vm.host_for(other(to)), vm.host_for(to)
    if running_on(site, inv, vm, to):
        raise GuardError(f"{vm.name} runs on {dst}: its swap there is one of its disks; "
                         f"match it before the guest starts there")
    matches = localdisk.plan_swap_matches(site, vm, src, dst)
    for swap in matches:
        localdisk.format_swap(site.host(dst), swap)
    return matches


@task(help={"vm": "VM name from the inventory",
            "to": "kvm or xen: the side the guest is about to start on",
            "dry_run": "show the mkswap it would run, change nothing"})
def match_swap(c, vm, to, dry_run=False):
    """Give the target host's own swap (an inventory `local:` disk) the UUID of the swap the guest
    used on the other host, for moves made stage by stage (`migrate` does this itself)."""
    if to not in SIDES:
        raise InputError(f"--to must be kvm or xen, got {to!r}")
    inv = inventory.from_context(c)
    model = inv.vm(vm)
    site = site_from_context(c, inv, dry_run)
    try:
        if not match_swaps(site, inv, model, to):
            say(f"* {model.host_for(to)}: no swap of {model.name} to format there ... ok")
    finally:
        site.close()


tasks = (migrate, migrate_to_kvm, migrate_to_xen, rollback, status, match_swap)
