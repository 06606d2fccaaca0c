"""Xen and KVM hosts behind one interface: is a domain running, start it, shut it down and
wait, destroy it; define and undefine on KVM.

Each kind builds its commands from its own argument lists (`*_argv`); `Remote.command` of
one is the exact line sent, which is also what a move's plan prints. Domain state comes from
one listing per host (`xl list`, `virsh list --all`) that concurrent callers share. As in the
Pacemaker agents, a Xen domain is running until it leaves the list and a KVM domain until it
is "shut off" or unknown to libvirt: a paused, crashed or dying domain still holds its disks.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from .errors import ToolError
from .inventory import VM, Host
from .output import log
from .remote import START_TIMEOUT, Remote, RemoteError, replaced_by

if TYPE_CHECKING:
    from .interrupt import Interruption
    from .remote import Site

DEFAULT_SHUTDOWN_TIMEOUT = 300.0
# A gone guest is noticed within this (and one listing), so it bounds what polling adds to the
# downtime; waits on one host share their listings, so a fleet's waits cost the host a few
# listings a second, not a few per VM.
SHUTDOWN_POLL = 0.25
KVM_STOPPED = ("shut off", "not found")


class Hypervisor:
    """One host's hypervisor, as every stage and flow uses it."""

    side = ""

    def __init__(self, remote: Remote, host: Host):
        self.remote = remote
        self.host = host

    # -- each kind's own -------------------------------------------------------------------
    def states(self, max_age: float = 0.0) -> dict[str, str]:
        """Every domain the host lists, with its state, from a listing begun at most max_age ago."""
        raise NotImplementedError

    def holds_disks(self, state: str) -> bool:
        raise NotImplementedError

    def start_argv(self, vm: VM) -> list[str]:
        raise NotImplementedError

    def shutdown_argv(self, name: str) -> list[str]:
        raise NotImplementedError

    def destroy_argv(self, name: str) -> list[str]:
        raise NotImplementedError

    def destroy(self, name: str) -> None:
        """Hard stop; a domain that is not running counts as destroyed."""
        raise NotImplementedError

    # -- the same on both -------------------------------------------------------------------
    def command(self, argv: list[str]) -> str:
        """The exact line `argv` is sent as (sudo, locale)."""
        return self.remote.command(argv)

    def state(self, name: str, max_age: float = 0.0) -> str:
        return self.states(max_age).get(name, "not found")

    def running(self, name: str, max_age: float = 0.0) -> bool:
        """Whether the domain still holds its disks there."""
        return self.holds_disks(self.state(name, max_age))

    def start(self, vm: VM) -> None:
        self.remote.change(self.start_argv(vm), timeout=START_TIMEOUT)

    def shutdown(self, name: str, *, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, force: bool = False,
                 poll: float = SHUTDOWN_POLL, on_requested: Callable[[], None] | None = None) -> None:
        """Graceful shutdown, then wait until the domain is gone; destroy after the wait only if forced.

        `on_requested` is called once the guest was asked to shut down: from then on it may go
        down at any moment, and an undo must wait for that before starting it again.
        """
        if not self.remote.dry_run and not self.running(name):
            log.info(f"* {self.host.name}: {name} is not running ... ok")
            return
        self.remote.change(self.shutdown_argv(name))
        if self.remote.dry_run:
            if force:
                log.info(f"  would run on {self.host.name} after {timeout:.0f}s: {self.command(self.destroy_argv(name))}")
            return
        if on_requested:
            on_requested()
        gone = wait_until(lambda max_age: not self.running(name, max_age), timeout, poll,
                          f"{self.host.name}: waiting for {name} to shut down", self.remote.interruption)
        if not gone:
            if not force:
                raise ToolError(f"{self.host.name}: {name} still running after {timeout:.0f}s; "
                                f"retry with a longer --timeout, or --force to destroy it")
            log.info(f"* {self.host.name}: {name} did not shut down in {timeout:.0f}s: destroying (--force)")
            self.destroy(name)

    def _listing(self, argv: list[str], label: str, parse: Callable[[str], dict[str, str]],
                 max_age: float) -> dict[str, str]:
        outcome = self.remote.shared_probe(argv, max_age=max_age)
        if not outcome.ok:
            raise ToolError(f"{self.host.name}: `{label}` failed (exit {outcome.exit_code}): "
                            f"{(outcome.stderr or outcome.stdout).strip()}")
        try:
            return parse(outcome.stdout)
        except ValueError as exc:
            raise ToolError(f"{self.host.name}: `{label}` printed a listing this tool does not recognise "
                            f"({exc}): refusing to guess which domains run") from None


class XenHost(Hypervisor):
    """xl or xm: their `list` output and create/shutdown/destroy verbs are the same."""

    side = "xen"

    @property
    def tool(self) -> str:
        """xm or xl as the inventory says; `auto` prefers xl when installed (xm is gone since Xen 4.5)."""
        if self.host.toolstack != "auto":
            return self.host.toolstack
        facts = self.remote.facts
        if "toolstack" not in facts:
            for candidate in ("xl", "xm"):
                if self.remote.probe(["sh", "-c", 'command -v "$1"', "sh", candidate]).ok:
                    facts["toolstack"] = candidate
                    break
            else:
                raise ToolError(f"{self.host.name}: neither xl nor xm is installed")
        return facts["toolstack"]

    def states(self, max_age: float = 0.0) -> dict[str, str]:
        from .formats.domains import parse_xl_list
        return self._listing([self.tool, "list"], f"{self.tool} list", parse_xl_list, max_age)

    def holds_disks(self, state: str) -> bool:
        return state != "not found"

    def start_argv(self, vm: VM) -> list[str]:
        return [self.tool, "create", vm.cfg]

    def shutdown_argv(self, name: str) -> list[str]:
        return [self.tool, "shutdown", name]

    def destroy_argv(self, name: str) -> list[str]:
        return [self.tool, "destroy", name]

    def destroy(self, name: str) -> None:
        if self.remote.dry_run or self.running(name):
            self.remote.change(self.destroy_argv(name))


class KvmHost(Hypervisor):
    """libvirt through virsh, at the inventory's URI."""

    side = "kvm"

    def virsh(self, *args: str) -> list[str]:
        return ["virsh", "-c", self.host.libvirt_uri, *args]

    def states(self, max_age: float = 0.0) -> dict[str, str]:
        from .formats.domains import parse_virsh_list
        return self._listing(self.virsh("list", "--all"), "virsh list --all", parse_virsh_list, max_age)

    def holds_disks(self, state: str) -> bool:
        return state not in KVM_STOPPED

    def start_argv(self, vm: VM) -> list[str]:
        return self.virsh("start", vm.name)

    def shutdown_argv(self, name: str) -> list[str]:
        return self.virsh("shutdown", name)

    def destroy_argv(self, name: str) -> list[str]:
        return self.virsh("destroy", name)

    def define_argv(self, path: str) -> list[str]:
        return self.virsh("define", "--validate", path)

    def destroy(self, name: str) -> None:
        """"domain is not running" counts as success, as in the Pacemaker agent."""
        try:
            self.remote.change(self.destroy_argv(name))
        except RemoteError as exc:
            if not any(text in exc.output for text in ("not running", "not found", "failed to get domain")):
                raise

    def start_named(self, name: str) -> None:
        """Start a defined domain that is no inventory VM (a rehearsal's)."""
        self.remote.change(self.virsh("start", name), timeout=START_TIMEOUT)

    def define(self, name: str, xml: str, path: str, *, was_new: bool | None = None) -> bool:
        """Upload the XML to `path` (diff shown, backup kept) and `virsh define --validate` it.

        Returns whether the domain was new, so that the undo knows to undefine it; a caller that
        has just looked (a migration's plan, under the VM's lock) passes what it saw.
        """
        if was_new is None:
            was_new = self.state(name) == "not found"
        changed = self.remote.edit_file(path, replaced_by(xml), create=True)
        if changed or was_new:
            self.remote.change(self.define_argv(path))
        return was_new

    def undefine(self, name: str) -> None:
        if self.remote.dry_run or self.state(name) != "not found":
            self.remote.change(self.virsh("undefine", name))


def on(site: Site, host_name: str) -> Hypervisor:
    """The hypervisor of an inventory host, over the run's connection to it."""
    host = site.inventory.host(host_name)
    kind = XenHost if host.role == "xen" else KvmHost
    return kind(site.host(host_name), host)


def kvm(site: Site, host_name: str) -> KvmHost:
    """A KVM host's hypervisor, for what only libvirt does (define, undefine, a named start)."""
    host = site.inventory.host(host_name)
    if host.role != "kvm":
        raise ToolError(f"{host_name} is no KVM host")
    return KvmHost(site.host(host_name), host)


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
            log.info(f"  {label} ... {now - started:.0f}s of {timeout:.0f}s")
            next_report = now + every
        interruption.sleep(poll)
    return True
