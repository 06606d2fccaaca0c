"""`fab prepare` at command level: every stage of a VM in one run, checks first, a second run that
changes nothing, one VM's failure alone, dry run, the rehearsal recorded and skipped while valid."""

from __future__ import annotations

import re

import pytest
from invoke import Config, Context

from tasks import prepare, rehearsals
from tasks.errors import GuardError, InputError, ToolError
from tasks.interrupt import Interruption
from tests.stages.guestsite import KERNEL, SWAP, SWAP_UUID, World

NAMES = ("logger", "web", "mail")
CONSOLE = "/var/log/libvirt/qemu/{}-rehearsal-console.log"


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def run(world: World, name: str = "logger", dry_run: bool = False, **options):
    site = world.site(dry_run)
    try:
        return prepare.prepare_vm(site, world.inv, world.inv.vm(name), prepare.Options(**options), world.dirs)
    finally:
        site.close()


def test_every_step_runs_once_then_a_second_run_changes_nothing(world):
    result = run(world)
    assert result.ok, result.message
    assert result.message.startswith("logger: prepared, changed guest, cfg, define, swap (")
    cfg = world.shared.files[("xen1", "/etc/xen/auto/logger.cfg")]
    root_uuid = world.guests["logger"].devices["/dev/xvda2"]   # as blkid reads it from /dev/drbd5 on xen1
    assert "'phy:/dev/drbd5,sda,w'" in cfg and f"root        = 'UUID={root_uuid} ro'" in cfg
    xml = world.shared.definitions["logger"]
    assert "<target dev='sda' bus='ide'/>" in xml
    assert world.shared.signatures[("kvm1", SWAP.format("logger"))] == {"TYPE": "swap", "UUID": SWAP_UUID.format(0)}
    guest = world.guests["logger"]
    assert {"grub-pc", "acpid"} <= guest.packages
    assert "UUID=00000000-0000-4000-8000-000000000002 / ext4" in world.read_guest("/etc/fstab")
    assert "ata_piix" in guest.initrd_modules[KERNEL]
    assert {"serial-getty@hvc0.service", "serial-getty@ttyS0.service"} <= guest.enabled
    first = world.changes()
    assert first, "the first run changed something"

    world.audit.unlink()
    again = run(world)
    assert again.ok and again.message.startswith("logger: prepared, nothing to change (")
    assert world.changes() == []


def test_the_domain_is_defined_from_the_converted_cfg_even_before_it_is_written(world):
    """Rendered from the cfg as it was, the domain would boot root=/dev/xvda2: a name the guest
    does not have under KVM (and direct-kernel boots put root= on its command line)."""
    world = World(world.tmp, boot="direct-kernel")
    assert run(world).ok
    xml = world.shared.definitions["logger"]
    assert f"<cmdline>root=UUID={world.guests['logger'].devices['/dev/xvda2']} ro " in xml
    assert world.shared.files[("kvm1", "/var/lib/xenkvm/boot/logger/version")] == f"{KERNEL}\n"
    assert world.shared.files[("kvm1", "/var/lib/xenkvm/boot/logger/initrd.img")] == \
        world.read_guest(f"/boot/initrd.img-{KERNEL}"), "the initrd copied is the one rebuilt with KVM's drivers"


@pytest.mark.parametrize("spoil, refusal", [
    (lambda w: w.guest_file("/etc/fstab", "/dev/xvdz9 / ext4 defaults 0 1\n"),
     "guest:logger: /etc/fstab: /dev/xvdz9 is not in the disk map"),
    (lambda w: w.shared.signatures.__setitem__(("kvm1", SWAP.format("logger")), {"TYPE": "ext4", "UUID": "1-2"}),
     "kvm1:/dev/vg_main/logger-swap holds ext4 (at 0x438): refusing to format it"),
    (lambda w: w.guests["logger"].candidates.clear(),
     "guest:logger: grub-pc is not installed and apt has no candidate for it"),
])
def test_any_steps_refusal_comes_before_the_first_change_of_every_step(world, spoil, refusal):
    spoil(world)
    with pytest.raises(GuardError, match=re.escape(refusal)):
        run(world)
    assert world.changes() == []
    assert world.shared.files[("xen1", "/etc/xen/auto/logger.cfg")].count("xvda2") == 2


def test_a_vm_running_on_kvm_is_refused_before_anything_is_read_of_its_guest(world):
    world.shared.xen_running.clear()
    world.shared.kvm_defined.add("logger")
    world.shared.kvm_running.add("logger")
    with pytest.raises(GuardError, match="^logger runs on kvm1: prepare it while it runs on xen1"):
        run(world)
    assert not any(host.startswith("guest:") for host, _ in world.shared.log)


def test_dry_run_changes_nothing_and_says_what_it_would_change(world, capsys):
    result = run(world, dry_run=True)
    assert result.ok
    assert result.message.startswith("logger: prepared, would change guest, cfg, define, swap (")
    assert world.changes() == []
    out = capsys.readouterr().out
    assert "would run on kvm1: env LC_ALL=C virsh -c qemu:///system define --validate /var/lib/xenkvm/logger.xml" in out
    assert "+    <cmdline>" not in out and "-root        = '/dev/xvda2 ro'" in out


def test_a_failed_step_keeps_the_steps_before_it_and_names_them(world):
    world.shared.faults["kvm1:virsh -c qemu:///system define"] = 1
    result = run(world)
    assert not result.ok
    assert result.message.startswith("logger: step define failed: kvm1: `virsh -c qemu:///system "
                                     "define --validate /var/lib/xenkvm/logger.xml` failed (exit 1)")
    assert result.message.endswith("; done before it: guest, cfg")
    assert "sda" in world.shared.files[("xen1", "/etc/xen/auto/logger.cfg")]


def test_one_vm_failing_does_not_stop_the_others(tmp_path, mocker):
    world = World(tmp_path, NAMES)
    world.guest_file("/etc/fstab", "/dev/xvdz9 / ext4 defaults 0 1\n", "web")
    mocker.patch.object(prepare, "site_from_context", world.site_for)
    results = prepare.prepare_vms(world.context, world.inv, [world.inv.vm(n) for n in NAMES], prepare.Options(),
                                  dry_run=False, parallel=3, interruption=Interruption())
    assert [(r.vm, r.ok) for r in results] == [("logger", True), ("web", False), ("mail", True)]
    assert results[1].code == 3 and "/dev/xvdz9 is not in the disk map" in results[1].message
    assert set(world.shared.definitions) == {"logger", "mail"}
    assert "xvda2" in world.shared.files[("xen1", "/etc/xen/auto/web.cfg")]
    assert [s.name for s in results[0].steps] == ["checks", "guest", "cfg", "kernel", "define", "swap"]


def rehearse_world(world: World, kernel: str = KERNEL) -> None:
    """A trial on snapshots (not on the DRBD devices) whose console shows the kernel's banner, then
    a login prompt."""
    world.shared.disks_of["logger-rehearsal"] = []
    world.shared.console["logger-rehearsal"] = f"[    0.000000] Linux version {kernel} (debian-kernel@lists)\n" \
                                               "logger login: "


def test_rehearsal_is_recorded_then_skipped_while_it_still_proves_kernel_and_domain(world, capsys):
    rehearse_world(world)
    assert run(world, rehearse=True, rehearse_timeout=5).ok
    record = rehearsals.load(world.dirs.rehearsals, "logger")
    assert (record.passed, record.kernel, record.login, record.host) == (True, KERNEL, True, "kvm1")
    assert any("virsh -c qemu:///system start logger-rehearsal" in c for c in world.changes())

    world.audit.unlink()
    capsys.readouterr()
    again = run(world, rehearse=True, rehearse_timeout=5)
    assert again.message.startswith("logger: prepared, nothing to change (")
    assert world.changes() == []
    assert f"rehearsal ... unchanged (passed at {record.time} on kvm1: kernel {KERNEL} booted to a login prompt)" \
        in capsys.readouterr().out

    world.install_kernel("6.1.0-14-amd64")   # grub boots the newest: the rehearsal no longer proves it
    third = run(world, rehearse=True, rehearse_timeout=5)
    assert "rehearsal" in third.message.split("changed ", 1)[1]


def test_a_failed_rehearsal_is_recorded_and_fails_the_vm(world):
    rehearse_world(world)
    world.shared.faults["kvm1:virsh -c qemu:///system start logger-rehearsal"] = 1
    result = run(world, rehearse=True, rehearse_timeout=5)
    assert not result.ok and result.message.startswith("logger: step rehearsal failed: ")
    record = rehearsals.load(world.dirs.rehearsals, "logger")
    assert not record.passed and "start logger-rehearsal" in record.message


def test_task_options_are_checked_before_anything_is_contacted(world, mocker):
    mocker.patch.object(prepare.inventory, "from_context", lambda c: world.inv)
    site_for = mocker.patch.object(prepare, "site_from_context")
    c = Context(Config(overrides={"state_dir": str(world.tmp)}))
    for options, message in (({"parallel": "0"}, "--parallel must be a whole number"),
                             ({"rehearse_timeout": "soon"}, "--rehearse-timeout must be a number of seconds"),
                             ({"all": True}, "give exactly one of")):
        with pytest.raises(InputError, match=message):
            prepare.prepare(c, vm="logger", **options)
    site_for.assert_not_called()


def test_the_task_reports_each_vm_and_exits_non_zero_when_one_failed(tmp_path, mocker, capsys):
    world = World(tmp_path, NAMES)
    world.guests["mail"].candidates.clear()
    mocker.patch.object(prepare.inventory, "from_context", lambda c: world.inv)
    mocker.patch.object(prepare, "site_from_context", world.site_for)
    with pytest.raises(ToolError, match="^1 of 3 VMs failed: mail$"):
        prepare.prepare(world.context, all=True)
    out = capsys.readouterr().out
    assert "== 2 of 3 VMs done" in out and "  FAILED mail: guest:mail: grub-pc is not installed" in out
    assert set(world.shared.definitions) == {"logger", "web"}


HVM_CFG = """\
builder = 'hvm'
name = 'logger'
memory = 2048
disk = [ 'phy:/dev/drbd5,hda,w', 'phy:/dev/drbd6,hdb,w', 'phy:/dev/vg_main/logger-swap,hdc,w' ]
vif = [ 'mac=00:16:3E:37:D0:70,bridge=br0' ]
"""


def test_an_hvm_guest_without_guest_address_gets_every_step_but_the_guests(tmp_path, capsys):
    world = World(tmp_path, guest_address=None)
    world.shared.files[("xen1", "/etc/xen/auto/logger.cfg")] = HVM_CFG
    result = run(world)
    assert result.ok and result.message.startswith("logger: prepared, changed define, swap (")
    assert "* logger: guest steps ... skipped (HVM guest without guest_address)" in capsys.readouterr().out
    assert world.shared.files[("xen1", "/etc/xen/auto/logger.cfg")] == HVM_CFG
    assert "<target dev='hda' bus='ide'/>" in world.shared.definitions["logger"]
    assert not any(host.startswith("guest:") for host, _ in world.shared.log)


def test_a_pv_guest_without_guest_address_is_refused_before_any_change(tmp_path):
    world = World(tmp_path, guest_address=None)
    with pytest.raises(ToolError, match="^vms.logger.guest_address is not set: the guest stage needs SSH"):
        run(world)
    assert world.changes() == []


def test_a_stop_request_ends_a_rehearsal_wait_and_the_trial_is_cleaned_up(world, mocker):
    """A fleet run turns Ctrl-C into a stop request: the trial's wait for its prompt must heed it."""
    world.shared.disks_of["logger-rehearsal"] = []
    site = world.site()

    def no_prompt_yet(remote, name):
        site.interruption.request("interrupted (SIGINT)", 130)
        return False

    mocker.patch.object(prepare.kvmhost, "console_shows_login", side_effect=no_prompt_yet)
    try:
        result = prepare.prepare_vm(site, world.inv, world.inv.vm("logger"),
                                    prepare.Options(rehearse=True, rehearse_timeout=5), world.dirs)
    finally:
        site.close()
    assert not result.ok and result.code == 130
    assert result.message == ("logger: stopped at step rehearsal (interrupted (SIGINT)); "
                              "done before it: guest, cfg, define, swap")
    assert "logger-rehearsal" not in world.shared.kvm_defined
    assert [a for a in world.shared.snapshots if a[0] == "rm" and a[-1].endswith(".qcow2")] == [], \
        "seed inventory: LVM snapshots"
    assert [a[-1] for a in world.shared.snapshots if a[0] == "lvremove"] == [
        f"/dev/vg_main/logger-{d}-rehearsal" for d in ("sdc", "sdb", "sda")]
