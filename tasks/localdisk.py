"""Per-host disks (an inventory `local:` disk, such as the seed's swap LV): each host has its own.

fstab names the guest's disks by UUID, and a local disk has another UUID on the other host,
so the guest waited for its swap there (systemd: 90 s) and ran without it.  Swap holds
nothing worth keeping, so before the guest boots on a host, that host's swap gets the
UUID of the swap the guest used (`mkswap -U`).  Only a swap or a volume with nothing on it
is written: a partition table, a file system, an LVM or RAID member, DRBD metadata at its
end or bytes no tool recognises make the move refuse, naming the volume.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import GuardError
from .inventory import VM, LocalDisk
from .output import log
from .remote import Remote, Site

NOTHING_FOUND = 2   # blkid's exit code when the device holds no known signature
BLANK_SPAN = 1 << 20   # bytes at the start of a volume that must be zeros for it to count as blank
MISSING, NO_WIPEFS = 66, 69

# Every signature libblkid finds anywhere on the volume (its end too: DRBD, md 0.90/1.0), then
# whether its first MiB is zeros (cmp: 0 same, 1 differs, 2 unreadable).
_SURVEY = ('[ -e "$1" ] || exit 66; command -v wipefs >/dev/null || exit 69; wipefs -n -p -- "$1" || exit 1; '
           f'cmp -s -n {BLANK_SPAN} -- "$1" /dev/zero; '
           'case $? in 0) echo zeros;; 1) echo data;; *) exit 1;; esac')

# `wipefs -p`: offset,uuid,label,type (util-linux before 2.29 prints a "#" header first); the
# label may hold commas, the others do not.
_WIPEFS_LINE = re.compile(r"(0x[0-9a-f]{1,16}),([^,]*),(.*),([\w.-]{1,64})")


@dataclass(frozen=True)
class SwapMatch:
    path: str     # the target host's own swap device or file
    uuid: str     # the UUID of the swap the guest used on the source host


@dataclass(frozen=True)
class Signature:
    offset: str
    uuid: str
    type: str     # swap, ext4, dos, gpt, LVM2_member, linux_raid_member, drbd, ...


def signature(remote: Remote, path: str, offset: int | None = None) -> dict[str, str]:
    """TYPE, UUID, ... of what `path` holds (from byte `offset`: a partition), read from the
    device itself (not blkid's cache); {} for a blank device."""
    found = remote.probe(["blkid", "-p", "-o", "export", *(["-O", str(offset)] if offset is not None else []), path])
    if found.exit_code == NOTHING_FOUND:
        return {}
    if not found.ok:
        raise GuardError(f"{remote.name}: blkid -p {path} failed: {found.stderr.strip() or found.exit_code}")
    return dict(line.split("=", 1) for line in found.stdout.splitlines() if "=" in line)


def parse_survey(text: str) -> tuple[list[Signature], bool]:
    """The survey's output -> every signature wipefs listed, and whether the first MiB is zeros.

    Anything else in it is a ValueError: a volume is blank only when the tools said so.
    """
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not lines or lines[-1] not in ("zeros", "data"):
        raise ValueError("gave a survey this tool does not understand (no verdict on its first MiB)")
    found = []
    for number, line in enumerate(lines[:-1], 1):
        fields = _WIPEFS_LINE.fullmatch(line)
        if fields is None:
            raise ValueError(f"gave a survey this tool does not understand (wipefs line {number})")
        found.append(Signature(offset=fields[1], uuid=fields[2], type=fields[4]))
    return found, lines[-1] == "zeros"


def check_swap_target(found: list[Signature], zeros: bool, uuid: str) -> bool:
    """Whether `mkswap -U uuid` must write the volume: False when its swap has that UUID already,
    True for a swap (its contents are disposable) or a blank volume; ValueError (why) otherwise."""
    swaps = [s for s in found if s.type == "swap"]
    if any(s.uuid == uuid for s in swaps):
        return False
    if found and found == swaps:
        return True
    if not found and zeros:
        return True
    if found:
        raise ValueError("holds " + ", ".join(f"{s.type} (at {s.offset})" for s in found))
    raise ValueError(f"holds no signature wipefs knows, but its first {BLANK_SPAN >> 20} MiB is not zeros")


def needs_swap(remote: Remote, path: str, uuid: str) -> bool:
    """check_swap_target on what the volume holds now (one probe); GuardError names a volume
    that must be left alone."""
    where = f"{remote.name}:{path}"
    outcome = remote.probe(["sh", "-c", _SURVEY, "sh", path])
    if outcome.exit_code == MISSING:
        raise GuardError(f"{where} does not exist: check the inventory's local: disk")
    if outcome.exit_code == NO_WIPEFS:
        raise GuardError(f"{remote.name}: wipefs (util-linux 2.17 or later) is not installed, so {path} "
                         f"cannot be proven blank or swap: refusing to format it")
    if not outcome.ok:
        raise GuardError(f"{where} could not be read (wipefs or cmp, exit {outcome.exit_code}): "
                         f"refusing to format it")
    try:
        return check_swap_target(*parse_survey(outcome.stdout), uuid)
    except ValueError as exc:
        raise GuardError(f"{where} {exc}: refusing to format it as the guest's swap; if it is meant to be "
                         f"that swap, wipe it first (wipefs -a), else fix the inventory's local: disk") from None


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
        if needs_swap(site.host(dst), path, source["UUID"]):
            matches.append(SwapMatch(path, source["UUID"]))
        else:
            log.info(f"  ok: {dst}:{path} is swap with the UUID the guest's fstab names")
    return matches


def mkswap_argv(match: SwapMatch) -> list[str]:
    return ["mkswap", "-U", match.uuid, match.path]


def format_swap(remote: Remote, match: SwapMatch) -> None:
    remote.change(mkswap_argv(match))
