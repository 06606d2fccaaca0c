"""The split-brain rule on real `drbdadm get-gi` output, and Pacemaker's CIB as cibadmin prints it.

The generation ids were measured on Debian 12's drbd.ko 8.4.11 (tests/lab/drbdpair.py): a
connected, synced pair, and the same pair after each side was Primary and wrote while the
two were disconnected (the kernel then logged "Split-Brain detected but unresolved").
"""

from pathlib import Path

import pytest

from tasks import drbd
from tasks.errors import GuardError
from tasks.formats.cib import Primitive, parse_cib_primitives
from tasks.formats.drbdstatus import GenerationIds, diverged, parse_gi
from tasks.inventory import VM, ReplicatedDisk

DATA = Path(__file__).resolve().parent.parent / "data"
SYNCED_PRIMARY = "3EDBF507CAF5AF51:0000000000000000:EA3B40C5598B02B5:0000000000000004:1:1:1:1:0:0:0\n"
SYNCED_SECONDARY = "3EDBF507CAF5AF50:0000000000000000:EA3B40C5598B02B4:0000000000000004:1:1:0:1:0:0:0\n"
SPLIT_XEN = "633DBF26486B07B7:3EDBF507CAF5AF51:EA3B40C5598B02B5:0000000000000004:1:1:1:0:0:0:0\n"
SPLIT_KVM = "5F82230126E39715:3EDBF507CAF5AF50:EA3B40C5598B02B4:0000000000000004:1:1:1:0:0:0:0\n"


def test_get_gi_is_read_field_by_field():
    assert parse_gi(SPLIT_XEN) == GenerationIds(0x633DBF26486B07B7, 0x3EDBF507CAF5AF51,
                                                (0xEA3B40C5598B02B5, 0x0000000000000004))


@pytest.mark.parametrize("text", ["", "3EDBF507CAF5AF51:0000000000000000\n", "not a gi\n",
                                  SYNCED_PRIMARY + SYNCED_PRIMARY, "3edbf507caf5af51" + SYNCED_PRIMARY[16:]])
def test_get_gi_refuses_what_it_does_not_know(text):
    with pytest.raises(ValueError, match="drbdadm get-gi"):
        parse_gi(text)


def test_a_synced_pair_has_not_diverged_whatever_its_primary_flags():
    assert not diverged(parse_gi(SYNCED_PRIMARY), parse_gi(SYNCED_SECONDARY))


def test_both_sides_written_apart_have_diverged_either_way_round():
    assert diverged(parse_gi(SPLIT_XEN), parse_gi(SPLIT_KVM))
    assert diverged(parse_gi(SPLIT_KVM), parse_gi(SPLIT_XEN))


def test_one_side_written_apart_is_only_ahead():
    """The side that wrote moved its old generation to the bitmap slot: the other is behind it."""
    assert not diverged(parse_gi(SPLIT_XEN), parse_gi(SYNCED_SECONDARY))
    assert not diverged(parse_gi(SYNCED_PRIMARY), parse_gi(SPLIT_KVM))


VM_ = VM("web", "rxen", "rkvm", cfg="/etc/xen/auto/web.cfg", disks=(
    ReplicatedDisk("web-root", {"rxen": "/dev/drbd1", "rkvm": "/dev/drbd1"}),
    ReplicatedDisk("web-data", {"rxen": "/dev/drbd2", "rkvm": "/dev/drbd2"})))


def test_split_brain_refusal_names_it_the_resources_and_the_manual_recovery():
    ids = {"web-root": (parse_gi(SPLIT_XEN), parse_gi(SPLIT_KVM)),
           "web-data": (parse_gi(SYNCED_PRIMARY), parse_gi(SYNCED_SECONDARY))}
    with pytest.raises(GuardError) as refused:
        drbd.check_split_brain(VM_, "move", ("rxen", "rkvm"), ids)
    assert str(refused.value) == (
        "refusing to move web: split brain on DRBD web-root: the data on rxen and rkvm diverged (each side was "
        "Primary while they were apart); DRBD will not reconnect them and this tool resolves nothing: choose the "
        "side whose changes are lost and recover by hand (DRBD's user guide, \"Manual split brain recovery\"), "
        "then retry")


def test_no_split_brain_passes():
    drbd.check_split_brain(VM_, "move", ("rxen", "rkvm"),
                           {"web-root": (parse_gi(SPLIT_XEN), parse_gi(SYNCED_SECONDARY))})


def test_cibadmin_output_gives_every_primitive_wherever_it_sits():
    primitives = parse_cib_primitives((DATA / "pacemaker/cib-resources.xml").read_text())
    assert primitives == [
        Primitive("p_drbd_web", "ocf:linbit:drbd", {"drbd_resource": "web-root"}),
        Primitive("vm_mail", "ocf:heartbeat:VirtualDomain",
                  {"config": "/etc/libvirt/qemu/mail.xml", "hypervisor": "qemu:///system"}),
        Primitive("xen_logger", "ocf:heartbeat:Xen", {"xmfile": "/etc/xen/auto/logger.cfg"}),
        Primitive("fence_rxen", "stonith:fence_xvm", {}),
    ]


@pytest.mark.parametrize("text, why", [("<domain/>", "root element is <domain>"), ("<resources>", "not XML"),
                                       ("Could not connect to the CIB", "not XML")])
def test_what_is_not_a_cib_is_refused(text, why):
    with pytest.raises(ValueError, match=why):
        parse_cib_primitives(text)


@pytest.mark.parametrize("name, cfg, resource, claim", [
    ("web", "/etc/xen/auto/web.cfg", "web-root", "p_drbd_web, ocf:linbit:drbd of web-root"),
    ("mail", "/etc/xen/auto/mail.cfg", "mail-disk", "vm_mail, ocf:heartbeat:VirtualDomain of /etc/libvirt/qemu/mail.xml"),
    ("logger", "/etc/xen/auto/logger.cfg", "logger-system", "xen_logger, ocf:heartbeat:Xen of /etc/xen/auto/logger.cfg"),
    ("logger", "/srv/xen/logger.cfg", "logger-system", "xen_logger, ocf:heartbeat:Xen of /etc/xen/auto/logger.cfg"),
    ("fence_rxen", "/etc/xen/auto/fence_rxen.cfg", "other", "fence_rxen, stonith:fence_xvm"),
])
def test_pacemaker_claims_a_vm_by_its_drbd_resource_its_domain_or_its_name(name, cfg, resource, claim):
    vm = VM(name, "rxen", "rkvm", cfg=cfg, disks=(ReplicatedDisk(resource, {"rxen": "/dev/drbd1"}),))
    assert drbd.pacemaker_claims(parse_cib_primitives((DATA / "pacemaker/cib-resources.xml").read_text()), vm) == [claim]


def test_a_vm_pacemaker_does_not_know_is_not_claimed():
    vm = VM("db", "rxen", "rkvm", cfg="/etc/xen/auto/db.cfg", disks=(ReplicatedDisk("db-disk", {"rxen": "/dev/drbd3"}),))
    assert drbd.pacemaker_claims(parse_cib_primitives((DATA / "pacemaker/cib-resources.xml").read_text()), vm) == []


def test_the_cluster_refusal_is_one_line_naming_the_manager_and_its_tool():
    with pytest.raises(GuardError) as refused:
        drbd.check_unmanaged(VM_, "rxen", "promote", [("Pacemaker", "primitive p_drbd_web, ocf:linbit:drbd of web-root")])
    assert str(refused.value) == ("rxen: refusing to promote web: Pacemaker manages it (primitive p_drbd_web, "
                                  "ocf:linbit:drbd of web-root); move it with Pacemaker (crm_resource --move), "
                                  "not behind its back")
