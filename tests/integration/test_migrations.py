"""Whole runs of `fab` against the lab: real SSH, real libvirt and qemu, simulated Xen and DRBD."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import time
from pathlib import Path

import pytest

from tests.integration.runner import ON_KVM, ON_XEN, ok, where

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("toolstack, drbd_style", [("xl", "9"), ("xm", "8.4"), ("xl", "8.4"), ("xm", "9")])
def test_to_kvm_and_back(lab, fab, toolstack, drbd_style):
    lab.reset(toolstack=toolstack, drbd_style=drbd_style)
    assert where(lab) == ON_XEN
    out = ok(fab("migrate", "--vm", "logger")).stdout
    assert "== logger now runs on kvm1" in out
    assert where(lab) == ON_KVM
    status = ok(fab("status")).stdout
    assert status.splitlines()[1].split()[:2] == ["logger", "kvm1"]
    ok(fab("migrate", "--vm", "logger"))
    assert where(lab) == ON_XEN
    assert lab.exec("logger", ["true"]).returncode == 0, "the guest answers again on the Xen side"


FAULTS_TO_KVM = [("xen1", "xl shutdown"), ("xen1", "drbdadm secondary"), ("kvm1", "drbdadm primary"),
                 ("kvm1", "virsh define"), ("kvm1", "virsh start")]
FAULTS_TO_XEN = [("kvm1", "virsh shutdown"), ("kvm1", "drbdadm secondary"), ("xen1", "drbdadm primary"),
                 ("xen1", "xl create")]


@pytest.mark.parametrize("host, prefix", FAULTS_TO_KVM)
def test_fault_on_the_way_to_kvm_leaves_it_on_xen(lab, fab, host, prefix):
    lab.fault_add(host, prefix, exit_code=1, once=True)
    result = fab("migrate", "--vm", "logger")
    assert result.returncode != 0
    assert "now runs on xen1" in result.stderr, result.stderr
    assert where(lab) == ON_XEN


@pytest.mark.parametrize("host, prefix", FAULTS_TO_XEN)
def test_fault_on_the_way_to_xen_leaves_it_on_kvm(lab, fab, host, prefix):
    ok(fab("migrate", "--vm", "logger"))
    lab.fault_add(host, prefix, exit_code=1, once=True)
    result = fab("migrate", "--vm", "logger")
    assert result.returncode != 0
    assert "now runs on kvm1" in result.stderr, result.stderr
    assert where(lab) == ON_KVM


def _wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_mid_flow_then_rollback(lab, fab):
    lab.fault_add("kvm1", "virsh start", exit_code=0, hang=60)
    run = fab.start("migrate", "--vm", "logger")
    try:
        _wait_for(lambda: any(e["command"] == "drbdadm primary logger-system logger-var" for e in fab.audit()),
                  what="promotion on kvm1")
    except AssertionError:
        os.killpg(run.pid, signal.SIGKILL)
        raise AssertionError(f"no promotion; the run said: {run.communicate()}") from None
    time.sleep(0.5)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=10)
    lab.fault_clear()
    refused = fab("migrate", "--vm", "logger")
    assert refused.returncode != 0 and "fab rollback --vm logger" in refused.stderr
    out = ok(fab("rollback", "--vm", "logger")).stdout
    assert "rolled back" in out
    running_on, roles, violations = where(lab)
    assert (running_on, roles, violations) == ON_XEN
    ok(fab("migrate", "--vm", "logger"))
    assert where(lab) == ON_KVM


def test_second_concurrent_run_is_refused(lab, fab):
    lab.fault_add("xen1", "xl shutdown", exit_code=0, hang=3)
    first = fab.start("migrate", "--vm", "logger")
    _wait_for(lambda: (fab.state_dir / "journal" / "logger.json").exists(), what="the first run's journal")
    second = fab("migrate", "--vm", "logger")
    assert second.returncode != 0
    assert "logger is already being handled by pid" in second.stderr
    assert first.wait(timeout=120) == 0, first.communicate()
    assert where(lab) == ON_KVM


def _checksums(lab) -> dict:
    files = {"xen1": ["/etc/xen/auto/logger.cfg"], "kvm1": ["/var/lib/xenkvm/logger.xml"]}
    sums = {}
    for host, paths in files.items():
        for path in paths:
            done = lab.exec(host, ["sh", "-c", 'cat "$1" 2>/dev/null || echo ABSENT', "sh", path])
            sums[f"{host}:{path}"] = hashlib.sha256(done.stdout.encode()).hexdigest()
    return sums


def test_dry_runs_change_nothing(lab, fab):
    before = (where(lab), _checksums(lab), lab.state())
    out = ok(fab("migrate", "--vm", "logger", "--dry-run")).stdout
    assert "plan:" in out and "would run on kvm1" in out
    ok(fab("xenhost.prepare-cfg", "--vm", "logger", "--console", "--dry-run"))
    ok(fab("kvmhost.define", "--vm", "logger", "--dry-run"))
    after = (where(lab), _checksums(lab), lab.state())
    assert after == before
    kinds = {e["kind"] for e in fab.audit()}
    assert kinds == {"probe", "lock"}, "probes, and the lock on xen1 that every control machine sees"


def test_unknown_host_key_is_refused(lab, fab, tmp_path):
    text = Path(lab.inventory).read_text()
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(text.replace(str(Path(lab.inventory).parent / ".work" / "keys" / "known_hosts"), str(empty)))
    fab.env["FABRIC_INVENTORY"] = str(inventory)
    result = fab("xenhost.state", "--vm", "logger")
    assert result.returncode != 0
    assert "host key for" in result.stderr and "refusing to connect" in result.stderr
    assert "Traceback" not in result.stderr
    assert empty.read_text() == ""


BROKEN_JOURNALS = {
    "a-list": ("[]", "a JSON list, not an object"),
    "undo-side-unknown": (json.dumps({
        "vm": "logger", "run": "0123456789ab", "pid": 1, "who": "root@control", "started": "2026-12-01T10:00:00+00:00",
        "source": "xen1", "target": "kvm1", "to": "kvm", "status": "running",
        "steps": [{"name": "stop logger on xen1", "host": "xen1", "status": "done",
                   "undo": {"op": "stop", "side": "vmware"}}]}), "steps[0].undo: expected null or an undo"),
}


@pytest.mark.parametrize("text, problem", BROKEN_JOURNALS.values(), ids=BROKEN_JOURNALS.keys())
def test_a_broken_journal_is_one_line_for_rollback_migrate_and_status(lab, fab, text, problem):
    journal = fab.state_dir / "journal" / "logger.json"
    journal.parent.mkdir(parents=True)
    journal.write_text(text)
    for command in (["rollback", "--vm", "logger"], ["migrate", "--vm", "logger"], ["status"]):
        result = fab(*command)
        assert result.returncode == 1, result
        [line] = result.stderr.splitlines()
        assert line.startswith("error: ") and f"{journal}: not a journal this tool can use ({problem}" in line
        assert line.endswith("); inspect it, then move it away"), line
    assert where(lab) == ON_XEN
    assert [entry for entry in fab.audit() if entry["kind"] not in ("probe", "lock")] == []


def _planned(out: str) -> list[str]:
    """`HOST: COMMAND` for every command the printed plan names, in order."""
    plan = out.split("plan:\n", 1)[1]
    return [line.strip() for line in plan.splitlines()
            if line.startswith("       ") and not line.strip().startswith("then ")]


def _changes_sent(state_dir: Path) -> list[str]:
    """`HOST: COMMAND` for every change the audit log recorded; a file write as `write PATH`."""
    shown = []
    for line in (state_dir / "audit.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["kind"] == "change":
            argv = shlex.split(entry["command"])
            write = argv[2:4] == ["sh", "-c"] and "mktemp" in argv[4]
            shown.append(f"{entry['host']}: {'write ' + argv[6] if write else entry['command']}")
    return shown


def test_a_moves_changes_are_exactly_its_dry_run_plan_both_ways(lab, fab):
    """What --dry-run prints is what the move then sends, command for command, in order."""
    for direction in ("to KVM", "back to Xen"):
        plan = _planned(ok(fab("migrate", "--vm", "logger", "--dry-run")).stdout)
        (fab.state_dir / "audit.jsonl").unlink()
        ok(fab("migrate", "--vm", "logger"))
        assert _changes_sent(fab.state_dir) == plan, direction
        assert all(command.split(": ", 1)[1].startswith(("env LC_ALL=C ", "write ")) for command in plan)
        (fab.state_dir / "audit.jsonl").unlink()
    assert where(lab) == ON_XEN
