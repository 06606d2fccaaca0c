"""Capacity before change: the target host has the memory for the guest (and the vCPUs, under the
inventory's `max_vcpus` ceiling) before anything changes.

A guest that cannot start on its target would be shut down for nothing, and its undo is a
second outage.  Free memory is what the hypervisor can give a new guest: Xen's `free_memory`
(`xl info`, `xm info`; MiB, dom0 and every domain already taken off), or the kernel's
MemAvailable on a KVM host (/proc/meminfo: free memory plus what the page cache gives back;
libvirt's `virsh freecell` counts MemFree alone).  Neither counts a hypervisor's own overhead
per guest (page tables, qemu's own memory): a guest that fits to the MiB may still not start.

In a fleet run, a VM short of room waits, before it changes anything, while other VMs of the
run are moving away from that host (their memory comes free as each one goes); once none is,
it is refused with the numbers.  Only moves under way count, not VMs still queued for a slot or
waiting for room themselves: a waiting VM holds its slot, so waiting on those could wait
forever.  Each VM that passes holds its share until its domain starts, so two VMs never count
the same free memory twice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import GuardError, ToolError
from .formats import FormatError
from .hypervisors import Hypervisor, KvmHost, XenHost
from .inventory import VM
from .output import log
from .remote import RemoteError, join

if TYPE_CHECKING:
    from .flows import Ctx
    from .vmplan import VmPlan

ROOM_POLL = 2.0   # seconds between two looks while a VM waits for room


# -- pure ----------------------------------------------------------------------------------------

def parse_info(text: str) -> dict[str, str]:
    """`xl info` / `xm info`: one `key : value` a line (the key padded to 23 columns)."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip() and " " not in key.strip():
            info.setdefault(key.strip(), value.strip())
    return info


def xen_free_mib(text: str) -> int:
    value = parse_info(text).get("free_memory", "")
    if not value.isdigit():
        raise FormatError("no free_memory in its info")
    return int(value)


def meminfo_available_mib(text: str) -> int:
    """MemAvailable (kB) from /proc/meminfo, in MiB."""
    for line in text.splitlines():
        fields = line.split()
        if fields[:1] == ["MemAvailable:"] and len(fields) >= 2 and fields[1].isdigit():
            return int(fields[1]) // 1024
    raise FormatError("no MemAvailable in /proc/meminfo (Linux before 3.14)")


def xl_list_vcpus(text: str) -> int:
    """The vCPUs of every guest `xl list` shows (its fourth column), Domain-0 left out."""
    rows = [line.split() for line in text.splitlines()[1:] if line.strip()]
    if any(len(row) < 4 or not row[3].isdigit() for row in rows):
        raise FormatError("a line of `xl list` has no VCPUs column")
    return sum(int(row[3]) for row in rows if row[0] != "Domain-0")


def domstats_vcpus(text: str) -> int:
    """The online vCPUs of every running domain in `virsh domstats --vcpu --list-active`."""
    return sum(int(line.split("=", 1)[1]) for line in text.splitlines()
               if line.strip().startswith("vcpu.current=") and line.split("=", 1)[1].strip().isdigit())


@dataclass(frozen=True)
class Need:
    memory_mib: int | None    # None: the cfg gives none (the memory check is skipped, and said so)
    vcpus: int


def need_on(side: str, plan: VmPlan) -> Need:
    """What the guest takes on that side: its domain's on KVM (the inventory may set memory and
    vCPUs), its cfg's on Xen (what xl gives it)."""
    if side == "kvm":
        spec = plan.domain_spec()
        return Need(spec.memory_mib, spec.vcpus)
    return Need(plan.cfg.memory or plan.cfg.maxmem, plan.cfg.vcpus or 1)


@dataclass(frozen=True)
class Room:
    free_mib: int
    vcpus_used: int | None    # the running guests' vCPUs; None without a ceiling (not read)


def shortfall(need: Need, room: Room, ceiling: int | None, held_mib: int = 0, held_vcpus: int = 0) -> str | None:
    """What the host lacks for the guest, with the numbers; None when it fits. `held_*` is what
    other VMs of the run have counted on and not yet started."""
    short = []
    free = room.free_mib - held_mib
    if need.memory_mib is not None and need.memory_mib > free:
        short.append(f"needs {need.memory_mib} MiB of memory, {max(free, 0)} MiB free"
                     + (f" ({held_mib} MiB held for other moves' starts)" if held_mib else ""))
    if ceiling is not None and room.vcpus_used is not None and room.vcpus_used + held_vcpus + need.vcpus > ceiling:
        short.append(f"needs {need.vcpus} vCPUs, {room.vcpus_used + held_vcpus} of max_vcpus {ceiling} in use")
    return "; ".join(short) or None


# -- probes ------------------------------------------------------------------------------------------

def room_on(target: Hypervisor, ceiling: int | None) -> Room:
    """The target's free memory, and its guests' vCPUs when a ceiling is set."""
    remote = target.remote
    try:
        if isinstance(target, XenHost):
            free = xen_free_mib(_read(remote, [target.tool, "info"]))
            used = xl_list_vcpus(_read(remote, [target.tool, "list"])) if ceiling is not None else None
        else:
            assert isinstance(target, KvmHost)
            free = meminfo_available_mib(_read(remote, ["cat", "/proc/meminfo"]))
            used = (domstats_vcpus(_read(remote, target.virsh("domstats", "--vcpu", "--list-active")))
                    if ceiling is not None else None)
    except FormatError as exc:
        raise ToolError(f"{remote.name}: cannot tell its free room: {exc.message}") from None
    return Room(free, used)


def _read(remote, argv: list[str]) -> str:
    outcome = remote.probe(argv)
    if not outcome.ok:
        raise RemoteError(remote.name, join(argv), outcome.exit_code, outcome.stderr or outcome.stdout)
    return outcome.stdout


# -- a run's ledger --------------------------------------------------------------------------------

class HostRoom:
    """What one run's VMs leave and take on each host: which moves under way may free room there,
    and what the VMs that passed their check hold until their domains start."""

    def __init__(self) -> None:
        self._leaving: dict[str, set[str]] = {}             # a move under way -> the hosts it may leave
        self._waiting: set[str] = set()                     # moves waiting for room themselves
        self._held: dict[str, tuple[str, int, int]] = {}    # VM -> (host, MiB, vCPUs)
        self._changed = threading.Condition()

    def begin(self, vm: VM) -> None:
        """The VM's move is under way: until it knows where the guest runs, it may leave either host."""
        with self._changed:
            self._leaving[vm.name] = {vm.xen_host, vm.kvm_host}

    def leaving(self, vm: str, source: str) -> None:
        """The VM's move leaves `source`."""
        with self._changed:
            self._leaving[vm] = {source}
            self._changed.notify_all()

    def done(self, vm: str) -> None:
        """The VM's move ended (any way): it leaves nothing more, and holds nothing more."""
        with self._changed:
            self._leaving.pop(vm, None)
            self._waiting.discard(vm)
            self._held.pop(vm, None)
            self._changed.notify_all()

    def others_leaving(self, host: str, vm: str) -> list[str]:
        """The moves under way away from `host` that may free room there (not `vm`, nor a move
        that waits for room itself)."""
        with self._changed:
            return sorted(name for name, sources in self._leaving.items()
                          if host in sources and name != vm and name not in self._waiting)

    def held(self, host: str, vm: str) -> tuple[int, int]:
        with self._changed:
            shares = [(mib, vcpus) for name, (where, mib, vcpus) in self._held.items() if where == host and name != vm]
        return sum(s[0] for s in shares), sum(s[1] for s in shares)

    def release(self, vm: str) -> None:
        """The VM's domain started (or its move ended): the host's own numbers count it now."""
        with self._changed:
            self._held.pop(vm, None)

    def hold(self, vm: str, host: str, need: Need) -> None:
        with self._changed:
            self._waiting.discard(vm)
            self._held[vm] = (host, need.memory_mib or 0, need.vcpus)

    def wait(self, ctx: Ctx, seconds: float) -> None:
        """Until a move of the run ends, or `seconds`; a stop request ends it."""
        with self._changed:
            self._waiting.add(ctx.vm.name)
            self._changed.wait(seconds)
        ctx.interruption.check()


def make_room(ctx: Ctx, target_side: str, need: Need) -> None:
    """Refuse the move (before any change) unless the target has room for the guest; in a fleet
    run, wait while other VMs of the run may still leave that host."""
    vm, room = ctx.vm, ctx.room
    target = ctx.hypervisor(target_side)
    dst, ceiling = target.host.name, target.host.max_vcpus
    if need.memory_mib is None:
        log.info(f"  {vm.name}'s cfg gives no memory: the room on {dst} is not checked for it")
    while True:
        held_mib, held_vcpus = room.held(dst, vm.name)
        found = room_on(target, ceiling)
        short = shortfall(need, found, ceiling, held_mib, held_vcpus)
        if short is None:
            room.hold(vm.name, dst, need)
            log.info(f"  ok: {dst} has room for {vm.name} ({found.free_mib - held_mib} MiB free, "
                     f"{need.memory_mib or '?'} MiB needed)")
            return
        leaving = room.others_leaving(dst, vm.name)
        if not leaving or target.remote.dry_run:
            also = f" (a real run would wait for {', '.join(leaving)} to leave it)" if leaving else ""
            raise GuardError(f"{dst}: no room for {vm.name}: {short}{also}")
        why = f"waiting for room on {dst}: {short}"
        ctx.on_step(why)
        log.info(f"  {why}; {', '.join(leaving)} may still leave it")
        room.wait(ctx, ROOM_POLL)
