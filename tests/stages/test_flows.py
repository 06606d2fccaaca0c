"""Flows at command level: exact sequences both ways, guards, undo at every step, rollback."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import threading

import pytest

from tasks import flows
from tasks.errors import GuardError, ToolError
from tasks.inventory import load_inventory
from tasks.journal import UNDO_OPS, Journal, JournalError, VmLock
from tasks.remote import AuditLog, RemoteError, Site
from tests.conftest import REPO
from tests.seed import SEED_CFG as CFG
from tests.stages.fakehosts import FakeHost, Shared
from tests.wire import bare

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
                        connect=lambda label, *a, **k: hosts[label], knock=shared.knock)

        def move(self, to, dry_run=False, **kw):
            ctx = flows.Ctx(self.site(dry_run), inv, inv.vm("logger"), timeout=kw.pop("timeout", 0.2),
                            force=kw.pop("force", False), rollback_timeout=kw.pop("rollback_timeout", 0.2))
            try:
                return flows.move(ctx, to, tmp_path / "journal", tmp_path / "locks", dry_run)
            finally:
                ctx.site.close()

        def rollback(self):
            ctx = flows.Ctx(self.site(), inv, inv.vm("logger"), timeout=0.2)
            try:
                return flows.rollback_vm(ctx, tmp_path / "journal", tmp_path / "locks")
            finally:
                ctx.site.close()

        def changes(self):
            if not self.audit.exists():
                return []
            entries = [json.loads(line) for line in self.audit.read_text().splitlines()]
            return [f"{e['host']}: {bare(e['command'])}" for e in entries if e["kind"] == "change"
                    and not bare(e["command"]).startswith(("mkdir", "sh -c"))]

        def where(self):
            return (sorted(shared.xen_running), sorted(shared.kvm_running),
                    {r: (v["xen1"], v["kvm1"]) for r, v in shared.roles.items()})

    return World()


ON_XEN = (["logger"], [], {r: ("Primary", "Secondary") for r in RESOURCES})
ON_KVM = ([], ["logger"], {r: ("Secondary", "Primary") for r in RESOURCES})

TO_KVM = [
    "kvm1: virsh -c qemu:///system define --validate /var/lib/xenkvm/logger.xml",
    "xen1: xl shutdown logger",
    "xen1: drbdadm secondary logger-system logger-var",
    "kvm1: drbdadm primary logger-system logger-var",
    "kvm1: virsh -c qemu:///system start logger",
]
TO_XEN = [
    "kvm1: virsh -c qemu:///system shutdown logger",
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


@pytest.fixture
def umask_022():
    """The common umask, under which plain mkdir/open make 0755 directories and 0644 files."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("umask_022")
def test_the_state_dir_it_makes_is_private(world, tmp_path):
    """Journals, locks and the audit log name hosts, guests and operators: 0700 dirs, a 0600 log."""
    state = tmp_path / "home" / "state"
    world.audit = state / "audit.jsonl"
    ctx = flows.Ctx(world.site(), world.inv, world.inv.vm("logger"), timeout=0.2)
    assert flows.move(ctx, "kvm", state / "journal", state / "locks").ok
    made = [tmp_path / "home", state, state / "journal", state / "journal" / "done", state / "locks"]
    assert [oct(d.stat().st_mode & 0o777) for d in made] == [oct(0o700)] * 5
    assert oct(world.audit.stat().st_mode & 0o777) == oct(0o600)
    assert world.changes() == TO_KVM, "the audit log was written"


def test_to_kvm_lists_each_host_only_where_it_must(world):
    """Where the VM runs and whether libvirt knows it come from one look per host; the only
    other listings are the shutdown wait's (the guest proves itself up by sshd's banner)."""
    assert world.move("kvm").ok
    probes = [json.loads(line) for line in world.audit.read_text().splitlines()]
    listings = [(e["host"], e["command"].split()[-2:]) for e in probes if e["kind"] == "probe"
                and e["command"].endswith(("list --all", "xl list"))]
    assert listings.count(("kvm1", ["list", "--all"])) == 1
    assert sorted(listings[:2]) == [("kvm1", ["list", "--all"]), ("xen1", ["xl", "list"])]   # at once


def test_the_downtime_holds_the_switch_and_the_promotion_guard_only(world):
    """From the listing that saw the guest gone to the start: demote, the target's DRBD
    status (the guard against two Primaries), promote; no other probe."""
    assert world.move("kvm").ok
    entries = [json.loads(line) for line in world.audit.read_text().splitlines()]
    sent = [f"{e['host']}: {bare(e['command'])}" for e in entries if "command" in e]
    gone = max(i for i, c in enumerate(sent) if c == "xen1: xl list")
    start = sent.index("kvm1: virsh -c qemu:///system start logger")
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
    assert "  1. define logger on kvm1\n" in out and "  2. shut logger down on xen1\n" in out
    assert "  5. start logger on kvm1\n" in out
    assert "would run on kvm1:" in out and "+++ kvm1:/var/lib/xenkvm/logger.xml (new)" in out


def planned_commands(out: str) -> list[str]:
    """The commands a printed plan names, `HOST: COMMAND`, in order."""
    plan = out.split("plan:\n", 1)[1]
    return [line.strip() for line in plan.splitlines() if line.startswith("       ") and ": " in line
            and not line.strip().startswith("then ")]


def sent_changes(entries: list[dict]) -> list[str]:
    """The change commands an audit log recorded, `HOST: COMMAND`; a file write as `write PATH`."""
    shown = []
    for e in entries:
        if e["kind"] != "change":
            continue
        argv = shlex.split(e["command"])
        write = argv[2:4] == ["sh", "-c"] and "mktemp" in argv[4]
        shown.append(f"{e['host']}: {'write ' + argv[6] if write else e['command']}")
    return shown


@pytest.mark.parametrize("to", ["kvm", "xen"])
def test_a_dry_runs_plan_is_exactly_what_the_move_then_sends(world, capsys, to):
    """--dry-run prints each step's commands as they are sent, sudo and locale included."""
    world.shared.signatures[("xen1", SWAP)] = dict(XEN_SWAP)
    if to == "xen":
        assert world.move("kvm").ok
        world.audit.unlink()
    capsys.readouterr()
    assert world.move(to, dry_run=True).ok
    plan = planned_commands(capsys.readouterr().out)
    world.audit.unlink()
    assert world.move(to).ok
    entries = [json.loads(line) for line in world.audit.read_text().splitlines()]
    assert sent_changes(entries) == plan
    assert len(plan) == (7 if to == "kvm" else 4)


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


@pytest.mark.parametrize("held, named", [
    ({"PTTYPE": "dos"}, "holds dos (at 0x1fe)"),                        # a partition table and nothing else
    ({"TYPE": "ext4", "UUID": "0e0e"}, "holds ext4 (at 0x438)"),
    ({"TYPE": "LVM2_member", "UUID": "E1fGss"}, "holds LVM2_member (at 0x218)"),
    ({"TYPE": "swap", "UUID": "5d1c0b4e-0000-4000-8000-00000000b002", "PTTYPE": "dos"},
     "holds swap (at 0xff6), dos (at 0x1fe)"),
    (None, "holds no signature wipefs knows, but its first 1 MiB is not zeros"),
])
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_kvm_local_disk_holding_anything_but_swap_or_nothing_stops_the_move(world, held, named, dry_run):
    """`mkswap -U` would destroy it: the move refuses before any change and names the volume."""
    world.shared.signatures[("xen1", SWAP)] = dict(XEN_SWAP)
    if held:
        world.shared.signatures[("kvm1", SWAP)] = dict(held)
    else:
        world.shared.garbage.add(("kvm1", SWAP))
    with pytest.raises(GuardError, match=rf"^kvm1:{SWAP} {re.escape(named)}: refusing to format it"):
        world.move("kvm", dry_run=dry_run)
    assert world.changes() == [] and world.where() == ON_XEN
    assert world.shared.signatures.get(("kvm1", SWAP)) == held


def test_dry_run_shows_the_swap_step_and_formats_nothing(world, capsys):
    world.shared.signatures[("xen1", SWAP)] = dict(XEN_SWAP)
    assert world.move("kvm", dry_run=True).ok
    assert ("kvm1", SWAP) not in world.shared.signatures
    out = capsys.readouterr().out
    assert (f"  2. give kvm1:{SWAP} the UUID of logger's swap\n"
            f"       kvm1: env LC_ALL=C mkswap -U {XEN_SWAP['UUID']} {SWAP}\n") in out
    assert f"would run on kvm1: env LC_ALL=C mkswap -U {XEN_SWAP['UUID']} {SWAP}" not in out


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
    assert f"would run on kvm1: env LC_ALL=C mkswap -U {XEN_SWAP['UUID']} {SWAP}" in capsys.readouterr().out


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


SPLIT = {"xen1": "633DBF26486B07B7:3EDBF507CAF5AF51:EA3B40C5598B02B5:0000000000000004:1:1:1:0:0:0:0\n",
         "kvm1": "5F82230126E39715:3EDBF507CAF5AF50:EA3B40C5598B02B4:0000000000000004:1:1:1:0:0:0:0\n"}


@pytest.mark.parametrize("to", ["kvm", "xen"])
def test_a_split_brain_refuses_either_way_before_any_change_and_names_it(world, to):
    """Generation ids as Debian's drbd.ko 8.4.11 gave them after each side wrote while apart."""
    world.shared.connection = "StandAlone"
    world.shared.generations.update({("logger-var", host): gi for host, gi in SPLIT.items()})
    before = world.where()
    with pytest.raises(GuardError, match=r"refusing to move logger: split brain on DRBD logger-var: the data on "
                                         r"xen1 and kvm1 diverged .* \(DRBD's user guide, \"Manual split brain "
                                         r"recovery\"\), then retry$"):
        world.move(to)
    assert world.changes() == [] and world.where() == before
    assert not any(cmd.startswith(("xl", "virsh")) for _, cmd in world.shared.log), "refused before asking"


@pytest.mark.parametrize("split, message", [
    (True, "refusing to promote logger: split brain on DRBD logger-var: the data on kvm1 and xen1 diverged"),
    (False, "kvm1: refusing to promote logger-system: it is StandAlone, no peer shown"),
])
def test_promote_on_a_standalone_host_asks_the_other_and_names_a_split_brain(world, split, message):
    """DRBD 8.4 shows a StandAlone resource without its peer (measured on drbd.ko 8.4.11)."""
    from tasks import drbd
    world.shared.connection, world.shared.standalone_hides_peer = "StandAlone", True
    world.shared.roles["logger-system"]["xen1"] = world.shared.roles["logger-var"]["xen1"] = "Secondary"
    if split:
        world.shared.generations.update({("logger-var", host): gi for host, gi in SPLIT.items()})
    site, vm = world.site(), world.inv.vm("logger")
    with pytest.raises(GuardError, match=message):
        drbd.promote(site.host("kvm1"), vm, "kvm1", other=drbd.OtherHost.of(site, vm, "kvm1"))
    assert ("xen1", "drbdadm get-gi logger-var") in world.shared.log
    assert world.changes() == []


def test_a_disconnected_pair_that_did_not_split_is_refused_as_not_connected(world):
    world.shared.connection = "StandAlone"
    with pytest.raises(GuardError, match="logger-system is StandAlone, not Connected"):
        world.move("kvm")
    assert ("xen1", "drbdadm get-gi logger-system") in world.shared.log


PACEMAKER_CIB = (REPO / "tests/data/pacemaker/cib-resources.xml").read_text()


def test_a_vm_pacemaker_manages_is_refused_before_anything_is_asked_of_its_hypervisors(world):
    world.shared.cib = PACEMAKER_CIB     # its ocf:heartbeat:Xen primitive names logger's cfg
    with pytest.raises(GuardError, match=r"^xen1: refusing to move logger: Pacemaker manages it \(primitive "
                                         r"xen_logger, ocf:heartbeat:Xen of /etc/xen/auto/logger.cfg\); move it "
                                         r"with Pacemaker \(crm_resource --move\), not behind its back$"):
        world.move("kvm")
    assert world.changes() == []
    assert [cmd for _, cmd in world.shared.log if cmd.startswith(("xl", "virsh", "drbdadm"))] == []


@pytest.mark.parametrize("path, text, claim", [
    ("/var/lib/ganeti/ssconf_instance_list", "db.example.org\nlogger.example.org\n",
     "Ganeti manages it (instance logger in /var/lib/ganeti/ssconf_instance_list); move it with Ganeti "
     "(gnt-instance failover or migrate)"),
    ("/var/lib/linstor.d/logger-var.res", "# This file was generated by linstor\n",
     "LINSTOR manages it (/var/lib/linstor.d/logger-var.res); move it with LINSTOR (linstor, or the platform "
     "that drives it)"),
])
def test_ganeti_and_linstor_evidence_refuse_too(world, path, text, claim):
    world.shared.files[("kvm1", path)] = text
    with pytest.raises(GuardError) as refused:
        world.move("kvm")
    assert str(refused.value) == f"kvm1: refusing to move logger: {claim}, not behind its back"
    assert world.changes() == []


def test_a_ganeti_node_that_does_not_know_the_vm_lets_it_move(world):
    world.shared.files[("kvm1", "/var/lib/ganeti/ssconf_instance_list")] = "loggerdb.example.org\n"
    assert world.move("kvm").ok


def _fault_points(sequence):
    return [(line.split(": ", 1)[0], line.split(": ", 1)[1]) for line in sequence]


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
        "kvm1: virsh -c qemu:///system undefine logger",
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
    UNDO_OPS["start"](ctx, {"op": "start", "side": "xen"})


def test_the_undo_restart_probes_the_guards_facts(world):
    world.shared.xen_running.clear()
    _undo_start(world)
    probes = [json.loads(line) for line in world.audit.read_text().splitlines()]
    sent = [f"{e['host']}: {bare(e['command'])}" for e in probes]
    assert sent[-1] == "xen1: xl create /etc/xen/auto/logger.cfg"
    assert {"xen1: drbdadm status logger-system logger-var",
            "kvm1: virsh -c qemu:///system list --all"} <= set(sent[:-1])


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

    def __getattr__(self, name):
        return getattr(self.host, name)


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
    lock = VmLock(world.tmp / "locks", "logger")
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


def _step(**changes) -> list[dict]:
    return [{"name": "stop logger on xen1", "host": "xen1", "status": "done",
             "undo": {"op": "start", "side": "xen"}, **changes}]


def _journal(*, without: str = "", **changes) -> bytes:
    """A journal as a run that stopped the guest on xen1 left it, with some fields changed."""
    data = {"vm": "logger", "run": "0123456789ab", "pid": 4242, "who": "root@control",
            "started": "2026-12-01T10:00:00+00:00", "source": "xen1", "target": "kvm1", "to": "kvm",
            "status": "running", "steps": _step(), **changes}
    data.pop(without, None)
    return json.dumps(data).encode()


BROKEN_JOURNALS = {
    "empty": (b"", "not JSON: Expecting value"),
    "not-json": (b"{run: 1}", "not JSON: Expecting property name"),
    "cut-short": (_journal()[:20], "not JSON: Unterminated string"),
    "not-utf8": (b'{"vm": "logger\xff"}', "not JSON: 'utf-8' codec can't decode byte 0xff"),
    "nested-100k": (b"[" * 100_000 + b"]" * 100_000, "not JSON: maximum recursion depth exceeded"),
    "integer-5000-digits": (_journal(pid=0)[:-1] + b', "x": ' + b"9" * 5000 + b"}",
                            "not JSON: Exceeds the limit (4300 digits)"),
    "larger-than-1mib": (_journal(who="x" * (1 << 20)), "larger than 1048576 bytes"),
    "a-list": (b"[]", "a JSON list, not an object"),
    "null": (b"null", "a JSON NoneType, not an object"),
    "a-string": (b'"logger"', "a JSON str, not an object"),
    "missing-steps": (_journal(without="steps"), "steps: expected list, got NoneType"),
    "missing-run": (_journal(without="run"), "run: expected str, got NoneType"),
    "who-null": (_journal(who=None), "who: expected str, got NoneType"),
    "run-a-number": (_journal(run=12), "run: expected str, got int"),
    "run-a-path": (_journal(run="../../../etc/cron.d/x"), "run: '../../../etc/cron.d/x' is not a run id"),
    "another-vm": (_journal(vm="web"), "it is the journal of VM 'web'"),
    "to-unknown": (_journal(to="vmware"), "to: 'vmware' is not one of xen, kvm"),
    "steps-a-string": (_journal(steps="stop"), "steps: expected list, got str"),
    "steps-an-object": (_journal(steps={}), "steps: expected list, got dict"),
    "step-a-string": (_journal(steps=["stop"]), "steps[0]: expected an object, got str"),
    "step-without-status": (_journal(steps=[{"name": "stop", "host": "xen1"}]), "steps[0].status: expected str"),
    "step-status-unknown": (_journal(steps=_step(status="Done")),
                            "steps[0].status: 'Done' is not one of started, done, failed, undone"),
    "undo-op-unknown": (_journal(steps=_step(undo={"op": "format", "side": "kvm"})),
                        "steps[0].undo: expected null or an undo this tool knows, got <dict of 2>"),
    "undo-op-a-list": (_journal(steps=_step(undo={"op": ["start"], "side": "xen"})), "steps[0].undo: expected null"),
    "undo-side-unknown": (_journal(steps=_step(undo={"op": "stop", "side": "vmware"})), "steps[0].undo: expected null"),
    "undo-a-string": (_journal(steps=_step(undo="start")), "steps[0].undo: expected null or an undo this tool knows, "
                                                           "got 'start'"),
    "who-huge": (_journal(who="x" * 100_000), "who: 'xxxx"),
    "who-two-lines": (_journal(who="root\n== logger now runs on kvm1"), "who: 'root\\n== logger now runs on kvm1' "
                                                                        "is not one short line"),
}


@pytest.mark.parametrize("raw, problem", BROKEN_JOURNALS.values(), ids=BROKEN_JOURNALS.keys())
@pytest.mark.parametrize("run", ["rollback", "move", "status"])
def test_a_broken_journal_is_one_line_naming_it_and_nothing_moves(world, raw, problem, run):
    journal = world.tmp / "journal" / "logger.json"
    journal.parent.mkdir()
    journal.write_bytes(raw)
    with pytest.raises(ToolError) as info:
        {"rollback": world.rollback, "move": lambda: world.move("kvm"),
         "status": lambda: Journal.load(journal.parent, "logger")}[run]()
    assert type(info.value) is ToolError
    assert str(info.value).startswith(f"{journal}: not a journal this tool can use (")
    assert problem in str(info.value)
    assert str(info.value).endswith("); inspect it, then move it away")
    assert len(str(info.value)) < 400 and str(info.value).isprintable()
    assert world.changes() == [] and world.where() == ON_XEN
    assert journal.read_bytes() == raw, "left where it is for the operator"


def test_a_journal_that_cannot_be_read_is_one_line(world):
    (world.tmp / "journal" / "logger.json").mkdir(parents=True)
    with pytest.raises(ToolError) as info:
        world.rollback()
    assert str(info.value) == f"{world.tmp / 'journal' / 'logger.json'}: unreadable journal (Is a directory); " \
                              f"inspect it, then move it away"
    assert world.changes() == []


def test_a_well_formed_journal_is_undone(world):
    """The shape the tool writes passes the checks: the guest stopped on xen1 is started again."""
    world.shared.xen_running.clear()
    journal = world.tmp / "journal" / "logger.json"
    journal.parent.mkdir()
    journal.write_bytes(_journal())
    outcome = world.rollback()
    assert outcome.ok and "rolled back (stop logger on xen1)" in outcome.message
    assert world.where() == ON_XEN and not journal.exists()


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
    ("lvm", ["lvcreate", "--snapshot", "--name", "logger-sda-rehearsal", "--size", "1G", "vg_main/logger-system"],
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


def test_rehearsal_asks_lvm_for_the_vg_and_lv_of_a_dev_mapper_backing(world):
    """/dev/mapper/vg--main-logger--system is VG vg-main, LV logger-system: dashes inside a name
    are doubled there, so only LVM can split it."""
    kvmhost = _rehearsal_world(world)
    mapper = "/dev/mapper/vg--main-logger--system"
    world.shared.mapper_lvs[("kvm1", mapper)] = ("vg-main", "logger-system")
    vm = world.inv.vm("logger")
    system = dataclasses.replace(vm.disks[0], backing={"xen1": mapper, "kvm1": mapper})
    vm = dataclasses.replace(vm, disks=(system, *vm.disks[1:]))
    kvmhost.rehearse_vm(world.site(), world.inv, vm, seconds=0.1, method="lvm")
    snaps = world.shared.snapshots
    assert ["lvcreate", "--snapshot", "--name", "logger-sda-rehearsal", "--size", "1G", "vg-main/logger-system"] in snaps
    assert ["lvremove", "-f", "/dev/vg-main/logger-sda-rehearsal"] in snaps
    xml = world.shared.files[("kvm1", "/var/lib/xenkvm/logger-rehearsal.xml")]
    assert "<source dev='/dev/vg-main/logger-sda-rehearsal'/>" in xml


def test_rehearsal_on_lvm_refuses_a_backing_lvm_does_not_know_before_any_snapshot(world):
    kvmhost = _rehearsal_world(world)
    vm = world.inv.vm("logger")
    system = dataclasses.replace(vm.disks[0], backing={"xen1": "/dev/sdb", "kvm1": "/dev/mapper/nothing"})
    vm = dataclasses.replace(vm, disks=(system, *vm.disks[1:]))
    with pytest.raises(ToolError, match=r"^kvm1: /dev/mapper/nothing is not a logical volume LVM can name "
                                        r"\(lvs exit 5\): rehearse with --method qcow2$"):
        kvmhost.rehearse_vm(world.site(), world.inv, vm, seconds=0.1, method="lvm")
    assert [a for a in world.shared.snapshots if a[0] == "lvcreate"] == []


def test_rehearsal_names_a_kvm_swap_without_the_guests_uuid_and_formats_nothing(world, capsys):
    kvmhost = _rehearsal_world(world)
    world.shared.signatures[("xen1", SWAP)] = dict(XEN_SWAP)
    kvmhost.rehearse_vm(world.site(), world.inv, world.inv.vm("logger"), seconds=0.1, method="qcow2")
    assert f"note: kvm1:{SWAP} lacks the UUID of logger's swap" in capsys.readouterr().out
    assert not any("mkswap" in line for line in world.changes()) and ("kvm1", SWAP) not in world.shared.signatures


def test_rehearsal_notes_a_kvm_swap_it_may_not_format_and_goes_on(world, capsys):
    """The trial boots a snapshot of that volume: nothing is written to it, so it is no refusal."""
    kvmhost = _rehearsal_world(world)
    world.shared.signatures[("xen1", SWAP)] = dict(XEN_SWAP)
    world.shared.signatures[("kvm1", SWAP)] = {"PTTYPE": "dos"}
    kvmhost.rehearse_vm(world.site(), world.inv, world.inv.vm("logger"), seconds=0.1, method="qcow2")
    assert f"note: kvm1:{SWAP} holds dos (at 0x1fe): refusing to format it" in capsys.readouterr().out
    assert world.shared.signatures[("kvm1", SWAP)] == {"PTTYPE": "dos"}
    assert "logger-rehearsal" not in world.shared.kvm_defined


def test_rehearsal_failure_still_cleans_up(world):
    kvmhost = _rehearsal_world(world)
    world.shared.faults["kvm1:virsh -c qemu:///system start logger-rehearsal"] = 1
    with pytest.raises(RemoteError, match="start logger-rehearsal"):
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
    with pytest.raises(ToolError, match=f"no login prompt on logger-rehearsal's console in 1s; read {CONSOLE}") as info:
        kvmhost.rehearse_vm(world.site(), world.inv, world.inv.vm("logger"), seconds=1, method="qcow2", login=True)
    assert type(info.value) is ToolError
    assert "logger-rehearsal" not in world.shared.kvm_defined | world.shared.kvm_running


# -- stopping halfway: a stop request, a host that hangs, records that cannot be written ----------

class _OnCommand:
    """Wraps a fake host: `effect(command)` runs when a command ending with `command` is sent; it
    may raise (as a hung or vanished host does) or return None to let the command run."""

    def __init__(self, host, command, effect):
        self.host, self.command, self.effect = host, command, effect

    def run(self, command, **kw):
        if command.endswith(self.command):
            self.effect(command)
        return self.host.run(command, **kw)

    def __getattr__(self, name):   # sftp, create_session: the wrapped host's
        return getattr(self.host, name)


def _site_with(world, host_name, command, effect, dry_run=False):
    site = world.site(dry_run)
    real = site._connect
    site._connect = lambda label, *a, **k: (_OnCommand(real(label), command, effect) if label == host_name
                                            else real(label))
    return site


def _move_on(world, site, to, state="", **kw):
    """A move over `site`; `state` names another control machine's state dir."""
    ctx = flows.Ctx(site, world.inv, world.inv.vm("logger"), timeout=kw.pop("timeout", 5),
                    rollback_timeout=kw.pop("rollback_timeout", 5), **kw)
    try:
        return flows.move(ctx, to, world.tmp / state / "journal", world.tmp / state / "locks")
    finally:
        site.close()


STOP_POINTS_TO_KVM = [(line.split(": ", 1)[0], line.split(": ", 1)[1]) for line in TO_KVM]
STOP_POINTS_TO_XEN = [(line.split(": ", 1)[0], line.split(": ", 1)[1]) for line in TO_XEN]


@pytest.mark.parametrize("host, command", STOP_POINTS_TO_KVM)
def test_a_stop_request_at_any_step_to_kvm_undoes_what_ran(world, host, command):
    """The request arrives while the step's command runs: that command finishes, no new step
    starts, and the undo leaves logger running on xen1 with one Primary per resource."""
    site = _site_with(world, host, command, lambda _c: site.interruption.request("interrupted by SIGINT", 130))
    outcome = _move_on(world, site, "kvm")
    assert not outcome.ok and outcome.runs_on == ["xen1"]
    assert "interrupted by SIGINT" in outcome.message and "now runs on xen1" in outcome.message
    assert world.where() == ON_XEN
    assert world.shared.violations == []
    started = world.changes()
    assert started[:TO_KVM.index(f"{host}: {command}") + 1] == TO_KVM[:TO_KVM.index(f"{host}: {command}") + 1]
    assert not (world.tmp / "journal" / "logger.json").exists(), "undone completely: no journal left"


@pytest.mark.parametrize("host, command", STOP_POINTS_TO_XEN)
def test_a_stop_request_at_any_step_to_xen_undoes_what_ran(world, host, command):
    assert world.move("kvm").ok
    site = _site_with(world, host, command, lambda _c: site.interruption.request("interrupted by SIGTERM", 143))
    outcome = _move_on(world, site, "xen")
    assert not outcome.ok and outcome.runs_on == ["kvm1"] and "interrupted by SIGTERM" in outcome.message
    assert world.where() == ON_KVM
    assert world.shared.violations == []


def test_a_stop_during_the_shutdown_wait_restarts_the_guest_once_it_is_down(world):
    """The guest was asked to shut down and is still going down when the wait is stopped: the
    undo waits until it is gone, then starts it again (starting it while it still ran would
    have been 'already running', and the guest would then have stopped for good)."""
    world.shared.stubborn = True
    listings = []

    def on_listing(_command):
        listings.append(1)
        if len(listings) == 3:          # the wait's second listing: the guest is going down
            site.interruption.request("interrupted by SIGINT", 130)
        if len(listings) == 5:          # during the undo: it is down now
            world.shared.xen_running.discard("logger")

    site = _site_with(world, "xen1", "xl list", on_listing)
    outcome = _move_on(world, site, "kvm")
    assert not outcome.ok and outcome.runs_on == ["xen1"]
    assert world.changes() == [TO_KVM[0], "xen1: xl shutdown logger", "xen1: xl create /etc/xen/auto/logger.cfg",
                               "kvm1: virsh -c qemu:///system undefine logger"]
    assert world.where() == ON_XEN
    assert world.shared.violations == []


def test_a_command_that_never_answers_fails_its_step_in_one_line_and_is_undone(world):
    from invoke import Result
    from invoke.exceptions import CommandTimedOut

    def hang(command):
        raise CommandTimedOut(Result(command=command), timeout=60)

    site = _site_with(world, "kvm1", "drbdadm primary logger-system logger-var", hang)
    outcome = _move_on(world, site, "kvm")
    assert not outcome.ok and outcome.runs_on == ["xen1"]
    assert ("kvm1: `drbdadm primary logger-system logger-var` gave no answer within 60s "
            "(it may still be running there)") in outcome.message
    assert world.where() == ON_XEN and world.shared.violations == []


def test_a_host_that_stops_answering_is_not_asked_again_and_the_undo_goes_on(world):
    """kvm1 cannot even open a session any more (frozen): its undo steps fail at once, the ones
    on xen1 run as far as the guards allow, and the journal is kept for `fab rollback`."""
    import paramiko

    frozen = []

    def freeze(_command):
        frozen.append(1)
        raise paramiko.SSHException("Timeout opening channel.")

    site = _site_with(world, "kvm1", "virsh -c qemu:///system start logger", freeze)
    sent_before = len(world.shared.log)
    with pytest.raises(ToolError) as info:
        _move_on(world, site, "kvm")
    message = str(info.value)
    assert "step 'start logger on kvm1' failed" in message
    assert "it stopped answering earlier in this run" in message and "fab rollback --vm logger" in message
    assert frozen == [1], "a host that stopped answering is asked nothing more"
    kvm_after = [c for h, c in world.shared.log[sent_before:] if h == "kvm1"]
    assert not any("start logger" in c for c in kvm_after)
    assert (world.tmp / "journal" / "logger.json").exists()
    assert world.shared.violations == []


def test_a_start_refused_by_its_host_leaves_a_domain_someone_else_started(world):
    """`virsh start` fails because the domain already runs there (another operator): this run
    started nothing, so its undo must not stop that domain."""
    def someone_else_starts_it(_command):
        world.shared.kvm_running.add("logger")

    site = _site_with(world, "kvm1", "virsh -c qemu:///system start logger", someone_else_starts_it)
    with pytest.raises(ToolError):
        _move_on(world, site, "kvm")
    assert not any(("shutdown" in c or "destroy" in c) and h == "kvm1" for h, c in world.shared.log)
    assert "logger" in world.shared.kvm_running


def test_a_journal_that_cannot_be_written_stops_the_move_and_undoes_it(world, mocker):
    """A full disk on the control machine after the shutdown: the step after it cannot be
    recorded, so it does not start; the undo runs without its records and says so."""
    saves = []
    real_save = Journal.save

    def save(journal):
        saves.append(1)
        if any("xl shutdown" in c for _h, c in world.shared.log):
            raise JournalError("the journal /state/journal/logger.json cannot be written "
                                     "(No space left on device)")
        real_save(journal)

    mocker.patch.object(Journal, "save", save)
    site = world.site()
    outcome = _move_on(world, site, "kvm")
    assert not outcome.ok and outcome.runs_on == ["xen1"]
    assert "No space left on device" in outcome.message
    assert site.interruption.requested, "every other move of the run stops too"
    assert world.where() == ON_XEN and world.shared.violations == []


def test_an_audit_log_that_cannot_be_written_stops_the_move_and_the_undo_logs_to_stderr(world, capsys):
    def disk_full(_command):
        world.audit.unlink()
        world.audit.mkdir()          # every later write of the log fails

    site = _site_with(world, "xen1", "xl shutdown logger", disk_full)
    outcome = _move_on(world, site, "kvm")
    assert not outcome.ok and outcome.runs_on == ["xen1"]
    assert "cannot be written" in outcome.message
    assert world.where() == ON_XEN and world.shared.violations == []
    err = capsys.readouterr().err
    assert '"command": "env LC_ALL=C xl create /etc/xen/auto/logger.cfg"' in err, "the undo's records went to stderr"


def test_a_second_control_machine_is_refused_by_the_lock_on_the_xen_host(world):
    """Each machine has its own state dir, so only the lock held on xen1 keeps them apart; it
    names who holds it, and is free again once the first run is done."""
    refused = []

    def second_machine(_command):
        with pytest.raises(GuardError) as info:
            _move_on(world, world.site(), "kvm", state="other-machine")
        refused.append(str(info.value))

    site = _site_with(world, "xen1", "xl shutdown logger", second_machine)
    assert _move_on(world, site, "kvm").ok
    assert len(refused) == 1
    assert re.fullmatch(r"logger is already being handled by pid \d+ \(\S+@\S+\) since \S+ \(its lock on xen1, "
                        r"/var/lock/xenkvm/logger.lock\); wait for it to finish", refused[0])
    assert world.where() == ON_KVM and world.shared.violations == []
    assert _move_on(world, world.site(), "xen", state="other-machine").ok, "free once the first run is done"


def test_the_host_releases_the_lock_when_the_session_of_a_dead_run_ends(world):
    """A run that dies (SIGKILL, a lost link) holds nothing: its session's end frees the lock."""
    site = world.site()
    with site.vm_lock(world.inv.vm("logger")):
        with pytest.raises(GuardError, match="already being handled"):
            world.move("kvm")
        site._vm_locks["xen1"]._channel.close()     # what the host sees when the run's process dies
        assert world.move("kvm").ok
