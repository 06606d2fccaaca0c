"""Stage: the Xen host. Domain state, start, graceful shutdown, and the dual-boot cfg.

Works with both toolstacks: xm (Xen 3/4 with xend) and xl; their `list`
output and create/shutdown/destroy verbs are the same.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

from invoke import Collection, task

from . import drbd, inventory
from .errors import InputError, ToolError
from .inventory import VM, Host
from .interrupt import Interruption
from .remote import START_TIMEOUT, Remote, say, site_from_context

DEFAULT_SHUTDOWN_TIMEOUT = 300.0
# A gone guest is noticed within this (and one listing), so it bounds what polling adds to the
# downtime; waits on one host share their listings, so a fleet's waits cost the host a few
# listings a second, not a few per VM.
SHUTDOWN_POLL = 0.25


def parse_domain_list(text: str) -> dict[str, str]:
    """`xl list` / `xm list` -> {name: state flags}; Domain-0 left out.

    A guard reads "not listed" as "stopped", so a listing without its header or Domain-0, or
    with a line that is no domain, is a ValueError rather than a guess.
    """
    lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines or lines[0][1][:2] != ["Name", "ID"]:
        raise ValueError("no `Name ID ...` header")
    domains = {}
    for number, fields in lines[1:]:
        if len(fields) < 5 or not all(field.isdigit() for field in fields[1:4]):
            raise ValueError(f"line {number} is no domain")
        domains[fields[0]] = fields[4] if len(fields) > 5 else ""
    if domains.pop("Domain-0", None) is None:
        raise ValueError("no Domain-0")
    return domains


def toolstack(remote: Remote, host: Host) -> str:
    """xm or xl as the inventory says; `auto` prefers xl when installed (xm is gone since Xen 4.5)."""
    if host.toolstack != "auto":
        return host.toolstack
    if "toolstack" not in remote.facts:
        for candidate in ("xl", "xm"):
            if remote.probe(["sh", "-c", 'command -v "$1"', "sh", candidate]).ok:
                remote.facts["toolstack"] = candidate
                break
        else:
            raise ToolError(f"{host.name}: neither xl nor xm is installed")
    return remote.facts["toolstack"]


def list_domains(remote: Remote, host: Host, max_age: float = 0.0) -> dict[str, str]:
    """From an `xl list` begun at most max_age seconds ago (Remote.shared_probe)."""
    tool = toolstack(remote, host)
    outcome = remote.shared_probe([tool, "list"], max_age=max_age)
    if not outcome.ok:
        raise ToolError(f"{host.name}: `{tool} list` failed (exit {outcome.exit_code}): "
                        f"{(outcome.stderr or outcome.stdout).strip()}")
    try:
        return parse_domain_list(outcome.stdout)
    except ValueError as exc:
        raise ToolError(f"{host.name}: `{tool} list` printed a listing this tool does not recognise ({exc}): "
                        f"refusing to guess which domains run") from None


def domain_running(remote: Remote, host: Host, name: str, max_age: float = 0.0) -> bool:
    """Any state counts as running until the domain leaves the list: its disks are still held."""
    return name in list_domains(remote, host, max_age)


def start_domain(remote: Remote, host: Host, vm: VM) -> None:
    remote.change([toolstack(remote, host), "create", vm.cfg], timeout=START_TIMEOUT)


def destroy_domain(remote: Remote, host: Host, name: str) -> None:
    """Hard stop; a domain that is already gone counts as destroyed."""
    if remote.dry_run or domain_running(remote, host, name):
        remote.change([toolstack(remote, host), "destroy", name])


def shutdown_domain(remote: Remote, host: Host, name: str, *, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
                    force: bool = False, poll: float = SHUTDOWN_POLL, on_requested=None) -> None:
    """Graceful shutdown, then wait until the domain is gone; destroy after the wait only if forced.

    `on_requested` is called once the guest was asked to shut down: from then on it may go
    down at any moment, and an undo must wait for that before starting it again."""
    if not remote.dry_run and not domain_running(remote, host, name):
        say(f"* {host.name}: {name} is not running ... ok")
        return
    remote.change([toolstack(remote, host), "shutdown", name])
    if remote.dry_run:
        if force:
            say(f"  would run on {host.name} after {timeout:.0f}s: {toolstack(remote, host)} destroy {name}")
        return
    if on_requested:
        on_requested()
    gone = wait_until(lambda max_age: not domain_running(remote, host, name, max_age), timeout, poll,
                      f"{host.name}: waiting for {name} to shut down", remote.interruption)
    if not gone:
        if not force:
            raise ToolError(f"{host.name}: {name} still running after {timeout:.0f}s; "
                            f"retry with a longer --timeout, or --force to destroy it")
        say(f"* {host.name}: {name} did not shut down in {timeout:.0f}s: destroying (--force)")
        destroy_domain(remote, host, name)


def wait_until(done, timeout: float, poll: float, label: str, interruption: Interruption,
               every: float = 10.0) -> bool:
    """Poll `done(max_age)` until true or the timeout; a progress line every `every` seconds.

    `max_age` is how old a shared listing may be: up to one poll, never older than the
    wait, so waits on one host share listings and each answer postdates the command waited on.
    A stop request (Ctrl-C) ends the wait with Interrupted, except inside an undo.
    """
    started = time.monotonic()
    next_report = started + every
    while not done(min(poll, time.monotonic() - started)):
        now = time.monotonic()
        if now - started >= timeout:
            return False
        if now >= next_report:
            say(f"  {label} ... {now - started:.0f}s of {timeout:.0f}s")
            next_report = now + every
        interruption.sleep(poll)
    return True


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
    running = domain_running(site.host(host.name), host, model.name)
    print(f"{host.name}: {model.name} {'running' if running else 'not running'}")


@task(help=drbd.start_help("KVM"))
def start(c, vm, allow_disconnected=False, dry_run=False):
    """Start the VM's domain on its Xen host from its cfg, once its DRBD resources are Primary there
    and the domain is not running on the KVM host."""
    _, model, site, host = _context(c, vm, dry_run)
    drbd.start_guarded(site, model, host.name, lambda: start_domain(site.host(host.name), host, model),
                       allow_disconnected=allow_disconnected)


@task(help={"vm": "VM name from the inventory",
            "timeout": f"seconds to wait for a graceful shutdown (default {DEFAULT_SHUTDOWN_TIMEOUT:.0f})",
            "force": "destroy the domain if it has not shut down after the wait",
            "dry_run": "show the commands, change nothing"})
def shutdown(c, vm, timeout=DEFAULT_SHUTDOWN_TIMEOUT, force=False, dry_run=False):
    """Shut the VM's domain down on its Xen host and wait until it is gone."""
    _, model, site, host = _context(c, vm, dry_run)
    shutdown_domain(site.host(host.name), host, model.name, timeout=float(timeout), force=force)


ns = Collection("xenhost", convert_cfg, prepare_cfg, state, start, shutdown)
