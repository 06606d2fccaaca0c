"""DRBD stage at command level: the exact commands sent, and above all the guards.

Every host is a Remote over invoke's MockContext, which answers only the
commands it was given (anything else fails the test) and records each call.
Status texts are the corpus's real DRBD 9 and 8.4 outputs with their names
changed to logger-system / logger-var.
"""

from __future__ import annotations

import inspect
import re
import shlex
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from invoke import Config, Context, Result

from tasks import drbd
from tasks.errors import GuardError, InputError, ToolError
from tasks.formats.drbdconf import render_drbd_resource
from tasks.formats.drbdstatus import DrbdState, parse_drbdadm_status
from tasks.inventory import VM, Host, Inventory, LocalDisk, ReplicatedDisk
from tasks.remote import Remote, RemoteError, Site
from tasks.ssh import ConnectError
from tests.conftest import REPO
from tests.realdrbd import drbdadm, needs_drbdadm
from tests.wire import LOCALE, HostMock, bare

RES = ("logger-system", "logger-var")
STATUS = "drbdadm status logger-system logger-var"
HOSTS = {"xen1": Host("xen1", "192.0.2.11", "xen", hostname="xen1", drbd_address="192.0.2.11"),
         "kvm1": Host("kvm1", "192.0.2.12", "kvm", hostname="kvm1", drbd_address="192.0.2.12")}
VERSION9 = ("DRBDADM_BUILDTAG=GIT-hash:\\ 1f6807ab\\ build\\ by\\ buildd\nDRBDADM_API_VERSION=2\n"
            "DRBD_KERNEL_VERSION_CODE=0x090111\nDRBDADM_VERSION_CODE=0x091600\nDRBDADM_VERSION=9.22.0\n")


def make_vm(names=RES, internal=False) -> VM:
    disks = []
    for i, name in enumerate(names):
        lv = f"/dev/vg_main/logger-{i}"
        disks.append(ReplicatedDisk(
            resource=name, device={"xen1": f"/dev/drbd{5 + i}", "kvm1": f"/dev/drbd{5 + i}"},
            backing={"xen1": lv, "kvm1": lv},
            meta_disk={} if internal else {"xen1": f"{lv}-md", "kvm1": f"{lv}-md"},
            internal_meta=internal, port=7790 + i))
    disks.append(LocalDisk(path={"xen1": "/dev/vg_main/logger-swap", "kvm1": "/dev/vg_main/logger-swap"}))
    return VM(name="logger", xen_host="xen1", kvm_host="kvm1", cfg="/etc/xen/auto/logger.cfg", disks=tuple(disks))


VM_ = make_vm()


def remote(name: str, run: dict, dry_run: bool = False) -> Remote:
    return Remote(name, HostMock(run=dict(run)), dry_run=dry_run)   # MockContext rewrites the dict it gets


WRITE = "<file write>"     # how sent() shows a command fed from stdin (Remote.write_file)


def sent(r: Remote) -> list[str]:
    """Every command the host received, in order."""
    return [WRITE if call.kwargs.get("in_stream") else bare(call.args[0]) for call in r.conn.run.call_args_list]


def written(r: Remote) -> list[str]:
    return [call.kwargs["in_stream"].getvalue() for call in r.conn.run.call_args_list if call.kwargs.get("in_stream")]


def changes(commands: list[str]) -> list[str]:
    """Commands that would alter a host: DRBD state, metadata, or a file write."""
    verbs = ("primary", "secondary", "up", "down", "create-md", "connect", "disconnect", "adjust")
    return [c for c in commands if c == WRITE or (c.startswith("drbdadm ") and shlex.split(c)[1] in verbs)]


def read_cmd(path: str) -> str:
    """The probe Remote.read_file sends for `path`, taken from Remote itself."""
    recorder = HostMock(run={re.compile(".*"): Result(exited=66)})
    Remote("any", recorder).read_file(path)
    return bare(recorder.run.call_args.args[0])


# --- status texts: the corpus, renamed ---------------------------------------------

def corpus_text(corpus, filename: str, resource: str, peer: str | None = None) -> str:
    """A corpus status sample with its resource (first word) and peer renamed."""
    text = (corpus / "drbd-status" / filename).read_text()
    old_res = text.split()[0]
    lines = text.splitlines()
    lines[0] = resource + lines[0][len(old_res):]
    if peer:
        old_peer = lines[2].split()[0]
        lines[2] = lines[2].replace(old_peer, peer, 1)
    return "\n".join(lines) + "\n"


def drbd9(name, role="Secondary", disk="UpToDate", peer_role="Secondary", peer_disk="UpToDate",
          connection="Connected", replication=None, done=None, peer="xen1") -> str:
    """`drbdadm status` of DRBD 9 (the layout of the corpus's ug9 samples) for one resource."""
    lines = [f"{name} role:{role}", f"  disk:{disk}"]
    if connection == "Connected":
        repl = f"replication:{replication} " if replication else ""
        lines += [f"  {peer} role:{peer_role}", f"    {repl}peer-disk:{peer_disk}"
                  + (f" done:{done:.2f}" if done is not None else "")]
    else:
        lines.append(f"  {peer} connection:{connection}")
    return "\n".join(lines) + "\n"


def both(*texts: str) -> Result:
    """drbdadm status for several resources: blocks separated by a blank line."""
    return Result(stdout="\n".join(texts))


def test_drbd9_builder_writes_the_corpus_layout(corpus):
    assert drbd9("data", peer_role="Primary", peer="node-1") == \
        (corpus / "drbd-status" / "drbd9_drbdadm-status_ug9-upgrading-all.txt").read_text()


# --- pure guards --------------------------------------------------------------------

def state(role="Secondary", disk="UpToDate", peer_role="Secondary", peer_disk="UpToDate",
          connection="Connected", name="logger-var", sync=None) -> DrbdState:
    peers = () if peer_role is None else (peer_role,)
    return DrbdState(name, 6, role, peers, connection, disk, (peer_disk,) if peer_disk else (), sync)


def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(GuardError) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text and info.value.code == 3
    return text


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("st_", [
    state(peer_role="Primary"),
    state(role="Primary", peer_role="Primary"),
    state(peer_role="Primary", connection="SyncSource", peer_disk="Inconsistent"),
    state(peer_role="Primary", connection="NetworkFailure", peer_disk="DUnknown"),
    state(peer_role="Primary", connection="Timeout", peer_disk="DUnknown"),
])
def test_promote_refuses_beside_a_primary_peer(st_, allow):
    text = refusal(drbd.check_promote, st_, "kvm1", allow)
    assert text == ("kvm1: refusing to promote logger-var: the peer is Primary (never two Primaries); "
                    "demote it there first")


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("disk", ["Inconsistent", "Outdated", "Diskless", "DUnknown", "Consistent", "Failed",
                                  "Attaching", "Negotiating"])
def test_promote_refuses_a_local_disk_that_is_not_uptodate(disk, allow):
    text = refusal(drbd.check_promote, state(disk=disk), "kvm1", allow)
    assert text == f"kvm1: refusing to promote logger-var: the local disk is {disk}, not UpToDate"


@pytest.mark.parametrize("connection", ["Connecting", "WFConnection", "Disconnecting", "NetworkFailure",
                                        "BrokenPipe", "Unconnected", "WFReportParams"])
def test_promote_refuses_a_disconnected_resource_unless_told_the_peer_is_down(connection):
    st_ = state(peer_role="Unknown", peer_disk="DUnknown", connection=connection)
    text = refusal(drbd.check_promote, st_, "kvm1")
    assert text.startswith(f"kvm1: refusing to promote logger-var: not connected to the peer ({connection})")
    assert "--allow-disconnected" in text
    drbd.check_promote(st_, "kvm1", allow_disconnected=True)


@pytest.mark.parametrize("allow", [False, True])
def test_promote_refuses_standalone_even_when_told_the_peer_is_down(allow):
    st_ = state(peer_role=None, peer_disk=None, connection="StandAlone")
    text = refusal(drbd.check_promote, st_, "kvm1", allow)
    assert "StandAlone" in text and "split brain" in text


@pytest.mark.parametrize("allow", [False, True])
def test_promote_refuses_a_resource_that_is_down(allow):
    st_ = DrbdState("logger-var", 6, "Unknown", (), "Unconfigured", "Unconfigured", (), None)
    assert "is not up there" in refusal(drbd.check_promote, st_, "kvm1", allow)


@pytest.mark.parametrize("fields", [
    {},
    {"connection": "SyncSource", "peer_disk": "Inconsistent", "sync": 12.5},
    {"role": "Primary"},
    {"role": "Primary", "disk": "Inconsistent"},          # already Primary: nothing to do
    {"role": "Primary", "peer_role": "Unknown", "peer_disk": "DUnknown", "connection": "Connecting"},
])
def test_promote_passes_and_the_same_beside_a_primary_peer_does_not(fields):
    assert drbd.check_promote(state(**fields), "kvm1") is None
    assert "the peer is Primary" in refusal(drbd.check_promote, state(**{**fields, "peer_role": "Primary"}), "kvm1")


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("connection", ["Connnected", "WFSomething", "Off", "Established", "Unknown"])
def test_promote_refuses_a_connection_state_it_does_not_know_even_when_allowed(connection, allow):
    st_ = state(peer_role="Unknown", peer_disk="DUnknown", connection=connection)
    text = refusal(drbd.check_promote, st_, "kvm1", allow)
    assert text == (f"kvm1: refusing to promote logger-var: the peer is in connection state {connection!r}, "
                    f"which this tool does not know; refusing to guess")


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("peer_role", ["Unknown"])
@pytest.mark.parametrize("connection", ["Connected", "SyncSource", "SyncTarget", "PausedSyncS", "VerifyS"])
def test_promote_needs_a_connected_peer_to_say_secondary(connection, peer_role, allow):
    """"Peer is Secondary", not "peer is not Primary": a connected peer of unknown role refuses."""
    text = refusal(drbd.check_promote, state(peer_role=peer_role, connection=connection), "kvm1", allow)
    assert text == (f"kvm1: refusing to promote logger-var: the peer is connected but its role is {peer_role}, "
                    f"not Secondary")


def status_of(text: str) -> DrbdState:
    """One resource as DRBD 9's `drbdadm status` shows it (the parser keeps each peer)."""
    return next(iter(parse_drbdadm_status(text).values()))


# DRBD 9, three nodes: the local one and two peers, xen1 (the VM's other host) and dr1.
TWO_PEERS = """\
logger-var role:Secondary
  disk:UpToDate
  xen1 role:{xen1}
    peer-disk:UpToDate
  dr1 role:{dr1}
    peer-disk:UpToDate
"""
TWO_PEERS_DR1_GONE = """\
logger-var role:Secondary
  disk:UpToDate
  xen1 role:Secondary
    peer-disk:UpToDate
  dr1 connection:{dr1}
"""


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("local, xen1, dr1, why", [
    ("Secondary", "Primary", "Secondary", "peer xen1 is Primary (never two Primaries); demote it there first"),
    ("Secondary", "Secondary", "Primary", "peer dr1 is Primary (never two Primaries); demote it there first"),
    ("Primary", "Secondary", "Primary", "peer dr1 is Primary (never two Primaries); demote it there first"),
    ("Secondary", "Secondary", "Unknown", "peer dr1 is connected but its role is Unknown, not Secondary")])
def test_every_peer_of_a_drbd9_resource_must_be_secondary(local, xen1, dr1, why, allow):
    st_ = status_of(TWO_PEERS.format(xen1=xen1, dr1=dr1).replace("role:Secondary", f"role:{local}", 1))
    assert refusal(drbd.check_promote, st_, "kvm1", allow) == f"kvm1: refusing to promote logger-var: {why}"


def test_two_secondary_peers_let_the_promotion_through():
    text = TWO_PEERS.format(xen1="Secondary", dr1="Secondary")
    r = remote("kvm1", {STATUS: both(text.replace("logger-var", "logger-system"), text),
                        "drbdadm primary logger-system logger-var": Result()})
    assert drbd.promote(r, VM_, "kvm1") == list(RES)
    assert sent(r) == [STATUS, "drbdadm primary logger-system logger-var"]


@pytest.mark.parametrize("allow", [False, True])
def test_a_standalone_connection_to_one_peer_refuses(allow):
    text = refusal(drbd.check_promote, status_of(TWO_PEERS_DR1_GONE.format(dr1="StandAlone")), "kvm1", allow)
    assert "it is StandAlone towards peer dr1" in text


def test_a_disconnected_third_peer_needs_allow_and_then_rests_on_the_operators_word(capsys):
    """xen1 is connected and Secondary; dr1, which no inventory host stands for, nobody can ask."""
    text = TWO_PEERS_DR1_GONE.format(dr1="Connecting")
    status = both(text.replace("logger-var", "logger-system"), text)
    assert "not connected to peer dr1 (Connecting)" in refusal(drbd.promote, remote("kvm1", {STATUS: status}),
                                                               VM_, "kvm1")
    r = remote("kvm1", {STATUS: status, "drbdadm primary logger-system logger-var": Result()})
    other, _ = xen1({STATUS: both(*(drbd9(n, peer="kvm1") for n in RES))})
    assert drbd.promote(r, VM_, "kvm1", allow_disconnected=True, other=other) == list(RES)
    assert "without every peer connected (--allow-disconnected)" in capsys.readouterr().out


@pytest.mark.parametrize("allow", [False, True])
def test_lost_quorum_refuses_even_when_allowed(allow):
    st_ = status_of("logger-var role:Secondary\n  disk:UpToDate quorum:no\n  xen1 connection:Connecting\n"
                    "  dr1 connection:Connecting\n")
    text = refusal(drbd.check_promote, st_, "kvm1", allow)
    assert text == ("kvm1: refusing to promote logger-var: it has lost quorum (DRBD 9): too few of its nodes are "
                    "connected to it; reconnect them first (--allow-disconnected does not cover it)")


BLIND = state(peer_role="Unknown", peer_disk="DUnknown", connection="Connecting")


def xen1_says(role="Secondary", disk="Outdated", connection="Connecting") -> drbd.PeerAnswer:
    return drbd.PeerAnswer("xen1", "xen1", state(role=role, disk=disk, peer_role="Unknown", peer_disk="DUnknown",
                                                 connection=connection))


@pytest.mark.parametrize("answer, says", [
    (xen1_says(role="Primary", disk="UpToDate"), "xen1 answers that logger-var is Primary there"),
    (xen1_says(role="Primary", disk="Outdated"), "xen1 answers that logger-var is Primary there"),
    (xen1_says(disk="UpToDate"), "xen1 answers: logger-var is Secondary with UpToDate data there, so it could "
                                 "become Primary there too; run `drbdadm outdate logger-var` on xen1"),
    (xen1_says(disk="Consistent"), "logger-var is Secondary with Consistent data there"),
    (xen1_says(role="Unknown", disk="Outdated"), "logger-var is Unknown with Outdated data there"),
])
def test_promote_while_disconnected_refuses_a_peer_that_answers_and_could_be_primary(answer, says):
    text = refusal(drbd.check_promote, BLIND, "kvm1", True, answer)
    assert text.startswith("kvm1: refusing to promote logger-var: xen1 answers") and says in text


def test_an_answer_counts_only_for_the_peer_it_is_about():
    """8.x's one peer is "peer"; among DRBD 9's named peers, the other host's own name."""
    primary = xen1_says(role="Primary", disk="UpToDate")
    assert "xen1 answers" in refusal(drbd.check_promote, BLIND, "kvm1", True, primary)
    st_ = status_of(TWO_PEERS_DR1_GONE.format(dr1="Connecting").replace("xen1", "nodeA"))
    drbd.check_promote(st_, "kvm1", True, primary)    # not about dr1, nor about the connected nodeA


def test_promote_disconnected_with_allow_still_needs_uptodate_data():
    st_ = state(disk="Outdated", peer_role="Unknown", peer_disk="DUnknown", connection="Connecting")
    assert "Outdated" in refusal(drbd.check_promote, st_, "kvm1", True)


@pytest.mark.parametrize("roles, shown", [
    ({"logger-system": "Secondary", "logger-var": "Primary"}, "logger-system is Secondary"),
    ({"logger-system": "Primary"}, "logger-var is Unknown"),
    ({"logger-system": "Unknown", "logger-var": "Secondary"}, "logger-system is Unknown, logger-var is Secondary"),
])
@pytest.mark.parametrize("other_running", [False, True])
def test_start_needs_every_resource_primary_here(roles, shown, other_running):
    text = refusal(drbd.check_start, VM_, "kvm1", roles, "xen1", other_running)
    assert text == (f"kvm1: refusing to start logger: DRBD {shown} there, not Primary; promote it first "
                    f"(fab drbd.promote --vm logger --host kvm1)")


def test_start_needs_the_domain_stopped_on_the_other_host():
    primary = dict.fromkeys(RES, "Primary")
    assert refusal(drbd.check_start, VM_, "kvm1", primary, "xen1", True) == \
        "kvm1: refusing to start logger: it runs on xen1 (never one guest twice)"
    drbd.check_start(VM_, "kvm1", primary, "xen1", False)


@pytest.mark.parametrize("role", ["Primary", "Secondary", "Unknown"])
def test_demote_refuses_while_the_domain_runs(role):
    text = refusal(drbd.check_demote, state(role=role), "xen1", True)
    assert text == ("xen1: refusing to demote logger-var: the VM's domain still runs on xen1; "
                    "shut it down first")


@pytest.mark.parametrize("role", ["Primary", "Secondary"])
def test_demote_passes_when_the_domain_is_gone_and_only_then(role):
    assert drbd.check_demote(state(role=role), "xen1", domain_running=False) is None
    assert "still runs on xen1" in refusal(drbd.check_demote, state(role=role), "xen1", domain_running=True)


def test_initial_sync_is_forced_only_on_a_fresh_pair_and_only_when_asked():
    fresh = state(disk="Inconsistent", peer_disk="Inconsistent")
    assert drbd.plan_initial_sync(fresh, "xen1", True) is True
    assert "--force-initial-sync" in refusal(drbd.plan_initial_sync, fresh, "xen1", False)
    for disk, peer_disk in [("UpToDate", "Inconsistent"), ("Inconsistent", "UpToDate"), ("UpToDate", "UpToDate")]:
        assert drbd.plan_initial_sync(state(disk=disk, peer_disk=peer_disk), "xen1", True) is False
    for disk, peer_disk in [("Outdated", "Inconsistent"), ("Inconsistent", "Outdated"), ("Diskless", "Inconsistent"),
                            ("Inconsistent", "DUnknown"), ("Consistent", "Consistent")]:
        text = refusal(drbd.plan_initial_sync, state(disk=disk, peer_disk=peer_disk), "xen1", True)
        assert f"{disk}/{peer_disk}" in text
    alone = state(disk="Inconsistent", peer_role=None, peer_disk=None, connection="StandAlone")
    assert "Inconsistent/DUnknown" in refusal(drbd.plan_initial_sync, alone, "xen1", True)


def test_metadata_target_guard():
    external, internal = make_vm().resources[0], make_vm(internal=True).resources[0]
    assert drbd.check_metadata_target(external, "kvm1", None) is None
    text = refusal(drbd.check_metadata_target, external, "kvm1", "ext4")
    assert "/dev/vg_main/logger-0-md holds ext4" in text
    assert drbd.check_metadata_target(internal, "xen1", None) is None
    warning = drbd.check_metadata_target(internal, "xen1", "ext3")
    assert "WARNING xen1" in warning and "/dev/vg_main/logger-0" in warning and "room was made" in warning


# --- resource_states ----------------------------------------------------------------

def test_states_from_drbd9_status_in_one_command(corpus):
    xen = remote("kvm1", {STATUS: both(
        corpus_text(corpus, "drbd9_drbdadm-status_ug9-upgrading-all.txt", "logger-system", "xen1"),
        drbd9("logger-var", peer_role="Primary"))})
    states = drbd.resource_states(xen, VM_, "kvm1")
    assert sent(xen) == [STATUS]
    assert list(states) == list(RES)
    assert all(s.role == "Secondary" and s.peer_roles == ("Primary",) and s.is_uptodate_pair for s in states.values())


def test_states_from_drbd84_status(corpus):
    r = remote("kvm1", {STATUS: both(
        corpus_text(corpus, "drbd-8.4_drbdadm-status_ug84-admin-home.txt", "logger-system"),
        corpus_text(corpus, "drbd-8.4_drbdsetup-status_utils-manpage.txt", "logger-var"))})
    states = drbd.resource_states(r, VM_, "kvm1")
    assert sent(r) == [STATUS]
    assert states["logger-system"].role == "Secondary" and states["logger-system"].is_connected
    assert states["logger-var"].role == "Primary"


def test_unknown_resource_is_refused_naming_host_and_resource():
    r = remote("kvm1", {STATUS: Result(stderr="'logger-var' not defined in your config (for this host).\n",
                                       exited=10)})
    text = refusal(drbd.resource_states, r, VM_, "kvm1")
    assert text.startswith("kvm1: DRBD resource logger-var is not defined in drbdadm's config there")
    assert sent(r) == [STATUS]


def test_down_resource_reads_as_unconfigured():
    r = remote("kvm1", {STATUS: Result(stdout=drbd9("logger-system"),
                                       stderr="logger-var: No such resource\n", exited=10)})
    states = drbd.resource_states(r, VM_, "kvm1")
    assert states["logger-var"].connection == "Unconfigured" and states["logger-var"].minor == 6
    assert states["logger-system"].is_uptodate_pair


def test_after_a_resource_that_is_down_the_rest_is_asked_again():
    """drbdadm may stop at the first resource that is down; the others still get their state."""
    first_down = Result(stderr="logger-system: No such resource\n"
                               "Command 'drbdsetup status logger-system' terminated with exit code 10\n", exited=10)
    r = remote("kvm1", {STATUS: first_down, "drbdadm status logger-var": Result(stdout=drbd9("logger-var"))})
    states = drbd.resource_states(r, VM_, "kvm1")
    assert sent(r) == [STATUS, "drbdadm status logger-var"]
    assert states["logger-system"].connection == "Unconfigured" and states["logger-var"].is_uptodate_pair


def test_missing_resource_without_an_explanation_is_an_error():
    r = remote("kvm1", {STATUS: Result(stdout=drbd9("logger-system"), stderr="something odd\n", exited=20)})
    with pytest.raises(RemoteError, match="something odd"):
        drbd.resource_states(r, VM_, "kvm1")


@pytest.mark.parametrize("stdout", ["logger-system role:Master\n  disk:UpToDate\n", "garbage:line\n"])
def test_unreadable_status_refuses(stdout):
    r = remote("kvm1", {STATUS: Result(stdout=stdout)})
    assert "cannot read the DRBD state" in refusal(drbd.resource_states, r, VM_, "kvm1")


LEGACY = [f"drbdadm {verb} {res}" for res in RES for verb in ("role", "cstate", "dstate")]


@pytest.mark.parametrize("answer", [
    Result(stderr="drbdadm: Unknown command 'status'\n", exited=3),
    Result(stdout='<drbd-status version="8.3.13" api="88">\n<resources config_file="/etc/drbd.conf">\n'),
])
def test_legacy_userland_falls_back_to_role_cstate_dstate(answer):
    run = {STATUS: answer}
    for res in RES:
        run |= {f"drbdadm role {res}": Result("Secondary/Primary\n"), f"drbdadm cstate {res}": Result("Connected\n"),
                f"drbdadm dstate {res}": Result("UpToDate/UpToDate\n")}
    r = remote("kvm1", run)
    states = drbd.resource_states(r, VM_, "kvm1")
    assert sent(r) == [STATUS, *LEGACY]
    assert states["logger-var"] == DrbdState("logger-var", 6, "Secondary", ("Primary",), "Connected", "UpToDate",
                                             ("UpToDate",), None)
    assert "the peer is Primary" in refusal(drbd.promote, remote("kvm1", run), VM_, "kvm1")


def test_legacy_sync_percent_comes_from_proc_drbd(corpus):
    proc = read_cmd("/proc/drbd")
    run = {STATUS: Result(stderr="drbdadm: Unknown command 'status'\n", exited=3),
           proc: Result((corpus / "drbd-status" / "drbd-8.4.2_proc-drbd_ganeti-proc_drbd84_sync.txt").read_text())}
    for res, cs, ds in (("logger-system", "SyncSource", "UpToDate/Inconsistent"), ("logger-var", "Connected",
                                                                                     "UpToDate/UpToDate")):
        run |= {f"drbdadm role {res}": Result("Secondary/Secondary\n"), f"drbdadm cstate {res}": Result(cs + "\n"),
                f"drbdadm dstate {res}": Result(ds + "\n")}
    r = remote("xen1", run)
    states = drbd.resource_states(r, VM_, "xen1")
    assert sent(r) == [STATUS, *LEGACY, proc]
    assert states["logger-system"].sync_percent == 68.5          # minor 5 in the corpus sample
    assert states["logger-var"].sync_percent is None


def test_legacy_unknown_resource_is_refused():
    run = {STATUS: Result(stderr="drbdadm: Unknown command 'status'\n", exited=3),
           "drbdadm role logger-system": Result("Secondary/Secondary\n"),
           "drbdadm cstate logger-system": Result("Connected\n"),
           "drbdadm dstate logger-system": Result("UpToDate/UpToDate\n"),
           "drbdadm role logger-var": Result(stderr="'logger-var' not defined in your config.\n", exited=10)}
    assert "logger-var is not defined" in refusal(drbd.resource_states, remote("kvm1", run), VM_, "kvm1")


# --- promote / demote ---------------------------------------------------------------

def test_promote_sends_one_primary_naming_every_secondary_resource(capsys):
    r = remote("kvm1", {STATUS: both(drbd9("logger-system"), drbd9("logger-var")),
                        "drbdadm primary logger-system logger-var": Result()})
    assert drbd.promote(r, VM_, "kvm1") == list(RES)
    assert sent(r) == [STATUS, "drbdadm primary logger-system logger-var"]
    assert "* kvm1: drbdadm primary logger-system logger-var ... ok" in capsys.readouterr().out


def test_promote_is_idempotent():
    r = remote("kvm1", {STATUS: both(drbd9("logger-system", role="Primary"), drbd9("logger-var")),
                        "drbdadm primary logger-var": Result()})
    assert drbd.promote(r, VM_, "kvm1") == ["logger-var"]
    assert sent(r) == [STATUS, "drbdadm primary logger-var"]
    r = remote("kvm1", {STATUS: both(drbd9("logger-system", role="Primary"), drbd9("logger-var", role="Primary"))})
    assert drbd.promote(r, VM_, "kvm1") == [] and sent(r) == [STATUS]


BAD = {
    "peer Primary": dict(peer_role="Primary"),
    "local Inconsistent": dict(disk="Inconsistent", connection="Connected", replication="SyncTarget", done=40.0),
    "local Outdated": dict(disk="Outdated"),
    "local Diskless": dict(disk="Diskless"),
    "disconnected": dict(connection="Connecting"),
    "StandAlone": dict(connection="StandAlone"),
}


@pytest.mark.parametrize("bad_first", [False, True])
@pytest.mark.parametrize("kind, allow", [(kind, allow) for kind in BAD for allow in (False, True)
                                         if (kind, allow) != ("disconnected", True)])   # that one is allowed
def test_one_refusal_means_no_primary_for_any_resource(kind, allow, bad_first):
    good, bad = drbd9("logger-system"), drbd9("logger-var", **BAD[kind])
    if bad_first:
        good, bad = drbd9("logger-system", **BAD[kind]), drbd9("logger-var")
    primaries = {"drbdadm primary logger-system logger-var": Result(),     # would succeed, yet is never sent
                 **{f"drbdadm primary {res}": Result() for res in RES}}
    r = remote("kvm1", {STATUS: both(good, bad), **primaries})
    refusal(drbd.promote, r, VM_, "kvm1", allow_disconnected=allow)
    assert sent(r) == [STATUS]


def test_promote_refuses_an_unknown_or_down_resource_without_touching_the_other():
    for answer in (Result(stderr="'logger-var' not defined in your config (for this host).\n", exited=10),
                   Result(stdout=drbd9("logger-system"), stderr="logger-var: No such resource\n", exited=10)):
        r = remote("kvm1", {STATUS: answer, "drbdadm primary logger-system": Result()})
        assert "logger-var" in refusal(drbd.promote, r, VM_, "kvm1")
        assert sent(r) == [STATUS]


DISCONNECTED = both(drbd9("logger-system", connection="Connecting"), drbd9("logger-var", connection="Connecting"))


def xen1(run=None, unreachable=False) -> tuple[drbd.OtherHost, list[Remote]]:
    """The VM's other host as promote asks it: answering `run`, or not reachable at all."""
    opened: list[Remote] = []

    def connect() -> Remote:       # one connection per run, as Site keeps it
        if unreachable:
            raise ConnectError("xen1", "cannot connect to root@192.0.2.11:22: [Errno 113] No route to host")
        if not opened:
            opened.append(remote("xen1", run))
        return opened[0]

    return drbd.OtherHost("xen1", "xen1", connect), opened


def seen_from_xen1(role="Secondary", disk="Outdated") -> Result:
    return both(*(drbd9(r, role=role, disk=disk, connection="Connecting", peer="kvm1") for r in RES))


def test_promote_disconnected_asks_the_other_host_and_refuses_while_it_is_primary():
    kvm1 = remote("kvm1", {STATUS: DISCONNECTED, re.compile(r"^drbdadm primary "): Result()})
    other, opened = xen1({STATUS: seen_from_xen1(role="Primary", disk="UpToDate")})
    text = refusal(drbd.promote, kvm1, VM_, "kvm1", allow_disconnected=True, other=other)
    assert text == ("kvm1: refusing to promote logger-system: xen1 answers that logger-system is Primary there "
                    "(never two Primaries); demote it there first")
    assert sent(kvm1) == [STATUS] and [sent(r) for r in opened] == [[STATUS]]


def test_promote_disconnected_refuses_a_secondary_peer_until_it_is_outdated(capsys):
    kvm1 = remote("kvm1", {STATUS: DISCONNECTED, "drbdadm primary logger-system logger-var": Result()})
    other, _ = xen1({STATUS: [seen_from_xen1(disk="UpToDate"), seen_from_xen1(disk="Outdated")]})
    text = refusal(drbd.promote, kvm1, VM_, "kvm1", allow_disconnected=True, other=other)
    assert "run `drbdadm outdate logger-system` on xen1 (or take it down there), then retry" in text
    assert drbd.promote(kvm1, VM_, "kvm1", allow_disconnected=True, other=other) == list(RES)
    assert sent(kvm1) == [STATUS, STATUS, "drbdadm primary logger-system logger-var"]
    assert ("WARNING kvm1: promoting logger-system, logger-var without every peer connected (--allow-disconnected): "
            "xen1 says: logger-system Outdated, logger-var Outdated") in capsys.readouterr().out


def test_promote_disconnected_where_the_resource_is_down_on_the_other_host():
    kvm1 = remote("kvm1", {STATUS: DISCONNECTED, "drbdadm primary logger-system logger-var": Result()})
    other, _ = xen1({STATUS: Result(stderr="logger-system: No such resource\nlogger-var: No such resource\n",
                                    exited=10)})
    assert drbd.promote(kvm1, VM_, "kvm1", allow_disconnected=True, other=other) == list(RES)


def test_promote_disconnected_from_an_unreachable_host_rests_on_the_operators_word(capsys):
    kvm1 = remote("kvm1", {STATUS: DISCONNECTED, "drbdadm primary logger-system logger-var": Result()})
    other, _ = xen1(unreachable=True)
    assert drbd.promote(kvm1, VM_, "kvm1", allow_disconnected=True, other=other) == list(RES)
    assert sent(kvm1) == [STATUS, "drbdadm primary logger-system logger-var"]
    assert ("(--allow-disconnected): xen1 cannot be reached (cannot connect to root@192.0.2.11:22: [Errno 113] No "
            "route to host); the operator states it is down") in capsys.readouterr().out


def test_promote_stops_when_the_other_host_answers_with_an_error():
    kvm1 = remote("kvm1", {STATUS: DISCONNECTED, re.compile(r"^drbdadm primary "): Result()})
    other, _ = xen1({STATUS: Result(stderr="drbdadm: something odd\n", exited=20)})
    with pytest.raises(RemoteError, match="something odd"):
        drbd.promote(kvm1, VM_, "kvm1", allow_disconnected=True, other=other)
    assert sent(kvm1) == [STATUS]


@pytest.mark.parametrize("status, allow", [(DISCONNECTED, False), (both(drbd9("logger-system"), drbd9("logger-var")),
                                                                   True)])
def test_the_other_host_is_asked_only_for_an_allowed_blind_promotion(status, allow):
    kvm1 = remote("kvm1", {STATUS: status, re.compile(r"^drbdadm primary "): Result()})
    other, opened = xen1({})
    try:
        drbd.promote(kvm1, VM_, "kvm1", allow_disconnected=allow, other=other)
    except GuardError:
        assert not allow
    assert opened == []


def test_promote_dry_run_sends_only_the_probe(capsys):
    r = remote("kvm1", {STATUS: both(drbd9("logger-system"), drbd9("logger-var"))}, dry_run=True)
    assert drbd.promote(r, VM_, "kvm1") == list(RES)
    assert sent(r) == [STATUS]
    out = capsys.readouterr().out
    assert [ln for ln in out.splitlines() if "would run" in ln] == \
        ["  would run on kvm1: env LC_ALL=C drbdadm primary logger-system logger-var"]


def test_promote_failure_of_the_batched_command_raises_naming_it(capsys):
    batched = "drbdadm primary logger-system logger-var"
    r = remote("kvm1", {STATUS: both(drbd9("logger-system"), drbd9("logger-var")),
                        batched: Result(stderr="logger-var: State change failed: (-2) Need "
                                               "access to UpToDate data\n", exited=17)})
    with pytest.raises(RemoteError) as info:
        drbd.promote(r, VM_, "kvm1")
    assert info.value.exit_code == 17 and info.value.command == batched
    assert str(info.value) == (f"kvm1: `{batched}` failed (exit 17): "
                               f"logger-var: State change failed: (-2) Need access to UpToDate data")
    assert sent(r) == [STATUS, batched]
    out = capsys.readouterr().out
    assert f"* kvm1: {batched} ... FAILED" in out
    assert "already done" not in out


def test_demote_refuses_while_the_domain_runs_and_sends_nothing():
    r = remote("xen1", {STATUS: both(drbd9("logger-system", role="Primary"), drbd9("logger-var", role="Primary")),
                        re.compile(r"^drbdadm secondary "): Result()})
    assert "still runs on xen1" in refusal(drbd.demote, r, VM_, "xen1", domain_running=True)
    assert sent(r) == [STATUS]


def test_demote_sends_secondary_naming_only_the_primary_resource():
    r = remote("xen1", {STATUS: both(drbd9("logger-system", role="Primary"), drbd9("logger-var")),
                        "drbdadm secondary logger-system": Result()})
    assert drbd.demote(r, VM_, "xen1", domain_running=False) == ["logger-system"]
    assert sent(r) == [STATUS, "drbdadm secondary logger-system"]


HELD = Result(stderr="logger-system: State change failed: (-12) Device is held open by someone\n"
                     "Command 'drbdsetup secondary logger-system' terminated with exit code 11\n", exited=11)
BOTH_SECONDARY = "drbdadm secondary logger-system logger-var"


def primaries():
    return both(drbd9("logger-system", role="Primary"), drbd9("logger-var", role="Primary"))


def test_demote_tries_again_while_a_device_is_held_open_for_a_moment(mocker, capsys):
    pauses = []
    r = remote("xen1", {STATUS: primaries(), BOTH_SECONDARY: [HELD, HELD, Result()]})
    mocker.patch.object(r.interruption, "sleep", pauses.append)
    assert drbd.demote(r, VM_, "xen1", domain_running=False) == list(RES)
    assert sent(r) == [STATUS] + [BOTH_SECONDARY] * 3
    assert pauses == list(drbd.HELD_OPEN_PAUSES[:2])
    assert "xen1: logger-system, logger-var held open by someone, trying again in 0.25s" in capsys.readouterr().out


def test_demote_gives_up_when_the_device_stays_held_open(mocker):
    pauses = []
    tries = len(drbd.HELD_OPEN_PAUSES) + 1
    r = remote("xen1", {STATUS: primaries(), BOTH_SECONDARY: [HELD] * tries})
    mocker.patch.object(r.interruption, "sleep", pauses.append)
    with pytest.raises(RemoteError) as info:
        drbd.demote(r, VM_, "xen1", domain_running=False)
    assert str(info.value) == (f"xen1: `{BOTH_SECONDARY}` failed (exit 11): logger-system: State change failed: "
                               f"(-12) Device is held open by someone (still after 9.75s)")
    assert sent(r) == [STATUS] + [BOTH_SECONDARY] * tries
    assert 8 <= sum(pauses) <= 12


def test_demote_fails_at_once_on_any_other_refusal(mocker):
    r = remote("xen1", {STATUS: primaries(),
                        BOTH_SECONDARY: Result(stderr="logger-system: No such resource\n", exited=10)})
    mocker.patch.object(r.interruption, "sleep", lambda s: pytest.fail("no retry expected"))
    with pytest.raises(RemoteError):
        drbd.demote(r, VM_, "xen1", domain_running=False)
    assert sent(r) == [STATUS, BOTH_SECONDARY]


def test_demote_dry_run_sends_only_the_probe(capsys):
    r = remote("xen1", {STATUS: both(drbd9("logger-system", role="Primary"), drbd9("logger-var", role="Primary"))},
               dry_run=True)
    assert drbd.demote(r, VM_, "xen1", domain_running=False) == list(RES)
    assert sent(r) == [STATUS]
    out = capsys.readouterr().out
    assert [ln for ln in out.splitlines() if "would run" in ln] == \
        ["  would run on xen1: env LC_ALL=C drbdadm secondary logger-system logger-var"]


# --- wait_sync ----------------------------------------------------------------------

def test_wait_sync_reports_progress_until_uptodate():
    syncing = both(drbd9("logger-system", role="Primary"),
                   drbd9("logger-var", role="Primary", peer_disk="Inconsistent", replication="SyncSource", done=45.2))
    done = both(drbd9("logger-system", role="Primary"), drbd9("logger-var", role="Primary"))
    r = remote("xen1", {STATUS: [syncing, syncing, done]})
    lines = []
    states = drbd.wait_sync(r, VM_, "xen1", timeout=60, poll=0, progress=lines.append)
    assert sent(r) == [STATUS] * 3
    assert lines == ["  xen1: waiting for sync: logger-var SyncSource 45.2%"]   # one line per 10 s
    assert all(s.is_uptodate_pair for s in states.values())


def test_wait_sync_feeds_the_bars_every_poll():
    syncing = both(drbd9("logger-system", role="Primary"),
                   drbd9("logger-var", role="Primary", peer_disk="Inconsistent", replication="SyncSource", done=45.2))
    done = both(drbd9("logger-system", role="Primary"), drbd9("logger-var", role="Primary"))
    r = remote("xen1", {STATUS: [syncing, done]})
    seen = []

    class Bars:
        def update(self, states):
            seen.append({n: (s.is_uptodate_pair, s.sync_percent) for n, s in states.items()})

    drbd.wait_sync(r, VM_, "xen1", timeout=60, poll=0, progress=lambda _: None, bars=Bars())
    assert [polled["logger-var"] for polled in seen] == [(False, 45.2), (True, None)]


def test_wait_sync_times_out_naming_what_still_syncs():
    r = remote("kvm1", {STATUS: both(drbd9("logger-system"), drbd9("logger-var", disk="Inconsistent",
                                                                   replication="SyncTarget", done=12.0))})
    text = refusal(drbd.wait_sync, r, VM_, "kvm1", timeout=0, poll=0, progress=lambda _: None)
    assert text == "kvm1: still waiting for sync after 0s: logger-var SyncTarget 12.0%"


def test_wait_sync_gives_up_at_once_on_standalone():
    r = remote("kvm1", {STATUS: both(drbd9("logger-system"), drbd9("logger-var", connection="StandAlone"))})
    text = refusal(drbd.wait_sync, r, VM_, "kvm1", timeout=3600, poll=0, progress=lambda _: None)
    assert "logger-var StandAlone" in text and "will not change by itself" in text
    assert sent(r) == [STATUS]


# --- quoting ------------------------------------------------------------------------

hostile = st.text(alphabet=st.sampled_from(list("ab1 '\";$()`|&<>*\\-_.")), min_size=1, max_size=10).filter(
    lambda s: not s.startswith(("-", ".")))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(hostile, min_size=2, max_size=2, unique=True))
def test_hostile_names_stay_single_arguments(names):
    vm = make_vm(names)
    run = {re.compile(r"^drbdadm status "): Result(stderr="drbdadm: Unknown command 'status'\n", exited=3),
           re.compile(r"^drbdadm role "): Result("Secondary/Secondary\n"),
           re.compile(r"^drbdadm cstate "): Result("Connected\n"),
           re.compile(r"^drbdadm dstate "): Result("UpToDate/UpToDate\n"),
           re.compile(r"^drbdadm (primary|dump-md) "): Result(),
           re.compile(r"^blkid "): Result(exited=2)}
    r = remote("kvm1", run)
    assert drbd.promote(r, vm, "kvm1") == names
    assert drbd.has_metadata(r, names[0]) is True
    assert drbd.fs_type(r, vm.resources[1].meta_disk["kvm1"]) is None
    expected = [["drbdadm", "status", *names],
                *[["drbdadm", verb, n] for n in names for verb in ("role", "cstate", "dstate")],
                ["drbdadm", "primary", *names],
                ["drbdadm", "dump-md", names[0]],
                ["blkid", "-p", "-o", "value", "-s", "TYPE", "/dev/vg_main/logger-1-md"]]
    assert [shlex.split(c) for c in sent(r)] == expected


def test_res_path_refuses_a_name_that_leaves_the_directory():
    assert drbd.res_path("a;$(b)") == "/etc/drbd.d/a;$(b).res"
    for name in ("../x", "a/b", ".hidden"):
        with pytest.raises(InputError):
            drbd.res_path(name)


# --- setup --------------------------------------------------------------------------

NO_MD = Result(stderr="No valid meta data found\n", exited=255)
DOWN = Result(stderr="logger-system: No such resource\nlogger-var: No such resource\n", exited=10)
FRESH = both(drbd9("logger-system", disk="Inconsistent", peer_disk="Inconsistent", peer="kvm1"),
             drbd9("logger-var", disk="Inconsistent", peer_disk="Inconsistent", peer="kvm1"))
SYNCED = both(drbd9("logger-system", role="Primary", peer="kvm1"), drbd9("logger-var", role="Primary", peer="kvm1"))


def meta(i: int) -> str:
    return f"/dev/vg_main/logger-{i}-md"


def blkid(dev: str) -> str:
    return f"blkid -p -o value -s TYPE {dev}"


def host_run(status, files: dict[str, str] | None = None, extra: dict | None = None) -> dict:
    run = {"drbdadm --version": Result(VERSION9), STATUS: status, re.compile(r"^sh -c "): Result(),
           re.compile(r"^drbdadm (create-md --force|up|primary --force|adjust) "): Result(),
           "drbdadm dump-md logger-system": NO_MD, "drbdadm dump-md logger-var": NO_MD,
           blkid(meta(0)): Result(exited=2), blkid(meta(1)): Result(exited=2)}
    for res in RES:
        text = (files or {}).get(res)
        run[read_cmd(f"/etc/drbd.d/{res}.res")] = Result(text) if text is not None else Result(exited=66)
    return run | (extra or {})


def make_site(runs: dict[str, dict], dry_run: bool = False, vm: VM = VM_) -> Site:
    inv = Inventory(path="test.yml", hosts=HOSTS, vms={vm.name: vm})
    return Site(inv, dry_run=dry_run, connect=lambda name, *a, **k: HostMock(run=dict(runs[name])))


def test_setup_from_scratch_sends_exactly_this(capsys):
    site = make_site({"xen1": host_run([DOWN, FRESH, SYNCED]), "kvm1": host_run(DOWN)})
    drbd.setup(site, VM_, HOSTS, force_initial_sync=True)
    files = [read_cmd("/etc/drbd.d/logger-system.res"), WRITE, read_cmd("/etc/drbd.d/logger-var.res"), WRITE]
    survey = [STATUS, "drbdadm dump-md logger-system", blkid(meta(0)), "drbdadm dump-md logger-var", blkid(meta(1))]
    create = ["drbdadm create-md --force logger-system", "drbdadm create-md --force logger-var"]
    up = ["drbdadm up logger-system", "drbdadm up logger-var"]
    assert sent(site.host("xen1")) == ["drbdadm --version", *files, *survey, *create, *up, STATUS,
                                       "drbdadm primary --force logger-system logger-var", STATUS]
    assert sent(site.host("kvm1")) == ["drbdadm --version", *files, *survey, *create, *up]
    out = capsys.readouterr().out
    assert "* xen1: logger-system, logger-var UpToDate/UpToDate ... ok" in out
    assert "+resource \"logger-system\" {" in out          # the diff of the new file is shown


def test_setup_with_hostile_names_sends_each_as_one_argument():
    names = ["x;$(reboot)", "y'\"`id`|&"]         # what drbd.conf can carry: no spaces
    vm = make_vm(names)
    status = shlex.join(["drbdadm", "status", *names])
    down = Result(stderr="".join(f"{n}: No such resource\n" for n in names), exited=10)
    fresh = both(*(drbd9(n, disk="Inconsistent", peer_disk="Inconsistent", peer="kvm1") for n in names))
    synced = both(*(drbd9(n, role="Primary", peer="kvm1") for n in names))
    run = {"drbdadm --version": Result(VERSION9), re.compile(r"^sh -c "): Result(),
           re.compile(r"^drbdadm (create-md --force|up|primary --force) "): Result(),
           re.compile(r"^drbdadm dump-md "): NO_MD, re.compile(r"^blkid "): Result(exited=2),
           **{read_cmd(f"/etc/drbd.d/{n}.res"): Result(exited=66) for n in names}}
    site = make_site({"xen1": run | {status: [down, fresh, synced]}, "kvm1": run | {status: down}}, vm=vm)
    drbd.setup(site, vm, HOSTS, force_initial_sync=True)

    def each(*argv):
        return [[*argv, n] for n in names]

    files = []
    for n in names:
        files += [shlex.split(read_cmd(f"/etc/drbd.d/{n}.res")), [WRITE]]
    survey = [["drbdadm", "status", *names]]
    for i, n in enumerate(names):
        survey += [["drbdadm", "dump-md", n], ["blkid", "-p", "-o", "value", "-s", "TYPE", meta(i)]]
    kvm = [["drbdadm", "--version"], *files, *survey, *each("drbdadm", "create-md", "--force"), *each("drbdadm", "up")]
    xen = kvm + [survey[0], ["drbdadm", "primary", "--force", *names], survey[0]]
    for host, expected in (("xen1", xen), ("kvm1", kvm)):
        assert [[c] if c == WRITE else shlex.split(c) for c in sent(site.host(host))] == expected, host


def test_setup_writes_what_drbdconf_renders():
    site = make_site({"xen1": host_run([DOWN, FRESH, SYNCED]), "kvm1": host_run(DOWN)})
    drbd.setup(site, VM_, HOSTS, force_initial_sync=True)
    for h in ("xen1", "kvm1"):
        assert written(site.host(h)) == list(render_drbd_resource(VM_, HOSTS, "9.22.0").values())


def test_setup_second_run_changes_nothing():
    files = render_drbd_resource(VM_, HOSTS, "9.22.0")
    site = make_site({"xen1": host_run(SYNCED, files), "kvm1": host_run(SYNCED, files)})
    drbd.setup(site, VM_, HOSTS, force_initial_sync=True)
    for h in ("xen1", "kvm1"):
        assert changes(sent(site.host(h))) == []
    reads = [read_cmd(f"/etc/drbd.d/{res}.res") for res in RES]
    assert sent(site.host("kvm1")) == ["drbdadm --version", *reads, STATUS]
    assert sent(site.host("xen1")) == ["drbdadm --version", *reads, STATUS, STATUS, STATUS]


@pytest.mark.parametrize("dry_run", [False, True])
def test_setup_adjusts_a_resource_that_is_up_when_its_file_changed(dry_run, capsys):
    """A site set up before `auto-promote no` (or by hand): the kernel takes the new file only from adjust."""
    old = render_drbd_resource(VM_, HOSTS, "8.4.11")
    site = make_site({"xen1": host_run(SYNCED, old), "kvm1": host_run(SYNCED, old)}, dry_run=dry_run)
    drbd.setup(site, VM_, HOSTS, force_initial_sync=True)
    adjust = [f"drbdadm adjust {res}" for res in RES]
    out = capsys.readouterr().out
    for h in ("xen1", "kvm1"):
        if dry_run:
            assert changes(sent(site.host(h))) == []
            assert all(f"would run on {h}: {LOCALE}{cmd}" in out for cmd in adjust)
        else:
            assert changes(sent(site.host(h))) == [WRITE, WRITE, *adjust]
            assert written(site.host(h)) == list(render_drbd_resource(VM_, HOSTS, "9.1.17").values())


@pytest.mark.parametrize("where", ["xen1", "kvm1"])
def test_setup_refuses_create_md_over_a_filesystem_on_the_meta_disk(where):
    runs = {"xen1": host_run(DOWN), "kvm1": host_run(DOWN)}
    runs[where][blkid(meta(1))] = Result("ext4\n")
    site = make_site(runs)
    text = refusal(drbd.setup, site, VM_, HOSTS, force_initial_sync=True)
    assert text == (f"{where}: refusing create-md for logger-var: its meta_disk {meta(1)} holds ext4; "
                    f"external metadata needs an empty device")
    for h in ("xen1", "kvm1"):       # both hosts were checked before anything was created
        assert [c for c in changes(sent(site.host(h))) if c != WRITE] == []


@pytest.mark.parametrize("answer", [Result("\n"), Result(exited=8), Result("swap\n")])
def test_setup_refuses_any_signature_on_the_meta_disk(answer):
    site = make_site({"xen1": host_run(DOWN, extra={blkid(meta(0)): answer}), "kvm1": host_run(DOWN)})
    assert "refusing create-md for logger-system" in refusal(drbd.setup, site, VM_, HOSTS, force_initial_sync=True)
    assert not any("create-md --force" in c for c in sent(site.host("xen1")) + sent(site.host("kvm1")))


def test_setup_internal_metadata_warns_and_proceeds(capsys):
    vm = make_vm(internal=True)
    lv = ["/dev/vg_main/logger-0", "/dev/vg_main/logger-1"]
    extra = {blkid(lv[0]): Result("ext3\n"), blkid(lv[1]): Result(exited=2)}
    site = make_site({"xen1": host_run([DOWN, FRESH, SYNCED], extra=extra), "kvm1": host_run(DOWN, extra=extra)},
                     vm=vm)
    drbd.setup(site, vm, HOSTS, force_initial_sync=True)
    assert blkid(lv[0]) in sent(site.host("xen1"))
    assert "drbdadm create-md --force logger-system" in sent(site.host("xen1"))
    assert f"WARNING xen1: logger-system: internal metadata goes at the end of {lv[0]}, which holds ext3" \
        in capsys.readouterr().out


@pytest.mark.parametrize("answer", [Result("# DRBD meta data dump\nversion \"v09\";\n"),
                                    Result(stderr='Found meta data is "unclean", please apply-al first\n',
                                           exited=255)])
def test_setup_keeps_existing_metadata(answer):
    extra = {"drbdadm dump-md logger-system": answer}
    site = make_site({"xen1": host_run([DOWN, FRESH, SYNCED], extra=extra), "kvm1": host_run(DOWN, extra=extra)})
    drbd.setup(site, VM_, HOSTS, force_initial_sync=True)
    for h in ("xen1", "kvm1"):
        assert "drbdadm create-md --force logger-system" not in sent(site.host(h))
        assert blkid(meta(0)) not in sent(site.host(h))
        assert "drbdadm create-md --force logger-var" in sent(site.host(h))


def test_setup_stops_on_an_unexpected_dump_md_answer():
    extra = {"drbdadm dump-md logger-var": Result(stderr="open(/dev/vg_main/logger-1-md) failed\n", exited=20)}
    site = make_site({"xen1": host_run(DOWN, extra=extra), "kvm1": host_run(DOWN)})
    with pytest.raises(RemoteError, match="logger-1-md"):
        drbd.setup(site, VM_, HOSTS, force_initial_sync=True)
    assert not any("create-md --force" in c for c in sent(site.host("xen1")))


def test_setup_without_force_refuses_the_initial_sync():
    site = make_site({"xen1": host_run([DOWN, FRESH]), "kvm1": host_run(DOWN)})
    text = refusal(drbd.setup, site, VM_, HOSTS, force_initial_sync=False)
    assert "Inconsistent on both hosts" in text and "--force-initial-sync" in text
    assert not any("primary" in c for c in sent(site.host("xen1")))


@pytest.mark.parametrize("xen_disk, kvm_disk", [("Outdated", "Inconsistent"), ("Inconsistent", "Outdated"),
                                                ("Diskless", "Inconsistent")])
def test_setup_never_forces_anything_but_a_fresh_pair(xen_disk, kvm_disk):
    odd = both(drbd9("logger-system", disk="Inconsistent", peer_disk="Inconsistent", peer="kvm1"),
               drbd9("logger-var", disk=xen_disk, peer_disk=kvm_disk, peer="kvm1"))
    site = make_site({"xen1": host_run([DOWN, odd]), "kvm1": host_run(DOWN)})
    assert "refusing the initial sync of logger-var" in refusal(drbd.setup, site, VM_, HOSTS, force_initial_sync=True)
    assert not any("primary" in c for c in sent(site.host("xen1")))


def test_setup_does_not_force_where_data_is_uptodate():
    half = both(drbd9("logger-system", role="Primary", peer_disk="Inconsistent", replication="SyncSource",
                      done=3.0, peer="kvm1"),
                drbd9("logger-var", disk="Inconsistent", peer_disk="Inconsistent", peer="kvm1"))
    site = make_site({"xen1": host_run([SYNCED, half, SYNCED]), "kvm1": host_run(SYNCED)})
    drbd.setup(site, VM_, HOSTS, force_initial_sync=True)
    assert [c for c in sent(site.host("xen1")) if "primary" in c] == ["drbdadm primary --force logger-var"]


def test_setup_dry_run_sends_only_probes(capsys):
    undefined = {STATUS: Result(stderr="'logger-system' not defined in your config (for this host).\n", exited=10),
                 "drbdadm status logger-var": Result(stderr="'logger-var' not defined in your config (for this "
                                                            "host).\n", exited=10)}
    site = make_site({"xen1": host_run(DOWN, extra=undefined), "kvm1": host_run(DOWN, extra=undefined)},
                     dry_run=True)
    drbd.setup(site, VM_, HOSTS, force_initial_sync=True)
    reads = [read_cmd(f"/etc/drbd.d/{res}.res") for res in RES]
    for h in ("xen1", "kvm1"):
        assert sent(site.host(h)) == ["drbdadm --version", *reads, STATUS, "drbdadm status logger-var",
                                      blkid(meta(0)), blkid(meta(1))]
    out = capsys.readouterr().out
    assert "would run on kvm1: env LC_ALL=C drbdadm create-md --force logger-var" in out
    assert "would run on xen1: env LC_ALL=C drbdadm up logger-system" in out
    assert "+resource \"logger-var\" {" in out


def test_setup_dry_run_still_refuses_a_filesystem():
    undefined = {STATUS: Result(stderr="'logger-system' not defined in your config (for this host).\n", exited=10),
                 "drbdadm status logger-var": Result(stderr="'logger-var' not defined in your config.\n", exited=10),
                 blkid(meta(0)): Result("xfs\n")}
    site = make_site({"xen1": host_run(DOWN, extra=undefined), "kvm1": host_run(DOWN)}, dry_run=True)
    assert "holds xfs" in refusal(drbd.setup, site, VM_, HOSTS, force_initial_sync=True)


def test_setup_for_real_refuses_a_resource_drbdadm_does_not_know_after_writing():
    extra = {STATUS: Result(stderr="'logger-system' not defined in your config (for this host).\n", exited=10)}
    site = make_site({"xen1": host_run(DOWN, extra=extra), "kvm1": host_run(DOWN)})
    assert "xen1: DRBD resource logger-system is not defined" in refusal(drbd.setup, site, VM_, HOSTS,
                                                                        force_initial_sync=True)


def test_setup_renders_the_legacy_spelling_for_an_old_host():
    old = {"drbdadm --version": Result(stderr="drbdadm: unrecognized option '--version'\n", exited=20),
           re.compile(r"^drbdadm -- --(force create-md|overwrite-data-of-peer primary) "): Result()}
    site = make_site({"xen1": host_run([DOWN, FRESH, SYNCED], extra=old), "kvm1": host_run(DOWN)})
    drbd.setup(site, VM_, HOSTS, force_initial_sync=True)
    for h in ("xen1", "kvm1"):
        assert written(site.host(h)) == list(render_drbd_resource(VM_, HOSTS, "8.3").values())
    forcing = [c for c in sent(site.host("xen1")) if "force" in c or "overwrite" in c]
    assert forcing == ["drbdadm -- --force create-md logger-system", "drbdadm -- --force create-md logger-var",
                       "drbdadm -- --overwrite-data-of-peer primary logger-system logger-var"]
    assert "drbdadm create-md --force logger-var" in sent(site.host("kvm1"))   # each host in its own words


@pytest.mark.parametrize("version, create_md, primary", [
    ("8.3.13", ["--", "--force", "create-md"], ["--", "--overwrite-data-of-peer", "primary"]),
    ("8.4.11", ["create-md", "--force"], ["primary", "--force"]),
    ("9.22.0", ["create-md", "--force"], ["primary", "--force"]),
])
def test_force_is_spelled_as_each_userland_wants(version, create_md, primary):
    assert (drbd.forced("create-md", version), drbd.forced("primary", version)) == (create_md, primary)


# --- tasks --------------------------------------------------------------------------

def test_every_task_documents_every_argument():
    for name in drbd.ns.task_names:
        t = drbd.ns[name]
        params = [p for p in inspect.signature(t.body).parameters if p != "c"]
        assert t.__doc__ or t.body.__doc__, name
        assert sorted(t.help) == sorted(params), name


def test_fab_help_shows_every_argument_of_promote(tmp_path):
    # A one-line collection beside the test, so this holds whether or not tasks/__init__ wires drbd in yet.
    (tmp_path / "drbdonly.py").write_text(
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom invoke import Collection\n"
        f"from tasks import drbd\nns = Collection(drbd.ns)\n")
    out = subprocess.run([str(REPO / ".venv" / "bin" / "fab"), "--search-root", str(tmp_path), "--collection",
                          "drbdonly", "--help", "drbd.promote"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for flag, words in (("--vm", "VM name from the inventory"), ("--host", "the host to promote on"),
                        ("--allow-disconnected", "known to be down"), ("--dry-run", "change nothing")):
        assert flag in text and words in text, (flag, out.stdout)


def inventory_file(tmp_path) -> Context:
    (tmp_path / "hosts.yml").write_text(
        "hosts:\n  xen1: {address: 192.0.2.11, role: xen}\n  kvm1: {address: 192.0.2.12, role: kvm}\n"
        "vms:\n  logger:\n    xen_host: xen1\n    kvm_host: kvm1\n    disks:\n"
        "      - {resource: logger-system, device: /dev/drbd5, backing: /dev/vg_main/logger-0,"
        " meta_disk: /dev/vg_main/logger-0-md, port: 7790}\n"
        "      - {resource: logger-var, device: /dev/drbd6, backing: /dev/vg_main/logger-1,"
        " meta_disk: /dev/vg_main/logger-1-md, port: 7791}\n")
    return Context(Config(overrides={"inventory": str(tmp_path / "hosts.yml")}))


@pytest.mark.parametrize("task", [drbd.promote_task, drbd.demote_task])
def test_promote_and_demote_need_one_of_the_vms_hosts(tmp_path, task):
    with pytest.raises(InputError, match="'kvm9' is not one of logger's hosts"):
        task(inventory_file(tmp_path), vm="logger", host="kvm9")


@pytest.mark.parametrize("host, kind", [("kvm1", "KvmHost"), ("xen1", "XenHost")])
def test_demote_task_asks_that_hosts_hypervisor_whether_the_domain_runs(tmp_path, mocker, host, kind):
    from tasks import hypervisors

    c = inventory_file(tmp_path)
    running = mocker.patch.object(getattr(hypervisors, kind), "running", return_value=True)
    status = both(drbd9("logger-system", role="Primary"), drbd9("logger-var", role="Primary"))
    mocker.patch.object(drbd, "site_from_context",
                        lambda c, inv, dry_run: Site(inv, dry_run=dry_run,
                                                     connect=lambda *a, **k: HostMock(run={STATUS: status})))
    with pytest.raises(GuardError, match=f"still runs on {host}"):
        drbd.demote_task(c, vm="logger", host=host)
    running.assert_called_once_with("logger")


VERSION84 = VERSION9.replace("DRBD_KERNEL_VERSION_CODE=0x090111", "DRBD_KERNEL_VERSION_CODE=0x08040b")
DUMP = "drbdadm dump logger-system logger-var"


def real_dump(tmp_path, written_for: str, hostname: str = "xen1") -> Result:
    """The real drbdadm's dump of the VM's resource files as the tool writes them for `written_for`."""
    from tasks.inventory import load_inventory
    inv = load_inventory(tmp_path / "hosts.yml")
    text = "".join(render_drbd_resource(inv.vm("logger"), inv.hosts, written_for).values())
    result = drbdadm(tmp_path, "9", hostname, text, "dump", *RES)
    assert result.returncode == 0, result.stderr
    return Result(stdout=result.stdout, stderr=result.stderr)


def status_site(mocker, runs):
    mocker.patch.object(drbd, "site_from_context",
                        lambda c, inv, dry_run=False: Site(inv, connect=lambda name, *a, **k: HostMock(
                            run=runs[name])))


@needs_drbdadm
def test_status_task_prints_a_table_and_the_host_it_could_not_read(tmp_path, mocker, capsys):
    c = inventory_file(tmp_path)
    runs = {"xen1": {STATUS: both(drbd9("logger-system", role="Primary", peer="kvm1"),
                                  drbd9("logger-var", role="Primary", peer_disk="Inconsistent",
                                        replication="SyncSource", done=45.2, peer="kvm1")),
                     "drbdadm --version": Result(VERSION9), DUMP: real_dump(tmp_path, "9")},
            "kvm1": {STATUS: Result(stderr="ssh: connect to host kvm1 port 22: No route to host\n", exited=255)}}
    status_site(mocker, runs)
    with pytest.raises(ToolError, match="could not read the DRBD state on 1 host"):
        drbd.status(c, vm="logger")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RESOURCE", "HOST", "ROLE", "PEER", "ROLE", "CONNECTION", "DISK", "PEER", "DISK",
                                "SYNC"]
    assert lines[1].split() == ["logger-system", "xen1", "Primary", "Secondary", "Connected", "UpToDate",
                                "UpToDate", "-"]
    assert lines[2].split() == ["logger-var", "xen1", "Primary", "Secondary", "SyncSource", "UpToDate",
                                "Inconsistent", "45.2%"]
    assert lines[1].index("xen1") == lines[0].index("HOST")          # aligned columns
    assert "No route to host" in lines[3]
    assert len(lines) == 4, "the tool's own resource files say auto-promote no: no warning"


@needs_drbdadm
def test_status_warns_where_drbd9_would_auto_promote(tmp_path, mocker, capsys):
    """Files without `auto-promote no` (written before the tool, or by hand) on DRBD 9: one warning
    per resource and host; an 8.4 host has no auto-promote and is not asked."""
    c = inventory_file(tmp_path)
    status = both(drbd9("logger-system", role="Primary", peer="kvm1"), drbd9("logger-var", role="Primary", peer="kvm1"))
    runs = {"xen1": {STATUS: status, "drbdadm --version": Result(VERSION9), DUMP: real_dump(tmp_path, "8.4")},
            "kvm1": {STATUS: both(drbd9("logger-system", peer_role="Primary"), drbd9("logger-var", peer_role="Primary")),
                     "drbdadm --version": Result(VERSION84)}}
    status_site(mocker, runs)
    drbd.status(c, vm="logger")
    warnings = [line.strip() for line in capsys.readouterr().out.splitlines() if "WARNING" in line]
    assert warnings == [drbd.auto_promote_warning("xen1", name) for name in RES]
    assert warnings[0] == ("WARNING xen1: logger-system has auto-promote on (DRBD 9's default): a domain that opens "
                           "it for writing makes it Primary there without the checks of drbd.promote; fab drbd.setup "
                           "writes `auto-promote no` into its resource file")


def test_status_shows_the_states_of_a_host_whose_configuration_cannot_be_read(tmp_path, mocker, capsys):
    c = inventory_file(tmp_path)
    status = both(drbd9("logger-system", role="Primary", peer="kvm1"), drbd9("logger-var", role="Primary", peer="kvm1"))
    broken = Result(stderr="/etc/drbd.d/logger-var.res:3: Parse error: 'resource' expected\n", exited=10)
    runs = {"xen1": {STATUS: status, "drbdadm --version": Result(VERSION9), DUMP: broken},
            "kvm1": {STATUS: both(drbd9("logger-system", peer_role="Primary"), drbd9("logger-var", peer_role="Primary")),
                     "drbdadm --version": Result(VERSION84)}}
    status_site(mocker, runs)
    with pytest.raises(ToolError, match="could not read the DRBD state on 1 host"):
        drbd.status(c, vm="logger")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:5]] == [[r, h] for h in ("xen1", "kvm1") for r in RES]
    assert "Parse error: 'resource' expected" in lines[5]


def test_drbd_version_is_the_kernel_modules_where_drbdadm_reports_one():
    """drbd-utils 9.22 (Debian 12) over Debian's 8.4 module reads files as 8.4 does."""
    answers = {"drbdadm --version": [Result(VERSION9), Result(VERSION84),
                                     Result(VERSION9.replace("0x090111", "0x000000")),
                                     Result(stderr="drbdadm: unrecognized option '--version'\n", exited=20)]}
    r = remote("xen1", answers)
    assert [drbd.drbd_version(r) for _ in range(4)] == ["9.1.17", "8.4.11", "9.22.0", "8.3"]
