"""`fab readiness` at command level: each check before and after `fab prepare`, the drift that
makes a ready VM unready again (a kernel upgrade, a stale copy, a hand-edited domain, a grub
install device gone), unknown facts never counted as ready, and nothing ever changed."""

from __future__ import annotations

import json

import pytest

from tasks import prepare, readiness
from tasks.errors import ToolError
from tasks.formats.readiness import CHECKS
from tests.stages.guestsite import KERNEL, World

NEWER = "6.1.0-14-amd64"


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def prepared(world: World, **options) -> World:
    world.shared.disks_of["logger-rehearsal"] = []   # the trial runs on snapshots
    world.shared.console["logger-rehearsal"] = f"Linux version {KERNEL} (debian)\nlogger login: "
    site = world.site()
    result = prepare.prepare_vm(site, world.inv, world.inv.vm("logger"),
                                prepare.Options(rehearse=True, rehearse_timeout=5, **options), world.dirs)
    site.close()
    assert result.ok, result.message
    world.audit.unlink()
    return world


def judge(world: World, name: str = "logger") -> dict[str, readiness.Check]:
    site = world.site(dry_run=True)
    try:
        (result,) = readiness.readiness_of(site, [world.inv.vm(name)], world.dirs.rehearsals, 1)
    finally:
        site.close()
    assert [c.name for c in result.checks] == list(CHECKS)
    return {c.name: c for c in result.checks}


def marks(checks: dict) -> dict[str, bool | None]:
    return {name: check.ready for name, check in checks.items()}


def test_a_guest_as_xen_tools_left_it_is_not_ready_and_each_check_names_its_fix(world):
    checks = judge(world)
    assert marks(checks) == {"drbd": True, "consoles": False, "fstab": False, "boot": False, "initramfs": False,
                             "cfg": False, "domain": False, "swap": False, "rehearsal": False, "capacity": True}
    assert checks["consoles"].reason == ("systemd: serial-getty@hvc0.service, serial-getty@ttyS0.service not set "
                                         "up for both hypervisors")
    assert checks["fstab"].reason == "names /dev/xvda1, /dev/xvda2, /dev/xvda3, which KVM calls otherwise"
    assert checks["initramfs"].reason == f"the initramfs of {KERNEL} lacks ata_piix, sd_mod for the ide bus"
    assert {name: c.fix for name, c in checks.items() if not c.ready} == {
        "consoles": "fab guest.console --vm logger",
        "fstab": "fab guest.fstab --vm logger",
        "boot": "fab guest.bootloader --vm logger",
        "initramfs": "fab guest.initramfs --vm logger --force",
        "cfg": "fab xenhost.prepare-cfg --vm logger",
        "domain": "fab kvmhost.define --vm logger",
        "swap": "fab match-swap --vm logger --to kvm",
        "rehearsal": "fab kvmhost.rehearse --vm logger --login",
    }
    assert world.changes() == []


def test_after_prepare_with_a_rehearsal_every_check_is_ready_and_nothing_was_changed(world):
    checks = judge(prepared(world))
    assert all(marks(checks).values()), {n: c.reason for n, c in checks.items() if not c.ready}
    assert checks["rehearsal"].reason.endswith(f"kernel {KERNEL} booted to a login prompt")
    assert checks["domain"].reason == "defined on kvm1 (shut off), equal to what the cfg and inventory render now"
    assert world.changes() == []


def test_a_kernel_upgrade_makes_boot_initramfs_and_rehearsal_unready(world):
    world = prepared(world)
    world.install_kernel(NEWER)
    checks = judge(world)
    assert [n for n, c in checks.items() if not c.ready] == ["boot", "initramfs", "rehearsal"]
    assert checks["boot"].reason == f"grub.cfg has no entry for kernel {NEWER}, the newest"
    assert checks["initramfs"].fix == "fab guest.initramfs --vm logger --force"
    assert checks["rehearsal"].reason.endswith(f"booted kernel {KERNEL}; the guest now boots {NEWER}")


def test_an_initrd_copied_from_the_old_kernel_lacks_the_new_kernels_modules(world):
    world = prepared(world)
    world.install_kernel(NEWER)
    world.guest_file(f"/boot/initrd.img-{NEWER}", world.read_guest(f"/boot/initrd.img-{KERNEL}"))
    world.guests["logger"].initrd_modules[NEWER] = [m.replace(KERNEL, NEWER)
                                                    for m in world.guests["logger"].initrd_modules[KERNEL]]
    assert judge(world)["initramfs"].ready, "the modules of its own version count"
    world.guests["logger"].initrd_modules.pop(NEWER)
    site_lists = judge(world)["initramfs"]
    assert site_lists.ready is False and f"/boot/initrd.img-{NEWER}" in site_lists.reason


def test_direct_kernel_copy_goes_stale_with_an_upgrade_and_with_a_rebuilt_initrd(tmp_path):
    world = prepared(World(tmp_path, boot="direct-kernel"))
    assert judge(world)["boot"].reason == f"kvm1 boots kernel {KERNEL}: vmlinuz and initrd.img equal to the guest's (sha256)"
    world.hosts["logger (guest)"].build_initrds()
    boot = judge(world)["boot"]
    assert boot.reason == f"kvm1's copy of initrd.img differs from the guest's {KERNEL} (rebuilt since it was copied)"
    assert boot.fix == "fab kvmhost.fetch-kernel --vm logger"
    world.install_kernel(NEWER)
    world.hosts["logger (guest)"].build_initrds()
    checks = judge(world)
    assert checks["boot"].reason == f"kvm1 boots a copy of kernel {KERNEL}; the guest's newest is {NEWER}"
    assert checks["rehearsal"].ready, "what kvm1 boots is still what the rehearsal booted"


def test_a_definition_edited_by_hand_is_named_with_the_command_that_restores_it(world):
    world = prepared(world)
    world.shared.definitions["logger"] = world.shared.definitions["logger"].replace(
        "<source dev='/dev/drbd6'/>", "<source dev='/dev/drbd9'/>")
    domain = judge(world)["domain"]
    assert domain.ready is False
    assert "disks {'sda': ('/dev/drbd5', 'ide'), 'sdb': ('/dev/drbd9', 'ide')" in domain.reason
    assert domain.fix == "on kvm1: virsh define /var/lib/xenkvm/logger.xml"


def test_a_grub_install_device_that_no_longer_exists_is_named(world):
    world = prepared(world)
    world.guests["logger"].debconf["grub-pc/install_devices"] = "/dev/xvda2, /dev/sdb"
    boot = judge(world)["boot"]
    assert boot.reason.startswith("debconf grub-pc/install_devices names /dev/sdb, which does not exist")
    assert "debconf-set-selections" in boot.fix


def test_what_a_guest_holds_cannot_split_a_line_of_the_table(world):
    world = prepared(world)
    world.guests["logger"].debconf["grub-pc/install_devices"] = "/dev/sdb\x1b[2J\rforged"
    site = world.site(dry_run=True)
    rows = readiness.readiness_rows(readiness.readiness_of(site, [world.inv.vm("logger")], world.dirs.rehearsals, 1))
    site.close()
    (boot,) = [row for row in rows if row[1] == "boot"]
    assert boot[3].startswith("debconf grub-pc/install_devices names /dev/sdb\\x1b[2J\\rforged, which")
    assert all(cell.isprintable() for row in rows for cell in row)


@pytest.mark.parametrize("spoil, check, reason", [
    (lambda w: w.shared.free_memory.__setitem__("kvm1", 100), "capacity",
     "kvm1: needs 2048 MiB of memory, 100 MiB free"),
    (lambda w: w.shared.disk["logger-var"].__setitem__("kvm1", "Inconsistent"), "drbd",
     "logger-var is UpToDate/Inconsistent on xen1; logger-var is Inconsistent/UpToDate on kvm1"),
])
def test_host_side_problems(world, spoil, check, reason):
    spoil(world)
    assert judge(world)[check] == readiness.Check(check, False, reason, judge(world)[check].fix)


def test_a_guest_that_cannot_be_reached_is_unknown_never_ready(tmp_path):
    world = World(tmp_path, guest_address=None)
    checks = judge(world)
    unknown = {n for n, c in checks.items() if c.ready is None}
    assert unknown == {"consoles", "fstab", "boot", "initramfs", "rehearsal"}
    assert checks["fstab"].reason == "vms.logger.guest_address is not set: the guest stage needs SSH to the guest"
    assert checks["fstab"].mark == "?"


def test_task_table_exit_code_and_json(world, mocker, capsys):
    mocker.patch.object(readiness.inventory, "from_context", lambda c: world.inv)
    mocker.patch.object(readiness, "site_from_context", world.site_for)
    with pytest.raises(ToolError, match="^1 of 1 VMs not ready: logger$"):
        readiness.readiness(world.context, vm="logger")
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["VM", "check", "ready", "reason", "fix"]
    assert table[2].split()[:3] == ["logger", "consoles", "NO"]

    prepared(world)
    capsys.readouterr()
    readiness.readiness(world.context, vm="logger", json=True)
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert document["ready"] is True and document["vms"][0]["runs_on"] == ["xen1"]
    assert "ok: kvm1:/dev/vg_main/logger-swap is swap" in err, "progress lines go to stderr"


def test_the_task_reads_through_a_dry_run_site_and_sends_no_change(world, mocker):
    """A change slipping into a probe's path would only be printed."""
    mocker.patch.object(readiness.inventory, "from_context", lambda c: world.inv)
    site_for = mocker.patch.object(readiness, "site_from_context", side_effect=world.site_for)
    with pytest.raises(ToolError, match="not ready"):
        readiness.readiness(world.context)
    assert site_for.call_args.kwargs == {"dry_run": True}
    assert world.changes() == []
    assert not any(cmd.startswith(("mkswap", "virsh -c qemu:///system define", "update-", "apt-get"))
                   for _, cmd in world.shared.log)
