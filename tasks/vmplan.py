"""One VM's plan, built once: cfg text -> parsed cfg -> disk map -> renames -> domain spec.

Every stage and offline task takes the VM's disk names and devices from here, so the cfg
rewrite, fstab, device.map, grub and the libvirt XML cannot disagree; and here what the cfg
or the mapping cannot give becomes the operator's one line naming the cfg (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError, reading
from .inventory import VM, LocalDisk, ReplicatedDisk
from .output import log

if TYPE_CHECKING:   # the formats load when a plan is made, not at import: `fab --list` stays fast
    from .diskmap import MappedDisk
    from .formats.domainxml import DomainSpec
    from .formats.xencfg import XenConfig
    from .remote import Remote, Site

# Why an HVM guest's cfg is never rewritten: under qemu-xen its hd* and xvd* disks are IDE and
# its sd* disks SCSI, so a rename would change its hardware and it might not boot back on Xen.
HVM_CFG_NOTE = ("an HVM guest: its cfg stays as it is (it boots from emulated disks with its own boot "
                "loader under Xen and KVM alike, and renamed disks would be other hardware under Xen)")


@dataclass(frozen=True)
class VmPlan:
    label: str                  # how errors name the cfg: xen1:/etc/xen/auto/logger.cfg, or a local path
    text: str
    cfg: XenConfig
    disk_map: list[MappedDisk]
    vm: VM | None               # None: an offline preview of a cfg alone
    block_devices: frozenset[str] | None = None   # plan_disk_map's: the KVM host's block devices

    @property
    def renames(self) -> dict[str, str]:
        from .diskmap import renames
        return renames(self.disk_map)

    def domain_spec(self) -> DomainSpec:
        from .formats.domainxml import plan_domain_spec
        with reading(self.label):
            return plan_domain_spec(self.cfg, self.disk_map, self.vm)

    def disk_buses(self) -> list[str]:
        """The bus of each disk of its domain, in order."""
        spec = self.domain_spec()
        return [disk.bus or spec.bus for disk in spec.disks]

    def disk_drivers(self) -> tuple[str, ...]:
        """The modules the guest's initramfs needs to find its disks on KVM, on the buses and SCSI
        controller its domain gives them."""
        from .formats.initramfs import disk_drivers
        return disk_drivers(self.disk_buses(), self.domain_spec().scsi_model)

    def converted_cfg(self, console: bool, root_uuid: str | None = None) -> str | None:
        """The dual-boot cfg: disks renamed sda.. (root first), root= names the root file
        system's UUID when given (else its disk's new name), an optional Xen console; None for an
        HVM guest's cfg, which stays as it is (HVM_CFG_NOTE)."""
        from .formats.xencfg import rewrite_xen_cfg
        if self.cfg.hvm:
            return None
        with reading(self.label):
            return rewrite_xen_cfg(self.text, self.renames, add_console=console, root_uuid=root_uuid)

    def root_source(self) -> tuple[str, int | None] | None:
        """Where the Xen host reads the root file system: the root disk's path there, and the
        partition's number inside it (root=/dev/xvda1 on a disk exported whole); None when root=
        names no disk. A drbd:RES disk is the inventory's device for RES, or udev's name."""
        from .diskmap import drbd_by_res, root_disk
        found = root_disk(self.cfg)
        if found is None:
            return None
        disk, partition = found
        if disk.backend != "drbd":
            return disk.path, partition
        devices = [d.device[self.vm.xen_host] for d in self.vm.disks
                   if isinstance(d, ReplicatedDisk) and d.resource == disk.path] if self.vm else []
        return (devices[0] if devices else drbd_by_res(disk.path)), partition

    @property
    def boots_without_initramfs(self) -> bool:
        """kernel= without ramdisk=: nothing finds a file system by UUID, so root= keeps a device name."""
        return bool(self.cfg.kernel) and not self.cfg.values.get("ramdisk")

    def needs_root_uuid(self) -> bool:
        """Whether the dual-boot cfg's root= names the root file system's UUID: root= names a disk
        and the kernel boots with an initramfs."""
        return not self.cfg.hvm and not self.boots_without_initramfs and self.root_source() is not None

    def as_converted(self, console: bool = False, root_uuid: str | None = None) -> VmPlan:
        """The plan of the cfg as xenhost.prepare-cfg leaves it: the domain rendered before the
        rewrite would boot root=/dev/xvda2, a name the guest does not have under KVM."""
        converted = self.converted_cfg(console, root_uuid)
        if converted is None:
            return self
        return plan(converted, self.label, self.vm, block_devices=self.block_devices)


def plan(text: str, label: str, vm: VM | None = None, *, block_devices: frozenset[str] | None = None,
         drbd_version: str | None = None) -> VmPlan:
    """The plan of a cfg's text (plan_disk_map says what block_devices and drbd_version change)."""
    from .diskmap import plan_disk_map
    from .formats.xencfg import parse_xen_cfg
    with reading(label):
        cfg = parse_xen_cfg(text)
        disk_map = plan_disk_map(cfg, vm, block_devices=block_devices, drbd_version=drbd_version)
    return VmPlan(label, text, cfg, disk_map, vm, block_devices)


def of_vm(site: Site, vm: VM, *, kvm_devices: bool = False) -> VmPlan:
    """The VM's plan from its cfg as its Xen host has it now. With `kvm_devices` (for the domain
    XML) the KVM host says which of the VM's local disks are block devices there."""
    label = f"{vm.xen_host}:{vm.cfg}"
    text = site.host(vm.xen_host).read_file(vm.cfg)
    if text is None:
        raise InputError(f"{label}: no such file (vms.{vm.name}.cfg)")
    local = [d.path[vm.kvm_host] for d in vm.disks if isinstance(d, LocalDisk)]
    block_devices = block_devices_of(site.host(vm.kvm_host), local) if kvm_devices else None
    return plan(text, label, vm, block_devices=block_devices)


def of_file(path: str, vm: VM | None = None, *, drbd_version: str | None = None) -> VmPlan:
    """The plan of a cfg on this machine (the offline previews)."""
    return plan(read_local(path, "Xen cfg"), path, vm, drbd_version=drbd_version)


def block_devices_of(remote: Remote, paths) -> frozenset[str]:
    """Which of the paths are block devices on the host (`test -b`, a probe): the domain XML
    needs a file as a file, whatever the Xen cfg's prefix said."""
    return frozenset(path for path in paths if remote.probe(["test", "-b", path]).ok)


def root_uuid(site: Site, plan: VmPlan) -> str | None:
    """The UUID of the guest's root file system for the dual-boot cfg, read by blkid from its
    disk on the Xen host (a probe); None when the cfg needs none (VmPlan.needs_root_uuid)."""
    from .localdisk import signature
    source = plan.root_source()
    if source is None or plan.cfg.hvm or plan.vm is None:
        return None
    if plan.boots_without_initramfs:
        log.info(f"  note: {plan.label} boots a kernel without ramdisk=: root= keeps a device name")
        return None
    host = site.host(plan.vm.xen_host)
    path, partition = source
    offset = None
    if partition is not None:
        start = host.probe(["partx", "-g", "-o", "START", "-n", str(partition), path])
        if not start.ok or not start.stdout.strip().isdigit():   # partx prints nothing for one a table lacks
            said = start.stderr.strip() or (f"exit {start.exit_code}" if not start.ok else "")
            raise InputError(f"{host.name}: {path} has no partition {partition}, which root= names "
                             f"({plan.label})" + (f": partx: {said}" if said else ""))
        offset = int(start.stdout) * 512   # partx counts 512-byte sectors
    uuid = signature(host, path, offset).get("UUID")
    if not uuid:
        where = f"{path} at byte {offset}" if offset is not None else path
        raise InputError(f"{host.name}: blkid finds no file system UUID on {where}, the root disk of {plan.label}")
    return uuid


def read_local(path: str, what: str) -> str:
    """A text file on this machine, or one line saying why not."""
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
