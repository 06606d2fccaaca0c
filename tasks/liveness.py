"""Proof of life: a started guest counts as up only once it answers, and how long it was down.

A domain that runs is not a guest that works: one that panics in its initramfs or waits for a
missing disk runs too.  After every start (a move's, an undo's) the guest must answer within
its boot_timeout, as the inventory's `verify` says: a login prompt on its console (KVM: the
serial log libvirt keeps; Xen: xenconsoled's guest log), sshd's banner or a TCP port on its
address (reached like its SSH connection, ProxyCommand and ProxyJump included), or, with
`none`, only its domain running.  Every look is a probe: it runs in a dry run too.

The downtime of a move runs from the guest's last answer on the source (a probe right before
the shutdown) to its first answer on the target, in three parts: the shutdown, the switch (the
tool's own share: demote, promote, the start guard) and the boot.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from . import hypervisors
from .errors import GuardError, ToolError
from .hypervisors import wait_until
from .inventory import VM
from .output import log
from .remote import make_private_dir, printable

if TYPE_CHECKING:
    from .interrupt import Interruption
    from .remote import Remote, Site

XEN_CONSOLE_DIR = "/var/log/xen/console"
# Where xencommons reads XENCONSOLED_TRACE from (Debian, then Red Hat and SUSE).
XENCOMMONS = ("/etc/default/xencommons", "/etc/sysconfig/xencommons")
TRACE_SETTING = f"XENCONSOLED_TRACE=guest in {XENCOMMONS[0]} (then restart xenconsoled)"
LOGIN_PROMPT = re.compile(r"login: *\r?$", re.M)   # getty's prompt: the guest booted to user space
KERNEL_PANIC = re.compile(r"Kernel panic - not syncing")   # the kernel stopped: nothing left to flush
SSH_BANNER = b"SSH-"
BOOT_POLL = 1.0            # seconds between two looks at a booting guest
PANIC_LOOK_EVERY = 5       # looks between two reads of the console when the proof is no console
CONSOLE_KEPT = 64 * 1024   # characters of new console output kept for the search and the saved tail
SAVED_LINES = 60           # console lines kept on the control machine when a guest does not come up
# `$1` the console log, `$2` the bytes already read: prints the log's size on a line, then what
# was written since; a log that shrank (virtlogd rotates it at 2 MiB) is read from its start.
_CONSOLE_SINCE = ('size=$(stat -c %s -- "$1" 2>/dev/null) || exit 66; from=$2; '
                  'if [ "$size" -lt "$from" ]; then from=0; fi; echo "$size"; '
                  'tail -c +"$((from + 1))" -- "$1" | head -c "$((size - from))"')


# -- pure ----------------------------------------------------------------------------------------

def console_path(side: str, name: str) -> str:
    """The guest's console as its host keeps it: libvirt's serial log, or xenconsoled's guest log."""
    from .formats.domainxml import console_log  # loaded when needed: `fab --list` stays quick
    return console_log(name) if side == "kvm" else f"{XEN_CONSOLE_DIR}/guest-{name}.log"


def shows_login(text: str) -> bool:
    return LOGIN_PROMPT.search(text) is not None


def last_lines(text: str, count: int = SAVED_LINES) -> str:
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(lines[-count:]).rstrip("\n") + "\n"


def parse_console_trace(text: str) -> str | None:
    """XENCONSOLED_TRACE from a xencommons file (shell variable syntax), None when unset."""
    value = None
    for line in text.splitlines():
        match = re.fullmatch(r"\s*(?:export\s+)?XENCONSOLED_TRACE=(['\"]?)([A-Za-z]*)\1\s*(?:#.*)?", line)
        if match:
            value = match.group(2)
    return value


def logs_guests(trace: str | None) -> bool:
    """Whether xenconsoled with this --log keeps each guest's console in XEN_CONSOLE_DIR."""
    return trace in ("guest", "all")


@dataclass(frozen=True)
class Downtime:
    """How long a move kept the guest from answering (seconds), and its parts."""

    down: float
    shutdown: float
    switch: float
    boot: float

    def line(self, vm: str) -> str:
        return (f"{vm}: down {self.down:.1f} s = shutdown {self.shutdown:.1f} + switch {self.switch:.1f} "
                f"+ boot {self.boot:.1f}")

    def record(self) -> dict[str, float]:
        """The audit log's numbers (`fab report` reads these names)."""
        return {"down": round(self.down, 3), "shutdown": round(self.shutdown, 3),
                "switch": round(self.switch, 3), "boot": round(self.boot, 3)}


@dataclass
class Timeline:
    """The moments (time.monotonic()) of one move that its downtime is measured between."""

    last_answer: float | None = None   # the guest's last answer on the source, right before its shutdown
    gone: float | None = None          # its domain seen gone from the source
    start_sent: float | None = None    # the start command sent on the target (or, in an undo, the source)
    up: float | None = None            # its first answer on the target

    def downtime(self) -> Downtime | None:
        """None unless the move got as far as the guest's first answer on the target."""
        if None in (self.last_answer, self.gone, self.start_sent, self.up):
            return None
        assert self.last_answer is not None and self.gone is not None
        assert self.start_sent is not None and self.up is not None
        return Downtime(self.up - self.last_answer, self.gone - self.last_answer,
                        self.start_sent - self.gone, self.up - self.start_sent)


class NotUp(ToolError):
    """A started guest did not answer within its boot_timeout."""


# -- probes --------------------------------------------------------------------------------------

def console_trace(remote: Remote) -> str | None:
    """The host's XENCONSOLED_TRACE, from the first xencommons file it has."""
    for path in XENCOMMONS:
        text = remote.read_file(path)
        if text is not None:
            return parse_console_trace(text)
    return None


def require_console_log(remote: Remote, vm: VM) -> None:
    """Proof by console on a Xen host needs xenconsoled to keep the guest's console: refused
    before any change when it does not, with what the operator must set."""
    trace = console_trace(remote)
    if not logs_guests(trace):
        raise GuardError(f"{remote.name}: xenconsoled keeps no guest console log (XENCONSOLED_TRACE is "
                         f"{trace or 'unset'}), so {vm.name}'s boot cannot be proven by its console there: set "
                         f"{TRACE_SETTING}, or give --verify ssh")


@dataclass
class Proof:
    """One start of the VM on one side, proven up: what to look at, and what was seen."""

    site: Site
    vm: VM
    side: str
    method: str
    port: int
    timeout: float
    console_from: int = 0      # the console's size before this start: only later bytes count
    console_text: str = ""     # what the console printed since (the last CONSOLE_KEPT characters)

    @property
    def host(self) -> str:
        return self.vm.host_for(self.side)

    @property
    def remote(self) -> Remote:
        return self.site.host(self.host)

    @property
    def console(self) -> str:
        return console_path(self.side, self.vm.name)

    def what(self) -> str:
        """What counts as up, for the plan and the lines."""
        return {"console": "a login prompt on its console",
                "ssh": f"sshd's banner on {self.vm.guest_address}:{self.port}",
                "port": f"an answer on {self.vm.guest_address}:{self.port}",
                "none": "its domain running"}[self.method]

    def mark_console(self) -> None:
        """Before the start: how much the console already holds (an earlier boot's prompt)."""
        outcome = self.remote.probe(["stat", "-c", "%s", "--", self.console])
        self.console_from = int(outcome.stdout) if outcome.ok and outcome.stdout.strip().isdigit() else 0
        self.console_text = ""

    def read_console(self) -> bool:
        """Read what the console printed since the last look; False while the log does not exist."""
        outcome = self.remote.probe(["sh", "-c", _CONSOLE_SINCE, "sh", self.console, str(self.console_from)])
        if not outcome.ok:
            return False
        size, _, text = outcome.stdout.partition("\n")
        if size.strip().isdigit():   # after a rotation the new log holds only bytes written since
            self.console_text = (self.console_text + text)[-CONSOLE_KEPT:]
            self.console_from = int(size)
        return True

    def answers(self) -> bool:
        """One look: does the guest answer now?"""
        if self.method == "console":
            return self.read_console() and shows_login(self.console_text)
        if self.method in ("ssh", "port"):
            return self.site.guest_answers(self.vm, self.port, SSH_BANNER if self.method == "ssh" else b"")
        return hypervisors.on(self.site, self.host).running(self.vm.name)

    def peek_console(self) -> None:
        """A look at the console while another kind of proof is awaited (a panic there ends the
        wait); a host that does not answer it leaves the wait to its own look."""
        try:
            self.read_console()
        except ToolError as exc:
            log.debug(f"  {self.host}: {self.vm.name}'s console not read: {exc}")

    def last_answer(self) -> float:
        """Right before the shutdown: when the guest last answered. By console (or none) that is
        now, as the shutdown's own listing sees the domain run; a knock that finds no answer
        means the guest was down before the move, and the downtime is counted from now."""
        if self.method in ("ssh", "port") and not self.answers():
            log.info(f"  {self.vm.name} gives no {self.what()} on {self.host} before its shutdown: "
                     f"its downtime is counted from the shutdown")
        return time.monotonic()

    def wait(self, interruption: Interruption) -> float | None:
        """Look until the guest answers (the moment it first did), or its console shows a kernel
        panic or boot_timeout passes (None); a progress line every 10 s; a stop request ends it,
        except inside an undo."""
        answered: list[float] = []
        looks = itertools.count()

        def up(_max_age: float) -> bool:
            if self.answers():
                answered.append(time.monotonic())
            elif self.method != "console" and next(looks) % PANIC_LOOK_EVERY == 0:
                self.peek_console()
            return bool(answered) or self.panicked

        wait_until(up, self.timeout, BOOT_POLL, f"{self.host}: waiting for {self.vm.name} to show {self.what()}",
                   interruption)
        return answered[0] if answered else None

    def failure(self) -> str:
        """Why the guest does not count as up, in a few words."""
        if self.panicked:
            return f"not up on {self.host}: its kernel panicked"
        address = f"{self.vm.guest_address}:{self.port}"
        missing = {"console": "no login prompt on its console", "ssh": f"no sshd banner on {address}",
                   "port": f"no answer on {address}", "none": "its domain does not run"}[self.method]
        if self.method == "console" and not self.console_text:
            missing += f"; {self.host}:{self.console} shows nothing new"
            if self.side == "xen":
                missing += f" (xenconsoled writes it only with {TRACE_SETTING})"
        return f"not up on {self.host} within {self.timeout:.0f}s ({missing})"

    @property
    def panicked(self) -> bool:
        """Whether the console read since this start shows the kernel's panic."""
        return KERNEL_PANIC.search(self.console_text) is not None

    def save_console(self, directory: Path | None) -> Path | None:
        """The console's last lines since this start, kept on the control machine (the undo may
        destroy the domain, and the next boot appends to the log); None when it shows nothing."""
        if directory is None:
            return None
        try:
            self.read_console()
        except ToolError as exc:
            log.warning(f"! {self.host}: cannot read {self.vm.name}'s console: {exc}")
        if not self.console_text:
            return None
        path = make_private_dir(directory) / f"{self.vm.name}-{datetime.now().strftime('%Y%m%dT%H%M%S')}.log"
        try:
            path.write_text(f"# {self.host}:{self.console}, after the start\n" + last_lines(self.console_text))
        except OSError as exc:
            log.warning(f"! {path}: cannot keep {self.vm.name}'s console there ({exc.strerror})")
            return None
        tail = printable(last_lines(self.console_text, 1).strip())
        log.info(f"  {self.vm.name}'s console on {self.host} ends: {tail[:200]}")
        return path
