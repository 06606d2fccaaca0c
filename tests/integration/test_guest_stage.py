"""The guest stage over real SSH against the running lab guest: twice, the second run changes nothing."""

import pytest

from tests.integration.runner import ok

pytestmark = pytest.mark.lab
STEPS = ("guest.console", "guest.fstab", "guest.initramfs")


def changes(fab) -> list[str]:
    return [e["command"] for e in fab.audit() if e["kind"] in ("change", "upload")]


def test_guest_steps_over_ssh_then_nothing_to_do(lab, fab):
    before = lab.exec("logger", ["cat", "/etc/fstab"], check=True).stdout
    assert "/dev/xvda2" in before, "the lab guest's fstab is xen-tools' (xvda names)"
    for step in STEPS:
        ok(fab(step, "--vm", "logger"))
    fstab = lab.exec("logger", ["cat", "/etc/fstab"], check=True).stdout
    uuid = lab.exec("logger", ["blkid", "-o", "value", "-s", "UUID", "/dev/xvda2"], check=True).stdout.strip()
    assert f"UUID={uuid}" in fstab and "/dev/xvda" not in fstab
    enabled = lab.exec("logger", ["systemctl", "is-enabled", "serial-getty@ttyS0.service",
                                  "serial-getty@hvc0.service", "getty@tty1.service"]).stdout.split()
    assert enabled == ["enabled", "enabled", "enabled"]
    modules = lab.exec("logger", ["cat", "/etc/initramfs-tools/modules"], check=True).stdout.split()
    assert {"ata_piix", "ahci", "virtio_blk", "virtio_net"} <= set(modules)
    backups = lab.exec("logger", ["sh", "-c", "ls /etc/fstab.xenkvm-*"], check=True).stdout.split()
    assert len(backups) == 1

    fab.state_dir.joinpath("audit.jsonl").unlink()
    for step in STEPS:
        out = ok(fab(step, "--vm", "logger")).stdout
        assert "write " not in out
    assert changes(fab) == [], "a second run changes nothing"
    assert lab.exec("logger", ["cat", "/etc/fstab"], check=True).stdout == fstab
