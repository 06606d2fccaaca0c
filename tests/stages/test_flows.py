"""Flows at command level: exact sequences both ways, guards, undo at every step, rollback."""

from __future__ import annotations

import json
import threading

import pytest

from tasks import flows
from tasks.errors import GuardError
from tasks.inventory import load_inventory
from tasks.remote import AuditLog, Site
from tests.conftest import REPO
from tests.seed import SEED_CFG as CFG
from tests.stages.fakehosts import FakeHost, Shared

RESOURCES = ("logger-system", "logger-var")


class Killed(BaseException):
    """Stands for the process dying mid-step: nothing in the flow may catch it."""


@pytest.fixture
def world(tmp_path):
    inv = load_inventory(REPO / "hosts.yml")
    shared = Shared(roles={r: {"xen1": "Primary", "kvm1": "Secondary"} for r in RESOURCES},
                    disk={r: {"xen1": "UpToDate", "kvm1": "UpToDate"} for r in RESOURCES},
                    xen_running={"logger"})
    shared.files[("xen1", "/etc/xen/auto/logger.cfg")] = CFG
    hosts = {"xen1": FakeHost("xen1", "xen", "kvm1", shared), "kvm1": FakeHost("kvm1", "kvm", "xen1", shared)}

    class World:
        def __init__(self):
            self.shared, self.inv, self.tmp = shared, inv, tmp_path
            self.audit = tmp_path / "audit.jsonl"

        def site(self, dry_run=False):
            return Site(inv, dry_run=dry_run, audit=AuditLog(self.audit),
                        connect=lambda label, *a, **k: hosts[label])

        def move(self, to, dry_run=False, **kw):
            ctx = flows.Ctx(self.site(dry_run), inv, inv.vm("logger"), timeout=kw.pop("timeout", 0.2),
                            force=kw.pop("force", False))
            return flows.move(ctx, to, tmp_path / "journal", tmp_path / "locks", dry_run)

        def rollback(self):
            ctx = flows.Ctx(self.site(), inv, inv.vm("logger"), timeout=0.2)
            return flows.rollback_vm(ctx, tmp_path / "journal", tmp_path / "locks")

        def changes(self):
            if not self.audit.exists():
                return []
            entries = [json.loads(line) for line in self.audit.read_text().splitlines()]
            return [f"{e['host']}: {e['command']}" for e in entries if e["kind"] == "change"
                    and not e["command"].startswith(("mkdir", "sh -c"))]

        def where(self):
            return (sorted(shared.xen_running), sorted(shared.kvm_running),
                    {r: (v["xen1"], v["kvm1"]) for r, v in shared.roles.items()})

    return World()


ON_XEN = (["logger"], [], {r: ("Primary", "Secondary") for r in RESOURCES})
ON_KVM = ([], ["logger"], {r: ("Secondary", "Primary") for r in RESOURCES})

TO_KVM = [
    "kvm1: env LANG=C virsh -c qemu:///system define --validate /var/lib/xenkvm/logger.xml",
    "xen1: xl shutdown logger",
    "xen1: drbdadm secondary logger-system logger-var",
    "kvm1: drbdadm primary logger-system logger-var",
    "kvm1: env LANG=C virsh -c qemu:///system start logger",
]
TO_XEN = [
    "kvm1: env LANG=C virsh -c qemu:///system shutdown logger",
    "kvm1: drbdadm secondary logger-system logger-var",
    "xen1: drbdadm primary logger-system logger-var",
    "xen1: xl create /etc/xen/auto/logger.cfg",
]


def test_to_kvm_sends_exactly_the_seed_procedure(world):
    outcome = world.move("kvm")
    assert outcome.ok and outcome.runs_on == ["kvm1"]
    assert world.changes() == TO_KVM
    assert world.where() == ON_KVM
    assert world.shared.violations == []
    xml = world.shared.files[("kvm1", "/var/lib/xenkvm/logger.xml")]
    assert "00:16:3e:37:d0:70" in xml and "/dev/drbd5" in xml


def test_to_kvm_lists_each_host_only_where_it_must(world):
    """Where the VM runs and whether libvirt knows it come from one look per host; the only
    other listings are the shutdown wait's and the check that the domain runs after start."""
    assert world.move("kvm").ok
    probes = [json.loads(line) for line in world.audit.read_text().splitlines()]
    listings = [(e["host"], e["command"].split()[-2:]) for e in probes if e["kind"] == "probe"
                and e["command"].endswith(("list --all", "xl list"))]
    assert listings.count(("kvm1", ["list", "--all"])) == 2
    assert sorted(listings[:2]) == [("kvm1", ["list", "--all"]), ("xen1", ["xl", "list"])]   # at once


def test_the_downtime_holds_the_switch_and_the_promotion_guard_only(world):
    """From the listing that saw the guest gone to the start: demote, the target's DRBD
    status (the guard against two Primaries), promote; no other probe."""
    assert world.move("kvm").ok
    entries = [json.loads(line) for line in world.audit.read_text().splitlines()]
    sent = [f"{e['host']}: {e['command']}" for e in entries]
    gone = max(i for i, c in enumerate(sent) if c == "xen1: xl list")
    start = sent.index("kvm1: env LANG=C virsh -c qemu:///system start logger")
    assert sent[gone + 1:start] == ["xen1: drbdadm secondary logger-system logger-var",
                                    "kvm1: drbdadm status logger-system logger-var",
                                    "kvm1: drbdadm primary logger-system logger-var"]


def test_and_back_to_xen(world):
    assert world.move("kvm").ok
    world.audit.unlink()
    outcome = world.move("xen")
    assert outcome.ok and outcome.runs_on == ["xen1"]
    assert world.changes() == TO_XEN
    assert world.where() == ON_XEN
    assert world.shared.violations == []


def test_dry_run_sends_no_change_and_prints_the_plan(world, capsys):
    outcome = world.move("kvm", dry_run=True)
    assert outcome.ok
    assert world.changes() == []
    assert world.where() == ON_XEN
    out = capsys.readouterr().out
    assert "1. define logger on kvm1" in out and "2. shut logger down on xen1" in out
    assert "5. start logger on kvm1" in out
    assert "would run on kvm1:" in out and "+++ kvm1:/var/lib/xenkvm/logger.xml (new)" in out


SWAP = "/dev/vg_main/logger-swap"
XEN_SWAP = {"TYPE": "swap", "UUID": "5d1c0b4e-0000-4000-8000-00000000a001"}


@pytest.mark.parametrize("kvm_swap", [{"TYPE": "swap", "UUID": "5d1c0b4e-0000-4000-8000-00000000b002"}, None])
def test_kvm_hosts_swap_gets_the_guests_swap_uuid_before_the_shutdown(world, kvm_swap):
    """fstab names the swap by UUID: the KVM host's own swap LV (or a blank one) must carry it."""
    world.shared.signatures[("xen1", SWAP)] = dict(XEN_SWAP)
    if kvm_swap:
        world.shared.signatures[("kvm1", SWAP)] = kvm_swap
    assert world.move("kvm").ok
    assert world.changes() == [TO_KVM[0], f"kvm1: mkswap -U {XEN_SWAP['UUID']} {SWAP}", *TO_KVM[1:]]
    assert world.shared.signatures[("kvm1", SWAP)] == XEN_SWAP
    world.audit.unlink()
    assert world.move("xen").ok
    assert world.changes() == TO_XEN, "the swaps match now: nothing to format on the way back"


def test_failed_mkswap_stops_the_move_before_the_guest_stops(world):
    world.shared.signatures[("xen1", SWAP)] = dict(XEN_SWAP)
    world.shared.faults[f"kvm1:mkswap -U {XEN_SWAP['UUID']} {SWAP}"] = 1
    outcome = world.move("kvm")
    assert not outcome.ok and "mkswap" in outcome.message
    assert world.where() == ON_XEN
    assert not any("shutdown" in line for line in world.changes())


def test_kvm_hosts_local_disk_that_is_not_swap_is_left_alone(world, capsys):
    world.shared.signatures[("xen1", SWAP)] = dict(XEN_SWAP)
    world.shared.signatures[("kvm1", SWAP)] = {"TYPE": "ext4", "UUID": "0e0e"}
    assert world.move("kvm").ok
    assert world.changes() == TO_KVM
    assert world.shared.signatures[("kvm1", SWAP)]["TYPE"] == "ext4"
    assert f"kvm1:{SWAP} holds ext4, not swap: left as it is" in capsys.readouterr().out


def test_dry_run_shows_the_swap_step_and_formats_nothing(world, capsys):
    world.shared.signatures[("xen1", SWAP)] = dict(XEN_SWAP)
    assert world.move("kvm", dry_run=True).ok
    assert ("kvm1", SWAP) not in world.shared.signatures
    out = capsys.readouterr().out
    assert f"2. give kvm1:{SWAP} the UUID of logger's swap: mkswap -U {XEN_SWAP['UUID']} {SWAP}" in out
    assert f"would run on kvm1: mkswap -U {XEN_SWAP['UUID']} {SWAP}" not in out


def test_match_swap_by_hand_formats_the_kvm_hosts_swap_once(world, capsys):
    world.shared.signatures[("xen1", SWAP)] = dict(XEN_SWAP)
    logger = world.inv.vm("logger")
    first = flows.match_swaps(world.site(), world.inv, logger, "kvm")
    again = flows.match_swaps(world.site(), world.inv, logger, "kvm")
    assert first == [flows.localdisk.SwapMatch(SWAP, XEN_SWAP["UUID"])] and again == []
    assert world.changes() == [f"kvm1: mkswap -U {XEN_SWAP['UUID']} {SWAP}"]
    assert world.shared.signatures[("kvm1", SWAP)] == XEN_SWAP
    assert f"ok: kvm1:{SWAP} is swap with the UUID the guest's fstab names" in capsys.readouterr().out


def test_match_swap_dry_run_shows_the_mkswap_only(world, capsys):
    world.shared.signatures[("xen1", SWAP)] = dict(XEN_SWAP)
    assert flows.match_swaps(world.site(dry_run=True), world.inv, world.inv.vm("logger"), "kvm")
    assert world.changes() == [] and ("kvm1", SWAP) not in world.shared.signatures
    assert f"would run on kvm1: mkswap -U {XEN_SWAP['UUID']} {SWAP}" in capsys.readouterr().out


def test_match_swap_refuses_on_the_side_where_the_guest_runs(world):
    world.shared.signatures[("xen1", SWAP)] = dict(XEN_SWAP)
    world.shared.signatures[("kvm1", SWAP)] = {"TYPE": "swap", "UUID": "5d1c0b4e-0000-4000-8000-00000000b002"}
    with pytest.raises(GuardError, match="logger runs on xen1: its swap there is one of its disks"):
        flows.match_swaps(world.site(), world.inv, world.inv.vm("logger"), "xen")
    assert world.changes() == []


@pytest.mark.parametrize("setup, message", [
    (lambda s: s.kvm_running.add("logger") or s.kvm_defined.add("logger"), "runs on BOTH xen1 and kvm1"),
    (lambda s: s.xen_running.clear(), "is not running on xen1"),
    (lambda s: s.disk["logger-var"].update(kvm1="Inconsistent"), "logger-var is UpToDate/Inconsistent"),
    (lambda s: setattr(s, "connection", "StandAlone"), "not Connected"),
    (lambda s: s.roles["logger-system"].update(kvm1="Primary"), "logger-system is Primary, expected Secondary"),
])
def test_guards_refuse_before_any_change(world, setup, message):
    setup(world.shared)
    before = world.where()
    with pytest.raises(GuardError, match=message):
        world.move("kvm")
    assert world.changes() == []
    assert world.where() == before
    assert not (world.tmp / "journal" / "logger.json").exists()


def _fault_points(sequence):
    return [(line.split(": ", 1)[0], line.split(": ", 1)[1].removeprefix("env LANG=C ")) for line in sequence]


@pytest.mark.parametrize("host, command", _fault_points(TO_KVM))
def test_fault_at_every_step_to_kvm_ends_where_it_started(world, host, command):
    world.shared.faults[f"{host}:{command}"] = 1
    outcome = world.move("kvm")
    assert not outcome.ok
    assert outcome.runs_on == ["xen1"]
    assert "failed" in outcome.message and "now runs on xen1" in outcome.message
    assert world.where() == ON_XEN
    assert world.shared.violations == []
    assert not (world.tmp / "journal" / "logger.json").exists()


@pytest.mark.parametrize("host, command", _fault_points(TO_XEN))
def test_fault_at_every_step_to_xen_ends_where_it_started(world, host, command):
    assert world.move("kvm").ok
    world.shared.faults[f"{host}:{command}"] = 1
    outcome = world.move("xen")
    assert not outcome.ok and outcome.runs_on == ["kvm1"]
    assert world.where() == ON_KVM
    assert world.shared.violations == []


def test_undo_runs_in_reverse_order(world):
    world.shared.faults["kvm1:virsh -c qemu:///system start logger"] = 1
    world.move("kvm")
    undo = world.changes()[len(TO_KVM):]
    assert undo == [
        "kvm1: drbdadm secondary logger-system logger-var",
        "xen1: drbdadm primary logger-system logger-var",
        "xen1: xl create /etc/xen/auto/logger.cfg",
        "kvm1: env LANG=C virsh -c qemu:///system undefine logger",
    ]


def test_the_start_step_checks_what_the_steps_before_established(world):
    """Run out of order, before the shutdown and the promotion proved anything, the start step
    refuses instead of letting DRBD 9's auto-promote make kvm1 Primary on the domain's open."""
    world.shared.auto_promote = True
    world.shared.connection = "Connecting"        # kvm1 would not see xen1's Primary
    world.shared.kvm_defined.add("logger")
    ctx = flows.Ctx(world.site(), world.inv, world.inv.vm("logger"), timeout=0.2)
    start = flows.plan_move(ctx, "kvm", None, "shut off")[-2]
    assert start.name == "start logger on kvm1"
    with pytest.raises(GuardError, match=r"^kvm1: refusing to start logger: DRBD logger-system is Unknown, "
                                         r"logger-var is Unknown there, not Primary"):
        start.action()
    assert world.changes() == [] and world.shared.violations == []


def test_the_start_step_refuses_while_the_source_is_not_known_stopped(world):
    for roles in world.shared.roles.values():
        roles.update(kvm1="Primary")
    ctx = flows.Ctx(world.site(), world.inv, world.inv.vm("logger"), timeout=0.2)
    with pytest.raises(GuardError, match=r"^kvm1: refusing to start logger: it runs on xen1 \(never one guest twice\)$"):
        flows.Established(primary=RESOURCES).start(ctx, "kvm")
    assert world.changes() == []


def _undo_start(world):
    ctx = flows.Ctx(world.site(), world.inv, world.inv.vm("logger"), timeout=0.2)
    flows.run_undo(ctx, {"op": "start", "side": "xen"})


def test_the_undo_restart_probes_the_guards_facts(world):
    world.shared.xen_running.clear()
    _undo_start(world)
    probes = [json.loads(line) for line in world.audit.read_text().splitlines()]
    sent = [f"{e['host']}: {e['command']}" for e in probes]
    assert sent[-1] == "xen1: xl create /etc/xen/auto/logger.cfg"
    assert {"xen1: drbdadm status logger-system logger-var",
            "kvm1: env LANG=C virsh -c qemu:///system list --all"} <= set(sent[:-1])


@pytest.mark.parametrize("setup, message", [
    (lambda s: [r.update(xen1="Secondary") for r in s.roles.values()], "DRBD logger-system is Secondary"),
    (lambda s: s.kvm_running.add("logger") or s.kvm_defined.add("logger"), "it runs on kvm1"),
])
def test_the_undo_restart_refuses_what_the_guard_refuses(world, setup, message):
    world.shared.xen_running.clear()
    setup(world.shared)
    with pytest.raises(GuardError, match=f"^xen1: refusing to start logger: {message}"):
        _undo_start(world)
    assert "xen1: xl create /etc/xen/auto/logger.cfg" not in world.changes()


def test_stubborn_guest_is_not_destroyed_without_force(world):
    world.shared.stubborn = True
    outcome = world.move("kvm", timeout=0.1)
    assert not outcome.ok and "--force" in outcome.message
    assert world.where() == ON_XEN
    assert not any("destroy" in line for line in world.changes())


def test_stubborn_guest_is_destroyed_with_force(world):
    world.shared.stubborn = True
    assert world.move("kvm", timeout=0.1, force=True).ok
    assert "xen1: xl destroy logger" in world.changes()
    assert world.where() == ON_KVM


class _KillOn:
    """Wraps a fake host so that one command kills the 'process'."""

    def __init__(self, host, command):
        self.host, self.command = host, command

    def run(self, command, **kw):
        if command.endswith(self.command):
            raise Killed()
        return self.host.run(command, **kw)


@pytest.mark.parametrize("command", ["drbdadm primary logger-system logger-var", "virsh -c qemu:///system start logger"])
def test_killed_run_then_rollback(world, command):
    site = world.site()
    real = site._connect
    site._connect = lambda label, *a, **k: _KillOn(real(label), command) if label == "kvm1" else real(label)
    ctx = flows.Ctx(site, world.inv, world.inv.vm("logger"), timeout=0.2)
    with pytest.raises(Killed):
        flows.move(ctx, "kvm", world.tmp / "journal", world.tmp / "locks")
    assert (world.tmp / "journal" / "logger.json").exists()
    with pytest.raises(GuardError, match=r"unfinished run .*`fab rollback --vm logger`"):
        world.move("kvm")
    outcome = world.rollback()
    assert outcome.ok and outcome.runs_on == ["xen1"]
    assert world.where() == ON_XEN
    assert world.shared.violations == []
    assert world.move("kvm").ok


def test_second_concurrent_run_is_refused(world):
    lock = flows.VmLock(world.tmp / "locks", "logger")
    with lock:
        errors = []

        def other():
            try:
                world.move("kvm")
            except GuardError as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "already being handled by pid" in errors[0]
    assert world.changes() == []


def test_rollback_without_journal_reports_where_it_runs(world):
    outcome = world.rollback()
    assert outcome.ok and outcome.runs_on == ["xen1"] and "no unfinished run" in outcome.message


def test_a_vm_already_on_the_target_is_left_alone(world):
    assert world.move("kvm").ok
    world.audit.unlink()
    outcome = world.move("kvm")
    assert outcome.ok and outcome.message == "logger: already on kvm1"
    assert world.changes() == []


@pytest.mark.parametrize("host, verb", [("xen1", "secondary"), ("kvm1", "primary")])
def test_a_role_change_that_fails_halfway_is_undone_too(world, host, verb):
    """drbdadm changed logger-system, then failed on logger-var: the undo must still reach both."""
    world.shared.fail_halfway = (host, verb, "logger-var")
    outcome = world.move("kvm")
    assert not outcome.ok and outcome.runs_on == ["xen1"]
    assert world.where() == ON_XEN
    assert world.shared.violations == []


# -- kvmhost.rehearse: snapshots, a throwaway domain, cleanup always -----------------------------

def _rehearsal_world(world):
    world.shared.disks_of["logger-rehearsal"] = []     # runs on snapshots, not on the DRBD devices
    from tasks import kvmhost
    return kvmhost


@pytest.mark.parametrize("method, create, remove", [
    ("qcow2", ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/dev/vg_main/logger-system",
               "/var/lib/xenkvm/rehearsal/logger-sda-rehearsal.qcow2"],
     ["rm", "-f", "--", "/var/lib/xenkvm/rehearsal/logger-sda-rehearsal.qcow2"]),
    ("lvm", ["lvcreate", "--snapshot", "--name", "logger-sda-rehearsal", "--size", "1G",
             "/dev/vg_main/logger-system"],
     ["lvremove", "-f", "/dev/vg_main/logger-sda-rehearsal"]),
])
def test_rehearsal_boots_on_snapshots_and_cleans_up(world, method, create, remove):
    kvmhost = _rehearsal_world(world)
    kvmhost.rehearse_vm(world.site(), world.inv, world.inv.vm("logger"), seconds=0.1, method=method)
    snaps = world.shared.snapshots
    assert create in snaps and remove in snaps
    assert snaps.index(remove) > snaps.index(create)
    assert len([a for a in snaps if a[0] in ("qemu-img", "lvcreate")]) == 3, "one snapshot per disk"
    xml = world.shared.files[("kvm1", "/var/lib/xenkvm/logger-rehearsal.xml")]
    assert "/dev/drbd5" not in xml and "<interface" not in xml, "never the real disks, never the guest's MAC"
    assert "logger-rehearsal" not in world.shared.kvm_defined | world.shared.kvm_running
    assert world.where() == ON_XEN, "the real guest was never touched"


def test_rehearsal_names_a_kvm_swap_without_the_guests_uuid_and_formats_nothing(world, capsys):
    kvmhost = _rehearsal_world(world)
    world.shared.signatures[("xen1", SWAP)] = dict(XEN_SWAP)
    kvmhost.rehearse_vm(world.site(), world.inv, world.inv.vm("logger"), seconds=0.1, method="qcow2")
    assert f"note: kvm1:{SWAP} lacks the UUID of logger's swap" in capsys.readouterr().out
    assert not any("mkswap" in line for line in world.changes()) and ("kvm1", SWAP) not in world.shared.signatures


def test_rehearsal_failure_still_cleans_up(world):
    kvmhost = _rehearsal_world(world)
    world.shared.faults["kvm1:virsh -c qemu:///system start logger-rehearsal"] = 1
    with pytest.raises(Exception, match="start logger-rehearsal"):
        kvmhost.rehearse_vm(world.site(), world.inv, world.inv.vm("logger"), seconds=0.1, method="qcow2")
    removed = [a for a in world.shared.snapshots if a[0] == "rm" and a[-1].endswith(".qcow2")]
    assert len(removed) == 3
    assert "logger-rehearsal" not in world.shared.kvm_defined


CONSOLE = "/var/log/libvirt/qemu/logger-rehearsal-console.log"


def test_rehearsal_with_login_passes_at_the_prompt(world, capsys):
    kvmhost = _rehearsal_world(world)
    world.shared.console["logger-rehearsal"] = "Debian GNU/Linux 12 logger ttyS0\n\nlogger login: "
    kvmhost.rehearse_vm(world.site(), world.inv, world.inv.vm("logger"), seconds=30, method="qcow2", login=True)
    assert "logger-rehearsal booted to a login prompt on snapshots" in capsys.readouterr().out
    assert "logger-rehearsal" not in world.shared.kvm_defined
    assert world.where() == ON_XEN


@pytest.mark.parametrize("earlier_prompt", [False, True])
def test_rehearsal_without_a_prompt_fails_and_cleans_up(world, earlier_prompt):
    """A prompt left in the log by an earlier trial does not count: the log starts empty."""
    kvmhost = _rehearsal_world(world)
    if earlier_prompt:
        world.shared.files[("kvm1", CONSOLE)] = "logger login: "
    world.shared.console["logger-rehearsal"] = "Kernel panic - not syncing: VFS: Unable to mount root fs\n"
    with pytest.raises(Exception, match=f"no login prompt on logger-rehearsal's console in 1s; read {CONSOLE}"):
        kvmhost.rehearse_vm(world.site(), world.inv, world.inv.vm("logger"), seconds=1, method="qcow2", login=True)
    assert "logger-rehearsal" not in world.shared.kvm_defined | world.shared.kvm_running
