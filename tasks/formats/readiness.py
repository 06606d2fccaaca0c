"""Whether a VM is ready to switch, check by check: pure verdicts over what the probes read.

Each verdict is a Check: ready (True), not ready (False, with the fix that makes it ready) or
unknown (None: the fact could not be read, which is not ready either). `fab readiness` shows
one row per check; `fab prepare` asks the rehearsal's verdict to skip a rehearsal still valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from . import FormatError

# Every check `fab readiness` makes, in the order of its table and its JSON.
CHECKS = ("drbd", "consoles", "fstab", "boot", "initramfs", "cfg", "domain", "swap", "rehearsal", "capacity")
MARKS = {True: "ok", False: "NO", None: "?"}


@dataclass(frozen=True)
class Check:
    name: str               # one of CHECKS
    ready: bool | None      # None: could not be read
    reason: str             # what was found, one line
    fix: str = ""           # what makes it ready (not ready only)

    @property
    def mark(self) -> str:
        return MARKS[self.ready]


def ready(name: str, reason: str) -> Check:
    return Check(name, True, reason)


def not_ready(name: str, reason: str, fix: str) -> Check:
    return Check(name, False, reason, fix)


def unknown(name: str, reason: str) -> Check:
    return Check(name, None, reason)


# -- DRBD --------------------------------------------------------------------------------------

def check_drbd(vm: str, states: Mapping[str, Mapping], primary: str) -> Check:
    """states: host -> resource -> DrbdState, for both hosts; `primary` is where the guest runs.

    Ready: every resource Connected, UpToDate on both sides, Primary on `primary` only."""
    problems = []
    for host, by_resource in states.items():
        role = "Primary" if host == primary else "Secondary"
        for resource, st in by_resource.items():
            if st.role != role:
                problems.append(f"{resource} is {st.role} on {host}, not {role}")
            elif st.connection != "Connected":
                problems.append(f"{resource} is {st.connection} on {host}")
            elif not st.is_uptodate_pair:
                problems.append(f"{resource} is {st.disk}/{'/'.join(st.peer_disks) or '?'} on {host}")
    resources = sorted({r for by_resource in states.values() for r in by_resource})
    if problems:
        return not_ready("drbd", "; ".join(problems),
                         f"fab drbd.status --vm {vm}; wait for a resync with fab drbd.wait-sync --vm {vm}")
    return ready("drbd", f"{', '.join(resources)} Connected, UpToDate/UpToDate, Primary on {primary}")


# -- the guest ---------------------------------------------------------------------------------

def check_consoles(vm: str, init: str, pending: Sequence[str]) -> Check:
    """`pending`: what guest.console would still change (files, units); none left is ready."""
    if pending:
        return not_ready("consoles", f"{init}: {', '.join(pending)} not set up for both hypervisors",
                         f"fab guest.console --vm {vm}")
    where = "inittab" if init == "sysvinit" else "getty units"
    return ready("consoles", f"{init}: {where} give logins on hvc0 (Xen), tty1 and ttyS0 (KVM)")


def check_fstab_names(vm: str, renames: Mapping[str, str], devices: Sequence[str], targets: Iterable[str]) -> Check:
    """`renames` is plan_renames' for the fstab (Xen name -> KVM name); `devices` its /dev names.

    Ready when no device is named as only Xen shows it: UUID=/LABEL= entries, and names the
    disk map gives under KVM (sda ...)."""
    xen_only = [f"/dev/{d}" for d in devices if renames.get(d, d) != d]
    if xen_only:
        return not_ready("fstab", f"names {', '.join(xen_only)}, which KVM calls otherwise",
                         f"fab guest.fstab --vm {vm}")
    by_name = [f"/dev/{d}" for d in devices if any(d == t or d.startswith(t) for t in targets)]
    if by_name:
        return ready("fstab", f"UUID=/LABEL=, and {', '.join(by_name)} as the disk map names them under KVM")
    return ready("fstab", "by UUID= or LABEL= (the same on both hypervisors)")


def parse_debconf_show(text: str) -> dict[str, str]:
    """`debconf-show PACKAGE` -> question -> value ("* " marks a question already asked)."""
    found = {}
    for line in text.split("\n"):   # only at newlines: a value may hold \r or \f
        m = re.fullmatch(r"[* ] (\S+):(?: (.*))?", line)
        if m:
            found[m.group(1)] = (m.group(2) or "").strip()
    return found


def install_devices(debconf: Mapping[str, str]) -> list[str]:
    """grub-pc's install_devices: the disks its postinst writes a boot sector to at each upgrade."""
    return [d.strip() for d in debconf.get("grub-pc/install_devices", "").split(",") if d.strip()]


def check_grub(vm: str, grub_pc: bool, grub_cfg: str | None, kernel: str, missing_devices: Sequence[str]) -> Check:
    """boot: grub. grub-pc installed, its debconf install devices all present (a missing one makes
    the next grub-pc upgrade fail), and a grub.cfg that boots the guest's newest kernel."""
    if not grub_pc:
        return not_ready("boot", "grub-pc (grub 2) is not installed", f"fab guest.bootloader --vm {vm}")
    if missing_devices:
        return not_ready("boot", f"debconf grub-pc/install_devices names {', '.join(missing_devices)}, which does "
                                 f"not exist in the guest: the next grub-pc upgrade fails",
                         "in the guest: echo 'grub-pc grub-pc/install_devices multiselect' | debconf-set-selections")
    if grub_cfg is None:
        return not_ready("boot", "no /boot/grub/grub.cfg", f"fab guest.bootloader --vm {vm}")
    if f"vmlinuz-{kernel}" not in grub_cfg:
        return not_ready("boot", f"grub.cfg has no entry for kernel {kernel}, the newest", "in the guest: update-grub")
    return ready("boot", f"grub 2 boots kernel {kernel}; no stale install device")


def check_kernel_copy(vm: str, kvm_host: str, kernel: str, guest_sums: Mapping[str, str | None],
                      copy_sums: Mapping[str, str | None], copy_version: str | None) -> Check:
    """boot: direct-kernel. The KVM host's vmlinuz and initrd.img are the guest's newest kernel
    and its initrd, byte for byte (sha256): a kernel upgrade or a rebuilt initramfs makes them stale."""
    fix = f"fab kvmhost.fetch-kernel --vm {vm}"
    if all(copy_sums.get(name) is None for name in guest_sums):
        return not_ready("boot", f"{kvm_host} has no copy of the kernel to boot", fix)
    if copy_version != kernel:
        return not_ready("boot", f"{kvm_host} boots a copy of kernel {copy_version or 'unknown'}; the guest's newest "
                                 f"is {kernel}", fix)
    stale = [name for name, digest in guest_sums.items() if copy_sums.get(name) != digest]
    if stale:
        return not_ready("boot", f"{kvm_host}'s copy of {' and '.join(stale)} differs from the guest's {kernel} "
                                 f"(rebuilt since it was copied)", fix)
    return ready("boot", f"{kvm_host} boots kernel {kernel}: vmlinuz and initrd.img equal to the guest's (sha256)")


# Modules -> the kernel config symbol that builds each in.
DRIVER_CONFIGS = {
    "ata_piix": "CONFIG_ATA_PIIX", "ahci": "CONFIG_SATA_AHCI", "sd_mod": "CONFIG_BLK_DEV_SD",
    "virtio_blk": "CONFIG_VIRTIO_BLK", "virtio_scsi": "CONFIG_SCSI_VIRTIO", "virtio_pci": "CONFIG_VIRTIO_PCI",
    "sym53c8xx": "CONFIG_SCSI_SYM53C8XX_2",
}


def built_in(config_text: str | None) -> set[str]:
    """The drivers of DRIVER_CONFIGS the kernel has built in (=y), from its /boot/config-VERSION."""
    if not config_text:
        return set()
    lines = set(config_text.splitlines())
    return {module for module, symbol in DRIVER_CONFIGS.items() if f"{symbol}=y" in lines}


def missing_drivers(listing: str, version: str, drivers: Sequence[str], config_text: str | None) -> list[str]:
    """The drivers neither built into the kernel nor in its initramfs (`lsinitramfs` output), as
    modules of that very kernel version: an initrd copied from another kernel holds none."""
    present = built_in(config_text)
    module = re.compile(rf"(?:usr/)?lib/modules/{re.escape(version)}/\S*/([A-Za-z0-9_-]+)\.ko(?:\.(?:xz|zst|gz))?")
    for line in listing.splitlines():
        m = module.fullmatch(line.strip())
        if m:
            present.add(m.group(1).replace("-", "_"))
    return [d for d in drivers if d not in present]


def check_initramfs(vm: str, kernel: str, bus: str, missing: Sequence[str], boot: str) -> Check:
    if missing:
        fetch = f", then fab kvmhost.fetch-kernel --vm {vm}" if boot == "direct-kernel" else ""
        return not_ready("initramfs", f"the initramfs of {kernel} lacks {', '.join(missing)} for the {bus} bus",
                         f"fab guest.initramfs --vm {vm} --force{fetch}")
    return ready("initramfs", f"{kernel} (not Xen-only) has its {bus} disk drivers in its initramfs or built in")


# -- hosts ---------------------------------------------------------------------------------------

def check_cfg(vm: str, label: str, converted: bool, hvm_note: str | None) -> Check:
    if hvm_note:
        return ready("cfg", hvm_note)
    if not converted:
        return not_ready("cfg", f"{label} still names the disks as Xen did before (not converted for dual boot)",
                         f"fab xenhost.prepare-cfg --vm {vm}")
    return ready("cfg", f"{label} converted for dual boot")


_SIZE_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "m": 1024 ** 2, "mib": 1024 ** 2,
               "g": 1024 ** 3, "gib": 1024 ** 3, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3}


def domain_essentials(xml: str) -> dict[str, object]:
    """What a domain boots and attaches, in a form both our rendering and libvirt's own
    `virsh dumpxml --inactive` give alike (libvirt adds defaults, addresses and controllers,
    counts memory in KiB and writes MACs in lower case)."""
    from lxml import etree

    try:
        root = etree.fromstring(xml.encode(), parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        raise FormatError(f"not a domain XML: {exc}") from None
    memory = root.find("memory")
    unit = (memory.get("unit") or "KiB").lower() if memory is not None else "kib"
    if memory is None or unit not in _SIZE_UNITS or not (memory.text or "").strip().isdigit():
        raise FormatError("not a domain XML with a memory size")
    disks = {}
    for disk in root.iterfind("devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        where = None if source is None else source.get("dev") or source.get("file")
        disks[target.get("dev") if target is not None else "?"] = (where, target.get("bus") if target is not None else None)
    nics = {}
    for nic in root.iterfind("devices/interface"):
        mac, source, model = nic.find("mac"), nic.find("source"), nic.find("model")
        nics[(mac.get("address") or "").lower() if mac is not None else "?"] = (
            source.get("bridge") if source is not None else None, model.get("type") if model is not None else None)
    return {
        "name": root.findtext("name"),
        "type": root.get("type"),
        "memory KiB": int(memory.text.strip()) * _SIZE_UNITS[unit] // 1024,
        "vcpus": (root.findtext("vcpu") or "").strip(),
        "kernel": root.findtext("os/kernel"),
        "initrd": root.findtext("os/initrd"),
        "cmdline": root.findtext("os/cmdline"),
        "disks": disks,
        "interfaces": nics,
    }


def domain_differences(rendered: str, defined: str) -> list[str]:
    """Where libvirt's definition differs from the rendering, one phrase each; [] when alike."""
    ours, theirs = domain_essentials(rendered), domain_essentials(defined)
    return [f"{key} {theirs[key]} (rendered: {ours[key]})" for key in ours if ours[key] != theirs[key]]


def check_domain(vm: str, kvm_host: str, path: str, state: str, file_matches: bool, differences: Sequence[str]) -> Check:
    if state == "not found":
        return not_ready("domain", f"not defined on {kvm_host}", f"fab kvmhost.define --vm {vm}")
    if not file_matches:
        return not_ready("domain", f"{kvm_host}:{path} is not what the cfg and inventory render now",
                         f"fab kvmhost.define --vm {vm}")
    if differences:
        return not_ready("domain", f"{kvm_host}'s definition differs from {path}: {'; '.join(differences)}",
                         f"on {kvm_host}: virsh define {path}")
    return ready("domain", f"defined on {kvm_host} ({state}), equal to what the cfg and inventory render now")


def check_swap(vm: str, target: str, needing: Sequence[str], local_swaps: int) -> Check:
    """`needing`: the target's swap volumes that lack the UUID the guest's fstab names."""
    side = "kvm" if target.startswith("kvm") else "xen"
    if needing:
        return not_ready("swap", f"{target}: {', '.join(needing)} lacks the UUID of the guest's swap",
                         f"fab match-swap --vm {vm} --to {side}")
    if not local_swaps:
        return ready("swap", "no local swap volume")
    return ready("swap", f"{target}'s swap has the UUID the guest's fstab names")


def check_capacity(host: str, free_mib: int, short: str | None) -> Check:
    """`short`: what the host lacks for the guest (capacity.shortfall), None when it fits."""
    if short is not None:
        return not_ready("capacity", f"{host}: {short}", f"free memory on {host}, or lower the VM's memory")
    return ready("capacity", f"{host} has {free_mib} MiB free for the guest")


# -- the rehearsal ---------------------------------------------------------------------------------

def parse_kernel_banner(text: str) -> str | None:
    """`Linux version 6.1.0-13-amd64 (...)` as a kernel prints it first at boot -> the version."""
    m = re.search(r"Linux version (\S+)", text)
    return m.group(1) if m else None


def check_rehearsal(vm: str, rehearsal, kernel: str | None, xml_sha256: str) -> Check:
    """The last rehearsal (rehearsals.Rehearsal or None) against the kernel the VM would boot
    now and its domain XML rendered now: it proves a boot only of those it booted."""
    fix = f"fab kvmhost.rehearse --vm {vm} --login"
    if rehearsal is None:
        return not_ready("rehearsal", "never rehearsed", fix)
    if kernel is None:
        return unknown("rehearsal", "there is no kernel for the domain to boot now (see the boot check)")
    when = f"at {rehearsal.time} on {rehearsal.host}"
    if not rehearsal.passed:
        return not_ready("rehearsal", f"the last rehearsal ({when}) failed: {rehearsal.message}", fix)
    if rehearsal.kernel is None:
        return not_ready("rehearsal", f"the last rehearsal ({when}) passed, but which kernel booted is unknown", fix)
    if rehearsal.kernel != kernel:
        return not_ready("rehearsal", f"the last rehearsal ({when}) booted kernel {rehearsal.kernel}; the guest now "
                                      f"boots {kernel}", fix)
    if rehearsal.xml_sha256 != xml_sha256:
        return not_ready("rehearsal", f"the domain changed since the last rehearsal ({when})", fix)
    how = "to a login prompt" if rehearsal.login else "and kept running"
    return ready("rehearsal", f"passed {when}: kernel {rehearsal.kernel} booted {how}")
