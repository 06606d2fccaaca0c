"""The one disk map per VM: Xen name -> new name -> DRBD resource -> device on each host.

The cfg rewrite, fstab, device.map, grub and the libvirt XML all take their
names from here, so they can never disagree.  Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InputError
from .inventory import VM, ReplicatedDisk

FILE_BACKENDS = ("file", "tap:aio", "tap:qcow2", "tap:vhd", "tap2:tapdisk:aio", "qdisk")


@dataclass(frozen=True)
class MappedDisk:
    xen_vdev: str            # as in the cfg: xvda2, hda, sda1
    target: str              # sda, sdb, ... (root disk first)
    xen_source: str          # path (or DRBD resource) on the Xen host, as the cfg names it
    kvm_source: str          # block device or file on the KVM host
    source_kind: str         # "block" or "file"
    resource: str | None     # DRBD resource when replicated
    readonly: bool = False
    format: str | None = None
    per_host: bool = False   # an inventory `local:` disk: each host has its own (another UUID there)


def disk_name(index: int, prefix: str = "sd") -> str:
    """sda..sdz, sdaa.. as the kernel and libvirt count disks."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return prefix + letters


def root_vdev(cfg) -> str | None:
    """The vdev that root= names (/dev/xvda2 -> xvda2), or None without root=."""
    for text in (cfg.root or "", cfg.extra or ""):
        match = re.search(r"(?:^|\s|root=)/dev/([a-z]+[0-9]*)", text)
        if match:
            return match.group(1)
    return None


def _disks(cfg):
    """Disks that move with the guest: CD-ROMs stay behind."""
    return [d for d in cfg.disks if d.devtype != "cdrom"]


def plan_target_names(cfg) -> dict[str, str]:
    """Old vdev -> new whole-disk name: the root disk is sda, the rest follow in cfg order."""
    disks = _disks(cfg)
    root = root_vdev(cfg)
    first = next((d for d in disks if d.vdev == root), None)
    if first is None and root:
        # root=/dev/xvda1 on a disk exported whole as xvda
        first = next((d for d in disks if d.vdev == root.rstrip("0123456789")), None)
    ordered = ([first] if first else []) + [d for d in disks if d is not first]
    return {d.vdev: disk_name(i) for i, d in enumerate(ordered)}


def _source_kind(disk) -> str:
    if disk.backend in FILE_BACKENDS or disk.backend.startswith("tap"):
        return "file"
    if disk.backend == "" and not disk.path.startswith("/dev/"):
        return "file"
    return "block"


def _match(disk, vm: VM):
    """The inventory disk a cfg disk stands for: by vdev, DRBD resource, device, backing or path.

    The vdev is the cfg's name before or after `xenhost.prepare-cfg` (xvda2, then sda), so
    a differing vdev does not rule out a disk that its path names.
    """
    for entry in vm.disks:
        if entry.vdev is not None and entry.vdev == disk.vdev:
            return entry
        if isinstance(entry, ReplicatedDisk):
            if disk.backend == "drbd" and disk.path == entry.resource:
                return entry
            if disk.path in (entry.device[vm.xen_host], entry.backing.get(vm.xen_host)):
                return entry
        elif disk.path == entry.path[vm.xen_host]:
            return entry
    return None


def plan_disk_map(cfg, vm: VM | None = None) -> list[MappedDisk]:
    """Map every cfg disk to its new name and its source on the KVM host, in target order.

    Without a VM (offline previews) the KVM host is assumed to see the same paths.
    With one, every cfg disk must be an inventory disk and every inventory disk in the cfg.
    """
    names = plan_target_names(cfg)
    mapped: list[MappedDisk] = []
    used = set()
    for disk in _disks(cfg):
        resource, per_host = None, False
        if vm is None:
            kvm_source = f"/dev/drbd/by-res/{disk.path}" if disk.backend == "drbd" else disk.path
        else:
            entry = _match(disk, vm)
            if entry is None:
                raise InputError(f"{vm.cfg}: disk {disk.vdev} ({disk.spec}) matches no disk in "
                                 f"vms.{vm.name}.disks (give it a vdev: or fix the path)")
            used.add(id(entry))
            if isinstance(entry, ReplicatedDisk):
                resource = entry.resource
                kvm_source = entry.device[vm.kvm_host]
            else:
                kvm_source, per_host = entry.path[vm.kvm_host], True
        mapped.append(MappedDisk(
            xen_vdev=disk.vdev,
            target=names[disk.vdev],
            xen_source=disk.path,
            kvm_source=kvm_source,
            source_kind="block" if resource else _source_kind(disk),
            resource=resource,
            readonly=disk.mode == "r",
            format=disk.format,
            per_host=per_host,
        ))
    if vm is not None:
        for i, entry in enumerate(vm.disks):
            if id(entry) not in used:
                what = entry.resource if isinstance(entry, ReplicatedDisk) else next(iter(entry.path.values()))
                raise InputError(f"vms.{vm.name}.disks[{i}] ({what}) is not a disk of {vm.cfg}")
    return sorted(mapped, key=lambda d: (len(d.target), d.target))


def renames(disk_map: list[MappedDisk]) -> dict[str, str]:
    """Old vdev -> new name, for the cfg, fstab and grub rewrites."""
    return {d.xen_vdev: d.target for d in disk_map}
