"""Fleet runs at command level: several VMs at once, one failing alone, fail-fast, host limits."""

from __future__ import annotations

import threading
import time

import pytest
import yaml
from invoke import Config, Context

from tasks import flows
from tasks.errors import InputError, ToolError
from tasks.fleet import HostSlots, select_vms
from tasks.hypervisors import KvmHost
from tasks.interrupt import Interruption
from tasks.inventory import parse_inventory
from tasks.remote import AuditLog, Site
from tasks.ssh import ConnectError
from tests.conftest import REPO
from tests.seed import seed_cfg_of
from tests.stages.fakehosts import FakeHost, Shared

NAMES = ("logger", "web", "mail")


def fleet_inventory(max_parallel: int = 4, max_starts: int | None = None):
    data = yaml.safe_load((REPO / "hosts.yml").read_text())
    for host in data["hosts"].values():
        host["max_parallel"] = max_parallel
        host["max_starts"] = max_starts
    seed = data["vms"]["logger"]
    for n, name in enumerate(NAMES[1:], 1):
        vm = yaml.safe_load(yaml.safe_dump(seed))
        vm["cfg"] = f"/etc/xen/auto/{name}.cfg"
        vm["mac"] = f"00:16:3e:37:d0:7{n}"
        vm["disks"] = [
            {"resource": f"{name}-system", "device": f"/dev/drbd{10 * n}", "port": 7800 + 10 * n,
             "meta_disk": "internal"},
            {"resource": f"{name}-var", "device": f"/dev/drbd{10 * n + 1}", "port": 7801 + 10 * n,
             "meta_disk": "internal"},
            {"local": f"/dev/vg_main/{name}-swap"},
        ]
        data["vms"][name] = vm
    return parse_inventory(yaml.safe_dump(data))


@pytest.fixture
def fleet(tmp_path, mocker, request):
    inv = fleet_inventory(max_starts=getattr(request, "param", None))
    resources = {vm.name: [d.resource for d in vm.resources] for vm in inv.vms.values()}
    every = [r for rs in resources.values() for r in rs]
    shared = Shared(roles={r: {"xen1": "Primary", "kvm1": "Secondary"} for r in every},
                    disk={r: {"xen1": "UpToDate", "kvm1": "UpToDate"} for r in every},
                    xen_running=set(NAMES), disks_of=resources)
    for n, name in enumerate(NAMES):
        shared.files[("xen1", f"/etc/xen/auto/{name}.cfg")] = seed_cfg_of(name, n)
    hosts = {"xen1": FakeHost("xen1", "xen", "kvm1", shared), "kvm1": FakeHost("kvm1", "kvm", "xen1", shared)}
    opened = []

    def site_for(c, inventory, dry_run=False, interruption=None):
        opened.append(1)
        return Site(inventory, dry_run=dry_run, audit=AuditLog(tmp_path / "audit.jsonl"),
                    connect=lambda label, *a, **k: hosts[label], interruption=interruption, knock=shared.knock)

    mocker.patch.object(flows, "site_from_context", site_for)
    c = Context(Config(overrides={"state_dir": str(tmp_path / "state")}))

    def run(vms=None, **kw):
        options = dict(to=None, timeout=0.2, force=False, dry_run=False, parallel=2, fail_fast=False)
        options.update(kw)
        chosen = [inv.vm(n) for n in (vms or NAMES)]
        return flows.migrate_vms(c, inv, chosen, **options)

    return inv, shared, run, opened


def test_every_vm_lands_over_one_site(fleet, capsys):
    inv, shared, run, opened = fleet
    outcomes = run()
    assert [(o.vm, o.ok, o.runs_on) for o in outcomes] == [(n, True, ["kvm1"]) for n in NAMES]
    assert shared.kvm_running == set(NAMES) and not shared.xen_running
    assert all(r == {"xen1": "Secondary", "kvm1": "Primary"} for r in shared.roles.values())
    assert shared.violations == []
    assert len(opened) == 1, "one Site, so one connection per host for the whole fleet"
    out = capsys.readouterr().out
    assert "[web] * kvm1: virsh -c qemu:///system start web ... ok" in out


def test_one_failure_rolls_back_that_vm_only(fleet):
    inv, shared, run, _ = fleet
    shared.faults["kvm1:virsh -c qemu:///system start web"] = 1
    outcomes = {o.vm: o for o in run()}
    assert not outcomes["web"].ok and outcomes["web"].runs_on == ["xen1"]
    assert outcomes["logger"].ok and outcomes["mail"].ok
    assert shared.xen_running == {"web"} and shared.kvm_running == {"logger", "mail"}
    assert shared.roles["web-system"] == {"xen1": "Primary", "kvm1": "Secondary"}
    assert shared.violations == []


def test_fail_fast_starts_no_further_vm(fleet):
    inv, shared, run, _ = fleet
    shared.faults["xen1:xl shutdown logger"] = 1
    outcomes = run(parallel=1, fail_fast=True)
    assert [o.ok for o in outcomes] == [False, False, False]
    assert "not started" in outcomes[1].message and "not started" in outcomes[2].message
    assert shared.xen_running == set(NAMES)


def test_a_vm_already_at_the_target_is_left_alone(fleet):
    inv, shared, run, _ = fleet
    assert run(vms=["web"])[0].ok
    shared.log.clear()
    outcomes = run(to="kvm")
    assert [o.ok for o in outcomes] == [True, True, True]
    assert "web: already on kvm1" in outcomes[1].message
    assert not any("web" in cmd and ("shutdown" in cmd or "start" in cmd) for _, cmd in shared.log)


def test_from_host_moves_every_vm_off_it(fleet, mocker, tmp_path):
    inv, shared, run, _ = fleet
    assert sorted(vm.name for vm in select_vms(inv, None, False, "xen1")) == sorted(NAMES)
    mocker.patch.object(flows.inventory, "from_context", return_value=inv)
    flows.migrate(Context(Config(overrides={"state_dir": str(tmp_path / "state")})), from_host="xen1",
                  timeout=0.2)
    assert shared.kvm_running == set(NAMES) and not shared.xen_running


@pytest.mark.parametrize("vm, all_vms, from_host, message", [
    (None, False, None, "give exactly one of"),
    ("web", True, None, "give exactly one of"),
    (None, False, "xen9", "--from-host: no host named 'xen9'"),
    ("web,nope", False, None, "no VM named 'nope'"),
])
def test_selection_mistakes_are_one_line(vm, all_vms, from_host, message):
    with pytest.raises(InputError, match=message):
        select_vms(fleet_inventory(), vm, all_vms, from_host)


def test_host_slots_limit_concurrent_vms_per_host():
    inv = fleet_inventory(max_parallel=1)
    slots = HostSlots(inv, Interruption())
    inside, peak = [0], [0]
    lock = threading.Lock()

    def hold(vm):
        with slots.hold(vm):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=hold, args=(vm,)) for vm in inv.vms.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1


def test_a_start_beyond_max_starts_says_it_waits_and_waits(capsys):
    slots = HostSlots(fleet_inventory(max_starts=1), Interruption())
    first_in, first_may_leave = threading.Event(), threading.Event()

    def first():
        with slots.starting("kvm1"):
            first_in.set()
            first_may_leave.wait(10)

    def second():
        with slots.starting("kvm1"):
            pass

    holder, waiter = threading.Thread(target=first), threading.Thread(target=second)
    holder.start()
    assert first_in.wait(10)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive(), "the second start must wait for the first"
    first_may_leave.set()
    holder.join(10)
    waiter.join(10)
    assert not waiter.is_alive()
    assert capsys.readouterr().out.count("* kvm1: waiting for a start slot (max_starts 1) ...") == 1
    with slots.starting("xen1"):   # no limit on xen1: never waits
        pass


def _count_overlapping_starts(mocker, hold) -> list[int]:
    """Each KVM start calls hold() before it runs; returns [peak of starts at once]."""
    inside, peak = [0], [0]
    lock = threading.Lock()
    real_start = KvmHost.start

    def held_start(*args, **kwargs):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        hold()
        with lock:
            inside[0] -= 1
        return real_start(*args, **kwargs)

    mocker.patch.object(KvmHost, "start", autospec=True, side_effect=held_start)
    return peak


def test_without_max_starts_a_fleet_starts_its_domains_together(fleet, mocker):
    inv, shared, run, _ = fleet
    all_three = threading.Barrier(len(NAMES), timeout=10)   # broken, and the starts fail, unless together
    peak = _count_overlapping_starts(mocker, all_three.wait)
    assert all(o.ok for o in run(parallel=3))
    assert peak[0] == len(NAMES)


@pytest.mark.parametrize("fleet", [1], indirect=True)
def test_max_starts_queues_the_starts_of_a_host_and_every_vm_lands(fleet, mocker):
    inv, shared, run, _ = fleet
    assert inv.host("kvm1").max_starts == 1
    peak = _count_overlapping_starts(mocker, lambda: time.sleep(0.1))
    outcomes = run(parallel=3)
    assert [(o.vm, o.ok, o.runs_on) for o in outcomes] == [(n, True, ["kvm1"]) for n in NAMES]
    assert peak[0] == 1
    assert shared.violations == []


def test_every_root_task_has_a_docstring_and_help_for_every_argument():
    for task in flows.tasks:
        assert task.__doc__, task.name
        assert all(arg.help for arg in task.get_arguments()), task.name


def test_match_swap_refuses_a_side_it_does_not_know_before_reading_anything():
    c = Context(Config(overrides={"inventory": "/nonexistent/hosts.yml"}))
    with pytest.raises(InputError, match="--to must be kvm or xen, got 'lxc'"):
        flows.match_swap(c, vm="logger", to="lxc")


# -- fab status: a host that does not answer -----------------------------------------------------

@pytest.fixture
def status_of(fleet, tmp_path, mocker, capsys):
    """`fab status` over the fleet with some hosts down: (its lines, its error, connection attempts)."""
    inv, shared, _, _ = fleet
    attempts = []

    def run(down: set[str]):
        def connect(label, *args, **kw):
            attempts.append(label)
            if label in down:
                raise ConnectError(label, f"cannot connect to root@{label}:22: the proxy command exited")
            return FakeHost(label, inv.host(label).role, ({"xen1", "kvm1"} - {label}).pop(), shared)

        mocker.patch.object(flows.inventory, "from_context", return_value=inv)
        mocker.patch.object(flows, "site_from_context", lambda c, i, dry_run=False: Site(i, connect=connect))
        c = Context(Config(overrides={"state_dir": str(tmp_path / "state")}))
        error = None
        try:
            flows.status(c)
        except ToolError as exc:
            error = exc
        return capsys.readouterr().out.splitlines(), error, attempts

    return run


def test_status_reports_every_vm_with_both_hosts_up(status_of):
    lines, error, _ = status_of(down=set())
    assert error is None
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[3], r[4]) for r in rows if r[2].endswith("-system")] == [
        (vm, "xen1", host, role) for vm in sorted(NAMES) for host, role in (("xen1", "Primary"), ("kvm1", "Secondary"))]


def test_status_shows_an_unreachable_host_goes_on_and_names_it_in_the_end(status_of):
    lines, error, attempts = status_of(down={"xen1"})
    rows = [line.split() for line in lines[1:] if not line.startswith("!")]
    assert len(rows) == 12, "two resources on two hosts for each of the three VMs"
    assert {(r[0], r[1]) for r in rows} == {(vm, "xen1?") for vm in NAMES}, "not on kvm1; on xen1: unknown"
    assert {tuple(r[3:5]) for r in rows} == {("xen1", "unreachable"), ("kvm1", "Secondary")}
    assert "! xen1: cannot connect to root@xen1:22: the proxy command exited" in lines
    assert attempts.count("xen1") == 1, "asked once, not once per VM"
    assert type(error) is ToolError and str(error) == "status incomplete: xen1 unreachable"
    assert error.code == 1


def test_status_goes_on_past_a_probe_that_fails(status_of, fleet):
    _, shared, _, _ = fleet
    shared.faults["kvm1:drbdadm status logger-system logger-var"] = 10
    lines, error, _ = status_of(down=set())
    assert lines[1].split()[0] == "logger", "the first VM in the report"
    on_kvm = [line.split() for line in lines if line.startswith("logger ") and " kvm1 " in line]
    assert [r[4] for r in on_kvm] == ["unknown", "unknown"]
    assert [sum(line.startswith(f"{vm} ") for line in lines) for vm in ("mail", "web")] == [4, 4], \
        "the VMs after it are still read"
    assert any(line.startswith("! kvm1: ") and "drbdadm status" in line for line in lines)
    assert str(error) == "status incomplete: 1 probe(s) failed"
