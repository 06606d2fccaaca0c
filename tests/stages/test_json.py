"""--json of `status`, `readiness` and `migrate`: the field names the README documents, pinned here
(add fields, never rename one), and stdout holding the JSON document alone."""

from __future__ import annotations

import json

import pytest

from tasks import flows, readiness
from tasks.errors import ToolError
from tasks.formats.readiness import CHECKS
from tasks.ssh import ConnectError
from tests.stages.guestsite import World

STATUS = {"vms", "unreachable", "problems"}
STATUS_VM = {"vm", "runs_on", "maybe_on", "resources", "unfinished_run"}
STATUS_RESOURCE = {"resource", "host", "role", "connection", "disk", "peer_disks", "sync_percent"}
READINESS = {"ready", "vms"}
READINESS_VM = {"vm", "ready", "runs_on", "checks"}
READINESS_CHECK = {"check", "ready", "reason", "fix"}
MIGRATE = {"dry_run", "ok", "vms"}
MIGRATE_VM = {"vm", "result", "runs_on", "message", "downtime", "steps"}
MIGRATE_STEP = {"step", "started", "seconds"}


@pytest.fixture
def world(tmp_path, mocker):
    world = World(tmp_path, ("logger", "web"))
    for module in (flows, readiness):
        mocker.patch.object(module.inventory, "from_context", lambda c: world.inv)
        mocker.patch.object(module, "site_from_context", world.site_for)
    return world


def document(capsys) -> tuple[dict, str]:
    """stdout parsed as one JSON document (it must hold nothing else), and stderr."""
    out, err = capsys.readouterr()
    return json.loads(out), err


def test_status_json(world, capsys):
    flows.status(world.context, json=True)
    status, _ = document(capsys)
    assert set(status) == STATUS and (status["unreachable"], status["problems"]) == ([], [])
    assert [vm["vm"] for vm in status["vms"]] == ["logger", "web"]
    logger = status["vms"][0]
    assert set(logger) == STATUS_VM
    assert (logger["runs_on"], logger["maybe_on"], logger["unfinished_run"]) == (["xen1"], [], None)
    assert all(set(r) == STATUS_RESOURCE for r in logger["resources"])
    assert logger["resources"][0] == {"resource": "logger-system", "host": "xen1", "role": "Primary",
                                      "connection": "Connected", "disk": "UpToDate", "peer_disks": ["UpToDate"],
                                      "sync_percent": None}


def test_status_json_with_a_host_down_still_prints_the_document_then_fails(world, capsys, mocker):
    def connect(label, *a, **k):
        if label == "kvm1":
            raise ConnectError(label, "cannot connect to root@kvm1:22: the proxy command exited")
        return world.hosts[label]

    mocker.patch.object(flows, "site_from_context", lambda c, inv, dry_run=False: flows.Site(inv, connect=connect))
    with pytest.raises(ToolError, match="^status incomplete: kvm1 unreachable$"):
        flows.status(world.context, json=True)
    status, _ = document(capsys)
    assert status["unreachable"] == ["kvm1"] and len(status["problems"]) == 1
    logger = status["vms"][0]
    assert (logger["runs_on"], logger["maybe_on"]) == (["xen1"], ["kvm1"])
    assert {(r["host"], r["role"], r["connection"]) for r in logger["resources"]} == {
        ("xen1", "Primary", "Connected"), ("kvm1", "unreachable", None)}


def test_status_table_and_json_show_the_same_facts(world, capsys):
    flows.status(world.context)
    table = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    flows.status(world.context, json=True)
    status, _ = document(capsys)
    assert [(r[0], r[2], r[3], r[4], r[5]) for r in table] == [
        (vm["vm"], res["resource"], res["host"], res["role"], res["connection"])
        for vm in status["vms"] for res in vm["resources"]]


def test_migrate_json_summary_and_progress_on_stderr(world, capsys):
    flows.migrate(world.context, all=True, to="kvm", timeout=0.2, json=True)
    summary, err = document(capsys)
    assert set(summary) == MIGRATE and (summary["dry_run"], summary["ok"]) == (False, True)
    logger = summary["vms"][0]
    assert set(logger) == MIGRATE_VM
    assert (logger["result"], logger["runs_on"]) == ("ok", ["kvm1"])
    parts = logger["downtime"]
    assert set(parts) == {"down", "shutdown", "switch", "boot"}
    assert parts["down"] == pytest.approx(parts["shutdown"] + parts["switch"] + parts["boot"], abs=0.005)
    assert all(set(step) == MIGRATE_STEP and step["seconds"] >= 0 for step in logger["steps"])
    assert [step["step"] for step in logger["steps"]] == [
        "checks", "define logger on kvm1", "give kvm1:/dev/vg_main/logger-swap the UUID of logger's swap",
        "shut logger down on xen1", "demote DRBD on xen1", "promote DRBD on kvm1", "start logger on kvm1",
        "prove logger up on kvm1"]
    starts = [step["started"] for step in logger["steps"]]
    assert starts == sorted(starts) and starts[0].endswith("+00:00")
    assert "[logger] * xen1: xl shutdown logger ... ok" in err
    assert "== 2 of 2 VMs done" in err


def test_migrate_json_of_a_failure_then_the_error(world, capsys):
    world.shared.faults["kvm1:virsh -c qemu:///system start web"] = 1
    with pytest.raises(ToolError, match="^1 of 2 VMs failed: web$"):
        flows.migrate(world.context, all=True, to="kvm", timeout=0.2, json=True)
    summary, _ = document(capsys)
    assert summary["ok"] is False
    web = summary["vms"][1]
    assert (web["result"], web["runs_on"], web["downtime"]) == ("failed", ["xen1"], None)
    assert web["steps"][-1]["step"] == "start web on kvm1", "the step that failed is the last one begun"


def test_readiness_json(world, capsys):
    with pytest.raises(ToolError, match="not ready"):
        readiness.readiness(world.context, json=True)
    result, _ = document(capsys)
    assert set(result) == READINESS and result["ready"] is False
    assert all(set(vm) == READINESS_VM for vm in result["vms"])
    checks = result["vms"][0]["checks"]
    assert [c["check"] for c in checks] == list(CHECKS)
    assert all(set(c) == READINESS_CHECK for c in checks)
    assert checks[0] == {"check": "drbd", "ready": True, "fix": "",
                         "reason": "logger-system, logger-var Connected, UpToDate/UpToDate, Primary on xen1"}
