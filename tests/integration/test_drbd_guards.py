"""The DRBD guards against the lab's DRBD 9 simulator, through `fab` over real SSH: a start on a
Secondary, --allow-disconnected asking the peer host, lost quorum, auto-promote warnings, a
third DRBD 9 peer."""

from __future__ import annotations

import pytest

from tests.integration.runner import ON_KVM, RESOURCES, ok, where
from tests.lab import STATE_DIR, sim

pytestmark = pytest.mark.lab

REFUSED = 3     # GuardError


def refused(result, message: str, code: int = REFUSED) -> str:
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def drbdadm(lab, host: str, *args: str) -> None:
    lab.exec(host, ["drbdadm", *args, *RESOURCES], check=True)


def sent(fab, host: str, word: str) -> list[str]:
    return [e["command"] for e in fab.audit() if e["host"] == host and word in e["command"]]


def test_a_start_on_a_secondary_is_refused_on_either_side(lab, fab):
    refused(fab("kvmhost.start", "--vm", "logger"),
            "kvm1: refusing to start logger: DRBD logger-system is Secondary, logger-var is Secondary there, "
            "not Primary; promote it first (fab drbd.promote --vm logger --host kvm1)")
    ok(fab("xenhost.shutdown", "--vm", "logger"))
    ok(fab("drbd.demote", "--vm", "logger", "--host", "xen1"))
    refused(fab("xenhost.start", "--vm", "logger"), "xen1: refusing to start logger: DRBD logger-system is Secondary")
    assert sent(fab, "kvm1", " start ") == [] and sent(fab, "xen1", " create ") == []
    assert lab.state()["violations"] == []


def test_allow_disconnected_refuses_while_the_peer_host_answers_primary(lab, fab):
    drbdadm(lab, "xen1", "disconnect")          # kvm1 sees xen1 Connecting; xen1 stays Primary
    refused(fab("drbd.promote", "--vm", "logger", "--host", "kvm1"),
            "not connected to peer xen1 (Connecting), so its role is unknown")
    refused(fab("drbd.promote", "--vm", "logger", "--host", "kvm1", "--allow-disconnected"),
            "kvm1: refusing to promote logger-system: xen1 answers that logger-system is Primary there")
    assert sent(fab, "kvm1", "drbdadm primary") == []
    assert sent(fab, "xen1", "drbdadm status") == ["drbdadm status logger-system logger-var"]
    assert lab.state()["vms"]["logger"]["drbd"]["logger-system"] == {"xen1": "Primary", "kvm1": "Secondary"}


def test_allow_disconnected_promotes_once_drbdadm_outdate_ran_on_the_peer_host(lab, fab):
    ok(fab("xenhost.shutdown", "--vm", "logger"))
    ok(fab("drbd.demote", "--vm", "logger", "--host", "xen1"))
    drbdadm(lab, "xen1", "disconnect")
    refused(fab("drbd.promote", "--vm", "logger", "--host", "kvm1", "--allow-disconnected"),
            "xen1 answers: logger-system is Secondary with UpToDate data there, so it could become Primary there "
            "too; run `drbdadm outdate logger-system` on xen1")
    drbdadm(lab, "xen1", "outdate")
    out = ok(fab("drbd.promote", "--vm", "logger", "--host", "kvm1", "--allow-disconnected")).stdout
    assert ("WARNING kvm1: promoting logger-system, logger-var without every peer connected (--allow-disconnected): "
            "xen1 says: logger-system Outdated, logger-var Outdated") in out
    ok(fab("kvmhost.define", "--vm", "logger"))
    ok(fab("kvmhost.start", "--vm", "logger"))
    drbdadm(lab, "xen1", "connect")             # the Outdated side resyncs from kvm1
    assert where(lab) == ON_KVM


def test_allow_disconnected_promotes_where_the_peer_has_the_resource_down(lab, fab):
    ok(fab("xenhost.shutdown", "--vm", "logger"))
    ok(fab("drbd.demote", "--vm", "logger", "--host", "xen1"))
    drbdadm(lab, "xen1", "down")
    out = ok(fab("drbd.promote", "--vm", "logger", "--host", "kvm1", "--allow-disconnected")).stdout
    assert "xen1 says: logger-system down, logger-var down" in out
    assert lab.state()["vms"]["logger"]["drbd"]["logger-var"] == {"xen1": "Unconfigured", "kvm1": "Primary"}


def test_lost_quorum_refuses_even_with_allow_disconnected(lab, fab):
    for name in RESOURCES:
        path = f"/etc/drbd.d/{name}.res"
        text = lab.exec("kvm1", ["cat", path], check=True).stdout
        lab.exec("kvm1", ["sh", "-c", 'cat > "$1"', "sh", path], check=True,
                 input=text.replace("    meta-disk internal;\n", "    meta-disk internal;\n"
                                                                 "    options { quorum majority; }\n", 1))
    drbdadm(lab, "kvm1", "adjust")
    drbdadm(lab, "xen1", "disconnect")          # one node of two: no majority
    refused(fab("drbd.promote", "--vm", "logger", "--host", "kvm1", "--allow-disconnected"),
            "kvm1: refusing to promote logger-system: it has lost quorum (DRBD 9)")
    assert sent(fab, "kvm1", "drbdadm primary") == []


@pytest.mark.parametrize("drbd_style, warned", [("9", True), ("8.4", False)])
def test_drbd_status_warns_where_drbd9_would_auto_promote(lab, fab, drbd_style, warned):
    """The lab's resource files predate the tool: no `auto-promote no` in them."""
    lab.reset(drbd_style=drbd_style)
    out = ok(fab("drbd.status", "--vm", "logger")).stdout
    warnings = [line.split(" has ")[0].strip() for line in out.splitlines() if "auto-promote on" in line]
    assert warnings == ([f"WARNING {h}: {r}" for h in ("xen1", "kvm1") for r in RESOURCES] if warned else [])
    assert sent(fab, "xen1", "drbdadm dump") == (["drbdadm dump logger-system logger-var"] if warned else [])


def test_a_move_with_a_third_drbd9_peer_checks_it_too(lab, fab):
    """dr1, a third node of both resources (up, connected, Secondary): the move to KVM goes through;
    with dr1 gone, the checks refuse before anything changes."""
    def add_dr1(st, up=True):
        for name in RESOURCES:
            res = st.doc("drbd")["resources"][name]
            res["hosts"]["dr1"] = {"device": "/dev/drbd9", "disk": None, "md": True, "up": up, "connect": up,
                                   "role": "Secondary", "dstate": "UpToDate"}

    sim.tamper(str(STATE_DIR), lambda st: add_dr1(st, up=False))
    refused(fab("migrate", "--vm", "logger"), "xen1: DRBD logger-system is Connecting, not Connected")
    sim.tamper(str(STATE_DIR), add_dr1)
    status = ok(fab("drbd.status", "--vm", "logger")).stdout
    assert "Secondary/Secondary" in status.splitlines()[1]
    ok(fab("migrate", "--vm", "logger"))
    assert where(lab) == ON_KVM
