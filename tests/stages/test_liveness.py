"""Proof of life at command level: a move succeeds only once the guest answers on the target;
otherwise it falls back (or, with --no-fallback, stays); the downtime of each move."""

from __future__ import annotations

import json
import threading

import pytest

from tasks import flows, liveness
from tasks.errors import GuardError, InputError
from tasks.flows import BootProof
from tests.stages import test_flows
from tests.stages.test_flows import ON_KVM, ON_XEN, TO_KVM, _move_on

world = test_flows.world   # the two hosts and the guest of the flow tests

KVM_CONSOLE = "/var/log/libvirt/qemu/logger-console.log"
XEN_CONSOLE = "/var/log/xen/console/guest-logger.log"
BOOTED = "Debian GNU/Linux 12 logger ttyS0\r\n\r\nlogger login: "
PANIC = "[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\r\n"


XEN_BOOTED = "Debian GNU/Linux 12 logger hvc0\n\nlogger login: "


@pytest.fixture(autouse=True)
def quick_polls(mocker):
    mocker.patch.object(liveness, "BOOT_POLL", 0.01)


def xenconsoled_logs_guests(world) -> None:
    """xen1's xenconsoled keeps guest consoles, and the guest boots there (a fall-back's proof)."""
    world.shared.files[("xen1", "/etc/default/xencommons")] = "# Log xenconsoled messages\nXENCONSOLED_TRACE=guest\n"
    world.shared.xen_console["logger"] = XEN_BOOTED


def move(world, to, **proof):
    """A move that proves its start up as `proof` says, keeping consoles under the test's tmp."""
    return _move_on(world, world.site(), to, timeout=1, rollback_timeout=1,
                    proving=BootProof(**{"boot_timeout": 0.3, **proof}), consoles=world.tmp / "consoles")


def audit(world) -> list[dict]:
    return [json.loads(line) for line in world.audit.read_text().splitlines()]


def test_a_guest_that_answers_on_the_target_is_moved_and_its_downtime_recorded_once(world):
    outcome = move(world, "kvm")
    assert outcome.ok and world.where() == ON_KVM
    assert world.shared.knocks == ["192.0.2.50:22 answered"] * 2, "once on xen1 before the shutdown, once on kvm1"
    down = outcome.downtime
    assert down is not None and min(down.shutdown, down.switch, down.boot) >= 0
    assert down.down == pytest.approx(down.shutdown + down.switch + down.boot)
    records = [e for e in audit(world) if e["kind"] == "downtime"]
    assert len(records) == 1
    assert list(records[0]) == ["time", "kind", "vm", "from", "to", "down", "shutdown", "switch", "boot"]
    assert records[0]["vm"] == "logger" and records[0]["from"] == "xen1" and records[0]["to"] == "kvm1"
    assert records[0]["down"] == round(down.down, 3)


def test_the_plan_says_how_the_start_is_proven_and_sends_nothing_for_it(world, capsys):
    ctx = flows.Ctx(world.site(dry_run=True), world.inv, world.inv.vm("logger"),
                    proving=BootProof(verify="ssh", boot_timeout=42.0))
    assert flows.move(ctx, "kvm", world.tmp / "journal", world.tmp / "locks", dry_run=True).ok
    plan = capsys.readouterr().out.split("plan:\n", 1)[1].splitlines()
    last = plan.index("  6. prove logger up on kvm1")
    assert plan[last + 1] == "       then wait up to 42s for sshd's banner on 192.0.2.50:22", "and no command"
    assert world.shared.knocks == [], "a dry run proves nothing up"


def test_not_up_on_kvm_falls_back_and_the_guest_answers_on_xen_again(world):
    world.shared.unbootable = {"kvm1"}
    outcome = move(world, "kvm")
    assert not outcome.ok and outcome.runs_on == ["xen1"] and outcome.downtime is None
    assert world.where() == ON_XEN and world.shared.violations == []
    assert "not up on kvm1 within 0s (no sshd banner on 192.0.2.50:22)" in outcome.message
    assert "(up again after " in outcome.message
    assert world.shared.knocks[-1] == "192.0.2.50:22 answered", "proven up on xen1 after the fall-back"
    assert world.changes()[len(TO_KVM):] == [
        "kvm1: virsh -c qemu:///system shutdown logger",   # graceful first: it may have mounted its disks
        "kvm1: drbdadm secondary logger-system logger-var",
        "xen1: drbdadm primary logger-system logger-var",
        "xen1: xl create /etc/xen/auto/logger.cfg",
        "kvm1: virsh -c qemu:///system undefine logger",
    ]
    assert not any(e["kind"] == "downtime" for e in audit(world)), "a fall-back is no move"


def test_a_guest_whose_kernel_panicked_is_destroyed_at_once_in_the_fall_back(world):
    """Proven by ssh, the console is still read when it does not answer: a panic there means no
    graceful shutdown can work, so the fall-back does not wait out its grace."""
    world.shared.unbootable = {"kvm1"}
    world.shared.console["logger"] = "SeaBIOS\r\n" + PANIC
    outcome = move(world, "kvm")
    assert not outcome.ok and world.where() == ON_XEN and world.shared.violations == []
    assert world.changes()[len(TO_KVM):] == [
        "kvm1: virsh -c qemu:///system destroy logger",
        "kvm1: drbdadm secondary logger-system logger-var",
        "xen1: drbdadm primary logger-system logger-var",
        "xen1: xl create /etc/xen/auto/logger.cfg",
        "kvm1: virsh -c qemu:///system undefine logger",
    ]


def test_a_panic_on_the_console_ends_the_wait_for_sshd_at_the_first_look_there(world):
    world.shared.unbootable = {"kvm1"}
    world.shared.console["logger"] = "SeaBIOS\r\n" + PANIC
    outcome = move(world, "kvm", boot_timeout=600)
    assert "logger: not up on kvm1: its kernel panicked; its console: " in outcome.message
    assert world.shared.knocks.count("192.0.2.50:22 silent") == 1, "one knock, one look at the console, done"
    assert world.where() == ON_XEN


def test_a_panic_the_console_showed_before_this_start_does_not_count(world):
    world.shared.unbootable = {"kvm1"}
    world.shared.files[("kvm1", KVM_CONSOLE)] = PANIC   # an earlier, failed boot: the log is appended to
    world.shared.console["logger"] = "SeaBIOS\r\n"
    outcome = move(world, "kvm")
    assert "not up on kvm1 within 0s (no sshd banner on 192.0.2.50:22)" in outcome.message
    assert "kvm1: virsh -c qemu:///system shutdown logger" in world.changes()
    assert "kvm1: virsh -c qemu:///system destroy logger" not in world.changes()


def test_not_up_by_console_keeps_its_last_lines_on_the_control_machine(world):
    xenconsoled_logs_guests(world)
    world.shared.console["logger"] = "SeaBIOS\r\n" + PANIC
    outcome = move(world, "kvm", verify="console")
    assert not outcome.ok and world.where() == ON_XEN
    [saved] = (world.tmp / "consoles").iterdir()
    assert saved.name.startswith("logger-") and saved.suffix == ".log"
    assert saved.read_text().endswith("Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n")
    assert f"its console: {saved}" in outcome.message


def test_an_earlier_boots_prompt_on_the_console_does_not_count(world):
    xenconsoled_logs_guests(world)
    world.shared.files[("kvm1", KVM_CONSOLE)] = BOOTED + "\r\nlogger login: root\r\n"
    world.shared.console["logger"] = PANIC
    outcome = move(world, "kvm", verify="console")
    assert not outcome.ok and world.where() == ON_XEN


def test_a_login_prompt_after_this_start_counts(world):
    xenconsoled_logs_guests(world)
    world.shared.files[("kvm1", KVM_CONSOLE)] = PANIC   # an earlier, failed boot
    world.shared.console["logger"] = "[    1.0] Linux version 6.1.0\r\n" + BOOTED
    outcome = move(world, "kvm", verify="console")
    assert outcome.ok and world.where() == ON_KVM


def test_a_fall_back_whose_restart_does_not_answer_either_says_so_and_fails(world):
    world.shared.unbootable = {"kvm1", "xen1"}
    outcome = move(world, "kvm")
    assert not outcome.ok and outcome.runs_on == ["xen1"] and world.where() == ON_XEN
    assert "not up on xen1 within 0s (no sshd banner on 192.0.2.50:22) either" in outcome.message
    assert not (world.tmp / "journal" / "logger.json").exists(), "the undo itself finished"


def test_no_fallback_leaves_it_on_the_target_until_rollback(world):
    world.shared.unbootable = {"kvm1"}
    outcome = move(world, "kvm", fallback=False)
    assert not outcome.ok and outcome.runs_on == ["kvm1"] and world.where() == ON_KVM
    assert "left there (--no-fallback): `fab rollback --vm logger` moves it back" in outcome.message
    with pytest.raises(GuardError, match="unfinished run"):
        move(world, "xen")
    ctx = flows.Ctx(world.site(), world.inv, world.inv.vm("logger"), timeout=1, rollback_timeout=1,
                    proving=BootProof(boot_timeout=0.3))
    back = flows.rollback_vm(ctx, world.tmp / "journal", world.tmp / "locks")
    assert back.ok and world.where() == ON_XEN and "up again after" in back.message


def test_a_stop_request_during_the_wait_undoes_the_move(world):
    """Ctrl-C while the guest boots on kvm1: the wait ends, the move is undone, the guest answers on xen1."""
    world.shared.unbootable = {"kvm1"}
    site = world.site()
    started = threading.Event()
    real = site.guest_answers

    def knock(vm, port, expect=b""):
        if "logger" in world.shared.kvm_running:
            started.set()
            site.interruption.request("interrupted by SIGINT", 130)
        return real(vm, port, expect)

    site.guest_answers = knock
    outcome = _move_on(world, site, "kvm", timeout=1, rollback_timeout=1, proving=BootProof(boot_timeout=30))
    assert started.is_set()
    assert not outcome.ok and "interrupted by SIGINT" in outcome.message and "up again after" in outcome.message
    assert world.where() == ON_XEN


def test_console_proof_on_xen_is_refused_before_any_change_without_xenconsoled_guest_logs(world):
    with pytest.raises(GuardError, match=r"xen1: xenconsoled keeps no guest console log \(XENCONSOLED_TRACE is "
                                         r"unset\).*set XENCONSOLED_TRACE=guest in /etc/default/xencommons"):
        move(world, "kvm", verify="console")
    assert world.changes() == [] and world.where() == ON_XEN


def test_console_proof_on_xen_reads_xenconsoleds_guest_log_after_this_start(world):
    xenconsoled_logs_guests(world)
    world.shared.files[("xen1", XEN_CONSOLE)] = "logger login: "   # the boot before the move
    world.shared.console["logger"] = BOOTED
    assert move(world, "kvm", verify="console").ok
    world.shared.xen_console["logger"] = PANIC
    outcome = move(world, "xen", verify="console")
    assert not outcome.ok and world.where() == ON_KVM
    assert "not up on xen1: its kernel panicked; its console: " in outcome.message
    world.shared.xen_console["logger"] = XEN_BOOTED
    assert move(world, "xen", verify="console").ok and world.where() == ON_XEN


def test_verify_none_counts_the_running_domain(world):
    world.shared.unbootable = {"kvm1"}
    assert move(world, "kvm", verify="none").ok and world.where() == ON_KVM
    assert world.shared.knocks == []


@pytest.mark.parametrize("verify, timeout, problem", [
    ("telnet", None, "--verify must be one of console, ssh, port, none, got 'telnet'"),
    (None, "0", "--boot-timeout must be a whole number of seconds, at least 1, got '0'"),
    (None, "5m", "--boot-timeout must be a whole number of seconds, at least 1, got '5m'"),
])
def test_bad_proof_options_are_input_errors(verify, timeout, problem):
    with pytest.raises(InputError, match=problem):
        flows.boot_proof(verify, timeout)


def test_a_guest_down_before_the_move_counts_its_downtime_from_the_shutdown(world, capsys):
    real = world.shared.knock
    calls = []

    def first_silent(target, expect):
        calls.append(1)
        return len(calls) > 1 and real(target, expect)

    site = world.site()
    site._knock = first_silent
    outcome = _move_on(world, site, "kvm", timeout=1, rollback_timeout=1, proving=BootProof(boot_timeout=1))
    assert outcome.ok and outcome.downtime is not None
    assert "logger gives no sshd's banner on 192.0.2.50:22 on xen1 before its shutdown" in capsys.readouterr().out


def test_verify_port_knocks_without_expecting_a_banner(world, mocker):
    knock = mocker.spy(world.shared, "knock")
    site = world.site()
    site._knock = world.shared.knock
    outcome = _move_on(world, site, "kvm", timeout=1, rollback_timeout=1, proving=BootProof(verify="port"))
    assert outcome.ok and world.where() == ON_KVM
    assert [(call.args[0].port, call.args[1]) for call in knock.call_args_list] == [(22, b""), (22, b"")]
