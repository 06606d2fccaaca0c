"""Capacity before change at command level: a target without room refuses with the numbers before
anything changes; in a fleet, a VM waits for the room a guest moving away frees."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import threading
from pathlib import Path

import pytest

from tasks import capacity, flows
from tasks.errors import GuardError, ToolError
from tasks.fleet import FleetView
from tasks.interrupt import Interruption
from tests.stages import test_fleet, test_flows
from tests.stages.fakehosts import FakeHost
from tests.stages.test_flows import ON_XEN

world = test_flows.world   # one VM (logger, 2048 MiB) and its two hosts
fleet = test_fleet.fleet   # logger, web and mail on xen1


def test_a_kvm_host_without_the_memory_refuses_before_any_change(world):
    world.shared.free_memory["kvm1"] = 2047
    with pytest.raises(GuardError, match=r"^kvm1: no room for logger: needs 2048 MiB of memory, 2047 MiB free$"):
        world.move("kvm")
    assert world.changes() == [] and world.where() == ON_XEN


def test_a_xen_host_without_the_cfgs_memory_refuses_before_any_change(world):
    assert world.move("kvm").ok
    world.audit.unlink()
    cfg = world.shared.files[("xen1", "/etc/xen/auto/logger.cfg")]
    world.shared.files[("xen1", "/etc/xen/auto/logger.cfg")] = cfg.replace("memory      = '2048'", "memory = 768")
    world.shared.free_memory["xen1"] = 700   # xl gives the guest the cfg's memory, not the inventory's 2048
    with pytest.raises(GuardError, match=r"^xen1: no room for logger: needs 768 MiB of memory, 700 MiB free$"):
        world.move("xen")
    assert world.changes() == []
    world.shared.free_memory["xen1"] = 768
    assert world.move("xen").ok


def test_a_target_whose_free_memory_cannot_be_read_fails_the_move_before_any_change(world):
    world.shared.faults["kvm1:cat /proc/meminfo"] = 1
    with pytest.raises(ToolError, match=r"^kvm1: `cat /proc/meminfo` failed \(exit 1\): injected fault on cat /proc/meminfo$"):
        world.move("kvm")
    assert world.changes() == [] and world.where() == ON_XEN


def test_a_dry_run_refuses_as_the_move_would(world):
    world.shared.free_memory["kvm1"] = 1000
    with pytest.raises(GuardError, match="needs 2048 MiB of memory, 1000 MiB free"):
        world.move("kvm", dry_run=True)


def test_the_vcpu_ceiling_counts_the_guests_already_there(world):
    assert world.move("kvm").ok
    world.shared.xen_running |= {"web", "mail"}   # one vCPU each in `xl list`
    site = world.site()
    site.inventory = dataclasses.replace(world.inv, hosts={
        **world.inv.hosts, "xen1": dataclasses.replace(world.inv.hosts["xen1"], max_vcpus=2)})
    with pytest.raises(GuardError, match=r"xen1: no room for logger: needs 1 vCPUs, 2 of max_vcpus 2 in use"):
        test_flows._move_on(world, site, "xen")


def test_in_a_fleet_a_vm_waits_for_the_memory_a_guest_moving_away_frees(fleet, mocker):
    inv, shared, run, _ = fleet
    mocker.patch.object(capacity, "ROOM_POLL", 0.05)
    assert run(vms=["web"])[0].ok                  # web on kvm1 takes 2048 of its 3000 MiB
    shared.free_memory["kvm1"] = 3000
    steps, logger_waits = [], threading.Event()

    def step(_view, vm, name):
        steps.append((vm, name))
        if name.startswith("waiting for room"):
            logger_waits.set()

    def virsh(host, args, real=FakeHost.virsh):
        if args[:1] == ["shutdown"]:   # web leaves kvm1 only once logger waits for its room
            assert logger_waits.wait(10)
        return real(host, args)

    mocker.patch.object(FleetView, "step", step)
    mocker.patch.object(FakeHost, "virsh", virsh)
    outcomes = {o.vm: o for o in run(vms=["logger", "web"])}   # logger to kvm1, web back to xen1
    assert outcomes["logger"].ok and outcomes["web"].ok
    assert shared.kvm_running == {"logger"} and shared.xen_running == {"web", "mail"}
    assert ("logger", "waiting for room on kvm1: needs 2048 MiB of memory, 952 MiB free") in steps
    assert shared.violations == []


def test_in_a_fleet_a_vm_that_nothing_makes_room_for_is_refused_alone(fleet):
    inv, shared, run, _ = fleet
    shared.free_memory["kvm1"] = 3000           # room for one guest
    outcomes = run(vms=["logger", "web"], to="kvm", parallel=2)
    assert sorted(o.ok for o in outcomes) == [False, True]
    [refused] = [o for o in outcomes if not o.ok]
    assert refused.code == 3 and refused.runs_on == []
    # 952 MiB free once the other guest runs; before its start, the 2048 MiB it holds count as taken
    assert re.search(rf"kvm1: no room for {refused.vm}: needs 2048 MiB of memory, 952 MiB free"
                     r"( \(2048 MiB held for other moves' starts\))?$", refused.message)
    assert len(shared.kvm_running) == 1 and shared.violations == []


def test_two_vms_each_waiting_for_the_others_room_are_both_refused(fleet, mocker):
    """A swap with no room on either side: logger waits for web to leave kvm1, web for logger to
    leave xen1. A VM waiting for room frees nothing, so neither waits for the other for ever."""
    inv, shared, run, _ = fleet
    mocker.patch.object(capacity, "ROOM_POLL", 0.05)
    assert run(vms=["web"])[0].ok
    shared.free_memory.update(xen1=5000, kvm1=3000)   # each full: logger and mail on xen1, web on kvm1
    outcomes, stop = [], Interruption()
    swap = threading.Thread(target=lambda: outcomes.extend(run(vms=["logger", "web"], interruption=stop)))
    swap.start()
    swap.join(30)
    waited_for_ever = swap.is_alive()
    stop.request("the test gave up")   # ends the waits, so that a failure does not hang the run
    swap.join()
    assert not waited_for_ever, "the two moves waited for each other"
    assert [(o.vm, o.ok, o.code) for o in outcomes] == [("logger", False, 3), ("web", False, 3)], outcomes
    assert "xen1: no room for web: needs 2048 MiB of memory, 904 MiB free" in outcomes[1].message
    assert shared.xen_running == {"logger", "mail"} and shared.kvm_running == {"web"}


@pytest.mark.parametrize("text, free", [
    ("total_memory           : 16348\nfree_memory            : 410\nfree_cpus              : 0\n", 410),
    # xm info (Xen 4.0): the same layout, node_to_memory beside it
    ("total_memory           : 16374\nfree_memory            : 21\nnode_to_memory         : node0:21\n", 21),
])
def test_xen_free_memory_is_read_from_xl_and_xm_info(text, free):
    assert capacity.xen_free_mib(text) == free


def test_shortfall_names_every_missing_resource():
    need = capacity.Need(memory_mib=4096, vcpus=4)
    assert capacity.shortfall(need, capacity.Room(8192, 2), ceiling=8) is None
    assert capacity.shortfall(need, capacity.Room(8192, 6), ceiling=8, held_mib=5000) == (
        "needs 4096 MiB of memory, 3192 MiB free (5000 MiB held for other moves' starts); "
        "needs 4 vCPUs, 6 of max_vcpus 8 in use")
    assert capacity.shortfall(capacity.Need(None, 1), capacity.Room(0, None), ceiling=None) is None


def test_memavailable_of_this_machine_agrees_with_free():
    available = int(subprocess.run(["free", "-k"], capture_output=True, text=True, check=True)
                    .stdout.splitlines()[1].split()[6])
    assert abs(capacity.meminfo_available_mib(Path("/proc/meminfo").read_text()) - available // 1024) <= 64


def test_memavailable_and_domstats_are_read_as_the_kernel_and_libvirt_print_them():
    assert capacity.meminfo_available_mib("MemTotal: 24576000 kB\nMemAvailable:   20971520 kB\n") == 20480
    stats = "Domain: 'web'\n  state.state=1\n  vcpu.current=2\n  vcpu.maximum=4\n\nDomain: 'db'\n  vcpu.current=4\n"
    assert capacity.domstats_vcpus(stats) == 6


def test_flows_ctx_has_a_ledger_of_its_own_by_default(world):
    ctx = flows.Ctx(world.site(), world.inv, world.inv.vm("logger"))
    assert ctx.room.others_leaving("kvm1", "logger") == []
