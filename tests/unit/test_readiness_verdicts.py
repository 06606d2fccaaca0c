"""The readiness verdicts over what probes read: the domain compared with libvirt's own reading of
it (virsh's test driver), modules found only under their own kernel version, the capacity verdict, debconf's output, the rehearsal record's every way of going stale."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from tasks import rehearsals, vmplan
from tasks.errors import ToolError
from tasks.formats import FormatError
from tasks.formats import readiness as v
from tasks.formats.domainxml import render_domain_xml
from tasks.formats.initramfs import disk_drivers
from tasks.inventory import load_inventory
from tests.seed import SEED_CFG

REPO = Path(__file__).resolve().parents[2]
CFGS = REPO / "tests" / "data" / "cfgs"
INVENTORY = load_inventory(REPO / "hosts.yml")


def libvirt_reading(xml: str, name: str, tmp_path: Path) -> str:
    """What libvirt makes of the XML: defined in virsh's test driver, read back inactive (one
    invocation: the test driver forgets everything when virsh exits)."""
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    done = subprocess.run(["virsh", "-c", "test:///default", f"define {path}; dumpxml --inactive {name}"],
                          capture_output=True, text=True, check=True)
    return done.stdout[done.stdout.index("<domain"):]


def seed_xml(**changes) -> str:
    vm = dataclasses.replace(INVENTORY.vm("logger"), **changes)
    return render_domain_xml(vmplan.plan(SEED_CFG, "seed.cfg", vm).as_converted().domain_spec())


@pytest.mark.parametrize("xml", [
    pytest.param(seed_xml(), id="seed, grub"),
    pytest.param(seed_xml(boot="direct-kernel", bus="virtio", mac="00:16:3E:37:D0:7A"), id="direct-kernel, virtio"),
    pytest.param(seed_xml(bus="scsi", memory=1536, vcpus=2), id="scsi"),
    pytest.param(render_domain_xml(vmplan.of_file(str(CFGS / "hvm-xm-windows.cfg")).domain_spec()), id="hvm"),
])
def test_libvirt_reads_our_domain_as_we_rendered_it(xml, tmp_path):
    name = v.domain_essentials(xml)["name"]
    assert v.domain_differences(xml, libvirt_reading(xml, name, tmp_path)) == []


def test_a_changed_definition_is_named_by_what_changed(tmp_path):
    xml = seed_xml()
    theirs = libvirt_reading(xml.replace("/dev/drbd6", "/dev/drbd9").replace(">2048<", ">1024<"), "logger", tmp_path)
    differences = v.domain_differences(xml, theirs)
    assert differences[0] == "memory KiB 1048576 (rendered: 2097152)"
    assert differences[1].startswith("disks {'sda': ('/dev/drbd5', 'ide'), 'sdb': ('/dev/drbd9', 'ide')")
    assert len(differences) == 2


def test_a_text_that_is_no_domain_is_a_format_error():
    with pytest.raises(FormatError, match="not a domain XML"):
        v.domain_essentials("error: failed to get domain 'logger'")
    with pytest.raises(FormatError, match="memory size"):
        v.domain_essentials("<domain><name>x</name></domain>")


INITRAMFS = """\
.
usr/lib/modules/6.1.0-13-amd64/kernel/drivers/ata/ata_piix.ko
usr/lib/modules/6.1.0-13-amd64/kernel/drivers/scsi/sd_mod.ko.xz
usr/lib/modules/6.1.0-13-amd64/kernel/drivers/virtio/virtio_pci.ko
lib/modules/6.1.0-9-amd64/kernel/drivers/block/virtio_blk.ko
usr/lib/modules/6.1.0-13-amd64/kernel/drivers/block/xen-blkfront.ko
"""


@pytest.mark.parametrize("buses, scsi_model, version, config, missing", [
    (["ide"], "virtio-scsi", "6.1.0-13-amd64", None, []),
    (["virtio"], "virtio-scsi", "6.1.0-13-amd64", None, ["virtio_blk"]),    # only in another kernel's tree
    (["virtio"], "virtio-scsi", "6.1.0-13-amd64", "CONFIG_VIRTIO_BLK=y\n", []),   # built in
    (["sata", "ide"], "virtio-scsi", "6.1.0-13-amd64", None, ["ahci"]),
    (["scsi"], "virtio-scsi", "6.1.0-13-amd64", "CONFIG_SCSI_VIRTIO=m\n", ["virtio_scsi"]),
    (["scsi"], "lsilogic", "6.1.0-13-amd64", None, ["sym53c8xx"]),
    (["ide"], "virtio-scsi", "6.1.0-14-amd64", None, ["ata_piix", "sd_mod"]),   # an initrd of the old kernel
])
def test_missing_drivers(buses, scsi_model, version, config, missing):
    assert v.missing_drivers(INITRAMFS, version, disk_drivers(buses, scsi_model), config) == missing


def test_capacity_verdict_carries_the_shortfall():
    assert v.check_capacity("xen1", 8054, None) == v.ready("capacity", "xen1 has 8054 MiB free for the guest")
    short = v.check_capacity("xen1", 8054, "needs 9000 MiB of memory, 8054 MiB free")
    assert (short.ready, short.reason) == (False, "xen1: needs 9000 MiB of memory, 8054 MiB free")


def test_debconf_show_and_install_devices():
    text = ("* grub-pc/install_devices: /dev/disk/by-id/ata-QEMU_HARDDISK_QM00001, /dev/sdb\n"
            "  grub-pc/install_devices_empty: false\n  grub-pc/postrm_purge_boot_grub:\n")
    debconf = v.parse_debconf_show(text)
    assert debconf["grub-pc/install_devices_empty"] == "false" and debconf["grub-pc/postrm_purge_boot_grub"] == ""
    assert v.install_devices(debconf) == ["/dev/disk/by-id/ata-QEMU_HARDDISK_QM00001", "/dev/sdb"]
    assert v.install_devices(v.parse_debconf_show("* grub-pc/install_devices: \n")) == []


def test_grub_needs_the_newest_kernel_in_grub_cfg():
    cfg = "menuentry 'Debian' {\n\tlinux /boot/vmlinuz-6.1.0-13-amd64 root=UUID=x ro\n}\n"
    assert v.check_grub("logger", True, cfg, "6.1.0-13-amd64", []).ready
    stale = v.check_grub("logger", True, cfg, "6.1.0-14-amd64", [])
    assert (stale.ready, stale.fix) == (False, "in the guest: update-grub")
    assert v.check_grub("logger", False, cfg, "6.1.0-13-amd64", []).fix == "fab guest.bootloader --vm logger"


@pytest.mark.parametrize("copy_sums, copy_version, reason", [
    ({"vmlinuz": "a", "initrd.img": "b"}, "6.1.0-13-amd64", "kvm1 boots kernel 6.1.0-13-amd64: vmlinuz and "
                                                            "initrd.img equal to the guest's (sha256)"),
    ({"vmlinuz": None, "initrd.img": None}, None, "kvm1 has no copy of the kernel to boot"),
    ({"vmlinuz": "a", "initrd.img": "b"}, "6.1.0-9-amd64", "kvm1 boots a copy of kernel 6.1.0-9-amd64; the guest's "
                                                           "newest is 6.1.0-13-amd64"),
    ({"vmlinuz": "a", "initrd.img": "old"}, "6.1.0-13-amd64", "kvm1's copy of initrd.img differs from the guest's "
                                                              "6.1.0-13-amd64 (rebuilt since it was copied)"),
])
def test_kernel_copy(copy_sums, copy_version, reason):
    check = v.check_kernel_copy("logger", "kvm1", "6.1.0-13-amd64", {"vmlinuz": "a", "initrd.img": "b"},
                                copy_sums, copy_version)
    assert check.reason == reason


def test_fstab_names_only_kvm_knows_count_as_matching_the_disk_map():
    from tasks.guest import plan_renames
    disk_map = vmplan.plan(SEED_CFG, "seed.cfg", INVENTORY.vm("logger")).disk_map
    xen = "/dev/xvda2 / ext4 defaults 0 1\n/dev/xvda1 none swap sw 0 0\n"
    check = v.check_fstab_names("logger", plan_renames(xen, disk_map)[0], ["xvda2", "xvda1"], ["sda", "sdb", "sdc"])
    assert check.reason == "names /dev/xvda2, /dev/xvda1, which KVM calls otherwise"
    converted = vmplan.plan(SEED_CFG, "seed.cfg", INVENTORY.vm("logger")).as_converted().disk_map
    kvm = "UUID=0f3c / ext4 defaults 0 1\n/dev/sdc none swap sw 0 0\n"
    check = v.check_fstab_names("logger", plan_renames(kvm, converted)[0], ["sdc"], ["sda", "sdb", "sdc"])
    assert (check.ready, check.reason) == (True, "UUID=/LABEL=, and /dev/sdc as the disk map names them under KVM")


RECORD = rehearsals.Rehearsal("logger", "2026-12-01T10:00:00+00:00", "kvm1", True, "6.1.0-13-amd64", True,
                              "aa" * 32, "")


@pytest.mark.parametrize("record, kernel, sha, ready, reason", [
    (RECORD, "6.1.0-13-amd64", "aa" * 32, True, "passed at 2026-12-01T10:00:00+00:00 on kvm1: kernel "
                                                "6.1.0-13-amd64 booted to a login prompt"),
    (None, "6.1.0-13-amd64", "aa" * 32, False, "never rehearsed"),
    (dataclasses.replace(RECORD, passed=False, kernel=None, message="no login prompt"), "6.1.0-13-amd64", "aa" * 32,
     False, "the last rehearsal (at 2026-12-01T10:00:00+00:00 on kvm1) failed: no login prompt"),
    (RECORD, "6.1.0-14-amd64", "aa" * 32, False, "the last rehearsal (at 2026-12-01T10:00:00+00:00 on kvm1) booted "
                                                 "kernel 6.1.0-13-amd64; the guest now boots 6.1.0-14-amd64"),
    (RECORD, "6.1.0-13-amd64", "bb" * 32, False, "the domain changed since the last rehearsal "
                                                 "(at 2026-12-01T10:00:00+00:00 on kvm1)"),
    (dataclasses.replace(RECORD, kernel=None), "6.1.0-13-amd64", "aa" * 32, False,
     "the last rehearsal (at 2026-12-01T10:00:00+00:00 on kvm1) passed, but which kernel booted is unknown"),
    (RECORD, None, "aa" * 32, None, "there is no kernel for the domain to boot now (see the boot check)"),
])
def test_rehearsal_verdicts(record, kernel, sha, ready, reason):
    check = v.check_rehearsal("logger", record, kernel, sha)
    assert (check.ready, check.reason) == (ready, reason)


def test_kernel_banner():
    assert v.parse_kernel_banner("[    0.000000] Linux version 6.1.0-13-amd64 (debian-kernel@lists.debian.org)") \
        == "6.1.0-13-amd64"
    assert v.parse_kernel_banner("SeaBIOS (version 1.16.2-debian-1.16.2-1)\n") is None


def test_rehearsal_records_round_trip_and_any_other_file_is_refused_in_one_line(tmp_path):
    rehearsals.save(tmp_path, RECORD)
    assert rehearsals.load(tmp_path, "logger") == RECORD
    assert (tmp_path / "logger.json").stat().st_mode & 0o777 == 0o600
    assert rehearsals.load(tmp_path, "web") is None
    for content in (b"{", b"[]", b'{"vm": "logger"}', RECORD_OF_WEB, b"x" * 70000):
        (tmp_path / "logger.json").write_bytes(content)
        with pytest.raises(ToolError) as refused:
            rehearsals.load(tmp_path, "logger")
        assert str(refused.value).startswith(f"{tmp_path}/logger.json: not a rehearsal record this tool can use (")
        assert "\n" not in str(refused.value)


RECORD_OF_WEB = ('{"vm": "web", "time": "t", "host": "kvm1", "passed": true, "kernel": null, "login": false, '
                 '"xml_sha256": "", "message": ""}').encode()
