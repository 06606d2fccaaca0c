"""The domains the wild-cfg table renders, defined by the lab's real libvirtd (9.0, qemu driver)
on kvm1 with `virsh define --validate` and undefined again, three HVM ones started by its qemu;
and the KVM host's `test -b` that tells a local disk's file from a device, over real SSH."""

from __future__ import annotations

import dataclasses

import pytest
from lxml import etree

from tasks import kvmhost, vmplan
from tasks.inventory import load_inventory
from tasks.remote import Site
from tests.conftest import need_corpus
from tests.unit.test_wild_cfgs import INVENTORY, TABLE

pytestmark = pytest.mark.lab

VIRSH = ["virsh", "-c", "qemu:///system"]
RENDERED = [row for row in TABLE if row.expect[0] == "rendered"]


def rendered_xml(row) -> str:
    """The row's domain as render-xml prints it, as a TCG domain: the lab's qemu has no KVM."""
    vm = load_inventory(INVENTORY).vm(row.vm) if row.vm else None
    spec = vmplan.of_file(str(row.path), vm, drbd_version=row.drbd_version).domain_spec()
    return kvmhost.render_checked(dataclasses.replace(spec, domain_type="qemu"))


@pytest.mark.parametrize("row", RENDERED, ids=str)
def test_libvirt_defines_every_rendered_domain(lab, row):
    if row.cfg.startswith("wild/"):
        need_corpus()
    xml = rendered_xml(row)
    name = etree.fromstring(xml.encode()).findtext("name")
    path = f"/tmp/xenkvm-wild-{name}.xml"
    lab.exec("kvm1", ["sh", "-c", 'cat > "$1"', "sh", path], input=xml, check=True)
    try:
        defined = lab.exec("kvm1", [*VIRSH, "define", "--validate", path])
        assert defined.returncode == 0, defined.stderr
        assert lab.exec("kvm1", [*VIRSH, "domstate", name]).stdout.strip() == "shut off"
    finally:
        lab.exec("kvm1", [*VIRSH, "undefine", name])
        lab.exec("kvm1", ["rm", "-f", "--", path])
    assert lab.exec("kvm1", [*VIRSH, "domstate", name]).returncode != 0


@pytest.mark.parametrize("cfg, devices", [
    ("hvm-xl-linux-scsi.cfg", ('"driver":"lsi"', '"driver":"scsi-hd"', '"driver":"rtl8139"')),
    ("hvm-xl-windows-ahci.cfg", ('"driver":"ahci"', '"driver":"ide-hd"', '"driver":"e1000"')),
    ("hvm-xm-windows-cluster.cfg", ('"driver":"ide-hd"', '"share-rw":true', '"driver":"e1000"')),
])
def test_qemu_runs_the_hardware_an_hvm_guest_had_under_xen(lab, cfg, devices):
    """Started, on sparse files and the lab's bridge: qemu has the controllers and NICs named
    (its command line, in libvirt's log of the domain, says so)."""
    row = next(r for r in RENDERED if r.cfg == f"own/{cfg}")
    vm = load_inventory(INVENTORY).vm(row.vm) if row.vm else None
    spec = vmplan.of_file(str(row.path), vm).domain_spec()
    files = [f"/root/xenkvm-wild-{spec.name}-{disk.target}.img" for disk in spec.disks]
    spec = dataclasses.replace(
        spec, domain_type="qemu", memory_mib=64,
        disks=tuple(dataclasses.replace(d, source=f, kind="file") for d, f in zip(spec.disks, files, strict=False)),
        interfaces=tuple(dataclasses.replace(n, bridge="br0") for n in spec.interfaces))
    path, log = f"/tmp/xenkvm-wild-{spec.name}.xml", f"/var/log/libvirt/qemu/{spec.name}.log"
    lab.exec("kvm1", ["rm", "-f", "--", log], check=True)   # libvirt appends: only this start's lines
    lab.exec("kvm1", ["truncate", "-s", "8M", *files], check=True)
    lab.exec("kvm1", ["sh", "-c", 'cat > "$1"', "sh", path], input=kvmhost.render_checked(spec), check=True)
    try:
        lab.exec("kvm1", [*VIRSH, "define", "--validate", path], check=True)
        lab.exec("kvm1", [*VIRSH, "start", spec.name], check=True)
        assert lab.exec("kvm1", [*VIRSH, "domstate", spec.name]).stdout.strip() == "running"
        started = lab.exec("kvm1", ["cat", log], check=True).stdout
        assert all(device in started for device in devices), started
    finally:
        lab.exec("kvm1", [*VIRSH, "destroy", spec.name])
        lab.exec("kvm1", [*VIRSH, "undefine", spec.name])
        lab.exec("kvm1", ["rm", "-f", "--", path, *files])


def test_the_table_renders_domains_of_every_kind():
    assert len(RENDERED) >= 20


def test_the_kvm_hosts_test_b_tells_a_file_from_a_device(lab):
    image = "/root/xenkvm-wild-disk.img"
    lab.exec("kvm1", ["truncate", "-s", "1M", image], check=True)
    inv = load_inventory(lab.inventory)
    site = Site(inv)
    try:
        found = vmplan.block_devices_of(site.host("kvm1"), ["/dev/vg_main/logger-swap", image, "/dev/no-such"])
        assert found == frozenset({"/dev/vg_main/logger-swap"})
        spec = vmplan.of_vm(site, inv.vm("logger"), kvm_devices=True).domain_spec()
        assert {(d.source, d.kind) for d in spec.disks} >= {("/dev/vg_main/logger-swap", "block")}
    finally:
        site.close()
        lab.exec("kvm1", ["rm", "-f", "--", image])
