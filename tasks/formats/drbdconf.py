"""DRBD resource files (/etc/drbd.d/<resource>.res) for a VM's replicated disks.

One file per resource, both hosts in it, protocol C. Two spellings, chosen by
the DRBD userland (`drbdadm`) version that will read the file:

    8.4 and 9:  net { protocol C; }      meta-disk PATH | internal;
    8.0 - 8.3:  protocol C; (resource)   flexible-meta-disk PATH | meta-disk internal;

and for DRBD 9 only, `options { auto-promote no; }`: DRBD 9 promotes a device
opened for writing (auto-promote, on by default), even with its peer
disconnected, which would let a domain's start bypass every guard of
`drbd.promote`. 8.4 knows no such option and its parser refuses it.

Both spellings mean the same: external metadata sized to the device (what
drbdmeta calls flex-external) or internal metadata. 8.3's `meta-disk PATH;`
would mean something else (a fixed 128 MiB slot, `[index]`), which the
inventory cannot express. 8.4 and 9 still read the 8.3 spelling, so it also
serves a pair whose hosts run different versions.

Every value is checked here (naming its inventory key) and quoted by the
template, so no inventory value can change the file's structure. jinja2 is
imported on first use, so importing this module stays fast.
"""

from __future__ import annotations

import ipaddress
import re

from ..inventory import VM, Host, ReplicatedDisk, is_domain_name
from . import FormatError
from .templating import template

TEMPLATE = "drbd-resource.res.j2"
# The kernel keeps disk and meta-disk paths in 128-byte fields (NUL included).
MAX_PATH_BYTES = 127

_DEVICE = re.compile(r"^/dev/drbd\d+$")
_VERSION = re.compile(r"^(\d+)(?:\.(\d+))?")


def _quote(value: str) -> str:
    """A drbd.conf double-quoted string: backslash and double quote escaped, as drbdadm unescapes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _major_minor(drbd_version: str) -> tuple[int, int]:
    match = _VERSION.match(drbd_version)
    major, minor = (int(match.group(1)), int(match.group(2) or 0)) if match else (0, 0)
    if major < 8:
        raise FormatError(f"drbd_version {drbd_version[:40]!r}: expected a DRBD version "
                         "such as 8.3, 8.4 or 9")
    return major, minor


def _token(value: str, key: str) -> str:
    """A name or path drbd.conf can carry: one printable word the kernel's fields can hold."""
    if (not value or not value.isprintable() or " " in value
            or len(value.encode()) > MAX_PATH_BYTES):
        raise FormatError(f"{key}: {value!r} cannot go into a DRBD resource file (one printable "
                         f"word without spaces, at most {MAX_PATH_BYTES} bytes)")
    return value


def _path(paths: dict[str, str], host: str, key: str) -> str:
    if host not in paths:
        raise FormatError(f"{key}: no entry for host {host}")
    value = _token(paths[host], f"{key}.{host}")
    if not value.startswith("/"):
        raise FormatError(f"{key}.{host}: {value!r} is not an absolute path")
    return value


def _address(host: Host, port: int) -> str:
    """IP:PORT as drbd.conf wants it; DRBD connects to addresses, never to names."""
    try:
        ip = ipaddress.ip_address(host.drbd_address)
    except ValueError:
        raise FormatError(f"hosts.{host.name}.drbd_address: DRBD needs an IP address, got "
                         f"{host.drbd_address!r}") from None
    return f"ipv6 [{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _hosts(vm: VM, hosts: dict[str, Host]) -> list[Host]:
    pair = []
    for key, name in (("xen_host", vm.xen_host), ("kvm_host", vm.kvm_host)):
        if name not in hosts:
            raise FormatError(f"vms.{vm.name}.{key}: host {name!r} is not in the inventory")
        host = hosts[name]
        if not is_domain_name(host.hostname):
            raise FormatError(f"hosts.{name}.hostname: {host.hostname!r} is not a host name")
        pair.append(host)
    if pair[0].hostname == pair[1].hostname:
        raise FormatError(f"hosts.{pair[0].name} and hosts.{pair[1].name} have the same hostname "
                         f"{pair[0].hostname!r}: DRBD tells its two hosts apart by it")
    return pair


def render_drbd_resource(vm: VM, hosts: dict[str, Host], drbd_version: str = "9") -> dict[str, str]:
    """resource name -> text of /etc/drbd.d/<resource>.res, one per replicated disk of the VM.

    `drbd_version` is the DRBD version of the host that will read the file
    ("8.3", "8.4.11", "9", ...); use the oldest of the two hosts. ValueError,
    naming the inventory key, for anything DRBD could not use.
    """
    version = _major_minor(drbd_version)
    legacy = version < (8, 4)
    pair = _hosts(vm, hosts)
    files: dict[str, str] = {}
    ports: dict[int, int] = {}
    for index, disk in enumerate(vm.disks):
        if not isinstance(disk, ReplicatedDisk):
            continue
        key = f"vms.{vm.name}.disks[{index}]"
        resource = _token(disk.resource, f"{key}.resource")
        if resource == "all":
            raise FormatError(f"{key}.resource: to drbdadm 'all' means every resource")
        if not 0 < disk.port < 65536:
            raise FormatError(f"{key}.port: {disk.port} is not a TCP port")
        if disk.port in ports:
            raise FormatError(f"{key}.port: {disk.port} is already used by "
                             f"vms.{vm.name}.disks[{ports[disk.port]}]")
        ports[disk.port] = index
        sections = []
        for host in pair:
            device = _path(disk.device, host.name, f"{key}.device")
            if not _DEVICE.match(device):
                raise FormatError(f"{key}.device: expected /dev/drbdN on {host.name}, got {device!r}")
            sections.append({
                "name": host.hostname,
                "device": device,
                "disk": _path(disk.backing, host.name, f"{key}.backing"),
                "address": _address(host, disk.port),
                "meta_disk": None if disk.internal_meta else _path(disk.meta_disk, host.name,
                                                                   f"{key}.meta_disk"),
            })
        files[resource] = template(TEMPLATE, autoescape=False, filters=(("q", _quote),)).render(
            resource=resource, legacy=legacy, no_auto_promote=version >= (9, 0), hosts=sections)
    return files


# `drbdadm dump`: the normalised configuration, one `resource NAME { ... }` block each.
_DUMP_TOKEN = re.compile(r'#[^\n]*|"(?:[^"\\\n]|\\.)*"|[{};]|[^\s{};"#]+')


def parse_dump_options(text: str) -> dict[str, dict[str, str]]:
    """Each resource's `options { KEY VALUE; ... }` (its DRBD 9 resource options) in the
    output of `drbdadm dump`; a resource without an options section maps to {}.

    Only the resource's own section counts: `drbdadm dump RES` leaves out what a
    `common` section sets. ValueError for text that is not a dump.
    """
    tokens = [t for t in _DUMP_TOKEN.findall(text) if not t.startswith("#")]
    resources: dict[str, dict[str, str]] = {}
    path: list[str] = []          # the words that opened each block we are in
    words: list[str] = []
    for token in tokens:
        if token == "{":
            path.append(" ".join(words))
            words = []
            if len(path) == 1:
                kind, _, name = path[0].partition(" ")
                if kind == "resource" and name:
                    resources[name.strip('"')] = {}
        elif token == "}":
            if words or not path:
                raise FormatError("not drbdadm dump output: unbalanced braces")
            path.pop()
        elif token == ";":
            in_options = len(path) == 2 and path[1] == "options" and path[0].startswith("resource ")
            if in_options and len(words) >= 2:
                resources[path[0].partition(" ")[2].strip('"')][words[0]] = " ".join(words[1:])
            words = []
        else:
            words.append(token)
    if path or words:
        raise FormatError("not drbdadm dump output: it ends inside a block")
    return resources
