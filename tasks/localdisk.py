"""Per-host disks (an inventory `local:` disk, such as the seed's swap LV): each host has its own.

fstab names the guest's disks by UUID, and a local disk has another UUID on the other host,
so the guest waited for its swap there (systemd: 90 s) and ran without it.  Swap holds
nothing worth keeping, so before the guest boots on a host, that host's swap gets the
UUID of the swap the guest used (`mkswap -U`).  A local disk holding anything else keeps
its own UUID (its fstab entry has nofail) and is named in the checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import GuardError
from .inventory import VM, LocalDisk
from .remote import Remote, Site, say

NOTHING_FOUND = 2   # blkid's exit code when the device holds no known signature


@dataclass(frozen=True)
class SwapMatch:
    path: str     # the target host's own swap device or file
    uuid: str     # the UUID of the swap the guest used on the source host


def signature(remote: Remote, path: str) -> dict[str, str]:
    """TYPE, UUID, ... of what `path` holds, read from the device itself (not blkid's cache);
    {} for a blank device."""
    found = remote.probe(["blkid", "-p", "-o", "export", path])
    if found.exit_code == NOTHING_FOUND:
        return {}
    if not found.ok:
        raise GuardError(f"{remote.name}: blkid -p {path} failed: {found.stderr.strip() or found.exit_code}")
    return dict(line.split("=", 1) for line in found.stdout.splitlines() if "=" in line)


def plan_swap_matches(site: Site, vm: VM, src: str, dst: str) -> list[SwapMatch]:
    """The local swaps on `dst` that need the UUID of their counterpart on `src`."""
    matches = []
    for disk in vm.disks:
        if not isinstance(disk, LocalDisk):
            continue
        source = signature(site.host(src), disk.path[src])
        if source.get("TYPE") != "swap" or not source.get("UUID"):
            continue
        path = disk.path[dst]
        target = signature(site.host(dst), path)
        if target.get("UUID") == source["UUID"]:
            say(f"  ok: {dst}:{path} is swap with the UUID the guest's fstab names")
        elif target.get("TYPE", "swap") != "swap":
            say(f"  note: {dst}:{path} holds {target['TYPE']}, not swap: left as it is, so "
                f"{vm.name} runs there without the swap it has on {src}")
        else:
            matches.append(SwapMatch(path, source["UUID"]))
    return matches


def format_swap(remote: Remote, match: SwapMatch) -> None:
    remote.change(["mkswap", "-U", match.uuid, match.path])
