"""Xen configs that are not xen-tools PV guests: each converts and renders right, or is refused
in one line (InputError, exit 2) naming the cfg.

One table of (cfg, task, inventory VM, expected outcome) over the wild corpus
(../shared/corpus/xen-cfgs-wild, read in place; its SOURCES.md says what each must give) and
over our own cfgs of every kind (tests/data/cfgs: HVM, diskless, non-x86, phy: on a file,
shared w! disks, relative paths, vifs without MAC, drbd:RES), in xm and xl syntax, PV and HVM,
Linux and Windows. The tasks run in-process as `fab` calls them; every XML they print is
checked against libvirt's schemas (the lab test defines each with virsh on the lab's kvm1).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from invoke import Config, Context
from lxml import etree

from tasks import kvmhost, xenhost
from tasks.errors import InputError
from tasks.formats.domainxml import default_schema_dir, validate_domain_xml
from tasks.formats.xencfg import parse_xen_cfg
from tasks.vmplan import HVM_CFG_NOTE
from tests.conftest import CORPUS, HAVE_CORPUS, REPO, need_corpus

OWN = REPO / "tests" / "data" / "cfgs"
WILD = CORPUS / "xen-cfgs-wild"
INVENTORY = OWN / "inventory.yml"


@dataclass(frozen=True)
class Row:
    cfg: str                   # "wild/NAME.cfg" (the corpus) or "own/NAME.cfg" (tests/data/cfgs)
    task: str                  # "convert" (xenhost.convert-cfg) or "render" (kvmhost.render-xml)
    expect: tuple              # see refused / converted / UNCHANGED / rendered
    vm: str | None = None      # --vm, from tests/data/cfgs/inventory.yml
    drbd_version: str | None = None

    @property
    def path(self) -> Path:
        folder, name = self.cfg.split("/")
        return (WILD if folder == "wild" else OWN) / name

    def __str__(self) -> str:
        extra = "".join(f"-{v}" for v in (self.vm, self.drbd_version) if v)
        return f"{self.cfg}-{self.task}{extra}"


def refused(message: str) -> tuple:
    """The one line after `CFG: `, exactly."""
    return ("refused", message)


def converted(renames: dict[str, str]) -> tuple:
    """The cfg's vdevs after the rewrite, in its order."""
    return ("converted", renames)


UNCHANGED = ("unchanged",)   # an HVM cfg: printed as it is, the reason on stderr


def rendered(disks: list[tuple], nics: list[tuple], scsi: str | None = None, clock: str = "utc") -> tuple:
    """disks: (type, source, target dev, bus, shareable) in order; nics: (MAC, model)."""
    return ("rendered", disks, nics, scsi, clock)


def disk(source: str, dev: str, bus: str = "ide", shared: bool = False) -> tuple:
    return ("block" if source.startswith("/dev/") else "file", source, dev, bus, shared)


def file_disk(source: str, dev: str, bus: str = "ide") -> tuple:
    return ("file", source, dev, bus, False)


NO_DISK = "no disk to boot from (NFS root, or a unikernel): only guests with a disk move"
NOT_X86 = "not a guest an x86_64 KVM host can run"
NO_MAC = ("vif 0 has no mac=: Xen draws a random one at each start and KVM would invent another, so "
          "the guest's network would change: give every vif's MAC in macs: of its inventory entry (and --vm)")


def relative(vdev: str, path: str) -> str:
    return (f"disk {vdev}: {path} is not an absolute path: only block devices and files named by one move "
            f"(xl reads a relative one from its working directory)")


def both(cfg: str, expect: tuple) -> list[Row]:
    return [Row(cfg, "convert", expect), Row(cfg, "render", expect)]


TABLE: list[Row] = [
    # --- the wild corpus, as its SOURCES.md says -------------------------------------------
    Row("wild/04-snow-test01-xentools431-single.cfg", "convert", converted({"xvda1": "sda"})),
    Row("wild/04-snow-test01-xentools431-single.cfg", "render", rendered(
        [disk("/dev/snow_vg/test-01-disk", "sda")], [("00:16:3e:39:ad:3c", "virtio")])),
    Row("wild/05-snow-deploy01-xentools45-phy.cfg", "convert", converted({"xvda2": "sda", "xvda1": "sdb"})),
    Row("wild/05-snow-deploy01-xentools45-phy.cfg", "render", rendered(
        [disk("/dev/snow_vg/deploy01-disk", "sda"), disk("/dev/snow_vg/deploy01-swap", "sdb")],
        [("76:fd:31:9e:29:01", "virtio")])),
    *both("wild/06-snow-fileserver-nfsroot-nodisk.cfg", refused(NO_DISK)),
    Row("wild/19-ey00-s00348-wbang.cfg", "convert", converted({"sda1": "sda", "sda2": "sdb", "sdb1": "sdc"})),
    Row("wild/19-ey00-s00348-wbang.cfg", "render", refused(NO_MAC)),
    Row("wild/19-ey00-s00348-wbang.cfg", "render", rendered(
        [disk("/dev/drbd50", "sda"), disk("/dev/ey00-data4/swap-s00348", "sdb"),
         disk("/dev/drbd52", "sdc", shared=True)], [("00:16:3e:20:03:48", "virtio")]), vm="ey00-s00348"),
    Row("wild/20-ey02-s00250-wbang-2vifs-tab.cfg", "convert",
        converted({"sda1": "sda", "sda2": "sdb", "sda3": "sdc", "sdb1": "sdd"})),
    Row("wild/20-ey02-s00250-wbang-2vifs-tab.cfg", "render", refused(NO_MAC)),
    Row("wild/20-ey02-s00250-wbang-2vifs-tab.cfg", "render", rendered(
        [disk("/dev/drbd60", "sda"), disk("/dev/ey02-dedicated02/swap-s00250", "sdb"), disk("/dev/drbd61", "sdc"),
         disk("/dev/drbd62", "sdd", shared=True)],
        [("00:16:3e:20:02:50", "virtio"), ("00:16:3e:20:02:51", "virtio")]), vm="ey02-s00250"),
    Row("wild/21-ey00-s00006-wbang.cfg", "convert", converted({"sda1": "sda", "sda2": "sdb", "sdb1": "sdc"})),
    Row("wild/21-ey00-s00006-wbang.cfg", "render", refused(NO_MAC)),
    Row("wild/21-ey00-s00006-wbang.cfg", "render", rendered(
        [disk("/dev/drbd70", "sda"), disk("/dev/ey00-data/swap-s00006", "sdb"),
         disk("/dev/drbd72", "sdc", shared=True)], [("00:16:3e:20:00:06", "virtio")]), vm="ey00-s00006"),
    *both("wild/22-rumprun-domain-config.cfg", refused(relative("hda", "img/test.ffs"))),
    *both("wild/24-lincx-3vifs-nomac.cfg", refused(NO_DISK)),
    *both("wild/26-mirage-mux-xl.cfg", refused(NO_DISK)),
    *both("wild/30-xentroops-domu-qemu-arm.cfg", refused(f"device_tree= (an ARM guest's device tree): {NOT_X86}")),
    *both("wild/31-xentroops-domu-h3-arm-iomem.cfg", refused(f"device_tree= (an ARM guest's device tree): {NOT_X86}")),
    *both("wild/32-xentroops-domu-vdevices-fragment.cfg",
          refused("no name=: a fragment of a guest cfg, not a whole guest")),

    # --- 1. HVM guests: cfg untouched; disks on the bus their names imply; NIC model kept ----
    Row("own/hvm-xm-windows.cfg", "convert", UNCHANGED),
    Row("own/hvm-xm-windows.cfg", "render", rendered(
        [disk("/dev/vg0/win2k8", "hda")], [("00:16:3e:10:20:01", "rtl8139")], clock="localtime")),
    Row("own/hvm-xl-windows-ahci.cfg", "convert", UNCHANGED),
    Row("own/hvm-xl-windows-ahci.cfg", "render", rendered(
        [disk("/dev/vg0/win10", "hda", "sata"), disk("/dev/vg0/win10-data", "hdb", "sata")],
        [("00:16:3e:10:20:02", "e1000")], clock="localtime")),
    Row("own/hvm-xl-linux-scsi.cfg", "convert", UNCHANGED),
    Row("own/hvm-xl-linux-scsi.cfg", "render", rendered(
        [disk("/dev/vg0/db1-root", "sda", "scsi"), disk("/dev/vg0/db1-data", "sdb", "scsi")],
        [("00:16:3e:10:20:03", "rtl8139")], scsi="lsilogic")),
    Row("own/hvm-xm-linux-xvd.cfg", "convert", UNCHANGED),
    Row("own/hvm-xm-linux-xvd.cfg", "render", rendered(
        [disk("/dev/vg0/web2", "hda"), disk("/dev/vg0/web2-logs", "hdb")], [("00:16:3e:10:20:04", "e1000")])),
    Row("own/hvm-xl-nic-unknown.cfg", "convert", UNCHANGED),
    Row("own/hvm-xl-nic-unknown.cfg", "render", refused(
        "vif 0: model=fancynic is not a NIC qemu emulates (e1000, e1000e, i82551, i82557b, i82559er, ne2k_pci, "
        "pcnet, rtl8139, virtio-net, virtio-net-pci, vmxnet3): the guest would find other hardware under KVM")),
    Row("own/hvm-xl-direct-kernel.cfg", "convert", UNCHANGED),
    Row("own/hvm-xl-direct-kernel.cfg", "render", refused(
        "kernel /srv/boot/vmlinuz-6.1.0-18-amd64: an HVM guest booted from a kernel on the Xen host is not "
        "supported (its KVM domain boots its disk)")),
    Row("own/hvm-xm-ide-fifth.cfg", "convert", UNCHANGED),
    Row("own/hvm-xm-ide-fifth.cfg", "render", refused(
        "disk hde: qemu-xen emulates IDE disks hda-hdd only (this one reaches PV drivers only), and KVM cannot "
        "give the guest a fifth IDE disk")),

    # --- 2. diskless domains ----------------------------------------------------------------
    *both("own/pv-xm-nfsroot.cfg", refused(NO_DISK)),
    *both("own/pv-xl-pvh-unikernel.cfg", refused(NO_DISK)),
    *both("own/hvm-xl-cdrom-only.cfg", refused(NO_DISK)),

    # --- 3. non-x86 guests, and host hardware passed through ---------------------------------
    *both("own/arm-xl-dtdev.cfg", refused(f"device_tree= (an ARM guest's device tree): {NOT_X86}")),
    *both("own/arm-xl-zimage.cfg", refused(f"kernel /srv/xen/armhf1/zImage is an ARM or RISC-V image: {NOT_X86}")),
    *both("own/riscv-xl.cfg", refused(f"kernel /srv/riscv64/vmlinux-6.6 is an ARM or RISC-V image: {NOT_X86}")),
    *both("own/hvm-xm-iomem.cfg", refused(f"iomem= (host I/O memory passed through): {NOT_X86}")),
    *both("own/pv-xl-irqs.cfg", refused(f"irqs= (host interrupts passed through): {NOT_X86}")),
    *both("own/hvm-xl-pci.cfg", refused("pci= (host PCI devices passed through): the KVM domain would lack them; "
                                        "give it <hostdev> by hand and move it by hand")),
    Row("own/pv-xm-pci-empty.cfg", "convert", converted({"xvda2": "sda", "xvda1": "sdb"})),

    # --- 4. what the path is decides the disk type, not the prefix -----------------------------
    Row("own/pv-xm-phy-file.cfg", "convert", converted({"xvda2": "sda", "xvda1": "sdb"})),
    Row("own/pv-xm-phy-file.cfg", "render", rendered(
        [file_disk("/srv/xen/web3/disk.img", "sda"), disk("/dev/vg0/web3-swap", "sdb")],
        [("00:16:3e:10:20:0b", "virtio")])),
    Row("own/pv-xm-phy-file.cfg", "render", rendered(   # offline: by the names (test_hypervisors asks the host)
        [file_disk("/srv/xen/web3/disk.img", "sda"), file_disk("/srv/xen/web3-swap.img", "sdb")],
        [("00:16:3e:10:20:0b", "virtio")]), vm="web3"),
    Row("own/pv-xl-backendtype-phy-file.cfg", "convert", converted({"xvda": "sda"})),
    Row("own/pv-xl-backendtype-phy-file.cfg", "render", rendered(
        [file_disk("/var/lib/xen/images/db2.img", "sda")], [("00:16:3e:10:20:0c", "virtio")])),
    Row("own/hvm-xm-windows-phy-file.cfg", "convert", UNCHANGED),
    Row("own/hvm-xm-windows-phy-file.cfg", "render", rendered(
        [file_disk("/var/lib/xen/images/winxp.img", "hda")], [("00:16:3e:10:20:0d", "rtl8139")], clock="localtime")),
    Row("own/pv-xm-file-on-dev.cfg", "convert", converted({"xvda1": "sda"})),
    Row("own/pv-xm-file-on-dev.cfg", "render", rendered([disk("/dev/vg0/old1", "sda")],
                                                        [("00:16:3e:10:20:0e", "virtio")])),

    # --- 5. shared disks (w!; xl has no such mode, so xm only) --------------------------------
    Row("own/pv-xm-gfs.cfg", "convert", converted({"sda1": "sda", "sdb1": "sdb"})),
    Row("own/pv-xm-gfs.cfg", "render", rendered(
        [disk("/dev/drbd20", "sda"), disk("/dev/drbd22", "sdb", shared=True)], [("00:16:3e:10:20:10", "virtio")])),
    Row("own/pv-xm-gfs.cfg", "render", rendered(
        [disk("/dev/drbd20", "sda"), disk("/dev/drbd22", "sdb", shared=True)], [("00:16:3e:10:20:10", "virtio")]),
        vm="gfs1"),
    Row("own/pv-xm-gfs-peer.cfg", "render", rendered(
        [disk("/dev/drbd21", "sda"), disk("/dev/drbd22", "sdb", shared=True)], [("00:16:3e:10:20:11", "virtio")]),
        vm="gfs2"),
    Row("own/hvm-xm-windows-cluster.cfg", "convert", UNCHANGED),
    Row("own/hvm-xm-windows-cluster.cfg", "render", rendered(
        [disk("/dev/drbd40", "hda"), disk("/dev/drbd42", "hdb", shared=True)], [("00:16:3e:10:20:12", "e1000")],
        clock="localtime"), vm="wincl1"),

    # --- 6. relative paths: the cfg and its own vdev named ------------------------------------
    *both("own/pv-xm-relative.cfg", refused(relative("xvda1", "images/rel1.img"))),
    *both("own/hvm-xl-relative.cfg", refused(relative("hda", "rel2.img"))),
    *both("own/pv-xl-relative-positional.cfg", refused(relative("xvda", "guests/rel3.qcow2"))),

    # --- 7. several vifs without mac=: the inventory's macs: ---------------------------------
    Row("own/pv-xm-2vifs-nomac.cfg", "convert", converted({"xvda2": "sda"})),
    Row("own/pv-xm-2vifs-nomac.cfg", "render", refused(NO_MAC)),
    Row("own/pv-xm-2vifs-nomac.cfg", "render", rendered(
        [disk("/dev/drbd30", "sda")], [("00:16:3e:10:30:01", "virtio"), ("00:16:3e:10:30:02", "virtio")]),
        vm="router1"),
    Row("own/hvm-xl-windows-2vifs.cfg", "render", refused(NO_MAC)),
    Row("own/hvm-xl-windows-2vifs.cfg", "render", rendered(
        [disk("/dev/drbd31", "hda")], [("00:16:3e:10:31:01", "e1000"), ("00:16:3e:10:31:02", "e1000")],
        clock="localtime"), vm="winfw"),
    Row("own/pv-xl-3vifs-nomac.cfg", "render", refused(NO_MAC)),
    Row("own/pv-xl-3vifs-nomac.cfg", "render", refused("vms.lb1.macs has 2 MACs for the cfg's 3 vifs"), vm="lb1"),

    # --- 8. drbd:RES offline: udev's name, by DRBD version -----------------------------------
    Row("own/pv-xm-drbd.cfg", "convert", converted({"xvda2": "sda", "xvda1": "sdb"})),
    Row("own/pv-xm-drbd.cfg", "render", rendered(
        [disk("/dev/drbd/by-res/web4-root/0", "sda"), disk("/dev/drbd/by-res/web4-swap/0", "sdb")],
        [("00:16:3e:10:20:16", "virtio")])),
    Row("own/pv-xm-drbd.cfg", "render", rendered(
        [disk("/dev/drbd/by-res/web4-root", "sda"), disk("/dev/drbd/by-res/web4-swap", "sdb")],
        [("00:16:3e:10:20:16", "virtio")]), drbd_version="8.3"),
    Row("own/pv-xm-drbd.cfg", "render", rendered(
        [disk("/dev/drbd/by-res/web4-root/0", "sda"), disk("/dev/drbd/by-res/web4-swap/0", "sdb")],
        [("00:16:3e:10:20:16", "virtio")]), drbd_version="9.2.8"),
    Row("own/hvm-xl-drbd-script.cfg", "convert", UNCHANGED),
    Row("own/hvm-xl-drbd-script.cfg", "render", rendered(
        [disk("/dev/drbd/by-res/win7-sys/0", "hda")], [("00:16:3e:10:20:17", "rtl8139")], clock="localtime")),
]


def run_task(row: Row) -> None:
    """The task as `fab` runs it, with the test inventory as the Fabric config's inventory."""
    c = Context(Config(overrides={"inventory": str(INVENTORY)}))
    if row.task == "convert":
        xenhost.convert_cfg(c, cfg=str(row.path))
    else:
        kvmhost.render_xml(c, cfg=str(row.path), vm=row.vm, drbd_version=row.drbd_version)


def described_xml(xml: str) -> tuple:
    """What `rendered` expects, read back from the document."""
    doc = etree.fromstring(xml.encode())
    disks = [(d.get("type"), d.xpath("string(source/@dev | source/@file)"), d.xpath("string(target/@dev)"),
              d.xpath("string(target/@bus)"), d.find("shareable") is not None) for d in doc.iterfind("devices/disk")]
    nics = [(n.xpath("string(mac/@address)"), n.xpath("string(model/@type)"))
            for n in doc.iterfind("devices/interface")]
    scsi = doc.xpath("devices/controller[@type='scsi']/@model")
    assert len(scsi) <= 1
    return ("rendered", disks, nics, scsi[0] if scsi else None, doc.xpath("string(clock/@offset)"))


def schema_dirs() -> list[Path]:
    host = default_schema_dir()
    dirs = ([CORPUS / "libvirt-schemas"] if HAVE_CORPUS else []) + ([host] if host else [])
    assert dirs, "no libvirt schema to validate against: neither the corpus's nor this machine's"
    return dirs


ROOT_UUID_NOTE = ("prepare-cfg writes root=UUID= of the root file system instead of a disk name (a pvops "
                  "kernel under Xen names every disk xvd*); give --root-uuid to see it")


def root_by_device(text: str) -> bool:
    """Whether a cfg's root= names a device (/dev/xvda2, as root= or in extra=) that prepare-cfg
    replaces by its file system's UUID: it does unless a kernel= boots without ramdisk=."""
    names_device = re.search(r"""(?m)^\s*root\s*=\s*["']/dev/|root=/dev/""", text)
    direct_without_initramfs = re.search(r"(?m)^\s*kernel\s*=", text) and not re.search(r"(?m)^\s*ramdisk\s*=", text)
    return bool(names_device) and not direct_without_initramfs


@pytest.mark.parametrize("row", TABLE, ids=str)
def test_every_cfg_converts_right_or_is_refused_in_one_line(row, capsys):
    if row.cfg.startswith("wild/"):
        need_corpus()
    kind = row.expect[0]
    if kind == "refused":
        with pytest.raises(InputError) as refusal:
            run_task(row)
        assert refusal.value.code == 2
        assert str(refusal.value) == f"{row.path}: {row.expect[1]}"
        assert capsys.readouterr().out == ""
        return
    run_task(row)
    out, err = capsys.readouterr()
    text = row.path.read_text()
    if kind == "unchanged":
        assert out == text
        assert err == f"note: {row.path}: {HVM_CFG_NOTE}\n"
    elif kind == "converted":
        before, after = parse_xen_cfg(text).disks, parse_xen_cfg(out).disks
        assert {b.vdev: a.vdev for b, a in zip(before, after, strict=False)} == row.expect[1]
        assert [a.path for a in after] == [b.path for b in before]
        assert err == (f"note: {row.path}: {ROOT_UUID_NOTE}\n" if root_by_device(text) else "")
    else:
        for schemas in schema_dirs():
            validate_domain_xml(out, schemas)
        assert described_xml(out) == row.expect


def test_the_table_covers_every_file_of_the_wild_corpus_and_of_our_own():
    """A cfg left out of the table would pass silently; every one is there, both tasks for most."""
    named = {row.path for row in TABLE}
    own = set(OWN.glob("*.cfg"))
    assert len(own) >= 30 and {path for path in named if path.parent == OWN} == own
    need_corpus()
    assert {path for path in named if path.parent == WILD} == set(WILD.glob("*.cfg"))


# --- through the real `fab` CLI: exit 2, one line on stderr, no traceback ---------------------

def fab(*args: str):
    return subprocess.run([str(REPO / ".venv" / "bin" / "fab"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "FABRIC_INVENTORY": str(INVENTORY)})


def table_row(cfg: str, task: str) -> Row:
    return next(row for row in TABLE if (row.cfg, row.task, row.vm) == (cfg, task, None))


@pytest.mark.parametrize("cfg, task", [
    ("wild/30-xentroops-domu-qemu-arm.cfg", "convert"),
    ("wild/32-xentroops-domu-vdevices-fragment.cfg", "convert"),
    ("wild/06-snow-fileserver-nfsroot-nodisk.cfg", "render"),
    ("wild/22-rumprun-domain-config.cfg", "render"),
    ("own/pv-xm-2vifs-nomac.cfg", "render"),
    ("own/hvm-xl-nic-unknown.cfg", "render"),
    ("own/hvm-xl-pci.cfg", "render"),
])
def test_fab_refuses_in_one_line_with_exit_2(cfg, task):
    if cfg.startswith("wild/"):
        need_corpus()
    row = table_row(cfg, task)
    done = fab("xenhost.convert-cfg" if task == "convert" else "kvmhost.render-xml", "--cfg", str(row.path))
    assert (done.returncode, done.stdout) == (2, "")
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"error: {row.path}: {row.expect[1]}"]


def test_fab_prints_an_hvm_cfg_as_it_is_and_why_on_stderr():
    path = OWN / "hvm-xm-windows.cfg"
    done = fab("xenhost.convert-cfg", "--cfg", str(path), "--console")
    assert (done.returncode, done.stdout) == (0, path.read_text())
    assert done.stderr.splitlines() == [f"note: {path}: {HVM_CFG_NOTE}"]


def test_fab_refuses_a_drbd_version_that_is_not_one():
    done = fab("kvmhost.render-xml", "--cfg", str(OWN / "pv-xm-drbd.cfg"), "--drbd-version", "eight\n")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == ["error: --drbd-version must be a version such as 8.3, 8.4 or 9, got 'eight\\n'"]
