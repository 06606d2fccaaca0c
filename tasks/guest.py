"""Stage: the guest itself. Consoles, fstab, boot loader + kernel, initramfs modules.

What virt-v2v's Linux conversion does, done once over SSH to the running Xen guest so that
the same disks then boot under both Xen and KVM. Facts are read first (probes only), every
refusal is decided before the first change, then each file is edited with a diff and a backup.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from invoke import Collection

from . import inventory, vmplan
from .cli import task
from .errors import GuardError, ToolError, reading
from .formats import PARTITION, FormatError
from .inventory import VM
from .output import log
from .remote import SLOW_TIMEOUT, Remote, site_from_context
from .vmplan import read_local

if TYPE_CHECKING:
    from .diskmap import MappedDisk
    from .formats.getty import GettyPlan, GuestConsoleFacts


INITTAB = "/etc/inittab"
SECURETTY = "/etc/securetty"
FSTAB = "/etc/fstab"
DEVICE_MAP = "/boot/grub/device.map"
DEFAULT_GRUB = "/etc/default/grub"
GRUB_CFG = "/boot/grub/grub.cfg"
MENU_LST = "/boot/grub/menu.lst"
INITRAMFS_MODULES = "/etc/initramfs-tools/modules"

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
# Under Xen, `xl shutdown` reaches the guest's kernel through xenstore; under KVM, `virsh
# shutdown` is an ACPI power button press, which only a daemon turns into a shutdown.  A
# minimal xen-tools guest has none (no acpid, no dbus for logind) and would ignore it.
POWER_BUTTON_PACKAGES = ("acpid", "acpi-support-base")
POWER_BUTTON_SUMMARY = {"acpid": "acpid", "logind": "systemd-logind (dbus installed)",
                        None: "nothing handles it (virsh shutdown would not stop the guest)"}
# Newest name first; the 2.6- names are the only ones Debian 4 and 5 know.
KERNEL_PACKAGES = {
    "amd64": ("linux-image-amd64", "linux-image-2.6-amd64"),
    "i386": ("linux-image-686", "linux-image-2.6-686"),
}
# An empty device list and "yes, really none": grub-pc's postinst then neither prompts nor
# writes a boot sector on a disk without a partition table.
GRUB_PC_PRESEED = ("grub-pc grub-pc/install_devices multiselect \n"
                   "grub-pc grub-pc/install_devices_empty boolean true\n")
BLOCKLIST_WARNING = ("blocklists are fragile: a file move by the filesystem can break boot; "
                     "rehearse first (fab kvmhost.rehearse)")
# An HVM guest already boots from emulated disks with its own boot loader and consoles, on the
# hardware it will have under KVM: only the power button and the initramfs steps concern it.
HVM_SKIPS = "console, disk names, kernel and boot loader"
HVM_REASON = "HVM guest: it boots from emulated disks with its own boot loader under Xen and KVM alike"

_DISK_LIKE = re.compile(r"(?:xvd|hd|sd|vd)[a-z]+[0-9]*")
_TTY = re.compile(r"(?:/dev/)?(?:tty[A-Za-z]*|hvc|xvc)[0-9]+")


# -- facts (probes only) -----------------------------------------------------------------------

@dataclass(frozen=True)
class Kernel:
    version: str
    xen_only: bool


@dataclass(frozen=True)
class GuestFacts:
    """What the later steps decide on; the file texts let every refusal come before any change."""

    init: str                           # "systemd" or "sysvinit"
    console: GuestConsoleFacts
    inittab: str | None
    securetty: str | None
    fstab: str | None
    kernels: tuple[Kernel, ...]
    architecture: str
    grub_pc: bool                       # grub-pc (grub 2) installed
    grub_cfg: bool                      # /boot/grub/grub.cfg exists
    menu_lst: str | None                # pygrub guests
    default_grub: str | None
    initramfs_modules: str | None
    power_button: str | None            # what acts on KVM's ACPI power button: "acpid", "logind", None

    @property
    def fstab_devices(self) -> list[str]:
        from .formats.fstab import fstab_devices
        return fstab_devices(self.fstab or "")

    @property
    def bootable_kernels(self) -> list[str]:
        return [k.version for k in self.kernels if not k.xen_only]


def _exists(guest: Remote, path: str, test: str = "-e") -> bool:
    return guest.probe(["test", test, path]).ok


def probe_init(guest: Remote, inittab: str | None) -> str:
    """systemd when it runs (or /sbin/init is it), sysvinit when inittab drives init."""
    if _exists(guest, "/run/systemd/system", "-d"):
        return "systemd"
    init = guest.probe(["readlink", "-f", "/sbin/init"])
    if init.ok and init.stdout.strip().endswith("/systemd"):
        return "systemd"
    if inittab is not None:
        return "sysvinit"
    raise GuardError(f"{guest.name}: cannot tell the init system (no /run/systemd/system, "
                     f"/sbin/init is not systemd, no {INITTAB})")


def probe_units(guest: Remote) -> tuple[frozenset[str], frozenset[str]]:
    """Enabled instances and masked units, as `systemctl is-enabled` reports each (one unit per
    call: an unknown unit makes a multi-unit call drop its line); templates matter only masked."""
    from .formats.getty import CONSOLE_UNITS
    units = ["getty.target", "getty@.service", "serial-getty@.service"]
    for tty in CONSOLE_UNITS:
        units += [f"getty@{tty}.service", f"serial-getty@{tty}.service"]
    enabled, masked = set(), set()
    for unit in units:
        state = guest.probe(["systemctl", "is-enabled", unit]).stdout.strip()
        if state == "enabled" and not unit.endswith("@.service"):
            enabled.add(unit)
        elif state == "masked":
            masked.add(unit)
    return frozenset(enabled), frozenset(masked)


def kernel_consoles(cmdline: str) -> tuple[str, ...]:
    """console=ttyS0,115200n8 hvc0 -> ("ttyS0", "hvc0")."""
    return tuple(w.split("=", 1)[1].split(",", 1)[0] for w in cmdline.split() if w.startswith("console="))


def probe_kernels(guest: Remote) -> tuple[Kernel, ...]:
    """vmlinuz-* in /boot; each judged by its config file when the package left one."""
    from .formats.bootloader import kernel_is_xen_only
    listing = guest.probe(["ls", "-1", "/boot"])
    if not listing.ok:
        raise ToolError(f"{guest.name}: cannot list /boot: {listing.stderr.strip()}")
    names = set(listing.stdout.splitlines())
    kernels = []
    for name in sorted(names):
        if name.startswith("vmlinuz-"):
            version = name[len("vmlinuz-"):]
            config = guest.read_file(f"/boot/config-{version}") if f"config-{version}" in names else None
            kernels.append(Kernel(version, kernel_is_xen_only(version, config)))
    return tuple(kernels)


def version_key(version: str) -> list[tuple[int, int, str]]:
    """Sorts kernel versions by their numbers' values, as grub's menu does: 6.1.0-13 after 6.1.0-9."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.findall(r"\d+|\D+", version)]


def newest_bootable_kernel(guest: Remote, vm_name: str) -> str:
    """The newest kernel in the guest's /boot that boots under KVM; refuses a guest with Xen ones only."""
    kernels = probe_kernels(guest)
    bootable = [k.version for k in kernels if not k.xen_only]
    if not bootable:
        found = ", ".join(f"{k.version} (Xen only)" for k in kernels) or "none"
        raise GuardError(f"{guest.name}: no kernel in /boot boots under KVM ({found}): "
                         f"`fab guest.prepare --vm {vm_name}` installs one")
    return max(bootable, key=version_key)


def package_installed(guest: Remote, package: str) -> bool:
    status = guest.probe(["dpkg-query", "-W", "-f", "${Status}", package])
    return status.ok and status.stdout.split()[-1:] == ["installed"]


def gather_facts(guest: Remote) -> GuestFacts:
    """Everything the steps need, read once; changes nothing."""
    from .formats.getty import GuestConsoleFacts
    inittab = guest.read_file(INITTAB)
    init = probe_init(guest, inittab)
    securetty = guest.read_file(SECURETTY)
    if init == "systemd":
        enabled, masked = probe_units(guest)
        cmdline = guest.probe(["cat", "/proc/cmdline"]).stdout
        console = GuestConsoleFacts(init, enabled, masked, kernel_consoles(cmdline), securetty is not None)
    else:
        console = GuestConsoleFacts(init, has_securetty=securetty is not None)
    arch = guest.probe(["dpkg", "--print-architecture"])
    if package_installed(guest, "acpid"):
        power_button = "acpid"
    elif init == "systemd" and package_installed(guest, "dbus"):
        power_button = "logind"   # systemd-logind powers off on the key, and runs only with dbus
    else:
        power_button = None
    return GuestFacts(
        init=init,
        console=console,
        inittab=inittab,
        securetty=securetty,
        fstab=guest.read_file(FSTAB),
        kernels=probe_kernels(guest),
        architecture=arch.stdout.strip() if arch.ok else "",
        grub_pc=package_installed(guest, "grub-pc"),
        grub_cfg=_exists(guest, GRUB_CFG),
        menu_lst=guest.read_file(MENU_LST),
        default_grub=guest.read_file(DEFAULT_GRUB),
        initramfs_modules=guest.read_file(INITRAMFS_MODULES),
        power_button=power_button,
    )


def inittab_gettys(text: str) -> list[str]:
    """Active getty lines as id:tty, for the summary."""
    found = []
    for line in text.splitlines():
        fields = line.strip().split(":", 3)
        if len(fields) == 4 and not fields[0].startswith("#") and "getty" in fields[3]:
            ttys = [w for w in fields[3].split() if _TTY.fullmatch(w)]
            found.append(f"{fields[0]}:{ttys[0] if ttys else '?'}")
    return found


def summary(name: str, facts: GuestFacts, hvm: bool = False) -> list[str]:
    """The facts as a person reads them; for an HVM guest, which steps guest.prepare skips."""
    from .formats.initramfs import KVM_MODULES, plan_initramfs_modules
    if facts.init == "sysvinit":
        consoles = "inittab gettys " + (", ".join(inittab_gettys(facts.inittab or "")) or "none")
    else:
        c = facts.console
        consoles = ("enabled " + (", ".join(sorted(c.enabled_units)) or "no getty units")
                    + (f"; masked {', '.join(sorted(c.masked_units))}" if c.masked_units else "")
                    + f"; kernel console= {', '.join(c.kernel_consoles) or 'none'}")
    kernels = ", ".join(f"{k.version} ({'Xen only' if k.xen_only else 'boots under KVM'})"
                        for k in facts.kernels) or "none in /boot"
    loader = [f"grub-pc {'installed' if facts.grub_pc else 'not installed'}",
              f"grub.cfg {'present' if facts.grub_cfg else 'absent'}",
              f"menu.lst {'present (pygrub)' if facts.menu_lst is not None else 'absent'}"]
    missing = [m for m in KVM_MODULES if plan_initramfs_modules(facts.initramfs_modules or "", (m,))]
    modules = f"missing {', '.join(missing)}" if missing else "all KVM modules listed"
    return [f"* {name}: {facts.init}, {facts.architecture or 'unknown architecture'}",
            f"  consoles: {consoles}; securetty {'present' if facts.securetty is not None else 'absent'}",
            f"  fstab devices: {', '.join(facts.fstab_devices) or 'none'}",
            f"  kernels: {kernels}",
            f"  boot loader: {', '.join(loader)}",
            f"  initramfs modules: {modules}",
            f"  power button: {POWER_BUTTON_SUMMARY[facts.power_button]}",
            *([f"  {HVM_REASON}: guest.prepare leaves its {HVM_SKIPS} as they are"] if hvm else [])]


# -- checks: every refusal, before anything changes --------------------------------------------

@dataclass(frozen=True)
class FstabPlan:
    renames: dict[str, str]     # old name -> new name, partitions of whole disks included
    uuids: dict[str, str]       # new name -> UUID (with --uuid)
    root: str                   # root= the kernel gets: /dev/sda, UUID=..., LABEL=...
    per_host: frozenset[str] = frozenset()   # new names of disks each host has its own of


@dataclass(frozen=True)
class BootPlan:
    kernel_package: str | None  # to install: no installed kernel boots under KVM
    grub2: bool                 # manage grub 2 (the VM boots from its own disk under KVM)
    install_grub_pc: bool
    grub_install_device: str | None


def _renamed(name: str, renames: dict[str, str]) -> str | None:
    """xvda2 -> sda; a partition follows its whole disk (xvda1 -> sda1), as in the cfg rewrite."""
    if name in renames:
        return renames[name]
    m = PARTITION.fullmatch(name)
    return renames[m.group(1)] + m.group(2) if m and m.group(1) in renames else None


def _on(name: str, disks: set[str]) -> bool:
    """The name is one of the disks or a partition of one."""
    return _renamed(name, {d: d for d in disks}) is not None


def fstab_root(text: str) -> str | None:
    """The device field of the / entry."""
    for line in text.split("\n"):
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and fields[1] == "/":
            return fields[0]
    return None


def plan_renames(fstab: str, disk_map: list[MappedDisk]) -> tuple[dict[str, str], str]:
    """Renames for this fstab, and its root device after them.

    Refuses (FormatError) a disk-like device the map does not know, and a / that is not on the
    map's root disk (sda): either would leave a guest that cannot mount its disks under KVM.
    """
    from .diskmap import renames as disk_renames
    from .formats.fstab import fstab_devices
    base = {old: new for old, new in disk_renames(disk_map).items() if old != new}
    targets = {d.target for d in disk_map}
    renames = dict(base)
    for name in fstab_devices(fstab):
        new = _renamed(name, base)
        if new is not None:
            renames[name] = new
        elif _DISK_LIKE.fullmatch(name) and not _on(name, targets):
            raise FormatError(f"/dev/{name} is not in the disk map ({', '.join(disk_renames(disk_map))}): "
                             f"fix the line or the cfg")
    root = fstab_root(fstab)
    if root is None:
        raise FormatError("no / entry")
    if root.startswith("/dev/") and _DISK_LIKE.fullmatch(root[5:]):
        new = renames.get(root[5:], root[5:])
        if not _on(new, {"sda"}):
            sda = next((d.xen_vdev for d in disk_map if d.target == "sda"), "none")
            raise FormatError(f"/ is on {root}, which becomes /dev/{new}, not the root disk sda "
                             f"(sda is {sda}): check root= in the cfg")
        root = f"/dev/{new}"
    return renames, root


def device_uuids(guest: Remote, renames: dict[str, str]) -> dict[str, str]:
    """New name -> UUID of the filesystem on the old (current) device; devices without one skipped."""
    uuids = {}
    for old, new in renames.items():
        found = guest.probe(["blkid", "-o", "value", "-s", "UUID", f"/dev/{old}"])
        if found.ok and found.stdout.strip():
            uuids[new] = found.stdout.strip()
        else:
            log.info(f"  {guest.name}: /dev/{old} has no UUID: fstab keeps a device name for {new}")
    return uuids


def check_fstab(guest: Remote, facts: GuestFacts, disk_map: list[MappedDisk], uuid: bool = False) -> FstabPlan:
    from .formats.fstab import convert_fstab
    if facts.fstab is None:
        raise GuardError(f"{guest.name}: {FSTAB} does not exist")
    local = [d.target for d in disk_map if d.per_host]
    with reading(f"{guest.name}: {FSTAB}", GuardError):
        renames, root = plan_renames(facts.fstab, disk_map)
        per_host = frozenset(new for new in renames.values()
                             if any(new == t or (new.startswith(t) and new[len(t):].isdigit()) for t in local))
        uuids = device_uuids(guest, renames) if uuid else {}
        convert_fstab(facts.fstab, renames, uuids, per_host)
    if root.startswith("/dev/") and root[5:] in uuids:
        root = f"UUID={uuids[root[5:]]}"
    return FstabPlan(renames, uuids, root, per_host)


def check_console(guest: Remote, facts: GuestFacts) -> GettyPlan:
    from .formats.getty import plan_getty_units
    from .formats.inittab import convert_inittab
    if facts.init == "sysvinit":
        with reading(f"{guest.name}: {INITTAB}", GuardError):
            convert_inittab(facts.inittab or "")
    return plan_getty_units(facts.console)


def apt_candidate(guest: Remote, package: str) -> bool:
    """Whether apt could install the package now (in the C locale, as every command: the field name is translated)."""
    policy = guest.probe(["apt-cache", "policy", package])
    for line in policy.stdout.splitlines() if policy.ok else ():
        key, _, value = line.strip().partition(":")
        if key == "Candidate":
            return value.strip() not in ("", "(none)")
    return False


def kernel_package(guest: Remote, facts: GuestFacts) -> str | None:
    """None when a kernel that boots under KVM is installed, else the package apt would install."""
    if facts.bootable_kernels:
        return None
    only = ", ".join(k.version for k in facts.kernels) or "none in /boot"
    packages = KERNEL_PACKAGES.get(facts.architecture)
    if not packages:
        raise GuardError(f"{guest.name}: no kernel that boots under KVM ({only}) and no known kernel "
                         f"package for architecture {facts.architecture or 'unknown'}: install one by hand")
    for package in packages:
        if apt_candidate(guest, package):
            return package
    raise GuardError(f"{guest.name}: only Xen kernels installed ({only}) and apt has no candidate for "
                     f"{' or '.join(packages)}: install a kernel that boots under KVM by hand "
                     f"(virt-v2v refuses such guests too)")


def check_boot(guest: Remote, facts: GuestFacts, disk_map: list[MappedDisk], *, boot: str = "grub",
               grub_install: bool = False) -> BootPlan:
    package = kernel_package(guest, facts)
    grub2 = boot == "grub"
    if grub2 and not facts.grub_pc and not apt_candidate(guest, "grub-pc"):
        raise GuardError(f"{guest.name}: grub-pc is not installed and apt has no candidate for it: "
                         f"install grub 2 by hand, or set boot: direct-kernel for this VM")
    device = None
    if grub_install:
        if not grub2:
            raise GuardError(f"{guest.name}: --grub-install needs boot: grub (this VM boots direct-kernel)")
        root = next((d for d in disk_map if d.target == "sda"), None)
        if root is None:
            raise GuardError(f"{guest.name}: the disk map has no root disk (sda)")
        device = f"/dev/{root.xen_vdev}"
        if not _exists(guest, device, "-b"):
            raise GuardError(f"{guest.name}: {device} (the Xen name of the root disk sda) is not a block "
                             f"device in the guest: is the cfg already rewritten?")
    return BootPlan(package, grub2, grub2 and not facts.grub_pc, device)


def check_power_button(guest: Remote, facts: GuestFacts) -> bool:
    """Whether acpid must be installed; refuses when nothing handles the button and apt cannot help."""
    if facts.power_button is not None:
        return False
    missing = [p for p in POWER_BUTTON_PACKAGES if not apt_candidate(guest, p)]
    if missing:
        raise GuardError(f"{guest.name}: nothing in the guest acts on KVM's ACPI power button (no acpid, no "
                         f"dbus for systemd-logind) and apt has no candidate for {', '.join(missing)}: "
                         f"install acpid by hand, or `virsh shutdown` will not stop this guest")
    return True


def check_initramfs(guest: Remote, kernel_coming: bool = False) -> bool:
    """Whether initramfs-tools is there; refuses when no planned kernel install brings it."""
    present = _exists(guest, "/etc/initramfs-tools", "-d")
    if not present and not kernel_coming:
        raise GuardError(f"{guest.name}: initramfs-tools is not installed: the guest's kernel cannot "
                         f"get KVM's disk drivers into an initramfs")
    return present


# -- changes ------------------------------------------------------------------------------------

def apply_console(guest: Remote, facts: GuestFacts, plan: GettyPlan) -> None:
    """sysvinit: inittab (then telinit q); systemd: getty units; both: securetty when present."""
    from .formats.getty import commands
    from .formats.inittab import convert_inittab, convert_securetty
    if facts.init == "sysvinit":
        if guest.edit_file(INITTAB, convert_inittab):
            # Only a reload: the file is written, and init reads it at the next boot anyway.
            reload = guest.change(["telinit", "q"], ok_codes=(0, 1), quiet=True)
            if reload is not None and reload.exit_code:
                log.warning(f"! {guest.name}: telinit q failed ({(reload.stderr or reload.stdout).strip()}): init "
                    f"reads the new {INITTAB} at the next boot")
            elif reload is not None:
                log.info(f"* {guest.name}: telinit q ... ok")
    else:
        for argv in commands(plan):
            guest.change(argv)
        if not commands(plan):
            log.info(f"* {guest.name}: getty units ... unchanged")
    if plan.edit_securetty:
        guest.edit_file(SECURETTY, convert_securetty)


def apply_fstab(guest: Remote, plan: FstabPlan) -> None:
    from .formats.fstab import convert_fstab
    guest.edit_file(FSTAB, lambda text: convert_fstab(text, plan.renames, plan.uuids, plan.per_host))


# Runs "$3..." (grub-install) for the disk "$2" seen as a whole disk named in device.map "$1",
# then puts the disk's node and the map back.  grub's Linux code reads a name like xvda2 as
# partition 2 of xvda (xen-tools' disks have no partition table), so for the install the node
# moves to a neutral name that the old name links to; and device.map holds KVM's names (sda),
# which do not exist under Xen.
WITH_WHOLE_DISK_NAME = (
    'map=$1 dev=$2; shift 2; alias=/dev/xenkvm-grub-disk; '
    'cp -p -- "$map" "$map.kvm" || exit 1; '
    'if ! { mv -- "$dev" "$alias" && ln -s "${alias##*/}" "$dev"; }; then mv -f -- "$map.kvm" "$map"; exit 1; fi; '
    'printf "(hd0) %s\\n" "$alias" > "$map"; "$@"; rc=$?; '
    'rm -f -- "$dev"; mv -- "$alias" "$dev"; mv -f -- "$map.kvm" "$map"; exit $rc')


def grub_install_argv(guest: Remote, device: str) -> list[str]:
    """grub 1.96-1.99 (Debian 5-7) has no --target; it only ever installs for i386-pc there."""
    version = guest.probe(["grub-install", "--version"]).stdout
    m = re.search(r"\(GRUB\)\s+(\d+)", version)
    target = [] if m and int(m.group(1)) < 2 else ["--target=i386-pc"]
    return ["sh", "-c", WITH_WHOLE_DISK_NAME, "sh", DEVICE_MAP, device, "grub-install", "--force", *target, device]


def apply_boot(guest: Remote, facts: GuestFacts, disk_map: list[MappedDisk], fstab_plan: FstabPlan,
               plan: BootPlan) -> None:
    """Kernel, grub 2 (device.map, defaults, update-grub, opt-in grub-install), pygrub's menu.lst."""
    from .formats.bootloader import convert_default_grub, convert_menu_lst, render_device_map
    if plan.kernel_package:
        guest.change(["apt-get", "install", "-y", plan.kernel_package], env=APT_ENV, timeout=SLOW_TIMEOUT)
    else:
        log.info(f"* {guest.name}: kernel {', '.join(facts.bootable_kernels)} boots under KVM ... unchanged")
    if not plan.grub2:
        log.info(f"* {guest.name}: grub 2 ... skipped (boot: direct-kernel)")
    else:
        grub_changed = plan.kernel_package is not None
        if plan.install_grub_pc:
            guest.change(["debconf-set-selections"], stdin=GRUB_PC_PRESEED)
            guest.change(["apt-get", "install", "-y", "grub-pc"], env=APT_ENV, timeout=SLOW_TIMEOUT)
            grub_changed = True
        device_map = render_device_map([d.target for d in disk_map])
        grub_changed |= guest.edit_file(DEVICE_MAP, lambda _: device_map, create=True)
        if guest.dry_run and facts.default_grub is None:
            log.info(f"  would edit {guest.name}:{DEFAULT_GRUB} once grub-pc has installed it")
        else:
            grub_changed |= guest.edit_file(
                DEFAULT_GRUB, lambda text: convert_default_grub(text, fstab_plan.renames, fstab_plan.root))
        if grub_changed or not facts.grub_cfg:
            guest.change(["update-grub"], timeout=SLOW_TIMEOUT)
        else:
            log.info(f"* {guest.name}: update-grub ... unchanged (nothing it reads changed)")
        if plan.grub_install_device:
            log.warning(f"! {guest.name}: grub-install --force on {plan.grub_install_device}, a disk without a "
                f"partition table: {BLOCKLIST_WARNING}")
            guest.change(grub_install_argv(guest, plan.grub_install_device), timeout=SLOW_TIMEOUT)
    if facts.menu_lst is not None:
        guest.edit_file(MENU_LST, lambda text: convert_menu_lst(text, fstab_plan.renames))


def apply_power_button(guest: Remote, facts: GuestFacts, install: bool) -> None:
    if install:
        guest.change(["apt-get", "install", "-y", *POWER_BUTTON_PACKAGES], env=APT_ENV, timeout=SLOW_TIMEOUT)
    else:
        log.info(f"* {guest.name}: power button handled by {POWER_BUTTON_SUMMARY[facts.power_button]} ... unchanged")


def apply_initramfs(guest: Remote, present: bool, drivers: tuple[str, ...], force: bool = False) -> None:
    """KVM's disk and network drivers, and `drivers` (those of the buses its domain gives its disks:
    VmPlan.disk_drivers), in every initramfs; rebuilt only when the list changed."""
    from .formats.initramfs import KVM_MODULES, plan_initramfs_modules
    required = KVM_MODULES + tuple(d for d in drivers if d not in KVM_MODULES)
    if not present and guest.dry_run:
        log.info(f"  would edit {guest.name}:{INITRAMFS_MODULES} once the kernel has installed initramfs-tools")
        return
    changed = guest.edit_file(INITRAMFS_MODULES, lambda text: plan_initramfs_modules(text, required) or text,
                              create=True)
    if changed or force:
        guest.change(["update-initramfs", "-u", "-k", "all"], timeout=SLOW_TIMEOUT)
    else:
        log.info(f"* {guest.name}: update-initramfs ... unchanged")


@dataclass(frozen=True)
class GuestPlan:
    """Everything guest.prepare will do, decided from the facts before anything changes; the
    plans are None for an HVM guest, whose console, disk names, kernel and boot loader stay."""

    facts: GuestFacts
    disk_map: list[MappedDisk]
    console: GettyPlan | None
    fstab: FstabPlan | None
    boot: BootPlan | None
    initramfs_tools: bool
    drivers: tuple[str, ...]    # the disk drivers its domain's buses need, listed in its initramfs
    install_acpid: bool


def check_guest(guest: Remote, disk_map: list[MappedDisk], drivers: tuple[str, ...], *, boot: str = "grub",
                uuid: bool = False, grub_install: bool = False, hvm: bool = False) -> GuestPlan:
    """The facts, shown, then every refusal: `fab prepare` checks all its steps before changing any."""
    found = gather_facts(guest)
    for line in summary(guest.name, found, hvm):
        log.info(line)
    console_plan = fstab_plan = boot_plan = None
    if not hvm:
        console_plan = check_console(guest, found)
        fstab_plan = check_fstab(guest, found, disk_map, uuid)
        boot_plan = check_boot(guest, found, disk_map, boot=boot, grub_install=grub_install)
    kernel_coming = boot_plan is not None and boot_plan.kernel_package is not None
    initramfs_tools = check_initramfs(guest, kernel_coming=kernel_coming)
    return GuestPlan(found, disk_map, console_plan, fstab_plan, boot_plan, initramfs_tools, drivers,
                     check_power_button(guest, found))


def apply_guest(guest: Remote, plan: GuestPlan, force: bool = False) -> None:
    """Console, fstab, boot loader, power button, initramfs (an HVM guest: the last two only)."""
    if plan.console is None or plan.fstab is None or plan.boot is None:
        skip_for_hvm(guest, HVM_SKIPS)
    else:
        apply_console(guest, plan.facts, plan.console)
        apply_fstab(guest, plan.fstab)
        apply_boot(guest, plan.facts, plan.disk_map, plan.fstab, plan.boot)
    apply_power_button(guest, plan.facts, plan.install_acpid)
    apply_initramfs(guest, plan.initramfs_tools, plan.drivers, force)


def prepare_guest(guest: Remote, disk_map: list[MappedDisk], drivers: tuple[str, ...], *, boot: str = "grub",
                  uuid: bool = False, grub_install: bool = False, force: bool = False, hvm: bool = False) -> None:
    """All steps: facts, then every check, then every change."""
    plan = check_guest(guest, disk_map, drivers, boot=boot, uuid=uuid, grub_install=grub_install, hvm=hvm)
    apply_guest(guest, plan, force)


def skip_for_hvm(guest: Remote, steps: str) -> None:
    """Say that steps only a PV guest needs are left out."""
    log.info(f"* {guest.name}: {steps} ... skipped ({HVM_REASON})")


# -- tasks --------------------------------------------------------------------------------------

def fetch_hint(vm: VM) -> None:
    """A direct-kernel VM boots the KVM host's copy of its kernel and initrd, which the guest
    tasks cannot refresh: they reach the guest only."""
    if vm.boot == "direct-kernel":
        log.warning(f"! {vm.name} boots direct-kernel: copy its kernel and initrd to {vm.kvm_host} with "
            f"`fab kvmhost.fetch-kernel --vm {vm.name}` (after every kernel or initramfs change)")


def _connect(c, vm_name: str, dry_run: bool):
    inv = inventory.from_context(c)
    vm = inv.vm(vm_name)
    site = site_from_context(c, inv, dry_run)
    return vm, site, site.guest(vm)


def _connect_pv(c, vm_name: str, dry_run: bool, steps: str):
    """(VM, guest, disk map) for steps only a PV guest needs; None for an HVM guest, told it skips them."""
    vm, site, guest = _connect(c, vm_name, dry_run)
    plan = vmplan.of_vm(site, vm)
    if plan.cfg.hvm:
        skip_for_hvm(guest, steps)
        return None
    return vm, guest, plan.disk_map


VM_HELP = "VM name from the inventory"
DRY_HELP = "run the probes and show the diffs and commands, change nothing"
UUID_HELP = ("write UUID= from blkid (default; pvops Xen kernels show a `sda` vdev as xvde, so names "
             "break the way back); --no-uuid writes the new device names as the seed did")
GRUB_INSTALL_HELP = "also grub-install --force with block lists on the root disk (fragile: rehearse first)"
FORCE_HELP = "rebuild the initramfs even when the module list did not change"


@task(help={"vm": VM_HELP, "dry_run": "accepted like every guest task; facts never change anything"})
def facts(c, vm, dry_run=False):
    """Show (and return, as GuestFacts) what the other guest steps decide on, and for an HVM
    guest the steps they skip."""
    model, site, guest = _connect(c, vm, dry_run)
    hvm = vmplan.of_vm(site, model).cfg.hvm
    found = gather_facts(guest)
    for line in summary(guest.name, found, hvm):
        log.info(line)
    return found


@task(help={"vm": VM_HELP, "dry_run": DRY_HELP})
def console(c, vm, dry_run=False):
    """Logins on Xen's hvc0, KVM's tty1 and ttyS0: inittab or getty units, and securetty
    (nothing for an HVM guest)."""
    connected = _connect_pv(c, vm, dry_run, "console")
    if connected:
        _, guest, _ = connected
        found = gather_facts(guest)
        apply_console(guest, found, check_console(guest, found))


@task(help={"vm": VM_HELP, "uuid": UUID_HELP, "dry_run": DRY_HELP})
def fstab(c, vm, uuid=True, dry_run=False):
    """Rename the Xen devices in /etc/fstab to the names the disk map gives them under KVM
    (nothing for an HVM guest)."""
    connected = _connect_pv(c, vm, dry_run, "disk names")
    if connected:
        _, guest, disk_map = connected
        apply_fstab(guest, check_fstab(guest, gather_facts(guest), disk_map, uuid))


@task(help={"vm": VM_HELP, "uuid": UUID_HELP, "grub_install": GRUB_INSTALL_HELP, "dry_run": DRY_HELP})
def bootloader(c, vm, uuid=True, grub_install=False, dry_run=False):
    """A kernel that boots under KVM, grub 2 set up for the new names, pygrub's menu.lst remapped
    (nothing for an HVM guest)."""
    connected = _connect_pv(c, vm, dry_run, "kernel and boot loader")
    if connected:
        model, guest, disk_map = connected
        found = gather_facts(guest)
        fstab_plan = check_fstab(guest, found, disk_map, uuid)
        plan = check_boot(guest, found, disk_map, boot=model.boot, grub_install=grub_install)
        apply_boot(guest, found, disk_map, fstab_plan, plan)
        fetch_hint(model)


@task(help={"vm": VM_HELP, "force": FORCE_HELP, "dry_run": DRY_HELP})
def initramfs(c, vm, force=False, dry_run=False):
    """List KVM's disk and network drivers in the initramfs and rebuild it when that changed."""
    model, site, guest = _connect(c, vm, dry_run)
    apply_initramfs(guest, check_initramfs(guest), vmplan.of_vm(site, model).disk_drivers(), force)
    fetch_hint(model)


@task(help={"vm": VM_HELP, "uuid": UUID_HELP, "grub_install": GRUB_INSTALL_HELP, "force": FORCE_HELP,
            "dry_run": DRY_HELP})
def prepare(c, vm, uuid=True, grub_install=False, force=False, dry_run=False):
    """Every guest step in order; checks all first, and a second run changes nothing."""
    model, site, guest = _connect(c, vm, dry_run)
    plan = vmplan.of_vm(site, model)
    prepare_guest(guest, plan.disk_map, plan.disk_drivers(), boot=model.boot, uuid=uuid, grub_install=grub_install,
                  force=force, hvm=plan.cfg.hvm)
    fetch_hint(model)


@task(help={"inittab": "path of an /etc/inittab on this machine"})
def convert_inittab_file(c, inittab):
    """Print the converted inittab (offline preview; contacts nothing)."""
    from .formats.inittab import convert_inittab
    text = read_local(inittab, "inittab")
    with reading(inittab):
        sys.stdout.write(convert_inittab(text))


@task(help={"fstab": "path of an /etc/fstab on this machine",
            "cfg": "path of the guest's Xen cfg on this machine: its disk map gives the new names"})
def convert_fstab_file(c, fstab, cfg):
    """Print the converted fstab (offline preview; contacts nothing)."""
    from .formats.fstab import convert_fstab
    disk_map = vmplan.of_file(cfg).disk_map
    text = read_local(fstab, "fstab")
    with reading(fstab):
        sys.stdout.write(convert_fstab(text, plan_renames(text, disk_map)[0]))


ns = Collection("guest", facts, console, fstab, bootloader, initramfs, prepare)
ns.add_task(convert_inittab_file, name="convert-inittab")
ns.add_task(convert_fstab_file, name="convert-fstab")
