"""/etc/initramfs-tools/modules: the drivers KVM's disks and network need, in every initramfs.

An initramfs built under Xen with MODULES=dep holds only the drivers of the running (Xen)
devices, xen-blkfront and xen-netfront, so under KVM it cannot find the root disk. Modules listed
here are always included, whatever MODULES says; update-initramfs must run afterwards.
"""

import re
from typing import Iterable

from tasks.formats.fstab import split_lines

from . import FormatError

KVM_MODULES = ("ata_piix", "ahci", "virtio_blk", "virtio_pci", "virtio_net", "sd_mod")
# What finds a disk on each bus KVM may give it (IDE and SATA disks are sd* too); SCSI by controller.
_BUS_DRIVERS = {"ide": ("ata_piix", "sd_mod"), "sata": ("ahci", "sd_mod"), "virtio": ("virtio_blk", "virtio_pci")}
_SCSI_DRIVERS = {"virtio-scsi": ("virtio_scsi", "virtio_pci", "sd_mod"), "lsilogic": ("sym53c8xx", "sd_mod")}
_MODULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def disk_drivers(buses: Iterable[str], scsi_model: str) -> tuple[str, ...]:
    """The modules a guest needs to find its disks on these buses."""
    drivers: list[str] = []
    for bus in buses:
        needed = _SCSI_DRIVERS.get(scsi_model, ()) if bus == "scsi" else _BUS_DRIVERS.get(bus, ())
        drivers += [d for d in needed if d not in drivers]
    return tuple(drivers)


def _canonical(name: str) -> str:
    """modprobe treats '-' and '_' in module names alike (virtio-blk is virtio_blk)."""
    return name.replace("-", "_")


def plan_initramfs_modules(modules_text: str, required: tuple[str, ...] = KVM_MODULES) -> str | None:
    """The file with the missing modules appended, or None when all are listed (nothing to do).

    A module counts as listed when an uncommented line starts with its name (`name [args]`);
    the commented examples Debian ships (`# sd_mod`) do not count.
    """
    for name in required:
        if not isinstance(name, str) or not _MODULE.fullmatch(name):
            raise FormatError(f"module name {name!r} is not a plain kernel module name")
    lines = split_lines(modules_text)
    listed = {_canonical(words[0]) for line in lines
              if (words := line.split()) and not words[0].startswith("#")}
    missing: list[str] = []
    for name in required:
        if _canonical(name) not in listed and _canonical(name) not in map(_canonical, missing):
            missing.append(name)
    if not missing:
        return None
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return "".join(lines) + "".join(f"{name}\n" for name in missing)
