"""A move stopped halfway, for real: signals to the real `fab` process group at every step, a
command that never returns, an sshd that freezes, a second control machine, a full disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.runner import ON_KVM, ON_XEN, ok, where
from tests.integration.test_fleet import EVERY, FLEET, placement
from tests.lab import CLIENT_KEY, STATE_DIR, SWITCH_NS

pytestmark = pytest.mark.lab

TO_KVM_STEPS = [  # (step as the journal names it, how the lab holds it there: host, command)
    ("define logger on kvm1", ("kvm1", "virsh define")),
    ("shut logger down on xen1", None),                       # the guest's own shutdown delay
    ("demote DRBD on xen1", ("xen1", "drbdadm secondary")),
    ("promote DRBD on kvm1", ("kvm1", "drbdadm primary")),
    ("start logger on kvm1", ("kvm1", "virsh start")),
]
TO_XEN_STEPS = [
    ("shut logger down on kvm1", None),
    ("demote DRBD on kvm1", ("kvm1", "drbdadm secondary")),
    ("promote DRBD on xen1", ("xen1", "drbdadm primary")),
    ("start logger on xen1", ("xen1", "xl create")),
]
HOLD = 3.0   # seconds a held command waits before it runs: the signal arrives meanwhile


def running_step(state_dir: Path) -> str | None:
    """The step the run's journal says is running now."""
    try:
        steps = json.loads((state_dir / "journal" / "logger.json").read_text())["steps"]
    except (OSError, ValueError):
        return None
    return steps[-1]["name"] if steps and steps[-1]["status"] == "started" else None


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def signal_at(fab, run: subprocess.Popen, step: str, signum: int) -> tuple[int, str, str]:
    """Send `signum` to the run's whole process group, as a terminal's Ctrl-C does, once the
    journal shows `step` running; the run's exit code and output."""
    try:
        wait_for(lambda: running_step(fab.state_dir) == step or run.poll() is not None, f"step {step!r}")
        assert run.poll() is None, f"the run ended before {step!r}: {run.communicate()}"
        os.killpg(run.pid, signum)
        out, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    return run.returncode, out, err


def interrupt_test(lab, fab, steps, index, expected_home):
    step, hold = steps[index]
    signum = signal.SIGINT if index % 2 == 0 else signal.SIGTERM
    if hold:
        lab.fault_add(hold[0], hold[1], exit_code=0, hang=HOLD, once=True)
    code, out, err = signal_at(fab, fab.start("migrate", "--vm", "logger"), step, signum)
    name = signal.Signals(signum).name
    assert code == (130 if signum == signal.SIGINT else 143), out + err
    assert f"interrupted by {name}" in err and f"now runs on {expected_home[0]}" in err, err
    assert where(lab) == expected_home
    assert not (fab.state_dir / "journal" / "logger.json").exists(), "undone to the end: no journal left"


@pytest.mark.parametrize("index", range(len(TO_KVM_STEPS)), ids=[s for s, _ in TO_KVM_STEPS])
def test_a_signal_at_any_step_to_kvm_leaves_the_guest_on_xen(lab, fab, index):
    lab.reset(shutdown_delay=HOLD)
    interrupt_test(lab, fab, TO_KVM_STEPS, index, ON_XEN)
    assert lab.exec("logger", ["true"]).returncode == 0, "the guest answers on xen1 again"


@pytest.mark.parametrize("index", range(len(TO_XEN_STEPS)), ids=[s for s, _ in TO_XEN_STEPS])
def test_a_signal_at_any_step_to_xen_leaves_the_guest_on_kvm(lab, fab, index):
    lab.reset(shutdown_delay=HOLD)
    ok(fab("migrate", "--vm", "logger"))
    interrupt_test(lab, fab, TO_XEN_STEPS, index, ON_KVM)


def test_a_second_signal_during_the_undo_is_refused_and_the_undo_finishes(lab, fab):
    lab.reset(shutdown_delay=1.0)
    lab.fault_add("kvm1", "virsh start", exit_code=0, hang=HOLD, once=True)
    lab.fault_add("xen1", "xl create", exit_code=0, hang=HOLD, once=True)   # holds the undo's restart
    run = fab.start("migrate", "--vm", "logger")
    try:
        wait_for(lambda: running_step(fab.state_dir) == "start logger on kvm1", "the start")
        os.killpg(run.pid, signal.SIGINT)
        wait_for(lambda: any(e["command"].endswith("drbdadm primary logger-system logger-var")
                             and e["host"] == "xen1" for e in fab.audit()), "the undo's promotion on xen1")
        os.killpg(run.pid, signal.SIGINT)
        out, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, out + err
    assert "SIGINT ignored: the undo must finish" in err
    assert where(lab) == ON_XEN


def test_a_signal_stops_a_fleet_of_eight_and_every_guest_ends_on_one_host(lab, fab):
    lab.reset(fleet=len(FLEET), shutdown_delay=1.0)
    lab.fault_add("kvm1", "drbdadm primary", exit_code=0, hang=HOLD)    # every promotion waits
    run = fab.start("migrate", "--vm", ",".join(EVERY), "--parallel", "4")
    try:
        wait_for(lambda: sum(e["command"].startswith("xl shutdown") for e in fab.audit()) >= 2,
                 "the first moves under way")
        os.killpg(run.pid, signal.SIGTERM)
        out, err = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 143, out + err
    assert "interrupted by SIGTERM" in err
    places = placement(lab)        # asserts no violation ever happened
    assert all(home in (("xen1", [("Primary", "Secondary")]), ("kvm1", [("Secondary", "Primary")]))
               for home in places.values()), places
    assert any(home[0] == "xen1" for home in places.values()), "the moves under way were undone"
    summary = [line.split() for line in out.splitlines() if line.startswith(("  ok ", "  FAILED "))]
    assert sorted(words[1].rstrip(":") for words in summary) == sorted(EVERY)
    assert all("runs" in words and "on" in words for words in summary), "each line says where it runs"
    assert not list((fab.state_dir / "journal").glob("*.json")), "every move undone or done: no journal left"


def fast_inventory(lab, tmp_path: Path, **host_settings) -> Path:
    """The lab inventory with hosts that get 5 s per command."""
    data = yaml.safe_load(Path(lab.inventory).read_text())
    for host in data["hosts"].values():
        host.update({"command_timeout": 5, **host_settings})
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_command_that_never_returns_fails_its_step_within_the_bound(lab, fab, tmp_path):
    fab.env["FABRIC_INVENTORY"] = str(fast_inventory(lab, tmp_path))
    lab.fault_add("kvm1", "drbdadm primary", exit_code=0, hang=float("inf"), once=True)
    started = time.monotonic()
    result = fab("migrate", "--vm", "logger", timeout=120)
    took = time.monotonic() - started
    assert result.returncode == 1
    assert "kvm1: `drbdadm primary logger-system logger-var` gave no answer within 5s" in result.stderr
    assert "now runs on xen1" in result.stderr
    assert where(lab) == ON_XEN
    assert took < 60, f"ended within its bound, not {took:.0f}s later"


def test_an_sshd_that_freezes_mid_move_ends_the_move_within_its_bound_then_rollback(lab, fab, tmp_path):
    """kvm1's sshd stops answering while it promotes: the promotion gets no answer, kvm1 cannot
    even open a session after that and is asked nothing more, the undo goes as far as xen1
    allows (never a second Primary), the journal is kept; once kvm1 answers again,
    `fab rollback` brings the guest home."""
    fab.env["FABRIC_INVENTORY"] = str(fast_inventory(lab, tmp_path))
    lab.fault_add("kvm1", "drbdadm primary", exit_code=0, hang=HOLD, once=True)
    run = fab.start("migrate", "--vm", "logger")
    try:
        wait_for(lambda: not json.loads((STATE_DIR / "faults.json").read_text()).get("rules"),
                 "the promotion to be running on kvm1")
        lab.exec("kvm1", ["pkill", "-STOP", "-x", "sshd"], check=True)
        started = time.monotonic()
        out, err = run.communicate(timeout=300)
        took = time.monotonic() - started
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        lab.exec("kvm1", ["pkill", "-CONT", "-x", "sshd"])
    assert run.returncode == 1, out + err
    assert "kvm1: `drbdadm primary logger-system logger-var` gave no answer within 5s" in err
    assert "it stopped answering earlier in this run" in err and "fab rollback --vm logger" in err
    assert took < 60, f"the move ended {took:.0f}s after the freeze"
    assert lab.state()["violations"] == []
    assert (fab.state_dir / "journal" / "logger.json").exists()
    fab.env["FABRIC_INVENTORY"] = str(lab.inventory)
    ok(fab("rollback", "--vm", "logger", timeout=300))
    assert where(lab) == ON_XEN


def test_a_second_control_machine_is_refused_while_the_first_moves_the_vm(lab, fab, tmp_path):
    """Two state dirs, as on two machines: only the lock on xen1 keeps them apart. A run that is
    killed holds nothing: its SSH session's end frees the lock."""
    other = type(fab)(lab, tmp_path / "machine-2")
    lab.fault_add("xen1", "xl shutdown", exit_code=0, hang=HOLD, once=True)
    first = fab.start("migrate", "--vm", "logger")
    wait_for(lambda: running_step(fab.state_dir) == "shut logger down on xen1", "the first run's shutdown")
    second = other("migrate", "--vm", "logger")
    assert second.returncode == 3
    assert "logger is already being handled by pid" in second.stderr
    assert "its lock on xen1, /var/lock/xenkvm/logger.lock" in second.stderr
    assert first.wait(timeout=120) == 0, first.communicate()
    assert where(lab) == ON_KVM

    lab.fault_add("kvm1", "virsh shutdown", exit_code=0, hang=60, once=True)
    killed = fab.start("migrate", "--vm", "logger")
    wait_for(lambda: running_step(fab.state_dir) == "shut logger down on kvm1", "the shutdown")
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=10)
    again = other("migrate", "--vm", "logger", "--dry-run")
    assert "already being handled" not in again.stderr, again.stderr


def test_ssh_config_is_honoured_and_the_agent_is_never_forwarded(lab, tmp_path, mocker):
    """An inventory that names only an alias: ~/.ssh/config gives the address, user, key and
    proxy; its `ForwardAgent yes` is ignored, so the host never sees the operator's agent."""
    from tasks.inventory import parse_inventory
    from tasks.remote import Site

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(
        f"Host xen1-alias\n    Hostname 10.77.0.11\n    User root\n    Port 22\n    IdentityFile {CLIENT_KEY}\n"
        f"    ProxyCommand ip netns exec {SWITCH_NS} nc %h %p\n    ForwardAgent yes\n")
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    agent = subprocess.run(["ssh-agent", "-a", str(agent_dir / "sock")], capture_output=True, text=True, check=True)
    agent_pid = int(agent.stdout.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        subprocess.run(["ssh-add", str(CLIENT_KEY)], env={**os.environ, "SSH_AUTH_SOCK": str(agent_dir / "sock")},
                       capture_output=True, check=True)
        mocker.patch.dict(os.environ, {"HOME": str(home), "SSH_AUTH_SOCK": str(agent_dir / "sock")})
        data = yaml.safe_load(Path(lab.inventory).read_text())
        xen1 = data["hosts"]["xen1"]
        for key in ("proxy_command", "identity_file", "user", "port"):
            xen1.pop(key, None)
        xen1["address"] = "xen1-alias"
        site = Site(parse_inventory(yaml.safe_dump(data)))
        try:
            seen = site.host("xen1").probe(["sh", "-c", 'hostname; echo "agent:${SSH_AUTH_SOCK:-none}"'])
        finally:
            site.close()
    finally:
        os.kill(agent_pid, signal.SIGTERM)
    assert seen.stdout.split() == ["xen1", "agent:none"]


def fill_last_page(path: Path) -> None:
    """Spaces to the end of the file's last tmpfs page: an append there needs no new block, so
    without this the audit log takes a few more records however full the disk (how many depends
    on its length). Spaces before the next JSON line keep it readable."""
    with path.open("ab", buffering=0) as log:
        try:
            while True:
                log.write(b" " * 64)
        except OSError:
            pass


def test_a_full_disk_on_the_control_machine_undoes_the_move(lab, fab, tmp_path):
    """The state dir fills up while the guest shuts down: the next step cannot be recorded, so it
    does not start; the undo runs with its records on stderr and the guest is back on xen1."""
    state = tmp_path / "small"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(state)], check=True)
    try:
        fab.state_dir = state
        fab.env["FABRIC_STATE_DIR"] = str(state)
        lab.fault_add("xen1", "xl shutdown", exit_code=0, hang=HOLD, once=True)
        run = fab.start("migrate", "--vm", "logger")
        wait_for(lambda: running_step(state) == "shut logger down on xen1", "the shutdown")
        subprocess.run(["dd", "if=/dev/zero", f"of={state}/filler", "bs=4k"], capture_output=True)
        fill_last_page(state / "audit.jsonl")
        out, err = run.communicate(timeout=300)
        assert run.returncode == 1, out + err
        assert "No space left on device" in err
        assert "audit: {" in err, "the undo's records went to stderr"
        assert where(lab) == ON_XEN
    finally:
        subprocess.run(["umount", str(state)], check=False)
