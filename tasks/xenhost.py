"""Stage: the Xen host. The dual-boot cfg, and the domain's state, start and shutdown by hand
(through hypervisors.XenHost, for xl and xm alike)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from invoke import Collection, task

from . import drbd, hypervisors, inventory
from .errors import InputError
from .hypervisors import DEFAULT_SHUTDOWN_TIMEOUT
from .inventory import VM
from .remote import say, site_from_context

@contextmanager
def cfg_errors(filename: str):
    """A cfg that does not parse or map becomes one line naming it (and its line), no traceback."""
    try:
        yield
    except ValueError as exc:   # CfgSyntaxError, and the mapping's refusals
        text = str(exc)
        raise InputError(text if text.startswith(filename) else f"{filename}: {text}") from None


def read_vm_cfg(site, vm: VM) -> tuple[str, str]:
    """The VM's cfg as its Xen host has it now, and the label errors name it by."""
    label = f"{vm.xen_host}:{vm.cfg}"
    text = site.host(vm.xen_host).read_file(vm.cfg)
    if text is None:
        raise InputError(f"{label}: no such file (vms.{vm.name}.cfg)")
    return text, label


# Why an HVM guest's cfg is never rewritten: under qemu-xen its hd* and xvd* disks are IDE and
# its sd* disks SCSI, so a rename would change its hardware and it might not boot back on Xen.
HVM_CFG_NOTE = ("an HVM guest: its cfg stays as it is (it boots from emulated disks with its own boot "
                "loader under Xen and KVM alike, and renamed disks would be other hardware under Xen)")


def converted_cfg(text: str, filename: str, vm: VM | None, console: bool) -> str | None:
    """The dual-boot cfg: disks renamed sda.. (root first), root= follows, optional Xen console.

    None for an HVM guest's cfg, which stays as it is (HVM_CFG_NOTE); its disk map is still
    planned, so that every refusal of the cfg comes here too.
    """
    from .diskmap import plan_disk_map, renames
    from .formats.xencfg import parse_xen_cfg, rewrite_xen_cfg

    with cfg_errors(filename):
        cfg = parse_xen_cfg(text, filename)
        disk_map = plan_disk_map(cfg, vm)
        if cfg.hvm:
            return None
        return rewrite_xen_cfg(text, renames(disk_map), add_console=console, filename=filename)


def read_local(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None


def _context(c, vm_name: str, dry_run: bool = False):
    inv = inventory.from_context(c)
    vm = inv.vm(vm_name)
    site = site_from_context(c, inv, dry_run)
    host = inv.host(vm.xen_host)
    return inv, vm, site, host


@task(help={"cfg": "path of a Xen guest cfg (xm or xl syntax) on this machine",
            "console": "also add `console=hvc0 xencons=tty` to extra="})
def convert_cfg(c, cfg, console=False):
    """Print the dual-boot version of a Xen cfg (offline preview; changes nothing); an HVM
    guest's cfg unchanged, and why on stderr."""
    text = read_local(cfg, "Xen cfg")
    converted = converted_cfg(text, cfg, None, console)
    if converted is None:
        print(f"note: {cfg}: {HVM_CFG_NOTE}", file=sys.stderr)
    sys.stdout.write(text if converted is None else converted)


@task(help={"vm": "VM name from the inventory",
            "console": "also add `console=hvc0 xencons=tty` to extra=",
            "dry_run": "show the diff, change nothing"})
def prepare_cfg(c, vm, console=False, dry_run=False):
    """Rewrite the VM's cfg on its Xen host for dual boot (backup kept, diff shown); an HVM
    guest's cfg stays as it is."""
    _, model, site, host = _context(c, vm, dry_run)
    label = f"{host.name}:{model.cfg}"

    def transform(text: str) -> str:
        converted = converted_cfg(text, label, model, console)
        if converted is None:
            say(f"* {label}: {HVM_CFG_NOTE}")
        return text if converted is None else converted

    site.host(host.name).edit_file(model.cfg, transform)


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
