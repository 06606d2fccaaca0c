"""`fab prepare` and `fab readiness` on the lab, over real SSH: a guest made by the real
xen-create-image (sysvinit, booted direct-kernel) and two fleet VMs. Readiness before and after;
a prepare that rehearses the guest under qemu to its login prompt; a second prepare that the
audit log shows changed nothing; then drift: a newer kernel in the guest, named by readiness
with its fix. Then `fab report` of real moves, opened in headless chromium.

Heavy (one TCG boot of the guest): run it alone, under `flock /work/.heavy.lock`.
"""

from __future__ import annotations

import json

import pytest

from tests.browser import boxes, laid_out
from tests.integration.runner import Runner, ok

pytestmark = pytest.mark.lab

KERNEL = "6.1.0-50-amd64"   # the kernel of the cached xen-create-image guest
NEWER = "6.1.0-99-amd64"
BOOT_LIMIT = "600"          # seconds for the rehearsal's TCG boot on a busy 2-core machine


def readiness(fab, *args) -> tuple[dict, int]:
    done = fab("readiness", "--json", *args, timeout=300)
    return json.loads(done.stdout), done.returncode


def marks(result: dict, vm: str) -> dict:
    entry = next(v for v in result["vms"] if v["vm"] == vm)
    return {c["check"]: c["ready"] for c in entry["checks"]}


def check(result: dict, vm: str, name: str) -> dict:
    entry = next(v for v in result["vms"] if v["vm"] == vm)
    return next(c for c in entry["checks"] if c["check"] == name)


def changes(fab) -> list[str]:
    return [f"{e['host']}: {e['command']}" for e in fab.audit() if e["kind"] in ("change", "upload")]


@pytest.fixture(scope="module")
def prepared(lab, tmp_path_factory):
    """The lab with the real sysvinit guest and two fleet VMs, readiness read before, then one
    `fab prepare --all --rehearse`."""
    lab.reset(image="sysvinit", fleet=2)
    fab = Runner(lab, tmp_path_factory.mktemp("prepare") / "state")
    before = readiness(fab)
    first = fab("prepare", "--all", "--parallel", "3", "--rehearse", "--rehearse-timeout", BOOT_LIMIT, timeout=1500)
    yield fab, before, first
    lab.fault_clear()


def test_readiness_before_names_what_the_guest_lacks(prepared):
    _, (before, code), _ = prepared
    assert code == 1 and before["ready"] is False
    assert marks(before, "logger") == {"drbd": True, "consoles": False, "fstab": False, "boot": False,
                                       "initramfs": True, "cfg": False, "domain": False, "swap": False,
                                       "rehearsal": False, "capacity": True}
    assert check(before, "logger", "fstab")["reason"] == "names /dev/xvda1, /dev/xvda2, /dev/xvda3, which KVM calls otherwise"
    assert check(before, "fleet01", "consoles")["ready"] is None, "a guest that cannot be reached is unknown"


def test_fleet_prepare_over_ssh_then_a_second_run_changes_nothing(prepared, lab):
    fab, _, (first) = prepared
    assert first.returncode == 1, first.stdout + first.stderr
    assert "== 1 of 3 VMs done" in first.stdout
    assert "  ok     logger: prepared, changed guest, cfg, kernel, define, swap, rehearsal (" in first.stdout
    # the fleet VMs' disks hold no file system here: their cfg's root= has no UUID to take (real blkid)
    for name, device in (("fleet01", "/dev/drbd21"), ("fleet02", "/dev/drbd22")):
        assert (f"  FAILED {name}: xen1: blkid finds no file system UUID on {device}, the root disk of "
                f"xen1:/etc/xen/auto/{name}.cfg") in first.stdout
    assert "error: 2 of 3 VMs failed: fleet01, fleet02" in first.stderr
    assert "booted to a login prompt on snapshots" in first.stdout

    after, code = readiness(fab, "--vm", "logger")
    assert code == 0 and after["ready"] is True, json.dumps(after, indent=1)
    assert check(after, "logger", "rehearsal")["reason"].endswith(f"kernel {KERNEL} booted to a login prompt")
    assert lab.exec("logger", ["dpkg-query", "-W", "-f", "${Status}", "acpid"]).stdout == "install ok installed"

    fab.state_dir.joinpath("audit.jsonl").unlink()
    second = fab("prepare", "--all", "--parallel", "3", "--rehearse", "--rehearse-timeout", BOOT_LIMIT, timeout=600)
    assert "  ok     logger: prepared, nothing to change (" in second.stdout, second.stdout
    assert changes(fab) == [], "the second run sent no change to any host or guest"
    kinds = {e["kind"] for e in fab.audit()}
    assert kinds == {"probe", "lock"}


def test_a_newer_kernel_in_the_guest_makes_readiness_name_the_check_and_the_fix(prepared, lab):
    fab, _, _ = prepared
    # A kernel upgrade as far as /boot shows it: the new version's files, its initrd copied from
    # the old kernel's (so it holds the old version's modules only), its own bytes.
    lab.exec("logger", ["sh", "-c", f"cd /boot && for f in vmlinuz config System.map initrd.img; do "
                                    f"cp $f-{KERNEL} $f-{NEWER}; done && echo upgraded >> vmlinuz-{NEWER}"], check=True)
    fab.state_dir.joinpath("audit.jsonl").unlink()
    drift, code = readiness(fab, "--vm", "logger")
    assert code == 1
    assert [name for name, ready in marks(drift, "logger").items() if not ready] == ["boot", "initramfs"]
    boot = check(drift, "logger", "boot")
    assert boot["reason"] == f"kvm1 boots a copy of kernel {KERNEL}; the guest's newest is {NEWER}"
    assert boot["fix"] == "fab kvmhost.fetch-kernel --vm logger"
    initramfs = check(drift, "logger", "initramfs")
    assert initramfs["reason"] == f"the initramfs of {NEWER} lacks ata_piix, sd_mod for the ide bus"
    assert initramfs["fix"] == "fab guest.initramfs --vm logger --force, then fab kvmhost.fetch-kernel --vm logger"
    assert changes(fab) == [], "readiness changes nothing"

    table = fab("readiness", "--vm", "logger", timeout=300)
    assert table.returncode == 1 and table.stderr.strip() == "error: 1 of 1 VMs not ready: logger"
    assert [line.split()[:3] for line in table.stdout.splitlines() if line.split()[1:2] == ["boot"]] == \
        [["logger", "boot", "NO"]]


def test_report_of_real_moves_in_chromium(lab, fab, tmp_path):
    """Two moves of the lab guest, then their report: the phases each move measured, as its
    downtime record in the real audit log gives them."""
    ok(fab("migrate", "--vm", "logger"))
    ok(fab("migrate", "--vm", "logger"))
    page_path = tmp_path / "moves.html"
    done = ok(fab("report", "--html", str(page_path)))
    assert "== report: 2 move(s) of 1 VM(s)" in done.stdout
    dom = laid_out(page_path.read_text(), tmp_path)
    moves = dom.xpath("//section[@data-vm='logger']//svg//g[@class='move']")
    assert [m.xpath("./text[@class='row-label']/text()")[0].split()[-3:] for m in moves] == [
        ["xen1", "\u2192", "kvm1"], ["kvm1", "\u2192", "xen1"]]
    measured = [r for r in fab.records() if r["kind"] == "downtime"]
    for move, record in zip(moves, measured, strict=True):
        bars = move.xpath("./rect")
        assert [b.get("class") for b in bars] == ["phase shutdown", "phase switch", "phase boot"]
        laid = boxes(bars)
        assert all(width > 0 for _, _, width, _ in laid)
        assert laid[0][0] < laid[1][0] < laid[2][0]
        assert [float(b.get("data-seconds")) for b in bars] == pytest.approx(
            [record["shutdown"], record["switch"], record["boot"]], abs=0.002)
        assert record["shutdown"] >= 1.0, "the lab guest takes its shutdown delay (1 s)"
        assert move.xpath("./text[@class='downtime-label']/text()") == [f"down {record['down']:.1f} s"]