"""Stage: the Xen host. The dual-boot cfg, and the domain's state, start and shutdown by hand
(through hypervisors.XenHost, for xl and xm alike)."""

from __future__ import annotations

import sys

from invoke import Collection

from . import drbd, hypervisors, inventory, vmplan
from .cli import task
from .hypervisors import DEFAULT_SHUTDOWN_TIMEOUT
from .inventory import VM
from .output import log
from .remote import site_from_context
from .vmplan import HVM_CFG_NOTE


def _context(c, vm_name: str, dry_run: bool = False):
    inv = inventory.from_context(c)
    vm = inv.vm(vm_name)
    site = site_from_context(c, inv, dry_run)
    host = inv.host(vm.xen_host)
    return inv, vm, site, host


@task(help={"cfg": "path of a Xen guest cfg (xm or xl syntax) on this machine",
            "console": "also add `console=hvc0 xencons=tty` to extra=",
            "root_uuid": "the root file system's UUID, for root= (prepare-cfg reads it with blkid on the Xen host)"})
def convert_cfg(c, cfg, console=False, root_uuid=None):
    """Print the dual-boot version of a Xen cfg (offline preview; changes nothing); an HVM
    guest's cfg unchanged, and why on stderr."""
    plan = vmplan.of_file(cfg)
    converted = plan.converted_cfg(console, root_uuid)
    if converted is None:
        print(f"note: {cfg}: {HVM_CFG_NOTE}", file=sys.stderr)
    elif root_uuid is None and plan.needs_root_uuid():
        print(f"note: {cfg}: prepare-cfg writes root=UUID= of the root file system instead of a disk name "
              f"(a pvops kernel under Xen names every disk xvd*); give --root-uuid to see it", file=sys.stderr)
    sys.stdout.write(plan.text if converted is None else converted)


def prepare_cfg_file(site, vm: VM, console: bool = False) -> bool:
    """The VM's cfg on its Xen host rewritten for dual boot (backup kept, diff shown); whether it
    changed. root= names the root file system's UUID, read from its disk there. An HVM guest's cfg
    stays as it is."""
    label = f"{vm.xen_host}:{vm.cfg}"

    def transform(text: str) -> str:
        plan = vmplan.plan(text, label, vm)
        converted = plan.converted_cfg(console, vmplan.root_uuid(site, plan))
        if converted is None:
            log.info(f"* {label}: {HVM_CFG_NOTE}")
        return text if converted is None else converted

    return site.host(vm.xen_host).edit_file(vm.cfg, transform)


@task(help={"vm": "VM name from the inventory",
            "console": "also add `console=hvc0 xencons=tty` to extra=",
            "dry_run": "show the diff, change nothing"})
def prepare_cfg(c, vm, console=False, dry_run=False):
    """Rewrite the VM's cfg on its Xen host for dual boot (backup kept, diff shown); an HVM
    guest's cfg stays as it is."""
    _, model, site, _ = _context(c, vm, dry_run)
    prepare_cfg_file(site, model, console)


@task(help={"vm": "VM name from the inventory"})
def state(c, vm):
    """Say whether the VM's domain runs on its Xen host."""
    _, model, site, host = _context(c, vm)
    running = hypervisors.on(site, host.name).running(model.name)
    print(f"{host.name}: {model.name} {'running' if running else 'not running'}")


@task(help=drbd.start_help("KVM"))
def start(c, vm, allow_disconnected=False, dry_run=False):
    """Start the VM's domain on its Xen host from its cfg, once its DRBD resources are Primary there
    and the domain is not running on the KVM host."""
    _, model, site, host = _context(c, vm, dry_run)
    drbd.start_guarded(site, model, host.name, lambda: hypervisors.on(site, host.name).start(model),
                       allow_disconnected=allow_disconnected)


@task(help={"vm": "VM name from the inventory",
            "timeout": f"seconds to wait for a graceful shutdown (default {DEFAULT_SHUTDOWN_TIMEOUT:.0f})",
            "force": "destroy the domain if it has not shut down after the wait",
            "dry_run": "show the commands, change nothing"})
def shutdown(c, vm, timeout=DEFAULT_SHUTDOWN_TIMEOUT, force=False, dry_run=False):
    """Shut the VM's domain down on its Xen host and wait until it is gone."""
    _, model, site, host = _context(c, vm, dry_run)
    hypervisors.on(site, host.name).shutdown(model.name, timeout=float(timeout), force=force)


ns = Collection("xenhost", convert_cfg, prepare_cfg, state, start, shutdown)
