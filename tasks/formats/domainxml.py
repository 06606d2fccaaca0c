"""The KVM side's libvirt domain XML: planned from the Xen cfg, rendered, validated.

Pure: data in, text out, no I/O beyond reading the template and the schemas.
jinja2 and lxml are imported inside the functions that need them, so importing
this module (and so `fab --list`) stays fast.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import shown
from . import FormatError
from .bootloader import NIC_NAMES
from .templating import template
from .xencfg import HVM_DISK

BUSES = ("ide", "sata", "scsi", "virtio")
DOMAIN_TYPES = ("kvm", "qemu")
DISK_KINDS = ("block", "file")
DEFAULT_BRIDGE = "br0"
BOOT_DIR = "/var/lib/xenkvm/boot"
# The serial console's output, kept by libvirt (virtlogd) across restarts: what the guest printed
# while it booted, for the operator to read when it does not come up.
CONSOLE_LOG_DIR = "/var/log/libvirt/qemu"


def console_log(name: str) -> str:
    return f"{CONSOLE_LOG_DIR}/{name}-console.log"

KVM_CONSOLES = "console=ttyS0,115200n8 console=tty0"
IDE_DISKS = 4  # the pc machine's one IDE controller: two buses, two units each

_TARGET = re.compile(r"^(?:hd|sd)([a-z]+)$")
# Control characters (which XML cannot carry, or would turn into spaces in an attribute)
# and the code points XML 1.0 forbids outright.
_NOT_XML = re.compile("[^\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Xen names for image formats that qemu calls differently.
_QEMU_FORMAT = {"aio": "raw", "vhd": "vpc"}
# Xen lifecycle actions libvirt's qemu driver refuses (qemuValidateLifecycleAction), as the
# nearest it accepts; on_crash keeps preserve and coredump-*, which qemu does implement.
_QEMU_STOP_ACTION = {"rename-restart": "restart", "preserve": "destroy",
                     "coredump-destroy": "destroy", "coredump-restart": "restart"}
_QEMU_CRASH_ACTION = {"rename-restart": "restart"}
# NICs qemu emulates on x86 as an HVM cfg's vif model= names them (qemu-xen takes model= as
# qemu's device name) -> libvirt's <model type=>; without model=, libxl gives rtl8139.
HVM_NIC_MODELS = {"rtl8139": "rtl8139", "e1000": "e1000", "e1000e": "e1000e", "ne2k_pci": "ne2k_pci",
                  "pcnet": "pcnet", "i82551": "i82551", "i82557b": "i82557b", "i82559er": "i82559er",
                  "vmxnet3": "vmxnet3", "virtio-net": "virtio", "virtio-net-pci": "virtio"}
HVM_DEFAULT_NIC = "rtl8139"


class DomainXmlError(FormatError):
    """A domain that libvirt or qemu would refuse: one line, naming the first problem."""


@dataclass(frozen=True)
class DomainDisk:
    target: str          # sda, sdb ... (hda.. for an HVM guest's IDE disks); virtio makes it vd*
    source: str          # absolute path on the KVM host
    kind: str            # "block" (<source dev=>) or "file" (<source file=>)
    readonly: bool = False
    format: str = "raw"  # the driver type
    bus: str | None = None      # None: the spec's bus
    shareable: bool = False     # other guests write it too (Xen's w!)


@dataclass(frozen=True)
class DomainInterface:
    mac: str             # the Xen MAC, kept so the guest's network config still matches
    bridge: str
    model: str = "virtio"


@dataclass(frozen=True)
class DomainSpec:
    name: str
    memory_mib: int
    vcpus: int
    disks: tuple[DomainDisk, ...]
    interfaces: tuple[DomainInterface, ...]
    bus: str = "ide"
    domain_type: str = "kvm"
    machine: str = "pc"
    uuid: str | None = None
    kernel: str | None = None     # direct-kernel boot when set; else the disk's grub
    initrd: str | None = None
    cmdline: str | None = None
    emulator: str | None = None
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "restart"
    scsi_model: str = "virtio-scsi"    # the SCSI controller, when a disk is on SCSI
    clock_offset: str = "utc"          # or "localtime" (the cfg's localtime=1, Windows' habit)


def _disk_index(target: str) -> int:
    """sda -> 0, sdz -> 25, sdaa -> 26 (hda too): the order libvirt and the kernel give disks."""
    match = _TARGET.match(target)
    if not match:
        raise DomainXmlError(f"disk target {target!r} is not a whole-disk name such as sda or hda")
    index = 0
    for letter in match.group(1):
        index = index * 26 + ord(letter) - ord("a") + 1
    return index - 1


def _strings(spec: DomainSpec):
    """Every text value that ends up in the document."""
    yield from (spec.name, spec.machine, spec.uuid, spec.kernel, spec.initrd, spec.cmdline,
                spec.emulator, spec.on_poweroff, spec.on_reboot, spec.on_crash, spec.scsi_model,
                spec.clock_offset)
    for disk in spec.disks:
        yield from (disk.target, disk.source, disk.format)
    for nic in spec.interfaces:
        yield from (nic.mac, nic.bridge, nic.model)


def _check(spec: DomainSpec) -> list[tuple[str, str, DomainDisk]]:
    """Refuse what the schema lets through but qemu would not start; (dev, bus, disk) in order."""
    for bus in {spec.bus, *(d.bus for d in spec.disks if d.bus)}:
        if bus not in BUSES:
            raise DomainXmlError(f"bus must be one of {', '.join(BUSES)}, got {bus!r}")
    if spec.domain_type not in DOMAIN_TYPES:
        raise DomainXmlError(f"domain type must be one of {', '.join(DOMAIN_TYPES)}, got {spec.domain_type!r}")
    for value in _strings(spec):
        if value is not None and _NOT_XML.search(value):
            raise DomainXmlError(f"{value!r} holds a control character or one XML cannot carry")
    ordered = sorted(spec.disks, key=lambda d: (_disk_index(d.target), d.target))
    placed: list[tuple[str, str, DomainDisk]] = []
    for disk in ordered:
        bus = disk.bus or spec.bus
        if disk.kind not in DISK_KINDS:
            raise DomainXmlError(f"disk {disk.target}: kind must be block or file, got {disk.kind!r}")
        if not disk.source.startswith("/"):
            raise DomainXmlError(f"disk {disk.target}: source {disk.source!r} is not an absolute path "
                                 f"(only block devices and files move)")
        if disk.readonly and bus in ("ide", "sata"):
            raise DomainXmlError(f"disk {disk.target} is read-only and qemu refuses a read-only "
                                 f"{bus.upper()} hard disk: use bus scsi or virtio")
        if bus == "ide" and _disk_index(disk.target) >= IDE_DISKS:
            raise DomainXmlError(f"disk {disk.target}: IDE has room for 4 disks (sda-sdd, hda-hdd) only: "
                                 f"use bus sata, scsi or virtio")
        dev = "vd" + disk.target[2:] if bus == "virtio" else disk.target
        if any(dev == other for other, _, _ in placed):
            raise DomainXmlError(f"two disks have target {dev}")
        placed.append((dev, bus, disk))
    return placed


def render_domain_xml(spec: DomainSpec) -> str:
    """The libvirt domain document for a spec; DomainXmlError for a spec qemu could not run."""
    disks = _check(spec)
    # Autoescape: paths and names may hold <>&'".
    return template("domain.xml.j2", autoescape=True).render(
        spec=spec, disks=disks, scsi=any(bus == "scsi" for _, bus, _ in disks),
        console_log=console_log(spec.name))


@lru_cache(maxsize=None)
def _schema(schema_dir: str):
    """domain.rng compiled once per directory and process: it pulls in a dozen includes."""
    from lxml import etree

    path = Path(schema_dir) / "domain.rng"
    try:
        return etree.RelaxNG(etree.parse(str(path)))
    except (OSError, etree.XMLSyntaxError, etree.RelaxNGParseError) as exc:
        raise DomainXmlError(f"{path}: cannot load the libvirt schema: {exc}") from None


def validate_domain_xml(xml: str, schema_dir: str | Path) -> None:
    """Check a document against libvirt's RelaxNG schema; DomainXmlError names the first error."""
    from lxml import etree

    schema = _schema(str(Path(schema_dir).resolve()))
    try:
        doc = etree.fromstring(xml.encode("utf-8"))
    except etree.XMLSyntaxError as exc:
        raise DomainXmlError(f"domain XML line {exc.lineno}: not well-formed: {exc.msg}") from None
    if schema.validate(doc):
        return
    errors = list(schema.error_log)
    # libxml2 lists the innermost error first, but an interleave error carries no line
    # or node: take those from the first entry that has them.
    first = errors[0]
    anchor = next((e for e in errors if e.line > 0), first)
    where = f" at {anchor.path}" if anchor.path else ""
    raise DomainXmlError(f"domain XML line {anchor.line}: {first.message.strip()}{where} "
                         f"(schema {Path(schema_dir) / 'domain.rng'})")


def default_schema_dir(candidates=("/usr/share/libvirt/schemas",)) -> Path | None:
    """The host's libvirt schemas, when libvirt is installed here."""
    for candidate in candidates:
        if (Path(candidate) / "domain.rng").is_file():
            return Path(candidate)
    return None


def _nic_model(cfg, index: int, vif) -> str:
    """virtio for a PV guest (it had no emulated NIC); an HVM guest keeps the NIC it has under Xen,
    which qemu-xen makes from model= (libxl's default: rtl8139), so its driver still finds it."""
    if not cfg.hvm:
        return "virtio"
    model = vif.model or HVM_DEFAULT_NIC
    if model not in HVM_NIC_MODELS:
        raise FormatError(f"vif {index}: model={shown(model)} is not a NIC qemu emulates "
                         f"({', '.join(sorted(HVM_NIC_MODELS))}): the guest would find other hardware under KVM")
    return HVM_NIC_MODELS[model]


def _interfaces(cfg, vm) -> tuple[DomainInterface, ...]:
    """Bridge NICs that keep the Xen MACs. The inventory's macs: give every vif's MAC, in the
    cfg's order; its mac and bridge describe the first NIC."""
    macs = vm.macs if vm is not None else ()
    if macs and len(macs) != len(cfg.vifs):
        raise FormatError(f"vms.{vm.name}.macs has {len(macs)} MACs for the cfg's {len(cfg.vifs)} vifs")
    nics = []
    for i, vif in enumerate(cfg.vifs):
        mac = macs[i] if macs else vif.mac
        bridge = vif.bridge or DEFAULT_BRIDGE
        if vm is not None and i == 0:
            mac = vm.mac or mac
            bridge = vm.bridge
        if not mac:
            where = f"vms.{vm.name}.macs" if vm is not None else "macs: of its inventory entry (and --vm)"
            raise FormatError(f"vif {i} has no mac=: Xen draws a random one at each start and KVM would invent "
                             f"another, so the guest's network would change: give every vif's MAC in {where}")
        nics.append(DomainInterface(mac=mac.lower(), bridge=bridge, model=_nic_model(cfg, i, vif)))
    if not cfg.vifs and vm is not None and vm.mac:
        nics.append(DomainInterface(mac=vm.mac.lower(), bridge=vm.bridge))
    return tuple(nics)


def _hvm_disks(cfg, disks: tuple[DomainDisk, ...], vm) -> tuple[tuple[DomainDisk, ...], dict]:
    """An HVM guest's disks on the buses qemu-xen gives them under Xen, so that it keeps hardware it
    has drivers for: sd* on SCSI behind an LSI 53C895A (the controller libxl adds for them; SATA
    could be one it has no driver for), hd* and xvd* on IDE, or on SATA with hdtype='ahci'; each
    in the same place on its controller. An inventory bus other than the default ide moves every
    disk to it (a guest given drivers for it), with the SCSI controller a PV guest gets."""
    overridden = vm is not None and vm.bus != "ide"
    moved = []
    for disk in disks:
        named = HVM_DISK.fullmatch(disk.target)
        assert named is not None   # the disk map keeps only such names for an HVM guest
        prefix, letters = named.groups()
        if overridden:
            bus = vm.bus
        elif prefix == "sd":
            bus = "scsi"
        else:
            bus = "sata" if cfg.hdtype == "ahci" else "ide"
        target = ("sd" if prefix == "sd" else "hd") + letters
        if bus == "ide" and _disk_index(target) >= IDE_DISKS:
            raise FormatError(f"disk {disk.target}: qemu-xen emulates IDE disks hda-hdd only (this one reaches "
                             f"PV drivers only), and KVM cannot give the guest a fifth IDE disk")
        moved.append(dataclasses.replace(disk, target=target, bus=bus))
    return tuple(moved), {} if overridden else {"scsi_model": "lsilogic"}


def _cmdline(cfg) -> str:
    """The guest's Xen command line (root= and extra=, or xl's cmdline=) plus the consoles KVM has
    and eth0 names for its NIC (bootloader.NIC_NAMES: the guest's network config says eth0)."""
    if not re.search(r"(?:^|\s)root=", cfg.cmdline or ""):
        raise FormatError("direct-kernel boot needs root= in the Xen cfg (root=, extra= or cmdline=)")
    words = [w for w in cfg.cmdline.split() if not w.startswith("net.ifnames=")]
    return " ".join([*words, NIC_NAMES, KVM_CONSOLES])


def _lifecycle(cfg) -> dict[str, str]:
    """The cfg's on_* actions that qemu can carry out, as DomainSpec keywords."""
    actions = {}
    for key, table in (("on_poweroff", _QEMU_STOP_ACTION), ("on_reboot", _QEMU_STOP_ACTION),
                       ("on_crash", _QEMU_CRASH_ACTION)):
        value = getattr(cfg, key)
        if value:
            actions[key] = table.get(value, value)
    if actions.get("on_poweroff") == "restart" and actions.get("on_reboot") == "destroy":
        raise FormatError("on_poweroff restart with on_reboot destroy: libvirt's qemu driver refuses it")
    return actions


def plan_domain_spec(cfg, disk_map, vm=None) -> DomainSpec:
    """The KVM domain for a parsed Xen cfg, its disk map and (optionally) its inventory entry.

    The inventory wins where it says something: memory, vcpus, the NICs' MACs, the first
    NIC's bridge, bus, domain type, machine, boot mode. An HVM guest keeps its disks' names,
    buses and NIC models (_hvm_disks, _nic_model).
    """
    name = vm.name if vm is not None else cfg.name
    if not name:
        raise FormatError("the Xen cfg has no name=")
    memory = (vm.memory if vm is not None else None) or cfg.memory or cfg.maxmem
    if not memory:
        raise FormatError(f"{name}: no memory= or maxmem= in the Xen cfg and none in the inventory")
    vcpus = (vm.vcpus if vm is not None else None) or cfg.vcpus or 1
    disks = tuple(
        DomainDisk(target=d.target, source=d.kvm_source, kind=d.source_kind, readonly=d.readonly,
                   format=_QEMU_FORMAT.get(d.format or "raw", d.format or "raw"), shareable=d.shared)
        for d in disk_map
    )
    controllers: dict[str, str] = {}
    if cfg.hvm:
        if cfg.hvm_kernel:
            raise FormatError(f"kernel {shown(cfg.hvm_kernel)}: an HVM guest booted from a kernel on the Xen host "
                             f"is not supported (its KVM domain boots its disk)")
        disks, controllers = _hvm_disks(cfg, disks, vm)
    boot = {}
    if vm is not None and vm.boot == "direct-kernel":
        if cfg.hvm:
            raise FormatError(f"vms.{name}.boot is direct-kernel, but an HVM guest boots its own boot loader "
                             f"from its disk: use boot: grub")
        boot = dict(kernel=f"{BOOT_DIR}/{name}/vmlinuz", initrd=f"{BOOT_DIR}/{name}/initrd.img",
                    cmdline=_cmdline(cfg))
    lifecycle = _lifecycle(cfg)
    placement = {}
    if vm is not None:
        placement = dict(bus=vm.bus, domain_type=vm.domain_type, machine=vm.machine)
    return DomainSpec(
        name=name,
        memory_mib=memory,
        vcpus=vcpus,
        disks=disks,
        interfaces=_interfaces(cfg, vm),
        uuid=cfg.uuid,
        clock_offset="localtime" if cfg.values.get("localtime") in (1, "1") else "utc",
        **placement,
        **controllers,
        **boot,
        **lifecycle,
    )
