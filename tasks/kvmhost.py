"""Stage: the KVM host. Render and define the libvirt domain, start, stop, rehearse.

Domain state is read as the Pacemaker VirtualDomain agent does: `LANG=C virsh
domstate`, where "shut off" or a missing domain means stopped.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from invoke import Collection, task

from . import inventory
from .errors import InputError, ToolError
from .inventory import VM, Host, Inventory, ReplicatedDisk
from .remote import Remote, RemoteError, say, site_from_context
from .xenhost import DEFAULT_SHUTDOWN_TIMEOUT, cfg_errors, read_local, read_vm_cfg, wait_until

XML_DIR = "/var/lib/xenkvm"
STOPPED = ("shut off", "not found")
REHEARSAL_SUFFIX = "-rehearsal"


def virsh(host: Host, *args: str) -> list[str]:
    return ["virsh", "-c", host.libvirt_uri, *args]


def domain_state(remote: Remote, host: Host, name: str) -> str:
    """`running`, `shut off`, `paused`, ... or `not found` when libvirt has no such domain."""
    outcome = remote.probe(virsh(host, "domstate", name), env={"LANG": "C"})
    if outcome.ok:
        return outcome.stdout.strip().splitlines()[0] if outcome.stdout.strip() else "unknown"
    if "failed to get domain" in outcome.stderr or "Domain not found" in outcome.stderr:
        return "not found"
    raise ToolError(f"{host.name}: `virsh domstate {name}` failed (exit {outcome.exit_code}): "
                    f"{outcome.stderr.strip()}")


def domain_running(remote: Remote, host: Host, name: str) -> bool:
    """Anything but stopped counts as running: a paused or crashed domain still holds its disks."""
    return domain_state(remote, host, name) not in STOPPED


def start_domain(remote: Remote, host: Host, name: str) -> None:
    remote.change(virsh(host, "start", name), env={"LANG": "C"})


def destroy_domain(remote: Remote, host: Host, name: str) -> None:
    """Hard stop; "domain is not running" counts as success, as in the Pacemaker agent."""
    try:
        remote.change(virsh(host, "destroy", name), env={"LANG": "C"})
    except RemoteError as exc:
        if not any(text in exc.output for text in ("not running", "not found", "failed to get domain")):
            raise


def shutdown_domain(remote: Remote, host: Host, name: str, *, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
                    force: bool = False, poll: float = 1.0) -> None:
    """ACPI shutdown, wait until shut off; destroy after the wait only if forced."""
    if not remote.dry_run and not domain_running(remote, host, name):
        say(f"* {host.name}: {name} is not running ... ok")
        return
    remote.change(virsh(host, "shutdown", name), env={"LANG": "C"})
    if remote.dry_run:
        return
    gone = wait_until(lambda: not domain_running(remote, host, name), timeout, poll,
                      f"{host.name}: waiting for {name} to shut down")
    if not gone:
        if not force:
            raise ToolError(f"{host.name}: {name} still running after {timeout:.0f}s; "
                            f"retry with a longer --timeout, or --force to destroy it")
        say(f"* {host.name}: {name} did not shut down in {timeout:.0f}s: destroying (--force)")
        destroy_domain(remote, host, name)


def undefine_domain(remote: Remote, host: Host, name: str) -> None:
    if remote.dry_run or domain_state(remote, host, name) != "not found":
        remote.change(virsh(host, "undefine", name), env={"LANG": "C"})


def plan_spec(cfg_text: str, cfg_name: str, vm: VM | None):
    """DomainSpec from a Xen cfg's text, through the VM's one disk map."""
    from .diskmap import plan_disk_map
    from .formats.domainxml import plan_domain_spec
    from .formats.xencfg import parse_xen_cfg

    with cfg_errors(cfg_name):
        cfg = parse_xen_cfg(cfg_text, cfg_name)
        return plan_domain_spec(cfg, plan_disk_map(cfg, vm), vm)


def render_checked(spec) -> str:
    """Render and validate against libvirt's schema where this machine has it."""
    from .formats.domainxml import DomainXmlError, default_schema_dir, render_domain_xml, validate_domain_xml

    try:
        xml = render_domain_xml(spec)
        schemas = default_schema_dir()
        if schemas is not None:
            validate_domain_xml(xml, schemas)
    except DomainXmlError as exc:
        raise ToolError(f"domain XML for {spec.name} is not valid: {exc}") from None
    return xml


def vm_spec(site, inv: Inventory, vm: VM):
    """The VM's domain spec, from the cfg as it is on its Xen host now."""
    return plan_spec(*read_vm_cfg(site, vm), vm)


def define_domain(remote: Remote, host: Host, name: str, xml: str) -> bool:
    """Upload the XML (diff shown, backup kept) and `virsh define --validate` it.

    Returns whether the domain was new, so that the undo knows to undefine it.
    """
    was_new = domain_state(remote, host, name) == "not found"
    path = f"{XML_DIR}/{name}.xml"
    remote.change(["mkdir", "-p", XML_DIR], quiet=True)
    changed = remote.edit_file(path, lambda _old: xml, create=True)
    if changed or was_new:
        remote.change(virsh(host, "define", "--validate", path), env={"LANG": "C"})
    return was_new


# -- rehearsal on snapshots -------------------------------------------------------------------

class LvmSnapshot:
    """An LVM snapshot of the backing LV: writes land in the snapshot, the LV stays as it was."""

    kind, format = "block", "raw"

    def __init__(self, size: str = "1G"):
        self.size = size

    def create(self, remote: Remote, source: str, name: str) -> str:
        remote.change(["lvcreate", "--snapshot", "--name", name, "--size", self.size, source])
        return f"{source.rsplit('/', 1)[0]}/{name}"

    def remove(self, remote: Remote, path: str) -> None:
        remote.change(["lvremove", "-f", path])


class Qcow2Overlay:
    """A qcow2 overlay backed by the volume: qemu opens the backing read-only."""

    kind, format = "file", "qcow2"

    def create(self, remote: Remote, source: str, name: str) -> str:
        path = f"{XML_DIR}/rehearsal/{name}.qcow2"
        remote.change(["mkdir", "-p", f"{XML_DIR}/rehearsal"], quiet=True)
        remote.change(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", source, path])
        return path

    def remove(self, remote: Remote, path: str) -> None:
        remote.change(["rm", "-f", "--", path])


SNAPSHOT_METHODS = {"lvm": LvmSnapshot, "qcow2": Qcow2Overlay}


def rehearsal_sources(vm: VM, spec) -> list[str]:
    """The volumes to snapshot on the KVM host, in the spec's disk order.

    A DRBD device cannot be opened while Secondary, so replicated disks are
    snapshotted through their backing volume.
    """
    by_device = {}
    for i, disk in enumerate(vm.disks):
        if isinstance(disk, ReplicatedDisk):
            backing = disk.backing.get(vm.kvm_host)
            if backing is None:
                raise InputError(f"vms.{vm.name}.disks[{i}].backing is needed to rehearse on snapshots")
            by_device[disk.device[vm.kvm_host]] = backing
    return [by_device.get(d.source, d.source) for d in spec.disks]


def rehearse_vm(site, inv: Inventory, vm: VM, *, seconds: float = 20.0, method: str | None = None,
                snapshot_size: str = "1G") -> None:
    """Boot a throwaway copy of the VM on snapshots and discard it; cleanup always runs."""
    host = inv.host(vm.kvm_host)
    remote = site.host(host.name)
    spec = vm_spec(site, inv, vm)
    sources = rehearsal_sources(vm, spec)
    snapper = SNAPSHOT_METHODS[method or vm.snapshot]
    snapper = snapper(snapshot_size) if snapper is LvmSnapshot else snapper()
    name = f"{vm.name}{REHEARSAL_SUFFIX}"
    if domain_state(remote, host, name) != "not found":
        raise ToolError(f"{host.name}: a domain {name} exists from an earlier rehearsal; "
                        f"remove it (virsh destroy/undefine) and its snapshots first")
    snapshots: list[str] = []
    domain_attempted = False
    try:
        disks = []
        for disk, source in zip(spec.disks, sources):
            path = snapper.create(remote, source, f"{vm.name}-{disk.target}{REHEARSAL_SUFFIX}")
            snapshots.append(path)
            disks.append(dataclasses.replace(disk, source=path, kind=snapper.kind, format=snapper.format))
        # No network: the real guest still runs on Xen with the same MAC and address.
        trial = dataclasses.replace(spec, name=name, uuid=None, disks=tuple(disks), interfaces=())
        domain_attempted = True
        define_domain(remote, host, name, render_checked(trial))
        start_domain(remote, host, name)
        if remote.dry_run:
            return
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            state = domain_state(remote, host, name)
            if state != "running":
                raise ToolError(f"{host.name}: rehearsal domain {name} is {state} after "
                                f"{time.monotonic() - started:.0f}s")
            time.sleep(1.0)
        say(f"* {host.name}: {name} ran for {seconds:.0f}s on snapshots ... ok")
    finally:
        cleanup_errors = []
        steps = [(lambda: destroy_domain(remote, host, name)), (lambda: undefine_domain(remote, host, name))] \
            if domain_attempted else []
        steps += [(lambda p=p: snapper.remove(remote, p)) for p in reversed(snapshots)]
        for step in steps:
            try:
                step()
            except ToolError as exc:
                cleanup_errors.append(str(exc))
        if cleanup_errors:
            say("! rehearsal cleanup left something behind: " + "; ".join(cleanup_errors))


# -- tasks -------------------------------------------------------------------------------------

def _context(c, vm_name: str, dry_run: bool = False):
    inv = inventory.from_context(c)
    vm = inv.vm(vm_name)
    return inv, vm, site_from_context(c, inv, dry_run), inv.host(vm.kvm_host)


@task(help={"cfg": "path of a Xen guest cfg on this machine",
            "vm": "VM name from the inventory: take disks, MAC, bus and type from it"})
def render_xml(c, cfg, vm=None):
    """Print the libvirt domain XML for a Xen cfg (offline preview; contacts nothing)."""
    model = inventory.from_context(c).vm(vm) if vm else None
    sys.stdout.write(render_checked(plan_spec(read_local(cfg, "Xen cfg"), cfg, model)))


@task(help={"vm": "VM name from the inventory", "dry_run": "show the XML diff, change nothing"})
def define(c, vm, dry_run=False):
    """Render the VM's domain from its Xen cfg, upload it and define it with libvirt."""
    inv, model, site, host = _context(c, vm, dry_run)
    define_domain(site.host(host.name), host, model.name, render_checked(vm_spec(site, inv, model)))


@task(help={"vm": "VM name from the inventory"})
def state(c, vm):
    """Print the VM's domain state on its KVM host (LANG=C virsh domstate)."""
    _, model, site, host = _context(c, vm)
    print(f"{host.name}: {model.name} {domain_state(site.host(host.name), host, model.name)}")


@task(help={"vm": "VM name from the inventory", "dry_run": "show the command, change nothing"})
def start(c, vm, dry_run=False):
    """Start the VM's (defined) domain on its KVM host."""
    _, model, site, host = _context(c, vm, dry_run)
    remote = site.host(host.name)
    if domain_running(remote, host, model.name):
        say(f"* {host.name}: {model.name} already running ... ok")
        return
    start_domain(remote, host, model.name)


@task(help={"vm": "VM name from the inventory",
            "timeout": f"seconds to wait for a graceful shutdown (default {DEFAULT_SHUTDOWN_TIMEOUT:.0f})",
            "force": "destroy the domain if it has not shut down after the wait",
            "dry_run": "show the commands, change nothing"})
def shutdown(c, vm, timeout=DEFAULT_SHUTDOWN_TIMEOUT, force=False, dry_run=False):
    """Shut the VM's domain down on its KVM host and wait until it is off."""
    _, model, site, host = _context(c, vm, dry_run)
    shutdown_domain(site.host(host.name), host, model.name, timeout=float(timeout), force=force)


@task(help={"vm": "VM name from the inventory",
            "seconds": "how long the trial domain must keep running (default 20)",
            "method": "snapshot method: lvm (default from the inventory) or qcow2",
            "size": "LVM snapshot size (default 1G)",
            "dry_run": "show the commands, change nothing"})
def rehearse(c, vm, seconds=20.0, method=None, size="1G", dry_run=False):
    """Boot a throwaway copy of the VM on snapshots of its disks, then discard it."""
    if method is not None and method not in SNAPSHOT_METHODS:
        raise InputError(f"--method must be one of {', '.join(SNAPSHOT_METHODS)}, got {method!r}")
    inv, model, site, _ = _context(c, vm, dry_run)
    rehearse_vm(site, inv, model, seconds=float(seconds), method=method, snapshot_size=size)


ns = Collection("kvmhost", render_xml, define, state, start, shutdown, rehearse)
