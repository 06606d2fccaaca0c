"""`fab readiness`: which VMs are ready to switch, and which stopped being ready, check by check.

It only reads (every host, guest and file through probes; the run's Site is a dry run besides):
DRBD, the guest's consoles, fstab, boot (grub or the direct-kernel copy), the initramfs of the
kernel that boots, the converted cfg, the defined domain, the KVM host's swap, the last
rehearsal and the target's free memory. Each check ends in a mark, a reason and the fix
(formats/readiness.py); a fact that cannot be read is shown as unknown, never as ready.
"""

from __future__ import annotations

import contextvars
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import capacity, drbd, fleet, flows, guest, hypervisors, inventory, jsonout, kvmhost, output, rehearsals, vmplan
from .cli import task
from .errors import ToolError, one_line
from .formats import FormatError
from .formats import readiness as verdicts
from .formats.getty import plan_getty_units
from .formats.inittab import convert_inittab, convert_securetty
from .formats.readiness import Check
from .inventory import VM, LocalDisk, other
from .localdisk import plan_swap_matches
from .output import set_vm
from .remote import SLOW_TIMEOUT, Remote, Site, concurrently, site_from_context
from .vmplan import HVM_CFG_NOTE, VmPlan

READINESS_HEADER = ("VM", "check", "ready", "reason", "fix")


@dataclass
class VmReadiness:
    vm: str
    runs_on: list[str]
    checks: list[Check]

    @property
    def ready(self) -> bool:
        return all(check.ready for check in self.checks)


def attempt(name: str, judge: Callable[[], Check]) -> Check:
    """A check whose facts could not be read (or not understood) is unknown, in one line."""
    try:
        return judge()
    except (ToolError, FormatError) as exc:
        return verdicts.unknown(name, str(exc))


def kernel_booted_now(site: Site, vm: VM) -> str | None:
    """The kernel the VM boots on KVM now: its direct-kernel copy (None: none), or grub's pick,
    the guest's newest that boots under KVM."""
    if vm.boot == "direct-kernel":
        return kvmhost.fetched_kernel(site.host(vm.kvm_host), vm.name)
    return guest.newest_bootable_kernel(site.guest(vm), vm.name)


def rehearsal_check(site: Site, vm: VM, xml: str, records: Path) -> Check:
    """The last rehearsal against the kernel the VM boots now and its domain `xml` as rendered now."""
    return verdicts.check_rehearsal(vm.name, rehearsals.load(records, vm.name), kernel_booted_now(site, vm),
                                    hashlib.sha256(xml.encode()).hexdigest())


def target_capacity(site: Site, target: str, need: capacity.Need) -> Check:
    """The target's room for the guest, judged as a move's own check judges it (capacity.py)."""
    hypervisor = hypervisors.on(site, target)
    ceiling = hypervisor.host.max_vcpus
    room = capacity.room_on(hypervisor, ceiling)
    return verdicts.check_capacity(target, room.free_mib, capacity.shortfall(need, room, ceiling))


class Judge:
    """One VM's checks over the run's connections; each fact is read once and shared."""

    def __init__(self, site: Site, vm: VM, records: Path):
        self.site, self.vm, self.records = site, vm, records
        self._facts: guest.GuestFacts | None = None

    # -- facts read on demand (a host or guest that cannot be reached fails only its checks) -----
    @property
    def in_guest(self) -> Remote:
        return self.site.guest(self.vm)

    @property
    def kvm(self) -> Remote:
        return self.site.host(self.vm.kvm_host)

    @property
    def facts(self) -> guest.GuestFacts:
        if self._facts is None:
            self._facts = guest.gather_facts(self.in_guest)
        return self._facts

    def newest_kernel(self) -> str:
        return guest.newest_bootable_kernel(self.in_guest, self.vm.name)

    # -- the checks ------------------------------------------------------------------------------
    def drbd(self, runs_on: list[str]) -> Check:
        if len(runs_on) != 1:
            return verdicts.not_ready("drbd", f"{self.vm.name} runs on {' and '.join(runs_on) or 'no host'}",
                                      "fab status; start it on one host (or `fab rollback` after a broken move)")
        hosts = (self.vm.xen_host, self.vm.kvm_host)
        states = concurrently(*(lambda host=host: drbd.resource_states(self.site.host(host), self.vm, host)
                                for host in hosts))
        return verdicts.check_drbd(self.vm.name, dict(zip(hosts, states, strict=True)), runs_on[0])

    def consoles(self, plan: VmPlan) -> Check:
        if plan.cfg.hvm:
            return verdicts.ready("consoles", "HVM guest: its own consoles on emulated hardware")
        facts = self.facts
        getty = plan_getty_units(facts.console)
        pending = [*getty.unmask, *getty.enable]
        if facts.init == "sysvinit" and convert_inittab(facts.inittab or "") != facts.inittab:
            pending.insert(0, guest.INITTAB)
        if facts.securetty is not None and convert_securetty(facts.securetty) != facts.securetty:
            pending.append(guest.SECURETTY)
        return verdicts.check_consoles(self.vm.name, facts.init, pending)

    def fstab(self, plan: VmPlan) -> Check:
        if plan.cfg.hvm:
            return verdicts.ready("fstab", "HVM guest: its disks keep their names")
        facts = self.facts
        if facts.fstab is None:
            return verdicts.not_ready("fstab", f"the guest has no {guest.FSTAB}", "restore it in the guest")
        try:
            renames, _ = guest.plan_renames(facts.fstab, plan.disk_map)
        except FormatError as exc:   # a disk the map does not know, a / off the root disk
            return verdicts.not_ready("fstab", f"{guest.FSTAB}: {exc}", "fix that line of the guest's fstab, or the cfg")
        return verdicts.check_fstab_names(self.vm.name, renames, facts.fstab_devices,
                                          [d.target for d in plan.disk_map])

    def boot(self, plan: VmPlan) -> Check:
        if plan.cfg.hvm:
            return verdicts.ready("boot", "HVM guest: its own boot loader from its disk")
        kernel = self.newest_kernel()
        if self.vm.boot == "direct-kernel":
            return self._kernel_copy(kernel)
        debconf = verdicts.parse_debconf_show(self.in_guest.probe(["debconf-show", "grub-pc"]).stdout)
        missing = [device for device in verdicts.install_devices(debconf)
                   if not self.in_guest.probe(["test", "-b", device]).ok]
        return verdicts.check_grub(self.vm.name, self.facts.grub_pc, self.in_guest.read_file(guest.GRUB_CFG),
                                   kernel, missing)

    def _kernel_copy(self, kernel: str) -> Check:
        directory = kvmhost.boot_dir(self.vm.name)
        sources = {"vmlinuz": f"/boot/vmlinuz-{kernel}", "initrd.img": f"/boot/initrd.img-{kernel}"}
        guest_sums = {name: kvmhost.file_sha256(self.in_guest, path) for name, path in sources.items()}
        copy_sums = {name: kvmhost.file_sha256(self.kvm, f"{directory}/{name}") for name in sources}
        return verdicts.check_kernel_copy(self.vm.name, self.vm.kvm_host, kernel, guest_sums, copy_sums,
                                          kvmhost.fetched_kernel(self.kvm, self.vm.name))

    def initramfs(self, plan: VmPlan) -> Check:
        buses = plan.disk_buses()
        kernel = self.newest_kernel()
        listing = self.in_guest.probe(["lsinitramfs", f"/boot/initrd.img-{kernel}"], timeout=SLOW_TIMEOUT)
        if not listing.ok:
            return verdicts.not_ready("initramfs", f"`lsinitramfs /boot/initrd.img-{kernel}` failed in the guest "
                                                   f"(exit {listing.exit_code}): no initramfs for {kernel}?",
                                      f"fab guest.initramfs --vm {self.vm.name} --force")
        missing = verdicts.missing_drivers(listing.stdout, kernel, plan.disk_drivers(),
                                           self.in_guest.read_file(f"/boot/config-{kernel}"))
        return verdicts.check_initramfs(self.vm.name, kernel, "/".join(sorted(set(buses))), missing, self.vm.boot)

    def cfg(self, plan: VmPlan) -> Check:
        converted = not plan.needs_root_uuid() and plan.text in (plan.converted_cfg(False), plan.converted_cfg(True))
        return verdicts.check_cfg(self.vm.name, plan.label, converted, HVM_CFG_NOTE if plan.cfg.hvm else None)

    def domain(self, xml: str, state: str) -> Check:
        path = kvmhost.xml_path(self.vm.name)
        differences: list[str] = []
        if state != "not found":
            kvm = hypervisors.kvm(self.site, self.vm.kvm_host)
            defined = kvm.remote.probe(kvm.virsh("dumpxml", "--inactive", self.vm.name))
            if not defined.ok:
                return verdicts.unknown("domain", f"{self.vm.kvm_host}: virsh dumpxml failed (exit {defined.exit_code})")
            differences = verdicts.domain_differences(xml, defined.stdout)
        return verdicts.check_domain(self.vm.name, self.vm.kvm_host, path, state,
                                     self.kvm.read_file(path) == xml, differences)

    def swap(self, source: str, target: str) -> Check:
        locals_ = [d for d in self.vm.disks if isinstance(d, LocalDisk)]
        try:
            needing = [m.path for m in plan_swap_matches(self.site, self.vm, source, target)]
        except ToolError as exc:   # a volume that is no swap: matching would refuse it
            return verdicts.not_ready("swap", str(exc), "fix the inventory's local: disk, or wipe the volume")
        return verdicts.check_swap(self.vm.name, target, needing, len(locals_))

    def all(self) -> VmReadiness:
        """Every check in CHECKS' order; where the guest runs decides the DRBD roles and the target."""
        vm = self.vm
        try:
            runs_on, state = flows.where_seen(self.site, vm)
        except ToolError as exc:
            return VmReadiness(vm.name, [], [verdicts.unknown(name, str(exc)) for name in verdicts.CHECKS])
        source = runs_on[0] if len(runs_on) == 1 else vm.xen_host
        target = vm.host_for(other(self.site.inventory.host(source).role))
        why = ""
        try:
            plan = vmplan.of_vm(self.site, vm, kvm_devices=True)
            xml = kvmhost.render_checked(plan.domain_spec())
        except ToolError as exc:   # no cfg, or one that does not render: every check that needs it says so
            plan, xml, why = None, "", str(exc)
        checks = {"drbd": lambda: self.drbd(runs_on), "swap": lambda: self.swap(source, target)}
        if plan is not None:
            checks |= {"consoles": lambda: self.consoles(plan), "fstab": lambda: self.fstab(plan),
                       "boot": lambda: self.boot(plan), "initramfs": lambda: self.initramfs(plan),
                       "cfg": lambda: self.cfg(plan), "domain": lambda: self.domain(xml, state),
                       "rehearsal": lambda: rehearsal_check(self.site, vm, xml, self.records),
                       "capacity": lambda: target_capacity(self.site, target, capacity.need_on(
                           self.site.inventory.host(target).role, plan))}
        results = [attempt(name, checks[name]) if name in checks else verdicts.unknown(name, why)
                   for name in verdicts.CHECKS]
        return VmReadiness(vm.name, runs_on, results)


def readiness_of(site: Site, vms: list[VM], records: Path, parallel: int) -> list[VmReadiness]:
    """Every VM's checks, `parallel` VMs at once over the run's connections, in the VMs' order."""
    def one(vm: VM) -> VmReadiness:
        set_vm(vm.name if len(vms) > 1 else "")
        return Judge(site, vm, records).all()

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda vm: contextvars.copy_context().run(one, vm), vms))


def readiness_rows(results: list[VmReadiness]) -> list[tuple]:
    """The table's rows; a reason quotes what a guest holds (a device name, a kernel version), so
    each cell is made one printable line."""
    return [(r.vm, check.name, check.mark, one_line(check.reason), one_line(check.fix))
            for r in results for check in r.checks]


@task(help={"vm": "VM name from the inventory, or several: a,b,c (default: every VM)",
            "parallel": "how many VMs are checked at once (default 4)",
            "json": "print the result as JSON on stdout (fields in the README), every other line on stderr"})
def readiness(c, vm=None, parallel=4, json=False):
    """Whether each VM is ready to switch: DRBD, consoles, fstab, boot, initramfs, cfg, domain,
    swap, last rehearsal, target memory; a mark, a reason and the fix per check. Changes nothing;
    exit 0 only when every check of every VM is ready."""
    inv = inventory.from_context(c)
    vms = inv.select(vm)
    count = fleet.parallel_count(parallel)
    site = site_from_context(c, inv, dry_run=True)
    try:
        results = readiness_of(site, vms, rehearsals.rehearsal_dir(c), count)
    finally:
        site.close()
    if json:
        jsonout.emit(jsonout.readiness_json(results))
    else:
        print(output.table_text(READINESS_HEADER, readiness_rows(results)))
    waiting = [r.vm for r in results if not r.ready]
    if waiting:
        raise ToolError(f"{len(waiting)} of {len(results)} VMs not ready: {', '.join(waiting)}")
