"""`fab prepare`: the one-time preparation of many VMs, each through the stages' own functions.

Per VM: the guest (guest.prepare), its cfg (xenhost.prepare-cfg), the kernel copy of a
direct-kernel VM (kvmhost.fetch-kernel), the domain (kvmhost.define), the KVM host's own swap
(match-swap) and, with --rehearse, a trial boot to a login prompt (kvmhost.rehearse).
Checks first: every refusal of every step comes before the VM's first change. Each step leaves
alone what is already done, so a second run changes nothing (a rehearsal is skipped while the
last one still proves the kernel and the domain). Many VMs go through fleet.run_fleet; a VM
that fails keeps the steps it finished (each stands alone), the others go on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from . import fleet, flows, guest, hypervisors, inventory, kvmhost, localdisk, rehearsals, vmplan, xenhost
from .cli import task
from .errors import GuardError, InputError, ToolError, quoted
from .fleet import VmResult
from .interrupt import Interrupted, Interruption
from .inventory import VM, Inventory
from .journal import VmLock, journal_dir, lock_dir
from .output import RESULT, log
from .readiness import rehearsal_check
from .remote import Site, counting_changes, site_from_context

STEPS = ("guest", "cfg", "kernel", "define", "swap", "rehearsal")
REHEARSE_TIMEOUT = 300.0    # seconds for a trial boot to reach its login prompt


class StateDirs(NamedTuple):
    """Where a run keeps its records on this machine."""

    journals: Path
    locks: Path
    rehearsals: Path

    @classmethod
    def of(cls, c) -> "StateDirs":
        return cls(journal_dir(c), lock_dir(c), rehearsals.rehearsal_dir(c))


@dataclass(frozen=True)
class Options:
    rehearse: bool = False
    rehearse_timeout: float = REHEARSE_TIMEOUT
    grub_install: bool = False


@dataclass(frozen=True)
class Checked:
    """One VM's preparation as its checks decided it, before any change."""

    guest: guest.GuestPlan | None     # None: an HVM guest the tool cannot reach (no guest_address)
    xml: str                          # the domain as the converted cfg renders it
    swaps: list[localdisk.SwapMatch]


def check_vm(site: Site, vm: VM, options: Options) -> Checked:
    """Every read-only check of every step: the guest runs on its Xen host only, the cfg converts,
    the domain renders valid, the guest's own checks pass, the KVM host's swap may be written."""
    runs_on, _ = flows.where_seen(site, vm)
    if runs_on != [vm.xen_host]:
        raise GuardError(f"{vm.name} runs on {', '.join(runs_on) or 'no host'}: prepare it while it runs on "
                         f"{vm.xen_host} (its guest, cfg and the KVM host's swap are prepared from there)")
    log.info(f"  ok: {vm.name} runs on {vm.xen_host}")
    plan = vmplan.of_vm(site, vm, kvm_devices=True)
    xml = kvmhost.render_checked(plan.as_converted(root_uuid=vmplan.root_uuid(site, plan)).domain_spec())
    log.info(f"  ok: {vm.xen_host}:{vm.cfg} converts, and its domain XML renders valid")
    guest_plan = None
    if vm.guest_address or not plan.cfg.hvm:
        guest_plan = guest.check_guest(site.guest(vm), plan.disk_map, plan.disk_drivers(), boot=vm.boot,
                                       uuid=True, grub_install=options.grub_install, hvm=plan.cfg.hvm)
    else:
        log.info(f"  note: {vm.name} is an HVM guest without guest_address: its guest steps are left out")
    swaps = localdisk.plan_swap_matches(site, vm, vm.xen_host, vm.kvm_host)
    return Checked(guest_plan, xml, swaps)


def rehearsal_is_current(site: Site, vm: VM, xml: str, records: Path) -> str | None:
    """Why the last rehearsal still proves this VM (the kernel it boots and its domain `xml` are
    the ones it booted), or None when a new one is needed, or when that cannot be told."""
    try:
        verdict = rehearsal_check(site, vm, xml, records)
    except ToolError as exc:
        log.info(f"  {vm.name}: the last rehearsal cannot be judged ({exc}): rehearsing")
        return None
    return verdict.reason if verdict.ready else None


def apply_step(site: Site, inv: Inventory, vm: VM, step: str, checked: Checked, options: Options,
               records: Path) -> None:
    """One step's changes; each leaves alone what is already as it should be."""
    if step == "guest":
        if checked.guest is None:
            log.info(f"* {vm.name}: guest steps ... skipped (HVM guest without guest_address)")
        else:
            guest.apply_guest(site.guest(vm), checked.guest)
    elif step == "cfg":
        xenhost.prepare_cfg_file(site, vm)
    elif step == "kernel":
        if vm.boot == "direct-kernel":
            kvmhost.fetch_guest_kernel(site, vm)
        else:
            log.info(f"* {vm.kvm_host}: kernel copy ... skipped (boot: {vm.boot})")
    elif step == "define":
        kvmhost.define_domain(hypervisors.kvm(site, vm.kvm_host), vm.name, checked.xml)
    elif step == "swap":
        for swap in checked.swaps:
            localdisk.format_swap(site.host(vm.kvm_host), swap)
        if not checked.swaps:
            log.info(f"* {vm.kvm_host}: swap of {vm.name} ... unchanged")
    elif step == "rehearsal":
        current = rehearsal_is_current(site, vm, checked.xml, records)
        if current:
            log.info(f"* {vm.kvm_host}: rehearsal ... unchanged ({current})")
        else:
            kvmhost.rehearse_and_record(site, inv, vm, records, seconds=options.rehearse_timeout, login=True)


def prepare_vm(site: Site, inv: Inventory, vm: VM, options: Options, dirs: StateDirs,
               on_step=lambda name: None) -> VmResult:
    """Check every step, then run them in order under the VM's locks (no move of it meanwhile)."""
    steps = [s for s in STEPS if s != "rehearsal" or options.rehearse]
    started = time.monotonic()
    changed: list[str] = []
    with VmLock(dirs.locks, vm.name), site.vm_lock(vm):
        flows.refuse_unfinished(dirs.journals, vm.name)
        log.info(f"== prepare {vm.name}{' (dry run)' if site.dry_run else ''}")
        log.info("checks:")
        on_step("checks")
        checked = check_vm(site, vm, options)
        for step in steps:
            try:
                site.interruption.check()
                on_step(step)
                with counting_changes() as sent:
                    apply_step(site, inv, vm, step, checked, options, dirs.rehearsals)
            except ToolError as exc:
                done = f"; done before it: {', '.join(changed)}" if changed else ""
                what = f"stopped at step {step} ({exc})" if isinstance(exc, Interrupted) else f"step {step} failed: {exc}"
                return VmResult(vm.name, False, [vm.xen_host], f"{vm.name}: {what}{done}", exc.code)
            if sent:
                changed.append(step)
    verb = "would change" if site.dry_run else "changed"
    what = f"{verb} {', '.join(changed)}" if changed else "nothing to change"
    message = f"{vm.name}: prepared, {what} ({time.monotonic() - started:.1f}s)"
    log.log(RESULT, f"== {message}")
    return VmResult(vm.name, True, [vm.xen_host], message)


def prepare_vms(c, inv: Inventory, vms: list[VM], options: Options, *, dry_run: bool, parallel: int,
                interruption: Interruption) -> list[VmResult]:
    """Every VM as a fleet run over one connection per host."""
    site = site_from_context(c, inv, dry_run, interruption)
    dirs = StateDirs.of(c)

    def one(model: VM, slot: fleet.Slot) -> VmResult:
        return prepare_vm(site, inv, model, options, dirs, slot.on_step)

    def not_started(model: VM, why: str) -> VmResult:
        return VmResult(model.name, False, [], f"{model.name}: not started ({why})")

    try:
        return fleet.run_fleet(site, vms, one, parallel=parallel, fail_fast=False, not_started=not_started)
    finally:
        site.close()


def _seconds(value, option: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise InputError(f"{option} must be a number of seconds above 0, got {quoted(value)}")
    return seconds


@task(help={
    "vm": "VM name from the inventory, or several: a,b,c",
    "all": "every VM in the inventory",
    "from_host": "every VM of this host",
    "parallel": "how many VMs are prepared at once (default 4; each host's max_parallel also applies)",
    "rehearse": "also boot each VM on snapshots to a login prompt (skipped while the last rehearsal "
                "still proves its kernel and domain)",
    "rehearse_timeout": f"seconds a rehearsal may take to reach its login prompt (default {REHEARSE_TIMEOUT:.0f})",
    "grub_install": guest.GRUB_INSTALL_HELP,
    "dry_run": "run every check and show the diffs and commands of every step; change nothing",
})
def prepare(c, vm=None, all=False, from_host=None, parallel=4, rehearse=False,
            rehearse_timeout=REHEARSE_TIMEOUT, grub_install=False, dry_run=False):
    """The one-time preparation of VMs, all steps of each: guest, cfg, kernel copy (direct-kernel),
    domain, the KVM host's swap, and a rehearsal with --rehearse; checks first, what is done is
    left alone. One VM's failure does not stop the others."""
    inv = inventory.from_context(c)
    vms = fleet.select_vms(inv, vm, all, from_host)
    options = Options(rehearse, _seconds(rehearse_timeout, "--rehearse-timeout"), grub_install)
    interruption = Interruption()
    results = prepare_vms(c, inv, vms, options, dry_run=dry_run, parallel=fleet.parallel_count(parallel),
                          interruption=interruption)
    fleet.report(results, interruption)
