"""A guest made by the real xen-create-image, prepared by the tool over SSH, boots under
libvirt/qemu (TCG) from its own disk, through its own boot loader or kernel, and returns.

Nothing is done by hand between the tool's commands: the guest installs what it needs from
the Debian mirror through the lab's restricted apt proxy.  Each guest goes to KVM and back
twice, each move proven up by the guest's own sshd and its downtime measured; then the
direct-kernel guest's initramfs on the KVM host loses every driver, and the move falls back to
Xen.  `make e2e` prints the lines of REPORT at its end; each KVM boot's serial console is kept
beside it (e2e-GUEST-console-ROUND.log), and every move's downtime record in DOWNTIMES (the
benchmark's switch-share reads them).
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.integration.runner import ON_KVM, ON_XEN, ok, where
from tests.lab import CLIENT_KEY, GUEST, KNOWN_HOSTS, WORK
from tests.lab.config import proxy_command

pytestmark = [pytest.mark.lab, pytest.mark.e2e]

REPORT = WORK / "e2e-report.txt"
DOWNTIMES = WORK / "e2e-downtime.jsonl"
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


def empty_initramfs() -> bytes:
    """A newc cpio archive that holds nothing: an initramfs without its disk driver (or any other)."""
    name = b"TRAILER!!!\0"
    entry = b"070701" + b"".join(b"%08x" % value for value in (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(name), 0)) + name
    entry += b"\0" * (-len(entry) % 4)
    return entry + b"\0" * (-len(entry) % 512)


def downtime(out: str) -> tuple[float, ...]:
    """down, shutdown, switch, boot from the move's `logger: down N s = shutdown A + ...` line."""
    found = re.search(r"^logger: down (\S+) s = shutdown (\S+) \+ switch (\S+) \+ boot (\S+)$", out, re.M)
    assert found, out
    return tuple(map(float, found.groups()))


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
    to_kvm, to_xen, downs = [], [], []
    for round_ in (1, 2):
        since, started = console_size(lab), time.monotonic()
        there = ok(fab("migrate", "--vm", "logger", timeout=BOOT_LIMIT + 300))
        assert "* kvm1: logger is up (sshd's banner on 10.77.0.50:22)" in there.stdout
        wait_for_login(lab, since, started)
        to_kvm.append(time.monotonic() - started)
        (WORK / f"e2e-{name}-console-{round_}.log").write_text(
            lab.exec("kvm1", ["tail", "-c", f"+{since + 1}", CONSOLE]).stdout)
        assert where(lab) == ON_KVM
        on_kvm = ssh(f"cat /sys/class/net/eth0/address /root/e2e-xen; systemd-detect-virt || true; "
                     f"echo round-{round_} > /root/e2e-kvm; sync")
        assert on_kvm.stdout.split()[:3] == [GUEST["mac"], "written-on-xen", "qemu"], on_kvm

        started = time.monotonic()
        back = ok(fab("migrate", "--vm", "logger", timeout=400))
        downs.append((downtime(there.stdout), downtime(back.stdout)))
        assert where(lab) == ON_XEN
        back = lab.exec("logger", ["cat", "/root/e2e-kvm", "/root/e2e-xen"])
        assert back.stdout.split() == [f"round-{round_}", "written-on-xen"], back
        to_xen.append(time.monotonic() - started)

    with DOWNTIMES.open("a") as records:
        for record in fab.records():
            if record["kind"] == "downtime":
                records.write(json.dumps({**record, "guest": name}) + "\n")
    (down, shutdown, switch, boot_s), (back_down, *_) = max(downs)
    lines = [f"e2e: {name} booted on KVM to login in {max(to_kvm):.0f} s, back on Xen in {max(to_xen):.0f} s"
             f" ({boot} boot; slowest of 2 rounds)",
             f"e2e: {name} down {down:.1f} s moving to KVM (shutdown {shutdown:.1f} + switch {switch:.1f} + boot "
             f"{boot_s:.1f}), {back_down:.1f} s moving back (the round down longest on KVM of 2)"]
    if boot == "direct-kernel":
        lines.append(unbootable_on_kvm_falls_back(lab, fab, name))
    with REPORT.open("a") as report:
        report.write("".join(line + "\n" for line in lines))


FALLBACK_TIMEOUT = 90   # seconds: this kernel panics within seconds on KVM without its initramfs


def unbootable_on_kvm_falls_back(lab, fab, name: str) -> str:
    """The KVM host's copy of the guest's initramfs loses every driver: the kernel cannot mount
    its root there and panics. `migrate` sees the panic on the serial console (well within the boot
    timeout), destroys the domain, moves the guest back, and it answers on Xen again; the run
    fails, with the KVM console's last lines kept."""
    initrd = "/var/lib/xenkvm/boot/logger/initrd.img"
    ok(lab.exec("kvm1", ["sh", "-c", f"cat > {initrd}"], input=empty_initramfs().decode("ascii")))
    started = time.monotonic()
    failed = fab("migrate", "--vm", "logger", "--boot-timeout", str(FALLBACK_TIMEOUT),
                 timeout=FALLBACK_TIMEOUT + 600)
    error = failed.stderr.strip().splitlines()[-1]
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "logger: not up on kvm1: its kernel panicked; its console: " in error
    stops = [e["command"] for e in fab.audit() if e["host"] == "kvm1" and e["kind"] == "change"
             and e["command"].split()[3:4] in (["shutdown"], ["destroy"])]
    assert stops[-1] == "virsh -c qemu:///system destroy logger", "the panicked domain is destroyed, not asked"
    again = re.search(r"logger now runs on xen1 \(up again after (\d+\.\d)s\)", error)
    assert again, error
    assert where(lab) == ON_XEN and ssh("cat /root/e2e-xen").stdout.strip() == "written-on-xen"
    saved = re.search(r"its console: (\S+\.log)", error)
    assert saved and "Unable to mount root fs" in open(saved.group(1)).read(), error
    (WORK / f"e2e-{name}-console-unbootable.log").write_text(open(saved.group(1)).read())
    return (f"e2e: {name} unbootable on KVM: fell back to Xen, up again after {float(again.group(1)):.0f} s "
            f"(boot timeout {FALLBACK_TIMEOUT} s; whole run {time.monotonic() - started:.0f} s)")
