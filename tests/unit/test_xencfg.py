"""Xen cfg parsing and the dual-boot rewrite, against real configs.

Oracles: libvirt's own cfg -> XML conversions (corpus/libvirt-x[ml]config), the real
xen-tools template renderer (xt-create-xen-config), and hand-written expectations.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from tasks.diskmap import plan_disk_map
from tasks.errors import InputError, reading
from tasks.formats.xencfg import (
    CfgSyntaxError,
    XenDisk,
    check_movable,
    parse_xen_cfg,
    rewrite_xen_cfg,
)
from tests.conftest import CORPUS, corpus_params

LIBVIRT_CFGS = sorted(
    f"{p.parent.name}/{p.name}" for d in ("libvirt-xmconfig", "libvirt-xlconfig") for p in (CORPUS / d).glob("*.cfg")
)

# cfg files with no libvirt oracle; each still has to parse.
NO_ORACLE = {
    # Orphan upstream: libvirt ships no .xml for it and no libvirt test reads it (MANIFEST.tsv: unused).
    "libvirt-xmconfig/test-paravirt-net-modelstr.cfg": "no .xml beside it (unused orphan upstream)",
}

# xl cfgs that use nothing xend lacked (no disks, no xl-only key), so the best guess is "xm".
# ---------------------------------------------------------------------------
# 1. libvirt as the oracle


def _libvirt_source(source) -> str:
    """The cfg's target string for a libvirt <source>: a path, or libvirt's own rbd: string."""
    if source is None:
        return ""  # an empty CD-ROM drive
    if source.get("protocol") == "rbd":
        # libvirt's xenFormatXLDiskSrcNet: rbd:NAME, auth_supported=none without <auth>, then
        # the monitors joined by \; with host and port separated by \:.
        assert source.find("auth") is None
        hosts = "\\;".join(f"{h.get('name')}\\:{h.get('port')}" for h in source.findall("host"))
        return f"rbd:{source.get('name')}:auth_supported=none:mon_host={hosts}"
    return source.get("dev") or source.get("file")


def _libvirt_bridge(interface) -> str | None:
    """bridge= as written in the cfg: libvirt splits BR.TAG and BR:TAG:TAG into <source> and <vlan>."""
    source = interface.find("source")
    if source is None:
        return None
    vlan = interface.find("vlan")
    tags = [] if vlan is None else [t.get("id") for t in vlan.findall("tag")]
    if vlan is not None and vlan.get("trunk") == "yes":
        return source.get("bridge") + "".join(f":{t}" for t in tags)
    return source.get("bridge") + "".join(f".{t}" for t in tags)


def _mib(dom, tag: str) -> int:
    element = dom.find(tag)
    assert element.get("unit") == "KiB"
    return int(element.text) // 1024


@pytest.mark.parametrize("rel", corpus_params(LIBVIRT_CFGS))
def test_libvirt_corpus_agrees_with_libvirt(corpus, rel):
    cfg_path = corpus / rel
    cfg = parse_xen_cfg(cfg_path.read_text())
    if rel in NO_ORACLE:
        pytest.skip(NO_ORACLE[rel])
    dom = etree.parse(str(cfg_path.with_suffix(".xml"))).getroot()

    assert cfg.name == dom.findtext("name")
    assert cfg.uuid == dom.findtext("uuid")
    # libvirt: <currentMemory> is memory=, <memory> is maxmem= (memory= when there is none).
    assert cfg.memory == _mib(dom, "currentMemory")
    assert (cfg.maxmem or cfg.memory) == _mib(dom, "memory")
    vcpu = dom.find("vcpu")
    assert cfg.vcpus == int(vcpu.get("current", vcpu.text))

    assert cfg.bootloader == dom.findtext("bootloader")
    assert cfg.cmdline == dom.findtext("os/cmdline")
    if dom.find("os/kernel") is not None:  # for HVM, kernel= is the hvmloader: libvirt's <loader>
        assert cfg.kernel == dom.findtext("os/kernel")

    assert [(d.path, d.vdev, d.devtype or "disk", d.mode) for d in cfg.disks] == [
        (_libvirt_source(d.find("source")), d.find("target").get("dev"), d.get("device"),
         "r" if d.find("readonly") is not None else "w")
        for d in dom.findall("devices/disk")
    ]
    for disk, element in zip(cfg.disks, dom.findall("devices/disk"), strict=False):
        if disk.format is not None:
            assert disk.format == element.find("driver").get("type")

    assert [(v.mac, v.bridge) for v in cfg.vifs] == [
        (i.find("mac").get("address"), _libvirt_bridge(i)) for i in dom.findall("devices/interface")
    ]


@pytest.mark.parametrize("rel", corpus_params(LIBVIRT_CFGS))
def test_libvirt_corpus_identity_rewrite_is_byte_identical(corpus, rel):
    text = (corpus / rel).read_text()
    cfg = parse_xen_cfg(text)
    assert rewrite_xen_cfg(text, {d.vdev: d.vdev for d in cfg.disks}) == text


def test_corpus_escaped_paths(corpus):
    """A triple-quoted spec holding both quote characters, and & in paths (test-escape-paths)."""
    text = (corpus / "libvirt-xmconfig/test-escape-paths.cfg").read_text()
    cfg = parse_xen_cfg(text)
    assert cfg.name == "XenGuest2&test"
    assert [d.path for d in cfg.disks] == ["/dev/HostVG/XenGuest2", "/dev/HostVG/XenGuest'\"", "/root/boot.iso&test"]
    out = rewrite_xen_cfg(text, {"hda": "sda", "hdb": "sdb"})
    assert out == text.replace(
        '"phy:/dev/HostVG/XenGuest2,hda,w", """phy:/dev/HostVG/XenGuest\'",hdb,w"""',
        '"phy:/dev/HostVG/XenGuest2,sda,w", """phy:/dev/HostVG/XenGuest\'",sdb,w"""',
    )
    assert out != text


EXAMPLES = sorted(p.name for p in (CORPUS / "xen-examples").glob("x*"))


def test_corpus_is_complete(corpus):
    """The lists above are read at collection; an empty corpus must fail here, not skip quietly."""
    assert len(LIBVIRT_CFGS) == 38 + 48
    assert len(EXAMPLES) == 8


@pytest.mark.parametrize("name", corpus_params(EXAMPLES))
def test_xen_project_examples_parse(corpus, name):
    text = (corpus / "xen-examples" / name).read_text()
    cfg = parse_xen_cfg(text)
    assert cfg.disks and cfg.memory
    assert rewrite_xen_cfg(text, {d.vdev: d.vdev for d in cfg.disks}) == text


def test_xen_example_disk_forms(corpus):
    cfg = parse_xen_cfg((corpus / "xen-examples/xmexample.hvm").read_text())
    assert cfg.disks == (
        XenDisk("file:/var/images/min-el3-i386.img,hda,w", "file", "/var/images/min-el3-i386.img", "hda", "w",
                None, None),
        XenDisk(",hdc:cdrom,r", "", "", "hdc", "r", None, "cdrom"),
    )
    assert cfg.vifs[0].bridge == "xenbr0"
    nbd = parse_xen_cfg((corpus / "xen-examples/xmexample.nbd").read_text())
    assert (nbd.disks[0].backend, nbd.disks[0].path) == ("nbd", "134.100.233.115 20004")
    assert nbd.cmdline == "root=/dev/hda1 ro 3"


# ---------------------------------------------------------------------------
# 2. xen-tools: configs written by the real xt-create-xen-config

XT = shutil.which("xt-create-xen-config")
TEMPLATES = {
    "package": None,                             # the installed xen-tools' /etc/xen-tools/xm.tmpl
    "corpus": CORPUS / "xen-tools" / "xm.tmpl",  # upstream HEAD: also writes type = 'pv'
}


def _partition(name: str, mount: str, image: str, kind: str = "phy:") -> str:
    """PARTITIONn as xen-create-image exports it: name:size:type:mountpoint:options:imagetype:image."""
    fs = "swap" if not mount else "ext4"
    return f"{name}:1G:{fs}:{mount}:{'errors=remount-ro' if mount else ''}:{kind}:{image}"


def _partitions(*parts: str) -> dict[str, str]:
    env = {f"PARTITION{i}": part for i, part in enumerate(parts, 1)}
    env["NUMPARTITIONS"] = str(len(parts))
    return env


KERNEL = {"kernel": "/boot/vmlinuz-2.6.18-6-xen-686", "initrd": "/boot/initrd.img-2.6.18-6-xen-686"}
NET = {"ips": "192.168.1.10", "mac": "00:16:3E:00:00:01", "bridge": "xenbr0"}

# id -> (environment, [(backend, path, vdev)] in cfg order, root vdev, renames computed by hand)
XEN_TOOLS_CASES = {
    "lvm-xvda-kernel": (
        {"lvm": "vg0", **KERNEL, **NET, **_partitions(
            _partition("swap", "", "/dev/vg0/web1-swap"), _partition("disk", "/", "/dev/vg0/web1-disk"))},
        [("phy", "/dev/vg0/web1-disk", "xvda2"), ("phy", "/dev/vg0/web1-swap", "xvda1")],
        "xvda2", {"xvda2": "sda", "xvda1": "sdb"},
    ),
    "dir-ide-kernel": (
        {"dir": "/srv/xen", "ide": "1", **KERNEL, **NET, **_partitions(
            _partition("swap", "", "/srv/xen/domains/web1/swap.img", "file:"),
            _partition("disk", "/", "/srv/xen/domains/web1/disk.img", "file:"))},
        [("file", "/srv/xen/domains/web1/disk.img", "hda2"), ("file", "/srv/xen/domains/web1/swap.img", "hda1")],
        "hda2", {"hda2": "sda", "hda1": "sdb"},
    ),
    "lvm-scsi-pygrub": (
        {"lvm": "vg0", "scsi": "1", "pygrub": "1", **NET, **_partitions(
            _partition("swap", "", "/dev/vg0/web1-swap"), _partition("disk", "/", "/dev/vg0/web1-disk"))},
        [("phy", "/dev/vg0/web1-disk", "sda2"), ("phy", "/dev/vg0/web1-swap", "sda1")],
        "sda2", {"sda2": "sda", "sda1": "sdb"},
    ),
    # --partitions: xen-create-image sorts by mount point length (swap, /, /var, /home); the
    # template writes root first, then the rest from the last to the first.
    "lvm-partitions-file": (
        {"lvm": "vg0", **KERNEL, **NET, **_partitions(
            _partition("swap", "", "/dev/vg0/web1-swap"), _partition("root", "/", "/dev/vg0/web1-root"),
            _partition("var", "/var", "/dev/vg0/web1-var"), _partition("home", "/home", "/dev/vg0/web1-home"))},
        [("phy", "/dev/vg0/web1-root", "xvda2"), ("phy", "/dev/vg0/web1-home", "xvda4"),
         ("phy", "/dev/vg0/web1-var", "xvda3"), ("phy", "/dev/vg0/web1-swap", "xvda1")],
        "xvda2", {"xvda2": "sda", "xvda4": "sdb", "xvda3": "sdc", "xvda1": "sdd"},
    ),
    # --image-dev/--swap-dev: whole host partitions; /dev/sdb1 must survive renaming xvda1 -> sdb.
    "image-dev-partitions": (
        {"image_dev": "/dev/sdb1", "swap_dev": "/dev/sdb2", **KERNEL, **NET},
        [("phy", "/dev/sdb1", "xvda2"), ("phy", "/dev/sdb2", "xvda1")],
        "xvda2", {"xvda2": "sda", "xvda1": "sdb"},
    ),
    "noswap-dhcp-pygrub-maxmem": (
        {"lvm": "vg0", "pygrub": "1", "dhcp": "1", "mac": "00:16:3E:00:00:02", "bridge": "xenbr1",
         "maxmem": "1Gb", **_partitions(_partition("disk", "/", "/dev/vg0/web1-disk"))},
        [("phy", "/dev/vg0/web1-disk", "xvda1")],
        "xvda1", {"xvda1": "sda"},
    ),
}


def _xen_tools_cfg(tmp_path: Path, template: Path | None, env: dict[str, str]) -> str:
    if XT is None:
        pytest.skip("xt-create-xen-config not installed (Debian package xen-tools)")
    base = {"PATH": os.environ["PATH"], "hostname": "web1", "memory": "512Mb", "vcpus": "2", "type": "pv"}
    args = [XT, f"--output={tmp_path}"] + ([f"--template={template}"] if template else [])
    subprocess.run(args, env={**base, **env}, check=True, capture_output=True, timeout=30)
    return (tmp_path / "web1.cfg").read_text()


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("case", sorted(XEN_TOOLS_CASES))
def test_xen_tools_configs(tmp_path, corpus, template, case):
    env, disks, root, renames = XEN_TOOLS_CASES[case]
    text = _xen_tools_cfg(tmp_path, TEMPLATES[template], env)

    cfg = parse_xen_cfg(text)
    assert (cfg.name, cfg.memory, cfg.vcpus) == ("web1", 512, 2)
    assert cfg.maxmem == (1024 if "maxmem" in env else None)
    assert [(d.backend, d.path, d.vdev, d.mode) for d in cfg.disks] == [(*d, "w") for d in disks]
    assert cfg.root == f"/dev/{root} ro"
    if "pygrub" in env:
        assert (cfg.bootloader, cfg.kernel, cfg.extra) == ("pygrub", None, None)
    else:
        assert (cfg.kernel, cfg.extra) == (KERNEL["kernel"], "elevator=noop")
    vif = cfg.vifs[0]
    assert (vif.mac, vif.bridge) == (env["mac"], env["bridge"])

    # What the rewrite must do, line by line, in the template's own layout.
    expected = text
    for old, new in renames.items():
        expected = expected.replace(f",{old},w',\n", f",{new},w',\n")
    expected = expected.replace(f"root        = '/dev/{root} ro'\n", f"root        = '/dev/{renames[root]} ro'\n")
    if "pygrub" in env:  # no extra= yet: one is created under root=, lined up with it
        expected = expected.replace(
            f"root        = '/dev/{renames[root]} ro'\n",
            f"root        = '/dev/{renames[root]} ro'\nextra       = 'console=hvc0 xencons=tty'\n")
    else:
        expected = expected.replace("extra       = 'elevator=noop'\n",
                                    "extra       = 'elevator=noop console=hvc0 xencons=tty'\n")
    out = rewrite_xen_cfg(text, renames, add_console=True)
    assert out == expected
    assert out.count("\n") == text.count("\n") + ("pygrub" in env)

    again = parse_xen_cfg(out)
    assert [d.vdev for d in again.disks] == [renames[d[2]] for d in disks]
    assert [d.path for d in again.disks] == [d[1] for d in disks]
    assert again.root == f"/dev/{renames[root]} ro"
    assert rewrite_xen_cfg(out, renames, add_console=True) == out


# ---------------------------------------------------------------------------
# 3. Disk specs and the rewrite, by hand

DISK_SPECS = {
    "phy:/dev/vg/x,xvda2,w": ("phy", "/dev/vg/x", "xvda2", "w", None, None),
    "file:/srv/x.img,hda,w": ("file", "/srv/x.img", "hda", "w", None, None),
    "tap:aio:/srv/x.img,xvda,w": ("tap:aio", "/srv/x.img", "xvda", "w", None, None),
    "tap:qcow2:/srv/x.qcow2,xvda,r": ("tap:qcow2", "/srv/x.qcow2", "xvda", "r", "qcow2", None),
    "tap2:tapdisk:aio:/srv/x.img,xvda1,w": ("tap2:tapdisk:aio", "/srv/x.img", "xvda1", "w", None, None),
    "drbd:web1-disk,xvda2,w": ("drbd", "web1-disk", "xvda2", "w", None, None),
    "drbd:r0,xvda1,w!": ("drbd", "r0", "xvda1", "w", None, None, True),
    "phy:/dev/vg/gfs,sdb1,rw!": ("phy", "/dev/vg/gfs", "sdb1", "w", None, None, True),
    "phy:/dev/cdrom,hdc:cdrom,r": ("phy", "/dev/cdrom", "hdc", "r", None, "cdrom"),
    ",hdc:cdrom,r": ("", "", "hdc", "r", None, "cdrom"),
    "phy:/dev/vg/x,ioemu:hda,w": ("phy", "/dev/vg/x", "hda", "w", None, None),
    "phy:/dev/vg/x,xvdb:disk,ro": ("phy", "/dev/vg/x", "xvdb", "r", None, None),
    "format=raw, vdev=hda, access=rw, target=/srv/a,b=c.img": ("", "/srv/a,b=c.img", "hda", "w", "raw", None),
    "vdev=xvda,backendtype=phy,target=/dev/vg/x": ("phy", "/dev/vg/x", "xvda", "w", None, None),
    "format=raw,vdev=hdd,access=ro,devtype=cdrom": ("", "", "hdd", "r", "raw", "cdrom"),
    "vdev=hdc,cdrom,target=/srv/boot.iso": ("", "/srv/boot.iso", "hdc", "r", None, "cdrom"),
    "/dev/vg/x,raw,xvda,rw": ("", "/dev/vg/x", "xvda", "w", "raw", None),
    "/srv/x.qcow2,qcow2,xvdb,ro,backendtype=qdisk": ("qdisk", "/srv/x.qcow2", "xvdb", "r", "qcow2", None),
    "/dev/vg/x,,hda,,backendtype=phy": ("phy", "/dev/vg/x", "hda", "w", None, None),
    "/srv/boot.iso,,hdc,,devtype=cdrom": ("", "/srv/boot.iso", "hdc", "r", None, "cdrom"),
    "qcow2:/srv/x.qcow2,xvda,w": ("qcow2", "/srv/x.qcow2", "xvda", "w", "qcow2", None),
    "vdev=xvda,access=rw,script=block-drbd,target=web-root": ("drbd", "web-root", "xvda", "w", None, None),
    "script=/etc/xen/scripts/block-drbd,vdev=hda,target=r0": ("drbd", "r0", "hda", "w", None, None),
    "script=block-iscsi,vdev=xvda,target=/dev/sdx": ("", "/dev/sdx", "xvda", "w", None, None),
}


def _one_disk(spec: str) -> XenDisk:
    (disk,) = parse_xen_cfg(f"disk = [ {spec!r} ]\n").disks
    return disk


@pytest.mark.parametrize("spec", sorted(DISK_SPECS))
def test_disk_specs(spec):
    assert _one_disk(spec) == XenDisk(spec, *DISK_SPECS[spec])


@pytest.mark.parametrize("spec, reason", [
    ("phy:/dev/vg/x", "no vdev"),
    ("foo:/dev/vg/x,xvda,w", "unknown disk prefix 'foo:'"),
    ("phy:/dev/vg/x,xvda,w,extra", "too many positional parameters"),
    ("phy:/dev/vg/x,xvda,q", "unknown access mode 'q'"),
    ("/dev/vg/x,xvda,w", "unknown format 'xvda'"),
    ("vdev=xvda,bogus=1,target=/x", "unknown parameter 'bogus=1'"),
    ("vdev=xvda,vdev=xvdb,target=/x", "vdev given twice"),
    (",xvda,w", "no target"),
    ("phy:/dev/vg/x,hdc:floppy,r", "unknown device type 'floppy'"),
])
def test_disk_spec_errors(spec, reason):
    with pytest.raises(ValueError, match=reason):
        _one_disk(spec)


XM_CFG = """\
#  xen-tools style, edited by hand over the years
kernel      = '/boot/vmlinuz-2.6.26-2-xen-686'
ramdisk     = '/boot/initrd.img-2.6.26-2-xen-686'
memory      = '256'   # MiB
vcpus       = '1'
root        = '/dev/xvda2 ro'
extra       = "root=/dev/xvda2 clocksource=jiffies"
disk        = [
                  'drbd:logger-system,xvda2,w',
                  "phy:/dev/vg0/logger-swap,xvda1,w",   # swap
                  'drbd:logger-data,xvda3,w',
              ]
name        = 'logger'
vif         = [ 'ip=10.0.0.5,mac=00:16:3E:12:34:56,bridge=xenbr0' ]
on_reboot   = 'restart'
"""
XM_RENAMES = {"xvda2": "sda", "xvda1": "sdb", "xvda3": "sdc"}


def test_xm_rewrite_exact():
    out = rewrite_xen_cfg(XM_CFG, XM_RENAMES)
    assert out == XM_CFG.replace(
        "root        = '/dev/xvda2 ro'", "root        = '/dev/sda ro'").replace(
        'extra       = "root=/dev/xvda2 ', 'extra       = "root=/dev/sda ').replace(
        "'drbd:logger-system,xvda2,w'", "'drbd:logger-system,sda,w'").replace(
        '"phy:/dev/vg0/logger-swap,xvda1,w"', '"phy:/dev/vg0/logger-swap,sdb,w"').replace(
        "'drbd:logger-data,xvda3,w'", "'drbd:logger-data,sdc,w'")
    cfg = parse_xen_cfg(out)
    assert [(d.backend, d.path, d.vdev) for d in cfg.disks] == [
        ("drbd", "logger-system", "sda"), ("phy", "/dev/vg0/logger-swap", "sdb"), ("drbd", "logger-data", "sdc")]
    assert (cfg.memory, cfg.vcpus, cfg.cmdline) == (256, 1, "root=/dev/sda ro root=/dev/sda clocksource=jiffies")


def test_xm_rewrite_console_and_idempotence():
    once = rewrite_xen_cfg(XM_CFG, XM_RENAMES, add_console=True)
    assert 'extra       = "root=/dev/sda clocksource=jiffies console=hvc0 xencons=tty"\n' in once
    assert rewrite_xen_cfg(once, XM_RENAMES, add_console=True) == once
    assert rewrite_xen_cfg(once, {"sda": "sda", "sdb": "sdb"}, add_console=True) == once


def test_untouched_lines_are_kept_byte_for_byte():
    out = rewrite_xen_cfg(XM_CFG, XM_RENAMES, add_console=True)
    changed = [i for i, (a, b) in enumerate(zip(XM_CFG.splitlines(True), out.splitlines(True), strict=False)) if a != b]
    assert changed == [5, 6, 8, 9, 10]
    assert len(out.splitlines()) == len(XM_CFG.splitlines())


def test_renames_for_absent_vdevs_are_ignored():
    assert rewrite_xen_cfg(XM_CFG, {"xvdz": "sdq", "hda": "sdr"}) == XM_CFG


def test_root_rename_is_whole_token():
    text = "root = '/dev/xvda20 ro'\nextra = 'root=/dev/xvda20 noroot=/dev/xvda2'\n" \
           "disk = ['phy:/dev/vg/a,xvda2,w', 'phy:/dev/vg/b,xvda20,w']\n"
    out = rewrite_xen_cfg(text, {"xvda2": "sda"})
    assert out == text.replace(",xvda2,w'", ",sda,w'")


def test_root_partition_follows_its_whole_disk():
    text = "root = '/dev/xvda1 ro'\ndisk = ['phy:/dev/vg/a,xvda,w']\n"
    assert rewrite_xen_cfg(text, {"xvda": "sda"}) == "root = '/dev/sda1 ro'\ndisk = ['phy:/dev/vg/a,sda,w']\n"


def test_an_exported_partition_keeps_its_own_name():
    text = "root = '/dev/xvda1 ro'\ndisk = ['phy:/dev/vg/a,xvda,w', 'phy:/dev/vg/b,xvda1,w']\n"
    assert rewrite_xen_cfg(text, {"xvda": "sdb"}) == text.replace(",xvda,", ",sdb,")


ROOT_FS = "5e1f6a2b-8c3d-4e5f-9a0b-1c2d3e4f5a6b"


def test_root_by_uuid_replaces_the_device_in_root_and_in_extra_and_keeps_every_other_byte():
    text = ("root = \"/dev/xvda2 ro\"  # the system\nextra = 'root=/dev/xvda2 console=hvc0 noroot=/dev/xvda2'\n"
            "disk = ['phy:/dev/vg/a,xvda2,w', 'phy:/dev/vg/b,xvda1,w']\n")
    out = rewrite_xen_cfg(text, {"xvda2": "sda", "xvda1": "sdb"}, root_uuid=ROOT_FS)
    assert out == (f"root = \"UUID={ROOT_FS} ro\"  # the system\n"
                   f"extra = 'root=UUID={ROOT_FS} console=hvc0 noroot=/dev/xvda2'\n"
                   "disk = ['phy:/dev/vg/a,sda,w', 'phy:/dev/vg/b,sdb,w']\n")
    assert rewrite_xen_cfg(out, {"sda": "sda", "sdb": "sdb"}, root_uuid=ROOT_FS) == out


def test_root_by_uuid_in_xls_cmdline():
    text = "cmdline = 'root=/dev/xvda1 ro'\ndisk = ['/dev/vg/a,raw,xvda,rw']\n"
    assert rewrite_xen_cfg(text, {"xvda": "sda"}, root_uuid=ROOT_FS) == \
        f"cmdline = 'root=UUID={ROOT_FS} ro'\ndisk = ['/dev/vg/a,raw,sda,rw']\n"


@pytest.mark.parametrize("uuid", ["", "5e1f' ro", "../x", "abc def", "UUID=5e1f"])
def test_a_root_uuid_that_is_not_one_is_refused(uuid):
    with pytest.raises(ValueError, match="is not a UUID"):
        rewrite_xen_cfg("root = '/dev/xvda2'\ndisk = ['phy:/a,xvda2,w']\n", {}, root_uuid=uuid)


def test_renames_apply_at_once():
    """A permutation (root disk first) swaps names; it is not applied one rename after the other."""
    text = "root = '/dev/sdb'\ndisk = ['phy:/dev/vg/data,sda,w', 'phy:/dev/vg/root,sdb,w']\n"
    out = rewrite_xen_cfg(text, {"sdb": "sda", "sda": "sdb"})
    assert out == "root = '/dev/sda'\ndisk = ['phy:/dev/vg/data,sdb,w', 'phy:/dev/vg/root,sda,w']\n"


def test_rename_clash_is_refused():
    with pytest.raises(ValueError, match="two disks the name sda"):
        rewrite_xen_cfg("disk = ['phy:/a,xvda2,w', 'phy:/b,sda,w']\n", {"xvda2": "sda"})


def test_xl_rewrite_keeps_the_spec_form():
    text = (
        'name = "web1"; memory = 1024; vcpus = 2\n'
        'type = "pv"\n'
        'kernel = "/boot/vmlinuz"\n'
        'cmdline = "root=/dev/xvda1 ro quiet"\n'
        'extra = "ignored by xl"\n'
        'disk = [ "format=raw, vdev=xvda1, access=rw, target=/srv/xvda1,copy.img",\n'
        '         "/dev/vg/web1-swap,raw,xvda2,rw",\n'
        '         "/srv/boot.iso,raw,hdc,ro,devtype=cdrom" ]\n'
    )
    out = rewrite_xen_cfg(text, {"xvda1": "sda", "xvda2": "sdb"}, add_console=True)
    assert out == (
        'name = "web1"; memory = 1024; vcpus = 2\n'
        'type = "pv"\n'
        'kernel = "/boot/vmlinuz"\n'
        'cmdline = "root=/dev/sda ro quiet console=hvc0 xencons=tty"\n'
        'extra = "ignored by xl"\n'
        'disk = [ "format=raw, vdev=sda, access=rw, target=/srv/xvda1,copy.img",\n'
        '         "/dev/vg/web1-swap,raw,sdb,rw",\n'
        '         "/srv/boot.iso,raw,hdc,ro,devtype=cdrom" ]\n'
    )
    cfg = parse_xen_cfg(out)
    assert cfg.builder == "pv" and cfg.memory == 1024
    assert [d.path for d in cfg.disks] == ["/srv/xvda1,copy.img", "/dev/vg/web1-swap", "/srv/boot.iso"]
    assert rewrite_xen_cfg(out, {"xvda1": "sda", "xvda2": "sdb"}, add_console=True) == out


def test_cdrom_suffix_is_kept():
    text = "disk = ['phy:/dev/vg/a,xvda,w', 'phy:/dev/cdrom,hdc:cdrom,r', ',hdd:cdrom,r']\n"
    out = rewrite_xen_cfg(text, {"xvda": "sda", "hdc": "sdb", "hdd": "sdc"})
    assert out == "disk = ['phy:/dev/vg/a,sda,w', 'phy:/dev/cdrom,sdb:cdrom,r', ',sdc:cdrom,r']\n"


def test_escapes_around_the_vdev_survive():
    text = "disk = [ 'phy:/dev/vg/it\\'s\\x20here,xvd\\x61,w' ]\n"
    cfg = parse_xen_cfg(text)
    assert (cfg.disks[0].path, cfg.disks[0].vdev) == ("/dev/vg/it's here", "xvda")
    assert rewrite_xen_cfg(text, {"xvda": "sda"}) == "disk = [ 'phy:/dev/vg/it\\'s\\x20here,sda,w' ]\n"


def test_crlf_file_keeps_its_line_ends():
    text = "root = '/dev/xvda2 ro'\r\ndisk = [\r\n  'phy:/dev/vg/a,xvda2,w',\r\n]\r\nname = 'a'\r\n"
    out = rewrite_xen_cfg(text, {"xvda2": "sda"}, add_console=True)
    assert out == ("root = '/dev/sda ro'\r\nextra = 'console=hvc0 xencons=tty'\r\ndisk = [\r\n"
                   "  'phy:/dev/vg/a,sda,w',\r\n]\r\nname = 'a'\r\n")


@pytest.mark.parametrize("text, expected", [
    # extra exists: only the missing arguments are added
    ("extra = 'console=hvc0'\n", "extra = 'console=hvc0 xencons=tty'\n"),
    ("extra = 'xencons=tty console=hvc0'\n", "extra = 'xencons=tty console=hvc0'\n"),
    ("extra = ''\n", "extra = 'console=hvc0 xencons=tty'\n"),
    ('extra = "4 "\n', 'extra = "4 console=hvc0 xencons=tty"\n'),
    # no extra: created under root= (same quotes, = lined up), or at the end
    ('root   = "/dev/sda1"  # root\nname = "a"\n',
     'root   = "/dev/sda1"  # root\nextra  = "console=hvc0 xencons=tty"\nname = "a"\n'),
    ("root='/dev/sda1'", "root='/dev/sda1'\nextra='console=hvc0 xencons=tty'\n"),
    ('name = "a"\n', 'name = "a"\nextra = "console=hvc0 xencons=tty"\n'),
    ("memory = 128", "memory = 128\nextra = 'console=hvc0 xencons=tty'\n"),
    # xl: cmdline= is what the kernel gets
    ('cmdline = "quiet"\nextra = "x"\n', 'cmdline = "quiet console=hvc0 xencons=tty"\nextra = "x"\n'),
])
def test_add_console(text, expected):
    out = rewrite_xen_cfg(text, {}, add_console=True)
    assert out == expected
    assert rewrite_xen_cfg(out, {}, add_console=True) == out


def test_numbers_where_strings_are_expected():
    """xl keeps atoms as text (name = 123 is a name); a number has nothing to rename."""
    text = "name = 123\nroot = 5\ndisk = ['phy:/a,xvda,w']\n"
    assert (parse_xen_cfg(text).name, parse_xen_cfg(text).root) == ("123", "5")
    assert rewrite_xen_cfg(text, {"xvda": "sda"}) == text.replace(",xvda,", ",sda,")
    with pytest.raises(CfgSyntaxError, match="^line 1: extra must be a string to take console=hvc0 xencons=tty$"):
        rewrite_xen_cfg("extra = 4\n", {}, add_console=True)


def test_plus_equals_and_overrides():
    text = "disk = ['phy:/a,xvda1,w']\nextra = 'quiet'\nextra += ' splash'\nmemory = 128\nmemory = 256\n"
    cfg = parse_xen_cfg(text)
    assert (cfg.extra, cfg.memory, len(cfg.disks)) == ("quiet splash", 256, 1)
    out = rewrite_xen_cfg(text, {}, add_console=True)
    assert out == text.replace("' splash'", "' splash console=hvc0 xencons=tty'")


def test_values_hold_every_key():
    cfg = parse_xen_cfg("a = 1\nb = 'x'\nc = [ 1, 'y', [2] ]\nd = -3\ne = 0x10\nf = True\ng = 1.5\n")
    assert cfg.values == {"a": 1, "b": "x", "c": [1, "y", [2]], "d": -3, "e": 16, "f": True, "g": 1.5}


@pytest.mark.parametrize("text, line, message", [
    ("name = 'web1\nmemory = 256\n", 1, "unterminated string"),
    ("name = 'web1'\nmemory 256\n", 2, "expected '=' after 'memory'"),
    ("vcpus = 1 2\n", 1, "expected end of line after the value of 'vcpus'"),
    ("name = 'a'\ndisk = [ 'phy:/a,xvda,w',\n         'phy:/b,xvdb,w'\n", 2, "'[' is never closed"),
    ("disk = [ 'phy:/a,xvda,w'\n         'phy:/b,xvdb,w' ]\n", 2, "expected ',' or ']' in a list"),
    ("disk = [\n  'phy:/a,xvda,w',\n  'foo:/b,xvdb,w',\n]\n", 3, "disk 'foo:/b,xvdb,w': unknown disk prefix 'foo:'"),
    ("memory = '256M'\n", 1, "memory must be a whole number, not '256M'"),
    ("disk = 'phy:/a,xvda,w'\n", 1, "disk must be a list of strings"),
    ("import os\n", 1, "expected '=' after 'import'"),
    ("name = 'a'\nif x:\n", 2, "unexpected character ':'"),
    ("name = 'a' 'b'\n", 1, "expected end of line"),
    ("x = '\\xZZ'\n", 1, "invalid \\x escape"),
    ("extra = 'a'\nextra += ['b']\n", 2, "extra += only adds"),
    ("root = 5\nx = (1)\n", 2, "unexpected character '('"),
    ("root = [5]\n", 1, "root must be a string"),
])
def test_syntax_errors_name_their_line(text, line, message):
    for call in (lambda: parse_xen_cfg(text), lambda: rewrite_xen_cfg(text, {}, True)):
        with pytest.raises(CfgSyntaxError) as info:
            call()
        assert info.value.line == line
        assert str(info.value).startswith(f"line {line}: {message}")
        assert "\n" not in str(info.value)


def test_the_task_boundary_names_the_file_and_the_line():
    """errors.reading: the one place a format error becomes the operator's line (exit 2)."""
    with pytest.raises(InputError) as info, reading("xen1:/etc/xen/auto/web1.cfg"):
        parse_xen_cfg("name = 'web1'\nmemory 256\n")
    assert (str(info.value), info.value.code) == (
        "xen1:/etc/xen/auto/web1.cfg:2: expected '=' after 'memory', found '256'", 2)
    with pytest.raises(InputError, match="^web1.cfg: the renames would give two disks the name sda$"), \
            reading("web1.cfg"):
        rewrite_xen_cfg("disk = ['phy:/a,xvda2,w', 'phy:/b,sda,w']\n", {"xvda2": "sda"})


# ---------------------------------------------------------------------------
# 4. Properties

VDEV = st.from_regex(r"(xvd|hd|sd)[a-d][1-9]?", fullmatch=True)
PATH = st.from_regex(r"/dev/[a-z0-9]{1,6}/[a-z0-9-]{1,8}", fullmatch=True)
SPACE = st.sampled_from(["", " ", "  ", "\t"])
QUOTE = st.sampled_from(["'", '"'])
FILLER = st.sampled_from([
    "# a comment, with 'quotes' and disk = [ ]", "", "name = 'web1'", "memory = '256'", "vcpus=2",
    'on_reboot   = "restart"', "vif = [ 'mac=00:16:3e:00:00:01,bridge=xenbr0' ]  # net",
    "dhcp = 'dhcp'; on_crash = 'restart'", "builder='linux'",
])


@st.composite
def disk_spec(draw, vdev):
    path = draw(PATH)
    form = draw(st.sampled_from(["xm", "drbd", "tap", "kv", "positional", "cdrom"]))
    if form == "xm":
        return f"{draw(st.sampled_from(['phy', 'file']))}:{path},{vdev},{draw(st.sampled_from(['w', 'r']))}"
    if form == "drbd":
        return f"drbd:{path.rsplit('/', 1)[1]},{vdev},w"
    if form == "tap":
        return f"{draw(st.sampled_from(['tap:aio', 'tap2:tapdisk:aio', 'tap:qcow2']))}:{path},{vdev},w"
    if form == "kv":
        return f"format=raw, vdev={vdev}, access=rw, target={path},{vdev}"  # a target holding commas
    if form == "positional":
        return f"{path},raw,{vdev},rw"
    return f",{vdev}:cdrom,r"


@st.composite
def cfgs(draw):
    """(text, vdevs, indices of the lines a rewrite may change); always ends with a newline."""
    vdevs = draw(st.lists(VDEV, min_size=1, max_size=4, unique=True))
    q = draw(QUOTE)
    specs = [draw(disk_spec(v)) for v in vdevs]
    sep = draw(st.sampled_from([", ", ",\n    "]))
    disk = f"disk{draw(SPACE)}={draw(SPACE)}[ " + sep.join(f"{q}{s}{q}" for s in specs) + draw(
        st.sampled_from([" ]", ",\n]"]))
    blocks = [(disk, True)] + [(line, False) for line in draw(st.lists(FILLER, max_size=6))]
    root = draw(st.sampled_from(vdevs))
    if draw(st.booleans()):
        rq = draw(QUOTE)
        blocks.append((f"root{draw(SPACE)}= {rq}/dev/{root} ro{rq}", True))
    if draw(st.booleans()):
        blocks.append((f"extra = {q}root=/dev/{root} {draw(st.sampled_from(['', 'console=hvc0', 'quiet']))}{q}", True))
    blocks = draw(st.permutations(blocks))
    lines, touchable = [], set()
    for block, touch in blocks:
        for part in block.split("\n"):
            if touch:
                touchable.add(len(lines))
            lines.append(part + "\n")
    return "".join(lines), vdevs, touchable


@st.composite
def cfgs_and_renames(draw):
    text, vdevs, touchable = draw(cfgs())
    renamed = draw(st.lists(st.sampled_from(vdevs), unique=True))
    # New names no old name uses: the condition under which the same renames are idempotent.
    renames = {old: f"vd{chr(ord('a') + i)}" for i, old in enumerate(renamed)}
    return text, renames, touchable


PROPERTY = settings(max_examples=150, deadline=None)


@PROPERTY
@given(cfgs_and_renames(), st.booleans())
def test_property_rewrite_is_idempotent(case, console):
    text, renames, _ = case
    once = rewrite_xen_cfg(text, renames, add_console=console)
    assert rewrite_xen_cfg(once, renames, add_console=console) == once
    assert [d.vdev for d in parse_xen_cfg(once).disks] == [
        renames.get(d.vdev, d.vdev) for d in parse_xen_cfg(text).disks]


@PROPERTY
@given(cfgs())
def test_property_identity_renames_change_nothing(case):
    text, vdevs, _ = case
    assert rewrite_xen_cfg(text, {v: v for v in vdevs}) == text
    assert rewrite_xen_cfg(text, {}) == text


@PROPERTY
@given(cfgs_and_renames(), st.booleans())
def test_property_untouched_lines_are_kept(case, console):
    text, renames, touchable = case
    before = text.splitlines(True)
    after = rewrite_xen_cfg(text, renames, add_console=console).splitlines(True)
    if len(after) == len(before) + 1:  # add_console created extra=: drop it to line the rest up
        assert console and not any(line.startswith("extra") for line in before)
        after = [line for line in after if not line.startswith("extra")]
    assert len(after) == len(before)
    for i, (old, new) in enumerate(zip(before, after, strict=False)):
        if i not in touchable:
            assert new == old


def _literal(value: str, quote: str) -> str:
    """A string literal as an operator would write it: backslash and the quote escaped."""
    return quote + value.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


WORD = st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters=",:=/")
ODD_VDEV = st.text(WORD, min_size=1, max_size=8).filter(
    lambda v: v not in {"cdrom", "direct-io-safe", "discard", "no-discard", "colo", "no-colo", "trusted", "untrusted"})
ODD_PATH = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters=",="), max_size=12).map(
    lambda p: "/" + p.rstrip())
ODD_TARGET = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12).map(
    lambda p: "/" + p).filter(lambda p: not p.endswith(","))


@PROPERTY
@given(st.data(), QUOTE, st.sampled_from(["xm", "kv", "positional"]))
def test_property_odd_vdevs_and_paths_round_trip(data, quote, form):
    vdev, new = data.draw(st.lists(ODD_VDEV, min_size=2, max_size=2, unique=True))
    path = data.draw(ODD_TARGET if form == "kv" else ODD_PATH)
    spec = {"xm": f"phy:{path},{vdev},w",
            "kv": f"vdev={vdev}, access=rw, target={path}",
            "positional": f"{path},raw,{vdev},rw"}[form]
    text = f"# odd names\ndisk = [ {_literal(spec, quote)} ]\nroot = {_literal(f'/dev/{vdev} ro', quote)}\n"
    disk = parse_xen_cfg(text).disks[0]
    assert (disk.path, disk.vdev, disk.spec) == (path, vdev, spec)

    out = rewrite_xen_cfg(text, {vdev: new})
    moved = parse_xen_cfg(out).disks[0]
    assert (moved.path, moved.vdev) == (path, new)
    assert out.split("\n")[1].startswith(f"disk = [ {quote}")
    assert rewrite_xen_cfg(out, {new: vdev}) == text


# ---------------------------------------------------------------------------
# 4. What no KVM domain can be made from (the table in test_wild_cfgs has every kind)

def test_a_refusal_stays_one_line_whatever_the_cfg_holds():
    cfg = parse_xen_cfg("name = 'a'\nkernel = '/srv/arm64/Image\\n'\ndisk = ['/dev/vg/a,,xvda']\n")
    with pytest.raises(ValueError) as refusal:
        check_movable(cfg)
    assert str(refusal.value) == ("kernel '/srv/arm64/Image\\n' is an ARM or RISC-V image: "
                                  "not a guest an x86_64 KVM host can run")
    long = parse_xen_cfg(f"name = 'a'\nkernel = '/srv/{'x' * 100}/zImage'\ndisk = ['/dev/vg/a,,xvda']\n")
    with pytest.raises(ValueError, match=r"^kernel '/srv/x{55}'\.\.\. \(112 characters\) is an ARM"):
        check_movable(long)


@pytest.mark.parametrize("kernel", ["/boot/vmlinuz-6.1.0-18-amd64", "/usr/lib/xen/boot/hvmloader",
                                    "/srv/Images/vmlinuz", "/boot/bzImage"])
def test_x86_kernels_are_movable(kernel):
    """Their disk map is planned (plan_disk_map calls check_movable first)."""
    cfg = parse_xen_cfg(f"name = 'a'\nkernel = '{kernel}'\ndisk = ['/dev/vg/a,,xvda']\n")
    assert [(d.xen_vdev, d.kvm_source) for d in plan_disk_map(cfg)] == [("xvda", "/dev/vg/a")]


@pytest.mark.parametrize("text, hvm, hvm_kernel", [
    ("type = 'hvm'", True, None),
    ("builder = 'hvm'\nkernel = '/usr/lib/xen/boot/hvmloader'", True, None),
    ("kernel = '/usr/lib/xen/boot/hvmloader'", True, None),
    ("type = 'hvm'\nkernel = '/srv/vmlinuz'", True, "/srv/vmlinuz"),
    ("type = 'pvh'\nkernel = '/srv/vmlinuz'", False, None),
    ("kernel = '/boot/vmlinuz'", False, None),
])
def test_hvm_guests_are_told_from_pv_ones(text, hvm, hvm_kernel):
    cfg = parse_xen_cfg(text + "\n")
    assert (cfg.hvm, cfg.hvm_kernel) == (hvm, hvm_kernel)
