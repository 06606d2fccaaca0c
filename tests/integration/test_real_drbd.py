"""The drbd stage, migrate's checks and the tool's refusals against the kernel's own DRBD 8.4.11,
in two lab VMs (tests/lab/drbdpair.py), driven by `fab` over SSH as an operator would.

The tests run in this order and hand the pair on: each starts by bringing it where it needs
it (`synced`: Connected, UpToDate on both sides, rxen Primary), with the tool where the tool
can and with drbdadm where an operator would (rxen has no Xen, so its domain state cannot be
asked and the tool's demote on it would fail: rxen is demoted with drbdadm).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.formats.drbdstatus import parse_drbdadm_status
from tests.integration.runner import Runner, ok
from tests.lab.drbdpair import KVM, XEN

pytestmark = pytest.mark.lab

REFUSED = 3     # GuardError
BOTH = ["web-root", "web-data"]
CIB = Path(__file__).resolve().parent.parent / "data" / "pacemaker" / "cib-resources.xml"


@pytest.fixture
def fab(drbd_pair, tmp_path):
    return Runner(SimpleNamespace(inventory=drbd_pair.inventory), tmp_path / "state")


def sh(pair, host: str, script: str, check: bool = True):
    """A shell command on a VM, as its operator would type it."""
    return pair.vm(host).ssh(["sh", "-c", script], check=check)


def states(pair, host: str) -> dict:
    """What the kernel says of the resources that are up (none before setup)."""
    return parse_drbdadm_status(sh(pair, host, "drbdadm status web-root web-data", check=False).stdout)


def roles(pair) -> dict:
    return {host: tuple(s.role for s in states(pair, host).values()) for host in (XEN, KVM)}


def refused(result, message: str) -> str:
    assert result.returncode == REFUSED, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    return result.stderr


def changes(fab) -> list[str]:
    return [e["command"] for e in fab.audit() if e["kind"] == "change"]


def wait_for(pair, host: str, test, what: str, timeout: float = 90):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if test(states(pair, host)):
            return
        time.sleep(1)
    raise AssertionError(f"{host}: timed out waiting for {what}: {states(pair, host)}")


def is_synced(found: dict) -> bool:
    return all(s.is_connected and s.is_uptodate_pair for s in found.values())


def fresh(pair) -> None:
    """Both hosts down, metadata wiped: resources that exist only in the inventory."""
    for host in (XEN, KVM):
        sh(pair, host, "for r in web-root web-data; do drbdsetup down $r; drbdadm wipe-md --force $r </dev/null; "
                       "done; rm -f /etc/drbd.d/web-*.res; dd if=/dev/zero of=/dev/vdd bs=1M count=8 2>/dev/null; true")
        assert sh(pair, host, "cat /proc/drbd").stdout.count("cs:") == 0, f"{host}: a resource is still up"


def synced(pair, fab) -> None:
    """Connected, UpToDate on both, rxen Primary: the roles put right with the tool, anything
    else by setting the pair up afresh."""
    if not all(len(states(pair, h)) == 2 and is_synced(states(pair, h)) for h in (XEN, KVM)):
        fresh(pair)
        ok(fab("drbd.setup", "--vm", "web", "--force-initial-sync", timeout=300))
    if "Primary" in roles(pair)[KVM]:
        ok(fab("drbd.demote", "--vm", "web", "--host", KVM))
    ok(fab("drbd.promote", "--vm", "web", "--host", XEN))
    assert roles(pair) == {XEN: ("Primary", "Primary"), KVM: ("Secondary", "Secondary")}


def test_setup_creates_internal_and_external_metadata_and_waits_for_the_real_initial_sync(drbd_pair, fab):
    fresh(drbd_pair)
    result = ok(fab("drbd.setup", "--vm", "web", "--force-initial-sync", timeout=300))
    for host in (XEN, KVM):
        assert f"* {host}: drbdadm create-md --force web-root ... ok" in result.stdout
        assert f"* {host}: drbdadm up web-data ... ok" in result.stdout
    assert f"* {XEN}: drbdadm primary --force web-root web-data ... ok" in result.stdout
    assert result.stdout.rstrip().endswith(f"* {XEN}: web-root, web-data UpToDate/UpToDate ... ok")
    kernel = sh(drbd_pair, XEN, "drbdsetup show web-data; drbdsetup show web-root").stdout
    assert 'meta-disk\t\t\t"/dev/vdd";' in kernel and "meta-disk\t\t\tinternal;" in kernel
    assert roles(drbd_pair) == {XEN: ("Primary", "Primary"), KVM: ("Secondary", "Secondary")}

    first = len(changes(fab))
    again = ok(fab("drbd.setup", "--vm", "web", timeout=120))
    assert f"* {KVM}: web-data is up ... ok" in again.stdout
    assert [c for c in changes(fab)[first:] if c.startswith("drbdadm")] == [], "a second setup changes nothing"


def test_status_shows_both_hosts_as_the_kernel_does(drbd_pair, fab):
    synced(drbd_pair, fab)
    table = ok(fab("drbd.status", "--vm", "web")).stdout.splitlines()
    rows = [re.split(r"\s{2,}", line.strip()) for line in table[1:]]
    assert rows == [["web-root", XEN, "Primary", "Secondary", "Connected", "UpToDate", "UpToDate", "-"],
                    ["web-data", XEN, "Primary", "Secondary", "Connected", "UpToDate", "UpToDate", "-"],
                    ["web-root", KVM, "Secondary", "Primary", "Connected", "UpToDate", "UpToDate", "-"],
                    ["web-data", KVM, "Secondary", "Primary", "Connected", "UpToDate", "UpToDate", "-"]]


def test_wait_sync_follows_a_real_resync_to_its_end(drbd_pair, fab):
    synced(drbd_pair, fab)
    # A full resync of web-root from rxen, slowed to about 12 s so its progress is seen.
    sh(drbd_pair, XEN, "drbdsetup disk-options 1 --c-plan-ahead=0 --resync-rate=8M && drbdadm invalidate-remote web-root")
    result = ok(fab("drbd.wait-sync", "--vm", "web", "--timeout", "240", timeout=300))
    sh(drbd_pair, XEN, "drbdadm adjust web-root")
    progress = [float(p) for p in re.findall(r"waiting for sync: web-root SyncSource (\d+\.\d)%", result.stdout)]
    assert progress and min(progress) < 100 and all(0 <= p <= 100 for p in progress), result.stdout
    assert result.stdout.rstrip().endswith(f"* {XEN}: web-root, web-data UpToDate/UpToDate ... ok")
    assert is_synced(states(drbd_pair, KVM))


def test_promote_guards_against_the_kernel(drbd_pair, fab):
    synced(drbd_pair, fab)
    refused(fab("drbd.promote", "--vm", "web", "--host", KVM),
            f"{KVM}: refusing to promote web-root: the peer is Primary (never two Primaries); demote it there first")
    sh(drbd_pair, XEN, "drbdadm secondary web-root web-data")
    # web-data Inconsistent on rkvm: a resync to it, held paused
    sh(drbd_pair, KVM, "drbdadm pause-sync web-data && drbdadm invalidate web-data")
    refused(fab("drbd.promote", "--vm", "web", "--host", KVM),
            f"{KVM}: refusing to promote web-data: the local disk is Inconsistent, not UpToDate")
    assert roles(drbd_pair) == {XEN: ("Secondary", "Secondary"), KVM: ("Secondary", "Secondary")}
    sh(drbd_pair, KVM, "drbdadm resume-sync web-data")
    ok(fab("drbd.wait-sync", "--vm", "web", "--timeout", "120", timeout=180))

    promoted = ok(fab("drbd.promote", "--vm", "web", "--host", KVM))
    assert f"* {KVM}: drbdadm primary web-root web-data ... ok" in promoted.stdout
    assert roles(drbd_pair) == {XEN: ("Secondary", "Secondary"), KVM: ("Primary", "Primary")}
    again = ok(fab("drbd.promote", "--vm", "web", "--host", KVM))
    assert f"* {KVM}: web-root already Primary ... ok" in again.stdout


def test_demote_tries_again_while_the_device_is_held_then_reports_the_kernels_refusal(drbd_pair, fab):
    if roles(drbd_pair)[KVM] != ("Primary", "Primary"):
        synced(drbd_pair, fab)
        sh(drbd_pair, XEN, "drbdadm secondary web-root web-data")
        ok(fab("drbd.promote", "--vm", "web", "--host", KVM))
    # held for a moment (as udev does after a close): let go once the kernel has refused a demotion
    sh(drbd_pair, KVM, "n=$(dmesg | grep -c 'held open'); setsid sh -c 'exec 3</dev/drbd1; "
                       "while [ $(dmesg | grep -c \"held open\") -le $0 ]; do sleep 0.1; done' $n "
                       "</dev/null >/dev/null 2>&1 &")
    moment = ok(fab("drbd.demote", "--vm", "web", "--host", KVM, timeout=120))
    assert f"  {KVM}: web-root, web-data held open by someone, trying again in 0.25s\n" \
           f"* {KVM}: drbdadm secondary web-root web-data ... ok" in moment.stdout
    assert roles(drbd_pair)[KVM] == ("Secondary", "Secondary")

    ok(fab("drbd.promote", "--vm", "web", "--host", KVM))
    sh(drbd_pair, KVM, "setsid sh -c 'exec 3</dev/drbd1; exec sleep 600' </dev/null >/dev/null 2>&1 & echo $! >/run/holder")
    held = fab("drbd.demote", "--vm", "web", "--host", KVM, timeout=120)
    assert held.returncode == 1, held.stderr
    assert "1: State change failed: (-12) Device is held open by someone (still after 9.75s)" in held.stderr
    assert held.stdout.count("held open by someone, trying again") == 7
    assert roles(drbd_pair)[KVM] == ("Primary", "Secondary"), "the kernel refused web-root only"
    sh(drbd_pair, KVM, "kill $(cat /run/holder)")
    ok(fab("drbd.demote", "--vm", "web", "--host", KVM))
    assert roles(drbd_pair)[KVM] == ("Secondary", "Secondary")


def test_a_disconnected_peer_is_refused_and_reconnects(drbd_pair, fab):
    synced(drbd_pair, fab)
    done_before = len(changes(fab))
    sh(drbd_pair, XEN, "drbdadm secondary web-root web-data")
    sh(drbd_pair, KVM, "drbdadm disconnect web-root web-data")
    wait_for(drbd_pair, XEN, lambda found: all(s.connection == "Connecting" for s in found.values()), "Connecting")
    table = fab("drbd.status", "--vm", "web").stdout
    assert re.search(rf"web-root\s+{KVM}\s+Secondary\s+-\s+StandAlone\s+UpToDate\s+-", table), table
    assert re.search(rf"web-root\s+{XEN}\s+Secondary\s+Unknown\s+Connecting\s+UpToDate\s+DUnknown", table), table
    refused(fab("drbd.promote", "--vm", "web", "--host", KVM),
            f"{KVM}: refusing to promote web-root: it is StandAlone, no peer shown")
    refused(fab("drbd.promote", "--vm", "web", "--host", XEN),
            f"{XEN}: refusing to promote web-root: not connected to the peer (Connecting), so its role is unknown")
    sh(drbd_pair, KVM, "drbdadm connect web-root web-data")
    ok(fab("drbd.wait-sync", "--vm", "web", "--timeout", "120", timeout=180))
    assert changes(fab)[done_before:] == []


def test_a_peer_that_vanishes_needs_allow_disconnected_and_then_the_operators_word(drbd_pair, fab):
    synced(drbd_pair, fab)
    sh(drbd_pair, XEN, "drbdadm secondary web-root web-data")
    assert drbd_pair.vm(XEN).qmp("stop") == {"return": {}}
    try:
        wait_for(drbd_pair, KVM, lambda found: all(s.connection == "Connecting" for s in found.values()),
                 "the paused peer to be noticed")
        status = fab("drbd.status", "--vm", "web", timeout=120)
        assert status.returncode == 1 and "could not read the DRBD state on 1 host(s)" in status.stderr
        assert re.search(rf"web-data\s+{KVM}\s+Secondary\s+Unknown\s+Connecting", status.stdout), status.stdout
        refused(fab("drbd.promote", "--vm", "web", "--host", KVM),
                "not connected to the peer (Connecting), so its role is unknown; only if the peer host is known "
                "to be down, retry with --allow-disconnected")
        blind = ok(fab("drbd.promote", "--vm", "web", "--host", KVM, "--allow-disconnected", timeout=120))
        assert f"WARNING {KVM}: promoting web-root, web-data without every peer connected (--allow-disconnected): " \
               f"{XEN} cannot be reached" in blind.stdout
        assert roles(drbd_pair)[KVM] == ("Primary", "Primary")
    finally:
        drbd_pair.vm(XEN).qmp("cont")
    wait_for(drbd_pair, KVM, is_synced, "the pair to reconnect")
    assert roles(drbd_pair) == {XEN: ("Secondary", "Secondary"), KVM: ("Primary", "Primary")}


def test_allow_disconnected_asks_the_peer_host_and_needs_drbdadm_outdate_there(drbd_pair, fab):
    if roles(drbd_pair)[KVM] != ("Primary", "Primary"):
        synced(drbd_pair, fab)
        sh(drbd_pair, XEN, "drbdadm secondary web-root web-data")
        ok(fab("drbd.promote", "--vm", "web", "--host", KVM))
    ok(fab("drbd.demote", "--vm", "web", "--host", KVM))
    sh(drbd_pair, XEN, "drbdadm disconnect web-root web-data")
    wait_for(drbd_pair, KVM, lambda found: all(s.connection == "Connecting" for s in found.values()), "Connecting")
    refused(fab("drbd.promote", "--vm", "web", "--host", KVM, "--allow-disconnected"),
            f"{KVM}: refusing to promote web-root: {XEN} answers: web-root is Secondary with UpToDate data there, "
            f"so it could become Primary there too; run `drbdadm outdate web-root` on {XEN}")
    sh(drbd_pair, XEN, "drbdadm outdate web-root web-data")
    promoted = ok(fab("drbd.promote", "--vm", "web", "--host", KVM, "--allow-disconnected"))
    assert f"{XEN} says: web-root Outdated, web-data Outdated" in promoted.stdout
    assert roles(drbd_pair)[KVM] == ("Primary", "Primary")
    sh(drbd_pair, XEN, "drbdadm connect web-root web-data")
    wait_for(drbd_pair, KVM, is_synced, "the outdated side to catch up")


def test_a_real_split_brain_is_named_and_left_to_the_operator(drbd_pair, fab):
    synced(drbd_pair, fab)
    done_before = len(changes(fab))
    for host in (XEN, KVM):
        sh(drbd_pair, host, "drbdadm disconnect web-root web-data")
    sh(drbd_pair, KVM, "drbdadm primary web-root web-data")
    for host in (XEN, KVM):   # each side writes while apart, then they meet again
        sh(drbd_pair, host, "dd if=/dev/urandom of=/dev/drbd1 bs=4k count=4 oflag=direct status=none")
    for host in (KVM, XEN):
        sh(drbd_pair, host, "drbdadm connect web-root web-data")
    wait_for(drbd_pair, XEN, lambda found: all(s.connection == "StandAlone" for s in found.values()), "StandAlone")
    assert "Split-Brain detected but unresolved" in sh(drbd_pair, XEN, "dmesg").stdout
    sh(drbd_pair, KVM, "drbdadm secondary web-root web-data")    # so that promoting it means something
    before = {h: sh(drbd_pair, h, "drbdadm get-gi web-root; drbdadm get-gi web-data").stdout for h in (XEN, KVM)}

    manual = "(DRBD's user guide, \"Manual split brain recovery\"), then retry"
    for to in ("kvm", "xen"):
        message = refused(fab("migrate", "--vm", "web", "--to", to),
                          "refusing to move web: split brain on DRBD web-root, web-data: the data on rxen and rkvm "
                          "diverged (each side was Primary while they were apart)")
        assert message.rstrip().endswith(manual)
    assert refused(fab("drbd.promote", "--vm", "web", "--host", KVM),
                   "refusing to promote web: split brain on DRBD web-root, web-data").rstrip().endswith(manual)
    assert changes(fab)[done_before:] == [], "nothing resolved, nothing changed"
    assert {h: sh(drbd_pair, h, "drbdadm get-gi web-root; drbdadm get-gi web-data").stdout
            for h in (XEN, KVM)} == before
    assert all(s.connection == "StandAlone" for s in states(drbd_pair, KVM).values())

    # The recovery the message points to: rkvm's changes are thrown away.
    sh(drbd_pair, KVM, "drbdadm connect --discard-my-data web-root web-data")
    sh(drbd_pair, XEN, "drbdadm connect web-root web-data")
    wait_for(drbd_pair, XEN, is_synced, "the pair to resync after the recovery")


def test_a_vm_pacemaker_manages_is_refused_naming_pacemaker(drbd_pair, fab):
    synced(drbd_pair, fab)
    done_before = len(changes(fab))
    cib = ('<cib crm_feature_set="3.16.2" validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">'
           f"<configuration><crm_config/><nodes/>{CIB.read_text()}<constraints/></configuration><status/></cib>")
    drbd_pair.vm(XEN).ssh(["sh", "-c", "cat >/var/lib/pacemaker/cib/cib.xml && "
                           "chown hacluster:haclient /var/lib/pacemaker/cib/cib.xml && "
                           "(setsid /usr/lib/pacemaker/pacemaker-based --stand-alone </dev/null >/dev/null 2>&1 &) && "
                           "for i in $(seq 30); do cibadmin --query --scope resources >/dev/null 2>&1 && exit 0; "
                           "sleep 0.5; done; exit 1"], input=cib, check=True)
    claim = (f"{XEN}: refusing to promote web: Pacemaker manages it (primitive p_drbd_web, ocf:linbit:drbd of "
             f"web-root); move it with Pacemaker (crm_resource --move), not behind its back")
    try:
        assert refused(fab("drbd.promote", "--vm", "web", "--host", XEN), claim).strip() == f"error: {claim}"
        refused(fab("migrate", "--vm", "web", "--to", "kvm"),
                f"{XEN}: refusing to move web: Pacemaker manages it (primitive p_drbd_web")
    finally:
        sh(drbd_pair, XEN, "pkill -x pacemaker-based; true")
    # The cluster stopped on rxen: the CIB it would start with still names the resource.
    refused(fab("drbd.promote", "--vm", "web", "--host", XEN), claim)
    sh(drbd_pair, XEN, "rm /var/lib/pacemaker/cib/cib.xml")
    assert f"* {XEN}: web-root already Primary ... ok" in ok(fab("drbd.promote", "--vm", "web", "--host", XEN)).stdout
    assert changes(fab)[done_before:] == []
