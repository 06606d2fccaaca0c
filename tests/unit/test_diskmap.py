"""The one disk map: root disk first as sda, the rest in cfg order, sources per host."""

import pytest
import yaml

from tasks.diskmap import disk_name, drbd_by_res, plan_disk_map, plan_target_names, renames
from tasks.formats import FormatError
from tasks.formats.xencfg import parse_xen_cfg
from tasks.inventory import load_inventory, parse_inventory
from tests.conftest import REPO
from tests.seed import SEED_CFG

# What xen-create-image writes for --partitions with /, /var and swap (root first, then reversed).
XEN_TOOLS = """\
root        = '/dev/xvda2 ro'
disk        = [
                  'phy:/dev/vg0/web-disk,xvda2,w',
                  'phy:/dev/vg0/web-var,xvda3,w',
                  'phy:/dev/vg0/web-swap,xvda1,w',
              ]
name        = 'web'
"""


def test_disk_names_count_like_the_kernel():
    assert [disk_name(i) for i in (0, 1, 25, 26, 27, 701, 702)] == \
        ["sda", "sdb", "sdz", "sdaa", "sdab", "sdzz", "sdaaa"]


def test_root_disk_first_then_cfg_order():
    cfg = parse_xen_cfg(XEN_TOOLS)
    assert plan_target_names(cfg) == {"xvda2": "sda", "xvda3": "sdb", "xvda1": "sdc"}


def test_root_not_first_in_cfg():
    cfg = parse_xen_cfg("root = '/dev/hdb1 ro'\ndisk = ['file:/a.img,hda,w', 'file:/b.img,hdb1,w']\n")
    assert plan_target_names(cfg) == {"hdb1": "sda", "hda": "sdb"}


def test_root_on_a_partition_of_a_whole_exported_disk():
    cfg = parse_xen_cfg("root = '/dev/xvda1 ro'\ndisk = ['phy:/dev/vg/b,xvdb,w', 'phy:/dev/vg/a,xvda,w']\n")
    assert plan_target_names(cfg) == {"xvda": "sda", "xvdb": "sdb"}


def test_without_root_the_cfg_order_counts_and_cdroms_stay_behind():
    cfg = parse_xen_cfg("disk = ['phy:/dev/vg/a,hda,w', ',hdc:cdrom,r', 'phy:/dev/vg/b,hdb,w']\n")
    assert plan_target_names(cfg) == {"hda": "sda", "hdb": "sdb"}


def test_seed_vm_map_names_drbd_devices_and_the_local_swap():
    vm = load_inventory(REPO / "hosts.yml").vm("logger")
    dm = plan_disk_map(parse_xen_cfg(SEED_CFG), vm)
    assert [(d.xen_vdev, d.target, d.resource, d.kvm_source, d.source_kind) for d in dm] == [
        ("xvda2", "sda", "logger-system", "/dev/drbd5", "block"),
        ("xvda3", "sdb", "logger-var", "/dev/drbd6", "block"),
        ("xvda1", "sdc", None, "/dev/vg_main/logger-swap", "block"),
    ]
    assert [d.per_host for d in dm] == [False, False, True], "the local swap LV is each host's own"
    assert renames(dm) == {"xvda2": "sda", "xvda3": "sdb", "xvda1": "sdc"}


def _seed_with(**changes):
    data = yaml.safe_load((REPO / "hosts.yml").read_text())
    for index, values in changes.items():
        data["vms"]["logger"]["disks"][int(index[1:])].update(values)
    return parse_inventory(yaml.safe_dump(data)).vm("logger")


def test_cfg_still_on_backing_lvs_matches_through_backing_and_kvm_gets_the_drbd_device():
    vm = _seed_with(d1={"device": {"xen1": "/dev/drbd6", "kvm1": "/dev/drbd16"}})
    cfg = parse_xen_cfg(SEED_CFG.replace("phy:/dev/drbd5", "phy:/dev/vg_main/logger-system")
                        .replace("phy:/dev/drbd6", "drbd:logger-var"))
    dm = plan_disk_map(cfg, vm)
    assert [(d.resource, d.kvm_source) for d in dm[:2]] == [("logger-system", "/dev/drbd5"),
                                                           ("logger-var", "/dev/drbd16")]


def test_explicit_vdev_wins_over_path_matching():
    vm = _seed_with(d2={"vdev": "xvda1"})
    cfg = parse_xen_cfg(SEED_CFG.replace("phy:/dev/vg_main/logger-swap", "phy:/dev/other/swap"))
    assert plan_disk_map(cfg, vm)[2].kvm_source == "/dev/vg_main/logger-swap"


def test_vdevs_named_before_prepare_cfg_still_match_the_rewritten_cfg():
    """The inventory's vdev: is the name the cfg had; after xenhost.prepare-cfg it says sda."""
    vm = _seed_with(d0={"vdev": "xvda2"}, d1={"vdev": "xvda3"}, d2={"vdev": "xvda1"})
    rewritten = (SEED_CFG.replace(",xvda2,", ",sda,").replace(",xvda3,", ",sdb,").replace(",xvda1,", ",sdc,")
                 .replace("/dev/xvda2 ro", "/dev/sda ro"))
    assert [(d.xen_vdev, d.target, d.kvm_source) for d in plan_disk_map(parse_xen_cfg(rewritten), vm)] == [
        ("sda", "sda", "/dev/drbd5"), ("sdb", "sdb", "/dev/drbd6"), ("sdc", "sdc", "/dev/vg_main/logger-swap")]


def test_a_cfg_disk_missing_from_the_inventory_is_refused():
    vm = load_inventory(REPO / "hosts.yml").vm("logger")
    cfg = parse_xen_cfg(SEED_CFG.replace("phy:/dev/drbd6", "phy:/dev/vg_main/elsewhere"))
    with pytest.raises(FormatError, match=r"disk xvda3 \('phy:/dev/vg_main/elsewhere,xvda3,w'\) matches no disk "
                                         r"in vms.logger.disks"):
        plan_disk_map(cfg, vm)


def test_an_inventory_disk_missing_from_the_cfg_is_refused():
    vm = load_inventory(REPO / "hosts.yml").vm("logger")
    cfg = parse_xen_cfg(SEED_CFG.replace("                  'phy:/dev/drbd6,xvda3,w',\n", ""))
    with pytest.raises(FormatError, match=r"vms.logger.disks\[1\] \(logger-var\) is not a disk of the cfg$"):
        plan_disk_map(cfg, vm)


def test_offline_map_uses_the_cfg_paths():
    cfg = "name='web'\nroot='/dev/xvda1'\ndisk=['file:/img/a.img,xvda1,w','drbd:r0,xvda2,r']\n"
    dm = plan_disk_map(parse_xen_cfg(cfg))
    assert [(d.target, d.kvm_source, d.source_kind, d.readonly) for d in dm] == [
        ("sda", "/img/a.img", "file", False), ("sdb", "/dev/drbd/by-res/r0/0", "block", True)]


# -- HVM guests, what a path is, drbd:RES, shared disks ---------------------------------------------

def test_an_hvm_guests_disks_keep_their_names_so_nothing_renames_them():
    cfg = parse_xen_cfg("name='win'\nbuilder='hvm'\nkernel='/usr/lib/xen/boot/hvmloader'\n"
                        "disk=['phy:/dev/vg/a,hdc,w', 'phy:/dev/vg/b,xvdb,w', 'phy:/dev/vg/c,sda1,w', ',hdd:cdrom,r']\n")
    assert plan_target_names(cfg) == {"hdc": "hdc", "xvdb": "xvdb", "sda1": "sda"}
    assert renames(plan_disk_map(cfg)) == {"hdc": "hdc", "xvdb": "xvdb", "sda1": "sda"}


def test_an_hvm_disk_qemu_xen_cannot_emulate_is_refused():
    cfg = parse_xen_cfg("name='win'\ntype='hvm'\ndisk=['/dev/vg/a,raw,d0p1,rw']\n")
    with pytest.raises(ValueError, match=r"^disk d0p1: an HVM guest's disk needs a name qemu-xen emulates "
                                         r"\(hd\*, sd\* or xvd\*\)$"):
        plan_disk_map(cfg)


@pytest.mark.parametrize("spec, kind", [
    ("phy:/srv/xen/web.img,xvda,w", "file"),
    ("backendtype=phy,vdev=xvda,target=/srv/xen/web.img", "file"),
    ("file:/dev/vg0/web,xvda,w", "block"),
    ("tap:aio:/dev/vg0/web,xvda,w", "block"),
    ("/srv/xen/web.qcow2,qcow2,xvda,rw", "file"),
])
def test_offline_the_path_not_the_prefix_says_file_or_block(spec, kind):
    dm = plan_disk_map(parse_xen_cfg(f"name='web'\ndisk=['{spec}']\n"))
    assert [d.source_kind for d in dm] == [kind]


def test_with_the_kvm_hosts_answer_a_local_disk_is_what_that_host_says():
    data = yaml.safe_load((REPO / "hosts.yml").read_text())
    data["vms"]["logger"]["disks"][2]["local"] = {"xen1": "/dev/vg_main/logger-swap", "kvm1": "/srv/swap.img"}
    vm = parse_inventory(yaml.safe_dump(data)).vm("logger")
    cfg = parse_xen_cfg(SEED_CFG)
    kinds = {d.kvm_source: d.source_kind for d in plan_disk_map(cfg, vm, block_devices=frozenset())}
    assert kinds == {"/dev/drbd5": "block", "/dev/drbd6": "block", "/srv/swap.img": "file"}
    answered = plan_disk_map(cfg, vm, block_devices=frozenset({"/srv/swap.img"}))
    assert [d.source_kind for d in answered] == ["block"] * 3


@pytest.mark.parametrize("version, device", [
    (None, "/dev/drbd/by-res/r0/0"), ("9", "/dev/drbd/by-res/r0/0"), ("9.2.8", "/dev/drbd/by-res/r0/0"),
    ("8.4", "/dev/drbd/by-res/r0/0"), ("8.4.11", "/dev/drbd/by-res/r0/0"),
    ("8.3", "/dev/drbd/by-res/r0"), ("8.3.16", "/dev/drbd/by-res/r0"), ("8", "/dev/drbd/by-res/r0"),
])
def test_drbd_resource_offline_is_udevs_name_for_the_version(version, device):
    assert drbd_by_res("r0", version) == device
    dm = plan_disk_map(parse_xen_cfg("name='web'\ndisk=['drbd:r0,xvda,w']\n"), drbd_version=version)
    assert [(d.kvm_source, d.source_kind) for d in dm] == [(device, "block")]


GFS_CFG = "name='gfs1'\nroot='/dev/sda1 ro'\ndisk=['phy:/dev/drbd20,sda1,w', 'phy:/dev/drbd22,sdb1,w!']\n"


def gfs1(alone: bool = False):
    """gfs1 of tests/data/cfgs/inventory.yml; `alone`: gfs2 gone and the disk gfs1's own (not shared)."""
    data = yaml.safe_load((REPO / "tests" / "data" / "cfgs" / "inventory.yml").read_text())
    if alone:
        del data["vms"]["gfs2"]
        del data["vms"]["gfs1"]["disks"][1]["shared"]
    return parse_inventory(yaml.safe_dump(data)).vm("gfs1")


def test_a_shared_disk_is_marked_in_the_map():
    assert [d.shared for d in plan_disk_map(parse_xen_cfg(GFS_CFG), gfs1())] == [False, True]
    assert [d.shared for d in plan_disk_map(parse_xen_cfg(GFS_CFG))] == [False, True]


def test_cfg_and_inventory_agree_on_sharing():
    with pytest.raises(FormatError, match=r"^disk sdb1 is shared \(mode w!\) but "
                                         r"vms.gfs1.disks\[1\] \(gfs-data\) lacks shared: true$"):
        plan_disk_map(parse_xen_cfg(GFS_CFG), gfs1(alone=True))
    with pytest.raises(FormatError, match=r"^vms.gfs1.disks\[1\] \(gfs-data\) says shared: true "
                                         r"but disk sdb1 has no mode w!$"):
        plan_disk_map(parse_xen_cfg(GFS_CFG.replace("w!", "w")), gfs1())


def test_a_local_disk_cannot_be_shared():
    vm = load_inventory(REPO / "hosts.yml").vm("logger")
    cfg = parse_xen_cfg(SEED_CFG.replace("logger-swap,xvda1,w", "logger-swap,xvda1,w!"))
    with pytest.raises(FormatError, match=r"disk xvda1 is shared \(mode w!\) but vms.logger.disks\[2\] is a "
                                         r"local: disk, each host's own$"):
        plan_disk_map(cfg, vm)
