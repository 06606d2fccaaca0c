"""Many VMs at once in the lab: the guest and seven fleet VMs, eight in parallel, one failing."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.integration.runner import ok
from tests.lab import GUEST, fleet_vms
from tests.lab.config import KVM_MAX_STARTS

pytestmark = pytest.mark.lab

FLEET = [vm["name"] for vm in fleet_vms(7)]
EVERY = [GUEST["name"], *FLEET]
FAILING = "fleet04"


def placement(lab) -> dict[str, tuple]:
    """Each VM's host and its disks' roles (xen1, kvm1); asserts nothing unsafe ever happened."""
    state = lab.state()
    assert state["violations"] == []
    return {name: (vm["running_on"], sorted({(roles["xen1"], roles["kvm1"]) for roles in vm["drbd"].values()}))
            for name, vm in state["vms"].items()}


def most_at_once(entries: list[dict]) -> int:
    """The most audited commands that ran at one moment (each entry is logged when it ends)."""
    spans = []
    for e in entries:
        end = datetime.fromisoformat(e["time"]).timestamp()
        spans.append((end - e["duration"], end))
    # Times are rounded to the millisecond: look just after each beginning.
    return max(sum(1 for b, e in spans if b <= begin + 0.005 < e) for begin, _ in spans)


ON_XEN = ("xen1", [("Primary", "Secondary")])
ON_KVM = ("kvm1", [("Secondary", "Primary")])


def test_eight_in_parallel_one_fault_rolls_back_alone(lab, fab):
    lab.reset(fleet=len(FLEET))
    assert placement(lab) == {name: ON_XEN for name in EVERY}
    lab.fault_add("kvm1", f"drbdadm primary {FAILING}-disk", exit_code=1)

    moved = fab("migrate", "--vm", ",".join(EVERY), "--parallel", "8", timeout=300)

    assert moved.returncode == 1, moved.stdout + moved.stderr
    assert f"1 of 8 VMs failed: {FAILING}" in moved.stderr, moved.stdout
    assert "== 7 of 8 VMs done" in moved.stdout
    assert f"FAILED {FAILING}: step 'promote DRBD on kvm1' failed" in moved.stdout
    assert placement(lab) == {name: ON_XEN if name == FAILING else ON_KVM for name in EVERY}
    assert lab.exec(GUEST["name"], ["true"]).returncode == 0, "the real guest answers on the KVM side"
    # Eight at once, not one after the other: some VM started before another had finished.
    starts = [e for e in fab.audit() if e["kind"] == "change" and " start " in f" {e['command']} "]
    assert len(starts) == 7
    assert most_at_once(starts) <= KVM_MAX_STARTS, "kvm1's max_starts held"

    lab.fault_clear()
    ok(fab("migrate", "--all", "--to", "xen", "--parallel", "8", timeout=300))
    assert placement(lab) == {name: ON_XEN for name in EVERY}
    status = ok(fab("status")).stdout
    assert {tuple(line.split()[:2]) for line in status.splitlines()[1:]} == {(name, "xen1") for name in EVERY}


def test_fail_fast_starts_no_further_vm(lab, fab):
    lab.reset(fleet=len(FLEET))
    lab.fault_add("xen1", f"xl shutdown {FLEET[0]}", exit_code=1)

    moved = fab("migrate", "--vm", ",".join(FLEET), "--parallel", "1", "--fail-fast", timeout=300)

    assert moved.returncode == 1
    assert placement(lab) == {name: ON_XEN for name in EVERY}, "nothing after the first failure moved"
    assert f"{FLEET[1]}" in moved.stdout and "not started" in moved.stdout
