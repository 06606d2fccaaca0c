"""root= in the dual-boot cfg names the root file system by its UUID, read by blkid from the root
disk on the Xen host: a pvops kernel under real Xen names every disk xvd* whatever the cfg calls
it, so root=/dev/sda (the disk's new name) would not boot there (seen under Xen 4.17)."""

from __future__ import annotations

import pytest

from tasks import readiness, vmplan, xenhost
from tasks.errors import ToolError
from tests.seed import SEED_CFG
from tests.stages.guestsite import World

CFG = "/etc/xen/auto/logger.cfg"


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def prepare_cfg(world: World, dry_run: bool = False) -> bool:
    site = world.site(dry_run)
    try:
        return xenhost.prepare_cfg_file(site, world.inv.vm("logger"))
    finally:
        site.close()


def cfg_now(world: World) -> str:
    return world.shared.files[("xen1", CFG)]


def root_uuid(world: World) -> str:
    return world.guests["logger"].devices["/dev/xvda2"]


def test_root_names_the_uuid_blkid_reads_from_the_root_disk_on_the_xen_host(world):
    assert prepare_cfg(world)
    cfg = cfg_now(world)
    assert f"root        = 'UUID={root_uuid(world)} ro'\n" in cfg
    assert "'phy:/dev/drbd5,sda,w'" in cfg and "/dev/sda" not in cfg
    assert ("xen1", "blkid -p -o export /dev/drbd5") in world.shared.log
    assert not prepare_cfg(world), "a second run changes nothing"
    assert cfg_now(world) == cfg


def test_the_disk_already_named_sda_stays_first_when_root_names_a_uuid(world):
    """With root=UUID= nothing says which disk is root: the one the first run named sda keeps the
    name even when the cfg lists it last, so a second run renames nothing."""
    prepare_cfg(world)
    lines = cfg_now(world).splitlines(keepends=True)
    system = next(i for i, line in enumerate(lines) if ",sda," in line)
    lines.insert(system + 2, lines.pop(system))    # listed after sdb and sdc
    world.shared.files[("xen1", CFG)] = "".join(lines)
    before = cfg_now(world)
    assert before.index(",sdb,") < before.index(",sdc,") < before.index(",sda,")
    assert not prepare_cfg(world)
    assert cfg_now(world) == before


def test_root_on_a_partition_of_a_disk_exported_whole_is_read_at_the_partitions_offset(world):
    world.shared.files[("xen1", CFG)] = (SEED_CFG.replace("'/dev/xvda2 ro'", "'/dev/xvda1 ro'")
                                         .replace(",xvda2,", ",xvda,").replace(",xvda3,", ",xvdb,")
                                         .replace(",xvda1,", ",xvdc,"))
    world.shared.partitions[("xen1", "/dev/drbd5")] = [2048, 1050624]
    world.shared.signatures[("xen1", "/dev/drbd5@1048576")] = {"TYPE": "ext4", "UUID": "0f1e2d3c-0000-4000-8000-00000000beef"}
    assert prepare_cfg(world)
    cfg = cfg_now(world)
    assert "root        = 'UUID=0f1e2d3c-0000-4000-8000-00000000beef ro'\n" in cfg
    assert "'phy:/dev/drbd5,sda,w'" in cfg
    assert ("xen1", "partx -g -o START -n 1 /dev/drbd5") in world.shared.log


def test_a_partition_the_disk_lacks_is_one_line_and_no_change(world):
    world.shared.files[("xen1", CFG)] = SEED_CFG.replace("'/dev/xvda2 ro'", "'/dev/xvda5 ro'").replace(",xvda2,", ",xvda,")
    with pytest.raises(ToolError) as refused:
        prepare_cfg(world)
    assert str(refused.value) == f"xen1: /dev/drbd5 has no partition 5, which root= names (xen1:{CFG})"
    assert cfg_now(world) == SEED_CFG.replace("'/dev/xvda2 ro'", "'/dev/xvda5 ro'").replace(",xvda2,", ",xvda,")


def test_a_root_disk_without_a_file_system_uuid_is_one_line_and_no_change(world):
    del world.shared.signatures[("xen1", "/dev/drbd5")]
    with pytest.raises(ToolError) as refused:
        prepare_cfg(world)
    assert str(refused.value) == f"xen1: blkid finds no file system UUID on /dev/drbd5, the root disk of xen1:{CFG}"
    assert cfg_now(world) == SEED_CFG
    assert not [entry for entry in world.shared.log if entry[1].startswith("sftp put")]


def test_a_kernel_booted_without_an_initramfs_keeps_a_device_name_and_says_so(world, capsys):
    """Only an initramfs finds a file system by UUID."""
    direct = SEED_CFG.replace("bootloader = 'pygrub'", "kernel = '/boot/vmlinuz-6.1.0-13-amd64'")
    world.shared.files[("xen1", CFG)] = direct
    assert prepare_cfg(world)
    assert "root        = '/dev/sda ro'\n" in cfg_now(world)
    assert f"note: xen1:{CFG} boots a kernel without ramdisk=: root= keeps a device name" in capsys.readouterr().out
    assert not [entry for entry in world.shared.log if entry[1].startswith("blkid")]

    world.shared.files[("xen1", CFG)] = direct.replace("root ", "ramdisk = '/boot/initrd.img-6.1.0-13-amd64'\nroot ")
    assert prepare_cfg(world)
    assert f"root        = 'UUID={root_uuid(world)} ro'\n" in cfg_now(world)


def test_a_uuid_in_extra_follows_too(world):
    world.shared.files[("xen1", CFG)] = SEED_CFG.replace("root        = '/dev/xvda2 ro'",
                                                         "extra = 'root=/dev/xvda2 ro console=hvc0'")
    assert prepare_cfg(world)
    assert f"extra = 'root=UUID={root_uuid(world)} ro console=hvc0'\n" in cfg_now(world)


def test_readiness_finds_a_cfg_an_older_version_converted_to_root_dev_sda_unready(world):
    """root=/dev/sda was what prepare-cfg wrote before: it does not boot a pvops guest under Xen."""
    plan = vmplan.plan(SEED_CFG, CFG, world.inv.vm("logger"))
    world.shared.files[("xen1", CFG)] = plan.converted_cfg(False)
    assert "root        = '/dev/sda ro'" in cfg_now(world)
    site = world.site(dry_run=True)
    try:
        (result,) = readiness.readiness_of(site, [world.inv.vm("logger")], world.dirs.rehearsals, 1)
    finally:
        site.close()
    cfg_check = next(c for c in result.checks if c.name == "cfg")
    assert cfg_check.ready is False and cfg_check.fix == "fab xenhost.prepare-cfg --vm logger"
    prepare_cfg(world)
    assert f"UUID={root_uuid(world)}" in cfg_now(world)
