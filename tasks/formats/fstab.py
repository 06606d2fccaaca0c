"""/etc/fstab: remap the Xen frontend names (xvda2 ...) to the names the disks get under KVM.

xen-tools writes device names (`/dev/xvda2 / ext4 errors=remount-ro 0 1`), which do not exist
under KVM; UUID=, LABEL= and /dev/mapper entries name the same thing under both hypervisors and
are left alone. Also home of the checks on device names that every format taking the disk map
uses, so a name that could break a file (a space, a quote, a newline) is refused in one place.
"""

import re

from . import FormatError

# A kernel block device name as it appears after /dev/: sda, xvda2, nvme0n1p1, cciss/c0d0p1.
# Each path component starts with a letter or digit, so "..", "-x" and "" cannot pass.
DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*(?:/[A-Za-z0-9][A-Za-z0-9_.+-]*)*")
# ext2/3/4, xfs, btrfs and swap UUIDs (8-4-4-4-12 hex) and vfat serials (ABCD-1234).
UUID = re.compile(r"[0-9A-Fa-f]+(?:-[0-9A-Fa-f]+)*")

_FIRST_FIELD = re.compile(r"([ \t]*)(\S+)")


def check_device_name(name: str, what: str = "device name") -> None:
    """Refuse a name that could break a line of fstab, grub's files or a kernel command line."""
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise FormatError(f"{what} {name!r} is not a plain device name (like xvda2 or sda)")


def check_renames(renames: dict[str, str]) -> None:
    """Refuse a disk map that could break a file or that a second run would apply again.

    A new name that is also an old name (xvda -> sda, sda -> sdb) would be renamed once more by
    the next run, so a conversion could never be idempotent; two old names on one new name would
    mount one disk twice.
    """
    for old, new in renames.items():
        check_device_name(old, "old device name")
        check_device_name(new, "new device name")
    chained = sorted(set(renames) & set(renames.values()))
    if chained:
        raise FormatError(f"disk map renames {', '.join(chained)} and also renames to it: "
                         "a second run would rename again")
    news = list(renames.values())
    doubled = sorted({n for n in news if news.count(n) > 1})
    if doubled:
        raise FormatError(f"disk map gives {', '.join(doubled)} to more than one old device")


def check_uuids(uuids: dict[str, str]) -> None:
    """Refuse a UUID (from blkid on a host) that is not hex, before it lands in a guest file."""
    for name, uuid in uuids.items():
        check_device_name(name)
        if not isinstance(uuid, str) or not UUID.fullmatch(uuid):
            raise FormatError(f"UUID {uuid!r} of {name} is not a filesystem UUID")


def split_lines(text: str) -> list[str]:
    """Lines with their newline, split at "\\n" only: str.splitlines also splits at \\r, \\f,
    \\x1c ..., which a file may hold inside a line: one line would be handled as two."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _entry_device(line: str) -> re.Match | None:
    """The first field of a mount line; None for comments and blank lines."""
    m = _FIRST_FIELD.match(line)
    if m is None or m.group(2).startswith("#"):
        return None
    return m


def convert_fstab(text: str, renames: dict[str, str], uuids: dict[str, str] | None = None,
                  per_host: frozenset[str] = frozenset()) -> str:
    """Rename /dev/OLD in the device field only, so the rest of each line stays as written.

    With `uuids` (keyed by the new name) a known UUID is written instead of the new name: a UUID
    survives any later change of bus or order, a name does not.  `per_host` names (new names)
    are disks each host has its own of (a local swap LV): their UUID differs on the other side,
    so their UUID entries get `nofail`, else the boot there waits for the device (systemd: 90 s).
    """
    check_renames(renames)
    uuids = uuids or {}
    check_uuids(uuids)
    out = []
    for line in split_lines(text):
        m = _entry_device(line)
        if m is not None and m.group(2).startswith("/dev/") and m.group(2)[5:] in renames:
            new = renames[m.group(2)[5:]]
            device = f"UUID={uuids[new]}" if new in uuids else f"/dev/{new}"
            line = line[:m.start(2)] + device + line[m.end(2):]
            if new in per_host and new in uuids:
                line = _with_option(line, "nofail")
        out.append(line)
    return "".join(out)


def _with_option(line: str, option: str) -> str:
    """The line with `option` added to its fourth field (the mount options), if it has one."""
    m = re.match(r"([ \t]*\S+[ \t]+\S+[ \t]+\S+[ \t]+)(\S+)", line)
    if m is None or option in m.group(2).split(","):
        return line
    return line[:m.end(2)] + "," + option + line[m.end(2):]


def fstab_devices(text: str) -> list[str]:
    """Names after /dev/ in the device fields, in order, once each.

    The caller checks each against the disk map: a name it does not know (mapper/vg-root,
    disk/by-uuid/...) either means the same under KVM or needs a person.
    """
    names: list[str] = []
    for line in split_lines(text):
        m = _entry_device(line)
        name = m.group(2)[5:] if m is not None and m.group(2).startswith("/dev/") else ""
        if name and name not in names:
            names.append(name)
    return names
