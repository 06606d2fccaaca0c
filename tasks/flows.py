"""Flows: move a VM between its Xen and KVM hosts, roll back, report status.

Check before change (Ganeti's CheckPrereq / Exec): every read-only check on both hosts runs
first; then the plan, whose steps carry the exact commands they send (what --dry-run
prints); then the steps, each recorded in the journal with its undo before it starts.  A
failure or a stop request undoes the steps that ran, in reverse order (journal.py); many
VMs at once go through fleet.py.
"""

from __future__ import annotations

import functools
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import capacity, drbd, fleet, hypervisors, inventory, jsonout, kvmhost, liveness, localdisk, output, vmplan
from .cli import task
from .errors import GuardError, InputError, ToolError, quoted
from .fleet import VmResult
from .hypervisors import DEFAULT_SHUTDOWN_TIMEOUT
from .interrupt import Interrupted, Interruption
from .inventory import SIDES, VERIFY_METHODS, VM, Inventory, other
from .journal import Journal, JournalError, VmLock, consoles_dir, journal_dir, lock_dir, undo_steps
from .liveness import NotUp, Proof, Timeline
from .output import RESULT, log
from .remote import RemoteError, Site, concurrently, site_from_context

ROLLBACK_TIMEOUT = 120.0


@dataclass(frozen=True)
class BootProof:
    """How a run proves its starts up: --verify and --boot-timeout (None: each VM's inventory),
    and whether a guest not up on the target is moved back (--no-fallback: left there)."""

    verify: str | None = None
    boot_timeout: float | None = None
    fallback: bool = True


def boot_proof(verify: str | None, boot_timeout, fallback: bool = True) -> BootProof:
    """The run's options, checked before anything is contacted."""
    if verify is not None and verify not in VERIFY_METHODS:
        raise InputError(f"--verify must be one of {', '.join(VERIFY_METHODS)}, got {quoted(verify)}")
    if boot_timeout is not None and (not str(boot_timeout).isdigit() or int(boot_timeout) < 1):
        raise InputError(f"--boot-timeout must be a whole number of seconds, at least 1, got {quoted(boot_timeout)}")
    return BootProof(verify, float(boot_timeout) if boot_timeout is not None else None, fallback)


def running_on(site: Site, vm: VM, side: str, max_age: float = 0.0) -> bool:
    return hypervisors.on(site, vm.host_for(side)).running(vm.name, max_age)


def where_seen(site: Site, vm: VM) -> tuple[list[str], str]:
    """The hosts where the VM's domain runs now, and its state on the KVM host (`not found`
    when undefined there), from one listing per host: a move needs both before it plans."""
    kvm = hypervisors.on(site, vm.kvm_host)
    kvm_state, on_xen = concurrently(lambda: kvm.state(vm.name), lambda: running_on(site, vm, "xen"))
    running = {"xen": on_xen, "kvm": kvm.holds_disks(kvm_state)}
    return [vm.host_for(side) for side in SIDES if running[side]], kvm_state


@dataclass
class Ctx:
    """One VM's move (or rollback): its hosts over the run's connections, and what the move has
    recorded so far; the steps and the undo table act through its methods."""

    site: Site
    inv: Inventory
    vm: VM
    timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    force: bool = False
    on_step: Callable[[str], None] = lambda name: None    # live progress of a fleet run
    start_gate: Callable[[str], AbstractContextManager] = lambda host: nullcontext()   # HostSlots.starting
    rollback_timeout: float = ROLLBACK_TIMEOUT
    proving: BootProof = BootProof()
    consoles: Path | None = None        # where a guest's console is kept when it does not come up
    # The run's ledger of room on each host; by default a run of this VM alone.
    room: capacity.HostRoom = field(default_factory=capacity.HostRoom)
    journal: Journal | None = None      # the running move's, while a step runs
    entry: dict | None = None           # the running step's journal entry
    timeline: Timeline = field(default_factory=Timeline)   # the move's moments, for its downtime
    restarted: str = ""                 # how the undo's restart went, for the run's last line
    restarted_up: bool | None = None    # whether the guest the undo started again proved itself up
    panicked_on: str | None = None      # the side whose console showed the guest's kernel panic

    @property
    def interruption(self) -> Interruption:
        return self.site.interruption

    def hypervisor(self, side: str) -> hypervisors.Hypervisor:
        return hypervisors.on(self.site, self.vm.host_for(side))

    def running(self, side: str, max_age: float = 0.0) -> bool:
        return self.hypervisor(side).running(self.vm.name, max_age)

    def launch(self, side: str) -> None:
        """Start the domain, within its host's `max_starts` (a fleet run's other VMs share it)."""
        with self.start_gate(self.vm.host_for(side)):
            self.timeline.start_sent = time.monotonic()
            try:
                self.hypervisor(side).start(self.vm)
            finally:
                self.room.release(self.vm.name)

    def proof(self, side: str) -> Proof:
        """How a start on that side is proven up: the inventory's verify and boot_timeout, or
        the run's --verify and --boot-timeout."""
        return Proof(self.site, self.vm, side, self.proving.verify or self.vm.verify, self.vm.verify_port,
                     self.proving.boot_timeout or self.vm.boot_timeout)

    def stop_in_undo(self, side: str) -> None:
        """The undo's stop: a graceful shutdown within rollback_timeout, then destroy; where the
        guest's kernel panicked, destroy at once (it ignores the request and has nothing left to
        write: waiting would only add the grace to its downtime)."""
        if self.panicked_on == side:
            log.info(f"* {self.vm.host_for(side)}: {self.vm.name}'s kernel panicked there: destroying it at once")
            self.hypervisor(side).destroy(self.vm.name)
            return
        self.stop(side, self.rollback_timeout, force=True)

    def stop(self, side: str, timeout: float, force: bool) -> None:
        self.hypervisor(side).shutdown(self.vm.name, timeout=timeout, force=force,
                                       on_requested=lambda: self.note_undo(shutdown_requested=True))

    def promote(self, side: str) -> None:
        host = self.vm.host_for(side)
        drbd.promote(self.site.host(host), self.vm, host)

    def prove_restart(self, proof: Proof) -> None:
        """After an undo's restart where the guest ran: up there again, or said so in the run's
        last line (the undo itself succeeded: the guest runs where it ran, its disks Primary)."""
        up = proof.wait(self.interruption)
        if up is None:
            self.restarted, self.restarted_up = f"{proof.failure()} either", False
            log.warning(f"! {self.vm.name}: {self.restarted}")
            return
        since = self.timeline.last_answer or self.timeline.start_sent or up
        self.restarted, self.restarted_up = f"up again after {up - since:.1f}s", True
        log.info(f"* {proof.host}: {self.vm.name} is {self.restarted} ({proof.what()}) ... ok")

    @property
    def restart_note(self) -> str:
        """How the undo's restart went, for the end of the run's last line ("" without one)."""
        return f" ({self.restarted})" if self.restarted else ""

    def note_undo(self, **facts) -> None:
        """What the running step has done so far, for its undo (a shutdown already requested)."""
        if self.journal is not None and self.entry is not None and self.entry.get("undo"):
            self.entry["undo"].update(facts)
            self.journal.save()


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
        ctx.launch(side)


@dataclass
class Step:
    name: str
    host: str
    sends: list[str]                     # the exact commands it sends there, in order (a file: `write PATH`)
    action: Callable[[], object]
    undo: dict | None = None             # {"op": ..., "side": ...}, recorded before the step runs
    # False for a start: refused (its command failed, or a guard), it started nothing, and a
    # domain running there now was started by someone else: the undo must not stop it.
    undo_if_refused: bool = True
    then: str = ""                       # what it does after its commands (a wait), for the printed plan


def plan_move(ctx: Ctx, target_side: str, xml: str | None, kvm_state: str) -> list[Step]:
    """The steps of one move, mirror images for the two directions; `kvm_state` is the domain's
    state on the KVM host as resolve_target just saw it, under the VM's lock.

    The KVM domain is defined and the target's swap matched before the guest stops, so
    the guest's downtime holds only the shutdown, the DRBD switch and the start.
    """
    vm = ctx.vm
    source_side = other(target_side)
    src, dst = vm.host_for(source_side), vm.host_for(target_side)
    source, target = ctx.hypervisor(source_side), ctx.hypervisor(target_side)
    resources = [d.resource for d in vm.resources]
    steps = []
    if isinstance(target, hypervisors.KvmHost) and xml is not None:
        is_new = kvm_state == "not found"   # undefine on undo only if this run creates the definition
        path = kvmhost.xml_path(vm.name)
        if is_new or target.remote.read_file(path) != xml:
            steps.append(Step(f"define {vm.name} on {dst}", dst, [f"write {path}", target.command(target.define_argv(path))],
                              lambda: kvmhost.define_domain(target, vm.name, xml, was_new=is_new),
                              undo={"op": "undefine", "side": "kvm"} if is_new else None))
        else:
            log.info(f"  ok: {vm.name} is defined on {dst} as rendered")
    for swap in localdisk.plan_swap_matches(ctx.site, vm, src, dst):
        steps.append(Step(f"give {dst}:{swap.path} the UUID of {vm.name}'s swap", dst,
                          [target.command(localdisk.mkswap_argv(swap))],
                          functools.partial(localdisk.format_swap, target.remote, swap)))
    established = Established()
    on_source, on_target = ctx.proof(source_side), ctx.proof(target_side)
    on_target.mark_console()   # before the guest stops (its console does not grow meanwhile); any verify
    # reads it: a panic after this start ends the wait, and the fall-back destroys at once

    def stop_source() -> None:
        ctx.timeline.last_answer = on_source.last_answer()
        ctx.stop(source_side, ctx.timeout, ctx.force)
        ctx.timeline.gone = time.monotonic()
        established.gone_from_source = True

    def promote_target() -> None:
        ctx.promote(target_side)
        established.primary = tuple(resources)

    destroy = f", then {source.command(source.destroy_argv(vm.name))}" if ctx.force else ""
    steps += [
        Step(f"shut {vm.name} down on {src}", src, [source.command(source.shutdown_argv(vm.name))],
             stop_source, undo={"op": "start", "side": source_side},
             then=f"wait until it is gone (up to {ctx.timeout:.0f}s{destroy})"),
        Step(f"demote DRBD on {src}", src, [source.command(drbd.drbdadm_argv(["secondary"], resources))],
             lambda: drbd.demote_stopped(source.remote, vm), undo={"op": "primary", "side": source_side}),
        Step(f"promote DRBD on {dst}", dst, [target.command(drbd.drbdadm_argv(["primary"], resources))],
             promote_target, undo={"op": "secondary", "side": target_side},
             then="after the guards read the DRBD state there"),
        Step(f"start {vm.name} on {dst}", dst, [target.command(target.start_argv(vm))],
             lambda: established.start(ctx, target_side), undo={"op": "stop", "side": target_side},
             undo_if_refused=False),
        Step(f"prove {vm.name} up on {dst}", dst, [], lambda: _prove_up(ctx, on_target),
             then=f"wait up to {on_target.timeout:.0f}s for {on_target.what()}"),
    ]
    return steps


def print_plan(steps: list[Step]) -> None:
    log.info("plan:")
    for number, step in enumerate(steps, 1):
        log.info(f"  {number}. {step.name}")
        for command in step.sends:
            log.info(f"       {step.host}: {command}")
        if step.then:
            log.info(f"       then {step.then}")


def _prove_up(ctx: Ctx, proof: Proof) -> None:
    """The move's last step: the guest answers on the target, or the move is undone (NotUp)."""
    up = proof.wait(ctx.interruption)
    if up is None:
        saved = proof.save_console(ctx.consoles)
        if proof.panicked:
            ctx.panicked_on = proof.side
        raise NotUp(proof.failure() + (f"; its console: {saved}" if saved else ""))
    ctx.timeline.up = up
    started = ctx.timeline.start_sent or up
    log.info(f"* {proof.host}: {ctx.vm.name} is up ({proof.what()}) {up - started:.1f}s after its start ... ok")


# -- checks ----------------------------------------------------------------------------------------

def check_move(ctx: Ctx, target_side: str, runs_on: list[str], drbd_states: dict[str, dict]) -> str | None:
    """Every read-only check of a move, on both hosts; returns the domain XML for a move to KVM.

    `runs_on` is where the VM was just seen running (resolve_target, under the VM's lock), and
    `drbd_states` each host's DRBD states (drbd.check_movable, under the same lock).
    """
    vm, site = ctx.vm, ctx.site
    source_side = other(target_side)
    src, dst = vm.host_for(source_side), vm.host_for(target_side)
    for host in (src, dst):
        site.host(host)
    log.info(f"  ok: {src} and {dst} reachable")
    if dst in runs_on:
        raise GuardError(f"{vm.name} already runs on {dst}: refusing to start it twice")
    if src not in runs_on:
        raise GuardError(f"{vm.name} is not running on {src}: nothing to move (start it there first)")
    log.info(f"  ok: {vm.name} runs on {src}, not on {dst}")
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
    log.info(f"  ok: DRBD {', '.join(d.resource for d in vm.resources)} Connected, UpToDate/UpToDate, "
        f"Primary on {src}")
    if ctx.proof("xen").method == "console" and (target_side == "xen" or ctx.proving.fallback):
        liveness.require_console_log(site.host(vm.xen_host), vm)   # the start there, or the fall-back's
        log.info(f"  ok: {vm.xen_host} keeps guest consoles in {liveness.XEN_CONSOLE_DIR}")
    if target_side == "kvm":
        plan = vmplan.of_vm(site, vm, kvm_devices=True)
        xml = kvmhost.render_checked(plan.domain_spec())
        log.info(f"  ok: domain XML for {vm.name} renders and is valid")
        if vm.boot == "direct-kernel":
            version = kvmhost.require_fetched_kernel(site.host(dst), vm)
            log.info(f"  ok: {dst} has kernel {version} and its initrd for {vm.name}'s direct boot")
        capacity.make_room(ctx, target_side, capacity.need_on("kvm", plan))
        return xml
    text = site.host(dst).read_file(vm.cfg)
    if text is None:
        raise GuardError(f"{dst}: {vm.cfg} does not exist: run `fab xenhost.prepare-cfg --vm {vm.name}`")
    log.info(f"  ok: {dst}:{vm.cfg} present")
    capacity.make_room(ctx, target_side, capacity.need_on("xen", vmplan.plan(text, f"{dst}:{vm.cfg}", vm)))
    return None


# -- running a move --------------------------------------------------------------------------------

def move(ctx: Ctx, to: str | None, journals: Path, locks: Path, dry_run: bool = False) -> VmResult:
    """Check, then change: the whole move of one VM, with undo on failure.

    `to` is "kvm" or "xen", or None for the side where the VM does not run.
    """
    vm = ctx.vm
    with VmLock(locks, vm.name), ctx.site.vm_lock(vm):
        refuse_unfinished(journals, vm.name)   # first: after a crash the VM may run nowhere
        drbd_states = drbd.check_movable(ctx.site, vm)
        target_side, runs_on, kvm_state = resolve_target(ctx.site, vm, to)
        if target_side is None:
            return VmResult(vm.name, True, runs_on, f"{vm.name}: already on {', '.join(runs_on)}")
        src, dst = vm.host_for(other(target_side)), vm.host_for(target_side)
        ctx.room.leaving(vm.name, src)
        log.info(f"== {vm.name}: {src} -> {dst}{' (dry run)' if dry_run else ''}")
        log.info("checks:")
        ctx.on_step("checks")
        xml = check_move(ctx, target_side, runs_on, drbd_states)
        steps = plan_move(ctx, target_side, xml, kvm_state)
        print_plan(steps)
        if dry_run:
            if steps[0].name.startswith("define"):
                steps[0].action()   # in a dry run: the XML's diff and the command it would send
            return VmResult(vm.name, True, [src], "dry run: nothing changed")
        if ctx.interruption.requested:
            return VmResult(vm.name, False, [src], f"{vm.name}: {ctx.interruption.reason} before any change; "
                                                   f"it runs on {src}")
        return _execute(ctx, steps, Journal.start(journals, vm, target_side), dst)


def refuse_unfinished(journals: Path, vm_name: str) -> None:
    """An interrupted run must be rolled back before anything else moves the VM."""
    pending = Journal.load(journals, vm_name)
    if pending is not None:
        raise GuardError(f"{vm_name} has an unfinished run ({pending.summary()}): "
                         f"run `fab rollback --vm {vm_name}` first")


def resolve_target(site: Site, vm: VM, to: str | None) -> tuple[str | None, list[str], str]:
    """Which side the VM goes to (None when it is already there), where it runs now, and its
    state on the KVM host."""
    runs_on, kvm_state = where_seen(site, vm)
    if len(runs_on) == 2:
        raise GuardError(f"{vm.name} runs on BOTH {' and '.join(runs_on)}: stop one by hand now")
    if to is None:
        if not runs_on:
            raise GuardError(f"{vm.name} runs on no host: cannot tell which way to move it (give --to)")
        return ("kvm" if runs_on[0] == vm.xen_host else "xen"), runs_on, kvm_state
    return (None if runs_on == [vm.host_for(to)] else to), runs_on, kvm_state


def _execute(ctx: Ctx, steps: list[Step], journal: Journal, dst: str) -> VmResult:
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
    log.log(RESULT, f"== {message}")
    downtime = ctx.timeline.downtime()
    if downtime is not None:
        log.log(RESULT, downtime.line(vm.name))
        ctx.site.audit.write({"kind": "downtime", "vm": vm.name, "from": journal.data["source"], "to": dst,
                              **downtime.record()})
    return VmResult(vm.name, True, [dst], message, downtime=downtime)


def _fail(ctx: Ctx, journal: Journal, step: Step, exc: BaseException) -> VmResult:
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
        what = reason if isinstance(exc, NotUp) else f"step '{step.name}' failed: {reason}"
    log.warning(f"! {what}")
    if isinstance(exc, NotUp) and not ctx.proving.fallback:
        _close(journal, "left-not-up", keep=True)
        return VmResult(ctx.vm.name, False, [step.host], f"{ctx.vm.name}: {what}; left there (--no-fallback): "
                                                          f"`fab rollback --vm {ctx.vm.name}` moves it back")
    return _roll_back_after_failure(ctx, journal, what)


def _roll_back_after_failure(ctx: Ctx, journal: Journal, what: str) -> VmResult:
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
    return VmResult(vm.name, False, runs_on,
                    f"{vm.name}: {what}; undone: {', '.join(undone) or 'nothing'}; {where}{ctx.restart_note}")


def _where_now(ctx: Ctx) -> list[str]:
    """Where the guest runs after an undo, for the last line; '?' for a host that does not answer."""
    def seen(side: str) -> list[str]:
        try:
            return [ctx.vm.host_for(side)] if ctx.running(side) else []
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
        log.warning(f"! {exc}: `fab rollback --vm {journal.data['vm']}` will find nothing left to undo")


def rollback_vm(ctx: Ctx, journals: Path, locks: Path) -> VmResult:
    """Bring a VM back to where an interrupted run found it, from the journal and live state."""
    vm = ctx.vm
    with VmLock(locks, vm.name), ctx.site.vm_lock(vm):
        journal = Journal.load(journals, vm.name)
        if journal is None:
            runs_on = _where_now(ctx)
            return VmResult(vm.name, True, runs_on, f"{vm.name}: no unfinished run; it runs on "
                                                     f"{', '.join(runs_on) or 'no host'}")
        log.info(f"== rollback {vm.name}: {journal.summary()}")
        undone, failed = undo_steps(ctx, journal)
        if failed:
            raise ToolError(f"{vm.name}: the rollback could not finish ({'; '.join(failed)}); the journal is "
                            f"kept: fix the cause, then run `fab rollback --vm {vm.name}` again")
        journal.finish("rolled-back")
        runs_on = _where_now(ctx)
        return VmResult(vm.name, ctx.restarted_up is not False, runs_on,
                        f"{vm.name}: rolled back ({', '.join(undone) or 'nothing to undo'}); "
                        f"runs on {', '.join(runs_on) or 'no host'}{ctx.restart_note}")


# -- tasks -------------------------------------------------------------------------------------------

def _migrate(c, vm, to, all_vms, from_host, timeout, force, dry_run, parallel, fail_fast, json,
             proving: BootProof) -> None:
    if to not in (None, "kvm", "xen"):
        raise InputError(f"--to must be kvm or xen, got {to!r}")
    parallel = fleet.parallel_count(parallel)
    inv = inventory.from_context(c)
    vms = fleet.select_vms(inv, vm, all_vms, from_host)
    inventory.check_sharers_selected(inv, vms)
    interruption = Interruption()
    results = migrate_vms(c, inv, vms, to=other(inv.host(from_host).role) if from_host else to,
                          timeout=float(timeout), force=force, dry_run=dry_run, parallel=parallel,
                          fail_fast=fail_fast, interruption=interruption, proving=proving)
    if json:
        jsonout.emit(jsonout.migrate_json(results, dry_run))
    fleet.report(results, interruption)


def migrate_vms(c, inv: Inventory, vms: list[VM], *, to: str | None, timeout: float, force: bool, dry_run: bool,
                parallel: int, fail_fast: bool, interruption: Interruption | None = None,
                proving: BootProof = BootProof()) -> list[VmResult]:
    """Move every VM (each to `to`, or to where it does not run) as a fleet run, over one
    connection per host; each VM alone is locked, journaled and rolled back."""
    interruption = interruption or Interruption()
    site = site_from_context(c, inv, dry_run, interruption)
    room = capacity.HostRoom()

    def one(model: VM, slot: fleet.Slot) -> VmResult:
        ctx = Ctx(site, inv, model, timeout, force, on_step=slot.on_step, start_gate=slot.start_gate,
                  proving=proving, consoles=consoles_dir(c), room=room)
        room.begin(model)
        try:
            return move(ctx, to, journal_dir(c), lock_dir(c), dry_run)
        finally:
            room.done(model.name)

    def not_started(model: VM, why: str) -> VmResult:
        with interruption.shield():
            runs_on = _where_now(Ctx(site, inv, model))
        return VmResult(model.name, False, runs_on, f"{model.name}: not started ({why}); it runs on "
                                                    f"{', '.join(runs_on) or 'no host'}")

    try:
        return fleet.run_fleet(site, vms, one, parallel=parallel, fail_fast=fail_fast, not_started=not_started)
    finally:
        site.close()


_MOVE_HELP = {
    "vm": "VM name from the inventory, or several: a,b,c",
    "all": "every VM in the inventory",
    "from_host": "every VM of this host (moved off it: to KVM from a Xen host, to Xen from a KVM host)",
    "parallel": "how many VMs move at once (default 4; each host's max_parallel also applies)",
    "fail_fast": "start no further VM after one fails",
    "timeout": f"seconds to wait for a guest to shut down (default {DEFAULT_SHUTDOWN_TIMEOUT:.0f})",
    "force": "destroy a guest that has not shut down after --timeout",
    "dry_run": "run every check and print the plan (its exact commands) and diffs; change nothing",
    "json": "print the summary as JSON on stdout (fields in the README), every other line on stderr",
}
_PROOF_HELP = {
    "verify": "how a started guest proves itself up: console (a login prompt), ssh (sshd's banner), "
              "port (the VM's verify_port answers) or none (its domain runs); default: each VM's verify",
    "boot_timeout": "seconds a started guest has to prove itself up (default: each VM's boot_timeout, 300)",
}
_MOVE_HELP.update(_PROOF_HELP, fallback="move a guest that is not up in time back where it ran "
                                        "(default; --no-fallback leaves it on the target to debug)")


@task(help={**_MOVE_HELP, "to": "kvm or xen; default: the side where each VM does not run"})
def migrate(c, vm=None, to=None, all=False, from_host=None, parallel=4, fail_fast=False,
            timeout=DEFAULT_SHUTDOWN_TIMEOUT, force=False, dry_run=False, verify=None, boot_timeout=None,
            fallback=True, json=False):
    """Move VMs to the other hypervisor: shutdown, DRBD switch, start there, prove it up."""
    _migrate(c, vm, to, all, from_host, timeout, force, dry_run, parallel, fail_fast, json,
             boot_proof(verify, boot_timeout, fallback))


@task(help=_MOVE_HELP)
def migrate_to_kvm(c, vm=None, all=False, from_host=None, parallel=4, fail_fast=False,
                   timeout=DEFAULT_SHUTDOWN_TIMEOUT, force=False, dry_run=False, verify=None, boot_timeout=None,
                   fallback=True, json=False):
    """Move VMs from their Xen host to their KVM host."""
    _migrate(c, vm, "kvm", all, from_host, timeout, force, dry_run, parallel, fail_fast, json,
             boot_proof(verify, boot_timeout, fallback))


@task(help=_MOVE_HELP)
def migrate_to_xen(c, vm=None, all=False, from_host=None, parallel=4, fail_fast=False,
                   timeout=DEFAULT_SHUTDOWN_TIMEOUT, force=False, dry_run=False, verify=None, boot_timeout=None,
                   fallback=True, json=False):
    """Move VMs from their KVM host back to their Xen host."""
    _migrate(c, vm, "xen", all, from_host, timeout, force, dry_run, parallel, fail_fast, json,
             boot_proof(verify, boot_timeout, fallback))


@task(help={"vm": "VM name from the inventory", **_PROOF_HELP})
def rollback(c, vm, verify=None, boot_timeout=None):
    """Undo an interrupted or failed run of a VM, from its journal and the live state; a guest
    it starts again must prove itself up there.

    It is all undo: Ctrl-C or SIGTERM is answered with a line and does not stop it."""
    proving = boot_proof(verify, boot_timeout)
    inv = inventory.from_context(c)
    model = inv.vm(vm)
    site = site_from_context(c, inv)
    try:
        with site.interruption.on_signals():
            result = rollback_vm(Ctx(site, inv, model, proving=proving), journal_dir(c), lock_dir(c))
    finally:
        site.close()
    if not result.ok:
        raise ToolError(result.message)
    log.log(RESULT, f"== {result.message}")


STATUS_HEADER = ("VM", "runs on", "resource", "host", "role", "conn", "disk/peer", "sync")


def _connect_error(site: Site, host: str) -> str | None:
    """Why the host cannot be reached, or None once its connection is open."""
    try:
        site.host(host)
    except ToolError as exc:
        return str(exc)
    return None


def vm_status(site: Site, vm: VM, unreachable: set[str]) -> tuple[dict, list[str]]:
    """The VM's facts for `fab status` as a record (its --json as it is), and what could not be
    read; a host in `unreachable`, or one whose probe fails, shows as such (`maybe_on` where it
    may run; role `unreachable` or `unknown`) instead of ending the report."""
    problems = []

    def ask(host: str, probe: Callable[[], object]):
        if host in unreachable:
            return None
        try:
            return probe()
        except ToolError as exc:
            problems.append(str(exc))
            return None

    running = {side: ask(vm.host_for(side), functools.partial(running_on, site, vm, side)) for side in SIDES}
    resources = []
    for host in (vm.xen_host, vm.kvm_host):
        states = ask(host, functools.partial(_states_on, site, vm, host))
        for disk in vm.resources:
            st = states[disk.resource] if states is not None else None
            resources.append({
                "resource": disk.resource, "host": host,
                "role": st.role if st else "unreachable" if host in unreachable else "unknown",
                "connection": st.connection if st else None, "disk": st.disk if st else None,
                "peer_disks": list(st.peer_disks) if st else None, "sync_percent": st.sync_percent if st else None,
            })
    record = {"vm": vm.name, "runs_on": [vm.host_for(side) for side in SIDES if running[side]],
              "maybe_on": [vm.host_for(side) for side in SIDES if running[side] is None],
              "resources": resources, "unfinished_run": None}
    return record, problems


def status_rows(record: dict) -> list[tuple]:
    """A VM's record (vm_status) as rows of STATUS_HEADER."""
    runs_on = ", ".join(record["runs_on"] + [f"{host}?" for host in record["maybe_on"]]) or "-"
    rows = []
    for r in record["resources"]:
        sync = f"{r['sync_percent']:.1f}%" if r["sync_percent"] is not None else ""
        disks = f"{r['disk']}/{'/'.join(r['peer_disks']) or '?'}" if r["disk"] else ""
        rows.append((record["vm"], runs_on, r["resource"], r["host"], r["role"], r["connection"] or "", disks, sync))
    return rows


def _states_on(site: Site, vm: VM, host: str) -> dict:
    """The VM's DRBD states on a host, connecting to it only now (the host may be unreachable)."""
    return drbd.resource_states(site.host(host), vm, host)


@task(help={"vm": "VM name (default: every VM in the inventory)",
            "json": "print the report as JSON on stdout (fields in the README), every other line on stderr"})
def status(c, vm=None, json=False):
    """Where each VM runs, its DRBD roles and states, and unfinished runs. A host that does not
    answer is shown so and the rest still reported; the exit code then says it was incomplete."""
    inv = inventory.from_context(c)
    models = inv.select(vm)
    site = site_from_context(c, inv)
    records: list[dict] = []
    notes, problems, failed = [], [], []
    try:
        hosts = sorted({host for model in models for host in (model.xen_host, model.kvm_host)})
        errors = concurrently(*(lambda host=host: _connect_error(site, host) for host in hosts)) if hosts else []
        unreachable = [host for host, error in zip(hosts, errors, strict=True) if error]
        problems += [error for error in errors if error]
        notes += [f"! {error}" for error in errors if error]
        for model in models:
            record, vm_problems = vm_status(site, model, set(unreachable))
            records.append(record)
            notes += [f"! {problem}" for problem in vm_problems]
            failed += vm_problems
            pending = Journal.load(journal_dir(c), model.name)
            if pending is not None:
                record["unfinished_run"] = pending.summary()
                notes.append(f"! {model.name}: unfinished run ({pending.summary()}): `fab rollback --vm {model.name}`")
    finally:
        site.close()
    if json:
        jsonout.emit(jsonout.status_json(records, unreachable, problems + failed))
    else:
        print(output.table_text(STATUS_HEADER, [row for record in records for row in status_rows(record)]))
        for note in notes:
            print(note)
    if unreachable or failed:
        missing = [f"{host} unreachable" for host in unreachable] + ([f"{len(failed)} probe(s) failed"] if failed else [])
        raise ToolError(f"status incomplete: {', '.join(missing)}")


def match_swaps(site: Site, inv: Inventory, vm: VM, to: str) -> list[localdisk.SwapMatch]:
    """Before a guest boots on the `to` side by hand: that host's own swap gets the UUID of
    the swap the guest used on the other side, as `migrate` does in its plan."""
    src, dst = vm.host_for(other(to)), vm.host_for(to)
    if running_on(site, vm, to):
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
            log.info(f"* {model.host_for(to)}: no swap of {model.name} to format there ... ok")
    finally:
        site.close()


tasks = (migrate, migrate_to_kvm, migrate_to_xen, rollback, status, match_swap)
