"""A guest made by the real xen-create-image, prepared by the tool over SSH, boots under
libvirt/qemu (TCG) from its own disk, through its own boot loader or kernel, and returns.

Nothing is done by hand between the tool's commands: the guest installs what it needs from
the Debian mirror through the lab's restricted apt proxy.  Each guest goes to KVM and back
twice.  `make e2e` prints one line per guest from REPORT at its end; each KVM boot's serial
console is kept beside it (e2e-GUEST-console-ROUND.log).
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.integration.runner import ON_KVM, ON_XEN, ok, where
from tests.lab import CLIENT_KEY, GUEST, KNOWN_HOSTS, WORK
from tests.lab.config import proxy_command

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

REPORT = WORK / "e2e-report.txt"
CONSOLE = f"/var/log/libvirt/qemu/{GUEST['name']}-console.log"
BOOT_LIMIT = 600          # seconds: a TCG boot on a busy 2-core machine, with room to spare
DISKS = ("/dev/drbd5", "/dev/drbd6")


def ssh(command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """The guest over the network, as an operator reaches it (wherever it runs)."""
    return subprocess.run(
        ["ssh", "-i", str(CLIENT_KEY), "-o", f"UserKnownHostsFile={KNOWN_HOSTS}", "-o", "StrictHostKeyChecking=yes",
         "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", f"ProxyCommand={proxy_command(GUEST['address'])}",
         f"root@{GUEST['address']}", command], capture_output=True, text=True, timeout=timeout)


def console_size(lab) -> int:
    done = lab.exec("kvm1", ["stat", "-c", "%s", CONSOLE])
    return int(done.stdout) if done.returncode == 0 else 0


def wait_for_login(lab, since: int, started: float) -> None:
    """A login prompt on the serial console after byte `since`, then sshd answering."""
    while time.monotonic() - started < BOOT_LIMIT:
        text = lab.exec("kvm1", ["tail", "-c", f"+{since + 1}", CONSOLE]).stdout
        if "login:" in text and ssh("true").returncode == 0:
            return
        time.sleep(2)
    tail = lab.exec("kvm1", ["tail", "-c", "3000", CONSOLE]).stdout
    raise AssertionError(f"no login on KVM in {BOOT_LIMIT}s; console ends:\n{tail}")


def disk_sums(lab) -> list[str]:
    return [lab.exec("kvm1", ["sha256sum", d], check=True, timeout=300).stdout.split()[0] for d in DISKS]


@pytest.mark.parametrize("image, boot", [("systemd", "grub"), ("sysvinit", "direct-kernel")])
def test_xen_tools_guest_boots_on_kvm_and_returns(lab, fab, image, boot):
    lab.reset(image=image)
    assert where(lab) == ON_XEN
    name = f"{GUEST['name']}-{image}"

    # The tool's preparation, with the guest running on the Xen side, over SSH only.
    ok(fab("guest.prepare", "--vm", "logger", *(["--grub-install"] if boot == "grub" else []), timeout=900))
    ok(fab("xenhost.prepare-cfg", "--vm", "logger"))
    if boot == "direct-kernel":
        ok(fab("kvmhost.fetch-kernel", "--vm", "logger"))
    if image == "systemd":
        # kvm1's own swap gets the guest's swap UUID by hand, so the trial boot does not wait
        # 90 s for it; the sysvinit guest leaves that to migrate's plan step.
        ok(fab("match-swap", "--vm", "logger", "--to", "kvm"))

    # A rehearsal on qcow2 overlays boots to a login prompt and leaves the real disks as they
    # were (the running guest's file systems are frozen meanwhile, so nothing else writes).
    mounts = ["/var", "/"]
    for mount in mounts:
        lab.exec("logger", ["fsfreeze", "-f", mount], check=True)
    try:
        before = disk_sums(lab)
        ok(fab("kvmhost.rehearse", "--vm", "logger", "--login", "--seconds", str(BOOT_LIMIT),
               timeout=BOOT_LIMIT + 120))
        assert disk_sums(lab) == before, "the rehearsal wrote to the real disks"
    finally:
        for mount in reversed(mounts):
            lab.exec("logger", ["fsfreeze", "-u", mount])

    ok(lab.exec("logger", ["sh", "-c", "echo written-on-xen > /root/e2e-xen; sync"]))
    to_kvm, to_xen = [], []
    for round_ in (1, 2):
        since, started = console_size(lab), time.monotonic()
        ok(fab("migrate", "--vm", "logger", timeout=300))
        wait_for_login(lab, since, started)
        to_kvm.append(time.monotonic() - started)
        (WORK / f"e2e-{name}-console-{round_}.log").write_text(
            lab.exec("kvm1", ["tail", "-c", f"+{since + 1}", CONSOLE]).stdout)
        assert where(lab) == ON_KVM
        on_kvm = ssh(f"cat /sys/class/net/eth0/address /root/e2e-xen; systemd-detect-virt || true; "
                     f"echo round-{round_} > /root/e2e-kvm; sync")
        assert on_kvm.stdout.split()[:3] == [GUEST["mac"], "written-on-xen", "qemu"], on_kvm

        started = time.monotonic()
        ok(fab("migrate", "--vm", "logger", timeout=400))
        assert where(lab) == ON_XEN
        back = lab.exec("logger", ["cat", "/root/e2e-kvm", "/root/e2e-xen"])
        assert back.stdout.split() == [f"round-{round_}", "written-on-xen"], back
        to_xen.append(time.monotonic() - started)

    line = (f"e2e: {name} booted on KVM to login in {max(to_kvm):.0f} s, back on Xen in {max(to_xen):.0f} s"
            f" ({boot} boot; slowest of 2 rounds)")
    with REPORT.open("a") as report:
        report.write(line + "\n")
