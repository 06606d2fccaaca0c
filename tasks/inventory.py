"""hosts.yml -> a typed, validated model: the only place names and paths resolve.

Everything is checked on load, before any host is contacted; every problem
is reported as one line `FILE: key.path: what is wrong`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invoke import Collection

from .cli import task
from .errors import GuardError, InputError, quoted, shown

DEFAULT_CFG_DIR = "/etc/xen/auto"
ROLES = SIDES = ("xen", "kvm")   # a host's role; the side of a VM's pair it stands for
TOOLSTACKS = ("auto", "xm", "xl")
BUSES = ("ide", "sata", "scsi", "virtio")
DOMAIN_TYPES = ("kvm", "qemu")
BOOT_MODES = ("grub", "direct-kernel")
SNAPSHOT_METHODS = ("lvm", "qcow2")
# How a move proves the guest up after a start: a login prompt on its console, sshd's banner or
# a TCP port on its address, or only the domain running (none).
VERIFY_METHODS = ("console", "ssh", "port", "none")
DEFAULT_BOOT_TIMEOUT = 300
MAX_BOOT_TIMEOUT = 24 * 3600

# Every pattern is matched with fullmatch: `$` also matches before a final newline, and a
# YAML block scalar (`|`, `>`) ends in one.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_RESOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_MAC = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
_ABS_PATH = re.compile(r"/[^\s\x00]*")
_DRBD_DEVICE = re.compile(r"/dev/drbd[0-9]{1,7}")     # minors go up to 2^20 - 1
_VDEV = re.compile(r"[a-z]+[a-z0-9]*")
_BRIDGE = re.compile(r"[A-Za-z0-9_.-]{1,15}")          # IFNAMSIZ - 1

MAX_PORT = 65535
# Both hypervisors must accept the VM. Xen's tested guest limits (wiki.xenproject.org, "Xen 4.2
# Limits"): PV 512 vCPUs, HVM 128 (HVM_MAX_VCPUS, xen/include/public/hvm/hvm_info_table.h), 512 GiB
# of RAM for both (Linux also caps a PV domain at 512 GB by default: CONFIG_XEN_512GB). KVM takes
# more: QEMU's pc machine 255 vCPUs, q35 288 and up, and terabytes of RAM.
MAX_VCPUS = 128
MAX_MEMORY_MIB = 512 * 1024
# Far beyond any real inventory (it nests 7 deep: vms.NAME.disks[0].device.HOST; a thousand VMs
# are some 50,000 values), far below what a YAML alias bomb expands to.
MAX_DEPTH = 20
MAX_VALUES = 200_000


def is_domain_name(text: str) -> bool:
    """A DNS name: dot-separated labels of letters, digits and inner hyphens."""
    return 0 < len(text) <= 253 and all(_LABEL.fullmatch(label) for label in text.split("."))


def other(side: str) -> str:
    """The other side of a VM's pair: kvm for xen, xen for kvm."""
    return "kvm" if side == "xen" else "xen"


def _at(where: str, key: object) -> str:
    """The key path of a value, for the one-line errors (`vms.web.mac`)."""
    return f"{where}.{shown(key)}" if where else shown(key)


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    role: str
    user: str | None = None            # None: ~/.ssh/config's User for the address, else root
    port: int | None = None            # None: ~/.ssh/config's Port, else 22
    toolstack: str = "auto"
    libvirt_uri: str = "qemu:///system"
    known_hosts: str | None = None
    accept_new_host_key: bool = False
    proxy_command: str | None = None
    identity_file: str | None = None
    hostname: str = ""
    drbd_address: str = ""
    max_parallel: int = 4
    max_starts: int | None = None    # domains it starts at once in a fleet run (None: no limit)
    max_vcpus: int | None = None     # vCPUs its running guests may have in all (None: no ceiling)
    command_timeout: float = 60.0    # seconds one probe or short change may take there


@dataclass(frozen=True)
class ReplicatedDisk:
    """A guest disk that is a DRBD resource; device and backing may differ per host."""

    resource: str
    device: dict[str, str]
    backing: dict[str, str] = field(default_factory=dict)
    meta_disk: dict[str, str] = field(default_factory=dict)
    internal_meta: bool = False
    port: int = 7789
    vdev: str | None = None
    shared: bool = False     # other VMs name it too (a cluster file system's disk, w! in each cfg)


@dataclass(frozen=True)
class LocalDisk:
    """A disk that is not replicated (the seed's swap LV): its own volume on each host."""

    path: dict[str, str]
    vdev: str | None = None


@dataclass(frozen=True)
class VM:
    name: str
    xen_host: str
    kvm_host: str
    cfg: str
    disks: tuple[ReplicatedDisk | LocalDisk, ...]
    guest_address: str | None = None
    guest_user: str | None = None
    guest_port: int | None = None
    guest_proxy_command: str | None = None
    guest_identity_file: str | None = None
    guest_known_hosts: str | None = None
    mac: str | None = None
    macs: tuple[str, ...] = ()      # one per vif, in the cfg's order (vifs without mac=)
    memory: int | None = None
    vcpus: int | None = None
    bridge: str = "br0"
    bus: str = "ide"
    domain_type: str = "kvm"
    machine: str = "pc"
    boot: str = "grub"
    snapshot: str = "lvm"
    verify: str = "console"          # VERIFY_METHODS; the parser's default is ssh with a guest_address
    verify_port: int = 22            # the port `ssh` and `port` knock on
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT   # seconds a started guest has to prove itself up

    @property
    def resources(self) -> list[ReplicatedDisk]:
        return [d for d in self.disks if isinstance(d, ReplicatedDisk)]

    def host_for(self, side: str) -> str:
        return self.xen_host if side == "xen" else self.kvm_host


@dataclass(frozen=True)
class Inventory:
    path: str
    hosts: dict[str, Host]
    vms: dict[str, VM]

    def vm(self, name: str) -> VM:
        if name not in self.vms:
            known = ", ".join(sorted(self.vms)) or "none"
            raise InputError(f"{self.path}: no VM named {quoted(name)} (known: {known})")
        return self.vms[name]

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def select(self, names: str | None = None) -> list[VM]:
        """VMs named in a comma-separated list, in that order; all of them when empty."""
        if not names:
            return list(self.vms.values())
        return [self.vm(n.strip()) for n in names.split(",") if n.strip()]


class _Checker:
    """Reads one mapping with typed getters, collecting one-line errors."""

    def __init__(self, path: str, errors: list[str]):
        self.path = path
        self.errors = errors

    def error(self, where: str, what: str) -> None:
        self.errors.append(f"{self.path}: {where}: {what}")

    def mapping(self, value: Any, where: str, allowed: set[str] | None = None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(where, f"expected a mapping, got {type(value).__name__}")
            return {}
        for key in value:
            if not isinstance(key, str):
                self.error(where, f"key {quoted(key)} is not a string")
            elif allowed is not None and key not in allowed:
                self.error(_at(where, key), f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def get(self, data: dict, key: str, where: str, kind: type, default: Any = None,
            required: bool = False, choices: tuple | None = None, at_most: int | None = None) -> Any:
        at = f"{where}.{key}"
        if key not in data or data[key] is None:
            if required:
                self.error(at, "is required")
            return default
        value = data[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            seen = "" if isinstance(value, (dict, list)) else f" {quoted(value)}"
            self.error(at, f"expected {kind.__name__}, got {type(value).__name__}{seen}")
            return default
        if choices and value not in choices:
            self.error(at, f"must be one of {', '.join(choices)}, got {quoted(value)}")
            return default
        if isinstance(value, int) and value <= 0:
            self.error(at, f"must be positive, got {quoted(value)}")
            return default
        if at_most is not None and isinstance(value, int) and value > at_most:
            self.error(at, f"must be at most {at_most}, got {quoted(value)}")
            return default
        return value

    def path_value(self, data: dict, key: str, where: str, required: bool = False) -> str | None:
        value = self.get(data, key, where, str, required=required)
        if value is not None and not _ABS_PATH.fullmatch(value):
            self.error(f"{where}.{key}", f"expected an absolute path without spaces, got {quoted(value)}")
            return None
        return value

    def per_host(self, data: dict, key: str, where: str, hosts: tuple[str, str],
                 required: bool = False) -> dict[str, str]:
        """A path that is the same on both hosts, or a mapping host -> path."""
        at = f"{where}.{key}"
        value = data.get(key)
        if value is None:
            if required:
                self.error(at, "is required")
            return {}
        if isinstance(value, str):
            value = {h: value for h in hosts}
        elif isinstance(value, dict):
            extra = set(value) - set(hosts)
            missing = set(hosts) - set(value)
            if extra:
                self.error(at, f"names {', '.join(sorted(map(shown, extra)))}, not a host of this VM")
            if missing:
                self.error(at, f"has no entry for {', '.join(sorted(missing))}")
            if extra or missing:
                return {}
        else:
            self.error(at, f"expected a path or a mapping host -> path, got {type(value).__name__}")
            return {}
        result = {}
        for host, path in value.items():
            if not isinstance(path, str) or not _ABS_PATH.fullmatch(path):
                self.error(f"{at}.{host}", f"expected an absolute path without spaces, got {quoted(path)}")
            else:
                result[host] = path
        return result


_HOST_KEYS = {"address", "role", "user", "port", "toolstack", "libvirt_uri", "known_hosts",
              "accept_new_host_key", "proxy_command", "identity_file", "hostname", "drbd_address", "max_parallel",
              "max_starts", "max_vcpus", "command_timeout"}
_VM_KEYS = {"xen_host", "kvm_host", "cfg", "guest_address", "guest_user", "guest_port",
            "guest_proxy_command", "guest_identity_file", "guest_known_hosts", "mac", "macs",
            "memory", "vcpus", "bridge", "bus", "domain_type", "machine", "boot", "snapshot",
            "verify", "verify_port", "boot_timeout", "disks"}
_REPLICATED_KEYS = {"resource", "device", "backing", "meta_disk", "port", "vdev", "shared"}
_LOCAL_KEYS = {"local", "vdev"}


def _parse_host(check: _Checker, name: str, raw: Any) -> Host | None:
    where = _at("hosts", name)
    if not is_domain_name(name):
        check.error(where, "host name is not a valid domain name")
    data = check.mapping(raw, where, _HOST_KEYS)
    role = check.get(data, "role", where, str, required=True, choices=ROLES)
    address = check.get(data, "address", where, str, required=True)
    if role == "kvm" and "toolstack" in data:
        check.error(f"{where}.toolstack", "only Xen hosts have a toolstack")
    if role == "xen" and "libvirt_uri" in data:
        check.error(f"{where}.libvirt_uri", "only KVM hosts have a libvirt URI")
    hostname = check.get(data, "hostname", where, str, default=name)
    if hostname and not is_domain_name(hostname):
        check.error(f"{where}.hostname", f"not a valid host name: {quoted(hostname)}")
    drbd_address = check.get(data, "drbd_address", where, str)
    if drbd_address is not None and not _is_ip_address(drbd_address):
        check.error(f"{where}.drbd_address", f"DRBD needs an IP address, got {quoted(drbd_address)}")
    host = Host(
        name=name,
        address=address or "",
        role=role or "",
        user=check.get(data, "user", where, str),
        port=check.get(data, "port", where, int, at_most=MAX_PORT),
        toolstack=check.get(data, "toolstack", where, str, default="auto", choices=TOOLSTACKS),
        libvirt_uri=check.get(data, "libvirt_uri", where, str, default="qemu:///system"),
        known_hosts=check.get(data, "known_hosts", where, str),
        accept_new_host_key=check.get(data, "accept_new_host_key", where, bool, default=False),
        proxy_command=check.get(data, "proxy_command", where, str),
        identity_file=check.get(data, "identity_file", where, str),
        hostname=hostname,
        drbd_address=drbd_address or address or "",
        max_parallel=check.get(data, "max_parallel", where, int, default=4),
        max_starts=check.get(data, "max_starts", where, int),
        max_vcpus=check.get(data, "max_vcpus", where, int),
        command_timeout=float(check.get(data, "command_timeout", where, int, default=60)),
    )
    return host if role and address else None


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _parse_disk(check: _Checker, raw: Any, where: str, hosts: tuple[str, str]):
    if not isinstance(raw, dict):
        check.error(where, f"expected a mapping, got {type(raw).__name__}")
        return None
    vdev = raw.get("vdev")
    if vdev is not None and not (isinstance(vdev, str) and _VDEV.fullmatch(vdev)):
        check.error(f"{where}.vdev", f"expected a Xen device name such as xvda2, got {quoted(vdev)}")
        vdev = None
    if "local" in raw:
        check.mapping(raw, where, _LOCAL_KEYS)
        paths = check.per_host(raw, "local", where, hosts, required=True)
        return LocalDisk(path=paths, vdev=vdev) if paths else None
    data = check.mapping(raw, where, _REPLICATED_KEYS)
    resource = check.get(data, "resource", where, str, required=True)
    if resource and (not _RESOURCE.fullmatch(resource) or resource == "all"):
        # "all" would make every drbdadm command act on every resource of the host.
        check.error(f"{where}.resource", f"not a valid DRBD resource name: {quoted(resource)}")
        resource = None
    device = check.per_host(data, "device", where, hosts, required=True)
    for host, path in device.items():
        if not _DRBD_DEVICE.fullmatch(path):
            check.error(f"{where}.device", f"expected /dev/drbdN on {host}, got {quoted(path)}")
    meta = data.get("meta_disk")
    internal = meta == "internal"
    meta_disk = {} if internal else check.per_host(data, "meta_disk", where, hosts)
    if not resource or not device:
        return None
    return ReplicatedDisk(
        resource=resource,
        device=device,
        backing=check.per_host(data, "backing", where, hosts),
        meta_disk=meta_disk,
        internal_meta=internal,
        port=check.get(data, "port", where, int, default=7789, at_most=MAX_PORT),
        vdev=vdev,
        shared=check.get(data, "shared", where, bool, default=False),
    )


def _parse_macs(check: _Checker, data: dict, where: str) -> tuple[str, ...]:
    """macs: one MAC per vif; `mac:` (the first vif's) says part of the same, so not both."""
    raw = data.get("macs")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        check.error(f"{where}.macs", "expected a non-empty list of MAC addresses, one per vif in the cfg's order")
        return ()
    if data.get("mac") is not None:
        check.error(f"{where}.macs", "give mac: (the first vif's) or macs: (every vif's), not both")
    macs = []
    for i, mac in enumerate(raw):
        if not isinstance(mac, str) or not _MAC.match(mac):
            check.error(f"{where}.macs[{i}]", f"not a MAC address: {mac!r}")
        elif mac.lower() in macs:
            check.error(f"{where}.macs[{i}]", f"MAC {mac.lower()} is listed twice")
        else:
            macs.append(mac.lower())
    return tuple(macs)


def _parse_vm(check: _Checker, name: str, raw: Any, hosts: dict[str, Host]) -> VM | None:
    where = _at("vms", name)
    if not is_domain_name(name):
        check.error(where, "VM name is not a valid domain name")
    data = check.mapping(raw, where, _VM_KEYS)
    sides = {}
    for key, role in (("xen_host", "xen"), ("kvm_host", "kvm")):
        host = check.get(data, key, where, str, required=True)
        if host is None:
            continue
        if host not in hosts:
            check.error(f"{where}.{key}", f"names undefined host {quoted(host)}")
        elif hosts[host].role != role:
            check.error(f"{where}.{key}", f"host {quoted(host)} has role {hosts[host].role}, expected {role}")
        else:
            sides[role] = host
    mac = check.get(data, "mac", where, str)
    if mac is not None and not _MAC.fullmatch(mac):
        check.error(f"{where}.mac", f"not a MAC address: {quoted(mac)}")
        mac = None
    macs = _parse_macs(check, data, where)
    bridge = check.get(data, "bridge", where, str, default="br0")
    if not _BRIDGE.fullmatch(bridge or ""):
        check.error(f"{where}.bridge", f"not a valid bridge name: {quoted(bridge)}")
    cfg = check.path_value(data, "cfg", where) or f"{DEFAULT_CFG_DIR}/{name}.cfg"
    raw_disks = data.get("disks")
    if not isinstance(raw_disks, list) or not raw_disks:
        check.error(f"{where}.disks", "expected a non-empty list of disks")
        raw_disks = []
    guest_address = check.get(data, "guest_address", where, str)
    guest_port = check.get(data, "guest_port", where, int, at_most=MAX_PORT)
    proof = _parse_proof(check, data, where, guest_address, guest_port)
    if len(sides) < 2:
        return None
    pair = (sides["xen"], sides["kvm"])
    disks = [_parse_disk(check, d, f"{where}.disks[{i}]", pair) for i, d in enumerate(raw_disks)]
    if any(d is None for d in disks) or not disks:
        return None
    return VM(
        name=name,
        xen_host=pair[0],
        kvm_host=pair[1],
        cfg=cfg,
        disks=tuple(disks),
        guest_address=guest_address,
        guest_user=check.get(data, "guest_user", where, str),
        guest_port=guest_port,
        guest_proxy_command=check.get(data, "guest_proxy_command", where, str),
        guest_identity_file=check.get(data, "guest_identity_file", where, str),
        guest_known_hosts=check.get(data, "guest_known_hosts", where, str),
        mac=mac.lower() if mac else None,
        macs=macs,
        memory=check.get(data, "memory", where, int, at_most=MAX_MEMORY_MIB),
        vcpus=check.get(data, "vcpus", where, int, at_most=MAX_VCPUS),
        bridge=bridge,
        bus=check.get(data, "bus", where, str, default="ide", choices=BUSES),
        domain_type=check.get(data, "domain_type", where, str, default="kvm", choices=DOMAIN_TYPES),
        machine=check.get(data, "machine", where, str, default="pc"),
        boot=check.get(data, "boot", where, str, default="grub", choices=BOOT_MODES),
        snapshot=check.get(data, "snapshot", where, str, default="lvm", choices=SNAPSHOT_METHODS),
        **proof,
    )


def _parse_proof(check: _Checker, data: dict, where: str, guest_address: str | None,
                 guest_port: int | None) -> dict[str, Any]:
    """How a start of the VM is proven up: `verify`, `verify_port`, `boot_timeout`."""
    verify = check.get(data, "verify", where, str, default="ssh" if guest_address else "console",
                       choices=VERIFY_METHODS)
    if verify in ("ssh", "port") and not guest_address:
        check.error(f"{where}.verify", f"{verify} knocks on the guest's address: set guest_address")
    if verify == "port" and "verify_port" not in data:
        check.error(f"{where}.verify_port", "is required with verify: port")
    verify_port = check.get(data, "verify_port", where, int, default=guest_port or 22, at_most=MAX_PORT)
    boot_timeout = check.get(data, "boot_timeout", where, int, default=DEFAULT_BOOT_TIMEOUT,
                             at_most=MAX_BOOT_TIMEOUT)
    return {"verify": verify or "console", "verify_port": verify_port, "boot_timeout": float(boot_timeout)}


def _check_unique(check: _Checker, vms: dict[str, VM]) -> None:
    """Two VMs never share a MAC, nor a DRBD resource, a device on a host or a volume unless
    each of them declares that disk `shared: true`, the same way, on the same two hosts."""
    seen: dict[tuple, tuple[VM, ReplicatedDisk | None]] = {}

    def claim(key: tuple, vm: VM, what: str, shared: ReplicatedDisk | None = None) -> None:
        """`shared`: the disk, when this VM declares it shared."""
        owner, owner_shared = seen.setdefault(key, (vm, shared))
        if owner is vm:
            return
        if shared is None or owner_shared is None:
            hint = " (a disk several VMs use needs shared: true in each)" if shared or owner_shared else ""
            check.error(f"vms.{vm.name}", f"{what} is also used by VM {owner.name!r}{hint}")
        elif key[0] == "resource" and (owner.xen_host, owner.kvm_host) != (vm.xen_host, vm.kvm_host):
            check.error(f"vms.{vm.name}", f"shares {what} with VM {owner.name!r}, which runs on other hosts")
        elif key[0] == "resource" and dataclasses.replace(shared, vdev=None) != dataclasses.replace(
                owner_shared, vdev=None):
            check.error(f"vms.{vm.name}", f"shares {what} with VM {owner.name!r} but describes it otherwise "
                                          f"(device, backing, meta_disk and port must match)")

    for vm in vms.values():
        for mac in filter(None, (vm.mac, *vm.macs)):
            claim(("mac", mac), vm, f"MAC {mac}")
        for disk in vm.disks:
            shared = disk if isinstance(disk, ReplicatedDisk) and disk.shared else None
            if isinstance(disk, ReplicatedDisk):
                claim(("resource", disk.resource), vm, f"DRBD resource {disk.resource}", shared)
                for host, dev in disk.device.items():
                    claim(("device", host, dev), vm, f"device {dev} on {host}", shared)
            for host, path in (disk.path if isinstance(disk, LocalDisk) else disk.backing).items():
                claim(("volume", host, path), vm, f"volume {shown(path)} on {host}", shared)
    sharers: dict[str, list[str]] = {}
    for vm in vms.values():
        for disk in (d for d in vm.resources if d.shared):
            sharers.setdefault(disk.resource, []).append(vm.name)
    for resource, names in sharers.items():
        if len(names) == 1:   # its other guests could never move with it
            check.error(f"vms.{names[0]}", f"DRBD resource {resource} is shared: true but no other VM names it "
                                           f"(every guest that shares it belongs in the inventory)")
    ports: dict[tuple[str, int], str] = {}
    for vm in vms.values():
        for disk in vm.resources:
            for host in (vm.xen_host, vm.kvm_host):
                holder = ports.setdefault((host, disk.port), disk.resource)
                if holder != disk.resource:
                    check.error(f"vms.{vm.name}.disks[{vm.disks.index(disk)}].port",
                                f"port {disk.port} on {host} is also used by DRBD resource {holder}")


def missing_sharers(inv: Inventory, selected: list[VM]) -> dict[str, tuple[str, str]]:
    """The VMs a selection leaves out that share a disk with one in it: name -> (the VM in the
    selection, the shared DRBD resource). Empty when every sharer is in."""
    names = {vm.name for vm in selected}
    missing: dict[str, tuple[str, str]] = {}
    for vm in selected:
        for disk in (d for d in vm.resources if d.shared):
            for other in inv.vms.values():
                if other.name not in names and any(d.shared and d.resource == disk.resource
                                                   for d in other.resources):
                    missing.setdefault(other.name, (vm.name, disk.resource))
    return missing


def check_sharers_selected(inv: Inventory, selected: list[VM]) -> None:
    """A guest that shares a disk moves only with every guest that shares it: the DRBD resource
    is Primary on one side at a time, so they can only run on the same side."""
    missing = missing_sharers(inv, selected)
    if missing:
        other, (vm, resource) = next(iter(missing.items()))
        together = ",".join([v.name for v in selected] + list(missing))
        raise GuardError(f"{vm} shares DRBD resource {resource} with {other}, which this move leaves out: "
                         f"guests that share a disk move together (--vm {together})")


@functools.cache
def _strict_loader():
    """PyYAML's SafeLoader, stricter where safe_load lets a mistake or an attack through.

    safe_load keeps the last of two equal keys, expands a 715-byte alias bomb into hundreds of
    millions of values, recurses until Python gives up on deep nesting and passes control
    characters (`hostname: >` is "xen1\\n"). This loader refuses each, at the line it is on;
    a string may hold no unprintable character at all (control, line separator, bidi override).
    """
    import yaml  # here, not at import time: `fab --list` stays fast

    class Refused(yaml.MarkedYAMLError):
        pass

    class Loader(yaml.SafeLoader):
        def __init__(self, stream):
            super().__init__(stream)
            self.depth = 0
            self.sizes: dict[int, int] = {}   # id(node) -> values in it, its aliases expanded

        def compose_node(self, parent, index):
            mark = self.peek_event().start_mark
            alias = self.check_event(yaml.AliasEvent)
            if self.depth >= MAX_DEPTH:
                raise Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            self.depth += 1
            try:
                node = super().compose_node(parent, index)
            finally:
                self.depth -= 1
            if id(node) not in self.sizes:
                if alias:
                    raise Refused(None, None, "an alias inside the value it names", mark)
                inner = node.value if isinstance(node, yaml.SequenceNode) else (
                    [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
                self.sizes[id(node)] = 1 + sum(self.sizes[id(n)] for n in inner)
            if self.sizes[id(node)] > MAX_VALUES:
                raise Refused(None, None, f"more than {MAX_VALUES} values once its aliases are expanded", mark)
            return node

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue   # `<<: *defaults`: keys written beside it override the merged ones
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, collections.abc.Hashable):
                    if key in seen:
                        raise Refused(None, None, f"duplicate key {quoted(key)}", key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

        def construct_object(self, node, deep=False):
            try:
                value = super().construct_object(node, deep=deep)
            except ValueError as exc:   # a date that does not exist, an integer of 5000 digits
                raise Refused(None, None, f"cannot read this value: {str(exc).split(';')[0]}",
                              node.start_mark) from None
            if isinstance(value, str) and not value.isprintable():
                bad = next(c for c in value if not c.isprintable())
                raise Refused(None, None, f"{quoted(value)} holds the unprintable character {bad!r}"
                              + (" (a block scalar, | or >, ends in a newline)" if bad == "\n" else ""),
                              node.start_mark)
            return value

    return Loader, Refused


def parse_inventory(text: str, path: str = "hosts.yml") -> Inventory:
    """Validate an inventory's text; raise InputError listing every problem, one per line."""
    import yaml

    loader, refused = _strict_loader()
    try:
        raw = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        kind = "" if isinstance(exc, refused) else "YAML syntax error: "
        raise InputError(f"{path}{line}: {kind}{problem}") from None
    errors: list[str] = []
    check = _Checker(path, errors)
    top = check.mapping(raw, "", {"hosts", "vms"})
    raw_hosts = check.mapping(top.get("hosts"), "hosts")
    raw_vms = check.mapping(top.get("vms"), "vms")
    if not raw_hosts and not errors:
        check.error("hosts", "no hosts defined")
    hosts = {name: h for name, spec in raw_hosts.items()
             if isinstance(name, str) and (h := _parse_host(check, name, spec))}
    vms = {name: vm for name, spec in raw_vms.items()
           if isinstance(name, str) and (vm := _parse_vm(check, name, spec, hosts))}
    _check_unique(check, vms)
    if errors:
        raise InputError(*errors)
    return Inventory(path=path, hosts=hosts, vms=vms)


def load_inventory(path: str | Path) -> Inventory:
    """Read and validate the inventory file; one-line error when it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read inventory: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_inventory(text, str(path))


def inventory_path(c) -> Path:
    """The inventory file from Fabric config key `inventory`, relative to the fabfile's folder."""
    configured = Path(c.config.get("inventory") or "hosts.yml").expanduser()
    if configured.is_absolute() or configured.exists():
        return configured
    return Path(__file__).resolve().parent.parent / configured


def from_context(c) -> Inventory:
    return load_inventory(inventory_path(c))


@task
def check(c):
    """Validate the inventory and list its hosts and VMs (contacts nothing)."""
    inv = from_context(c)
    print(f"{inv.path}: ok, {len(inv.hosts)} hosts, {len(inv.vms)} VMs")
    for vm in inv.vms.values():
        disks = ", ".join(d.resource if isinstance(d, ReplicatedDisk) else "local" for d in vm.disks)
        print(f"  {vm.name}: {vm.xen_host} <-> {vm.kvm_host} ({disks})")


ns = Collection("inventory", check)
