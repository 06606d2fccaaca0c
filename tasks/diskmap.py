"""The one disk map per VM: Xen name -> new name -> DRBD resource -> device on each host.

The cfg rewrite, fstab, device.map, grub and the libvirt XML all take their
names from here, so they can never disagree.  Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import shown
from .formats import PARTITION, FormatError
from .formats.xencfg import HVM_DISK, XenDisk, check_movable
from .inventory import VM, ReplicatedDisk


@dataclass(frozen=True)
class MappedDisk:
    xen_vdev: str            # as in the cfg: xvda2, hda, sda1
    target: str              # sda, sdb, ... (root disk first)
    kvm_source: str          # block device or file on the KVM host
    source_kind: str         # "block" or "file"
    resource: str | None     # DRBD resource when replicated
    readonly: bool = False
    format: str | None = None
    per_host: bool = False   # an inventory `local:` disk: each host has its own (another UUID there)
    shared: bool = False     # written by other guests too (w!): a cluster file system's disk


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


def _hvm_target(vdev: str) -> str:
    """An HVM disk keeps its name (its whole disk's, for a partition): the guest boots from the
    emulated disk with its own boot loader on both sides, so nothing may rename it."""
    match = HVM_DISK.fullmatch(vdev)
    if match is None:
        raise FormatError(f"disk {shown(vdev)}: an HVM guest's disk needs a name qemu-xen emulates "
                         f"(hd*, sd* or xvd*)")
    return match.group(1) + match.group(2)


def root_disk(cfg) -> tuple[XenDisk, int | None] | None:
    """The disk root= names, with the partition's number for root=/dev/xvda1 on a disk exported
    whole as xvda; None when root= names no disk of the cfg (root=UUID=, or no root=)."""
    root = root_vdev(cfg)
    if root is None:
        return None
    disks = _disks(cfg)
    found = next((d for d in disks if d.vdev == root), None)
    if found is not None:
        return found, None
    partition = PARTITION.fullmatch(root)
    if partition is None:
        return None
    found = next((d for d in disks if d.vdev == partition.group(1)), None)
    return (found, int(partition.group(2))) if found else None


def plan_target_names(cfg) -> dict[str, str]:
    """Old vdev -> new whole-disk name: the root disk is sda, the rest follow in cfg order
    (an HVM guest's disks keep their names). With root=UUID= (as xenhost.prepare-cfg writes it)
    the disk already named sda stays first, so a second run renames nothing."""
    disks = _disks(cfg)
    if cfg.hvm:
        return {d.vdev: _hvm_target(d.vdev) for d in disks}
    root = root_disk(cfg)
    first = root[0] if root else next((d for d in disks if d.vdev == "sda"), None)
    ordered = ([first] if first else []) + [d for d in disks if d is not first]
    return {d.vdev: disk_name(i) for i, d in enumerate(ordered)}


def drbd_by_res(resource: str, drbd_version: str | None = None) -> str:
    """The device udev names for a resource's volume 0: /dev/drbd/by-res/RES/0 since DRBD 8.4
    (volumes), /dev/drbd/by-res/RES before; an unknown version is taken as 8.4 or later."""
    old = drbd_version is not None and tuple(int(n) for n in re.findall(r"\d+", drbd_version)[:2]) < (8, 4)
    return f"/dev/drbd/by-res/{resource}" if old else f"/dev/drbd/by-res/{resource}/0"


def _source_kind(path: str, block_devices: frozenset[str] | None) -> str:
    """What the path is, not what the cfg's prefix says: libxl takes phy: on a regular file
    (and file: on a device), but libvirt needs the truth. With the KVM host's answer when
    there is one, else by the name: a block device lives under /dev."""
    if block_devices is not None:
        return "block" if path in block_devices else "file"
    return "block" if path.startswith("/dev/") else "file"


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


def plan_disk_map(cfg, vm: VM | None = None, *, block_devices: frozenset[str] | None = None,
                  drbd_version: str | None = None) -> list[MappedDisk]:
    """Map every cfg disk to its new name and its source on the KVM host, in target order.

    Without a VM (offline previews) the KVM host is assumed to see the same paths, `drbd:RES`
    as udev names it for `drbd_version`. With one, every cfg disk must be an inventory disk and
    every inventory disk in the cfg. `block_devices`: which of the VM's local disks the KVM
    host has as block devices (its probe's answer); without it the names decide.
    FormatError (the caller names the cfg) for a cfg no KVM domain can be made from
    (xencfg.check_movable, relative paths) and where the cfg and the inventory disagree.
    """
    check_movable(cfg)
    names = plan_target_names(cfg)
    mapped: list[MappedDisk] = []
    used = set()
    for disk in _disks(cfg):
        if disk.backend != "drbd" and not disk.path.startswith("/"):
            raise FormatError(f"disk {shown(disk.vdev)}: {shown(disk.path)} is not an absolute path: only block "
                             f"devices and files named by one move (xl reads a relative one from its working "
                             f"directory)")
        resource, per_host = None, False
        if vm is None:
            kvm_source = drbd_by_res(disk.path, drbd_version) if disk.backend == "drbd" else disk.path
        else:
            entry = _match(disk, vm)
            if entry is None:
                raise FormatError(f"disk {shown(disk.vdev)} ({shown(disk.spec)}) matches no disk in "
                                 f"vms.{vm.name}.disks (give it a vdev: or fix the path)")
            used.add(id(entry))
            if (isinstance(entry, ReplicatedDisk) and entry.shared) != disk.shared:
                raise FormatError(_shared_mismatch(vm, entry, disk))
            if isinstance(entry, ReplicatedDisk):
                resource = entry.resource
                kvm_source = entry.device[vm.kvm_host]
            else:
                kvm_source, per_host = entry.path[vm.kvm_host], True
        mapped.append(MappedDisk(
            xen_vdev=disk.vdev,
            target=names[disk.vdev],
            kvm_source=kvm_source,
            source_kind="block" if resource else _source_kind(kvm_source, block_devices),
            resource=resource,
            readonly=disk.mode == "r",
            format=disk.format,
            per_host=per_host,
            shared=disk.shared,
        ))
    if vm is not None:
        for i, entry in enumerate(vm.disks):
            if id(entry) not in used:
                what = entry.resource if isinstance(entry, ReplicatedDisk) else next(iter(entry.path.values()))
                raise FormatError(f"vms.{vm.name}.disks[{i}] ({what}) is not a disk of the cfg")
    return sorted(mapped, key=lambda d: (len(d.target), d.target))


def _shared_mismatch(vm: VM, entry, disk) -> str:
    """Xen lets several guests open a disk only in mode w!, so the cfg and the inventory agree,
    and only a DRBD disk can be shared: a local one is another volume on each host."""
    where = f"vms.{vm.name}.disks[{vm.disks.index(entry)}]"
    if not isinstance(entry, ReplicatedDisk):
        return f"disk {shown(disk.vdev)} is shared (mode w!) but {where} is a local: disk, each host's own"
    if disk.shared:
        return (f"disk {shown(disk.vdev)} is shared (mode w!) but {where} ({entry.resource}) "
                f"lacks shared: true")
    return f"{where} ({entry.resource}) says shared: true but disk {shown(disk.vdev)} has no mode w!"


def renames(disk_map: list[MappedDisk]) -> dict[str, str]:
    """Old vdev -> new name, for the cfg, fstab and grub rewrites."""
    return {d.xen_vdev: d.target for d in disk_map}
