"""Proof of life, downtime and capacity on the lab: the guest's real sshd answers through the lab's
ProxyCommand, libvirt's real serial log on kvm1, xenconsoled's guest log as the lab's xl writes
it, real /proc/meminfo on kvm1."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.integration.runner import ON_KVM, ON_XEN, ok, where

pytestmark = pytest.mark.lab

DOWNTIME = re.compile(r"^logger: down (\d+\.\d) s = shutdown (\d+\.\d) \+ switch (\d+\.\d) \+ boot (\d+\.\d)$", re.M)


def test_each_move_proves_the_guest_up_by_sshd_and_records_its_downtime_once(lab, fab):
    for target, expected in (("kvm1", ON_KVM), ("xen1", ON_XEN)):
        out = ok(fab("migrate", "--vm", "logger")).stdout
        assert f"* {target}: logger is up (sshd's banner on 10.77.0.50:22)" in out
        assert where(lab) == expected
        down, shutdown, switch, boot = map(float, DOWNTIME.search(out).groups())
        assert abs(down - (shutdown + switch + boot)) <= 0.11   # each rounded to 0.1
    records = [r for r in fab.records() if r["kind"] == "downtime"]
    assert [(r["from"], r["to"]) for r in records] == [("xen1", "kvm1"), ("kvm1", "xen1")]
    assert all(list(r) == ["time", "kind", "vm", "from", "to", "down", "shutdown", "switch", "boot"]
               for r in records)
    assert all(r["down"] == pytest.approx(r["shutdown"] + r["switch"] + r["boot"], abs=0.002) for r in records)


def test_a_kvm_boot_without_a_login_prompt_falls_back_to_xen_where_xenconsoled_shows_one(lab, fab):
    """By console: the lab guest's qemu boots no OS and prints nothing on libvirt's serial log, so
    it never shows a login on kvm1; the move falls back, and on xen1 the guest's console log
    shows a prompt after the restart."""
    done = fab("migrate", "--vm", "logger", "--verify", "console", "--boot-timeout", "5")
    assert done.returncode == 1, done.stdout + done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: logger: not up on kvm1 within 5s (no login prompt on its console; "
                            "kvm1:/var/log/libvirt/qemu/logger-console.log shows nothing new); undone: ")
    assert re.search(r"; logger now runs on xen1 \(up again after \d+\.\ds\)$", error)
    assert "* xen1: logger is up again after" in done.stdout
    assert where(lab) == ON_XEN
    assert not (fab.state_dir / "consoles").exists(), "a console that printed nothing is not kept"


def test_no_room_on_kvm1_is_refused_with_its_numbers_before_any_change(lab, fab, tmp_path):
    data = yaml.safe_load(lab.inventory.read_text())
    data["vms"]["logger"]["memory"] = 400000    # MiB: more than this machine has
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump(data))
    fab.env["FABRIC_INVENTORY"] = str(inventory)
    done = fab("migrate", "--vm", "logger")
    assert done.returncode == 3, done.stdout + done.stderr
    assert re.search(r"error: logger: kvm1: no room for logger: needs 400000 MiB of memory, \d+ MiB free$", done.stderr.strip())
    assert [e for e in fab.audit() if e["kind"] == "change"] == [] and where(lab) == ON_XEN
