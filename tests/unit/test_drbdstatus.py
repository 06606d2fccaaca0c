"""DRBD status parsers against every file of ../shared/corpus/drbd-status.

The expected states are written out here, by reading each file by hand; none
is taken from the parser. `st()` only spells them compactly, the way
/proc/drbd does: "Primary/Secondary" is the local role then one per peer.
"""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from tasks.formats.drbdstatus import (
    DrbdState,
    Peer,
    parse_cstate,
    parse_drbdadm_status,
    parse_dstate,
    parse_proc_drbd,
    parse_role,
)


def st(name, minor, roles, connection, disks, sync=None, quorum=True):
    role, *peer_roles = roles.split("/")
    disk, *peer_disks = disks.split("/")
    return DrbdState(name, minor, role, tuple(peer_roles), connection, disk, tuple(peer_disks), sync, quorum=quorum)


def unconfigured(*minors):
    return {m: st(f"drbd{m}", m, "Unknown", "Unconfigured", "Unconfigured") for m in minors}


def proc(*states):
    return {s.minor: s for s in states}


PROC_83_BASE = [  # minors 0, 1, 4 of ganeti's 8.3.1 files
    st("drbd0", 0, "Primary/Secondary", "Connected", "UpToDate/UpToDate"),
    st("drbd1", 1, "Secondary/Primary", "Connected", "UpToDate/UpToDate"),
    st("drbd4", 4, "Primary/Unknown", "WFConnection", "UpToDate/DUnknown"),
]
PROC_FULL = [  # minors 0-8 as in ganeti's drbd8 (8.0.12) and drbd83 (8.3.1) files
    *PROC_83_BASE,
    st("drbd5", 5, "Primary/Secondary", "Connected", "UpToDate/Diskless"),
    st("drbd6", 6, "Secondary/Primary", "Connected", "Diskless/UpToDate"),
    st("drbd7", 7, "Secondary/Unknown", "WFConnection", "UpToDate/DUnknown"),
    st("drbd8", 8, "Secondary/Unknown", "StandAlone", "UpToDate/DUnknown"),
]
PROC_84 = [  # ganeti's 8.4.2 drbd84 file, minors 1-8 (emptyfirst drops minor 0)
    st("drbd1", 1, "Secondary/Primary", "Connected", "UpToDate/UpToDate"),
    st("drbd4", 4, "Primary/Unknown", "WFConnection", "UpToDate/DUnknown"),
    st("drbd6", 6, "Secondary/Primary", "Connected", "Diskless/UpToDate"),
    st("drbd8", 8, "Secondary/Unknown", "StandAlone", "UpToDate/DUnknown"),
]
ONLY_PRIMARY_CONNECTED = proc(st("drbd0", 0, "Primary/Secondary", "Connected", "UpToDate/UpToDate"))
# Config dumps (`drbdsetup show`, text and --json) describe configuration, not
# state; DRBD 9's `drbdsetup status --json` and `events2` are formats no task
# asks for. Every parser must refuse them rather than make a state up.
NOT_STATUS_TEXT = ValueError

# file -> (parser, expected); every file of the corpus folder is listed.
CORPUS = {
    # /proc/drbd, DRBD 8.0-8.4
    "drbd-8.0.12_proc-drbd_ganeti-proc_drbd8.txt":
        (parse_proc_drbd, {**proc(*PROC_FULL), **unconfigured(2)}),
    "drbd-8.0.12_proc-drbd_ganeti-proc_drbd80-emptyline.txt":
        (parse_proc_drbd, {**ONLY_PRIMARY_CONNECTED, **unconfigured(1, 2, 5, 6)}),
    "drbd-8.0.12_proc-drbd_ganeti-proc_drbd80-emptyversion.txt":
        (parse_proc_drbd, {**ONLY_PRIMARY_CONNECTED, **unconfigured(1, 2, 5, 6)}),
    "drbd-8.3.11_proc-drbd_ganeti-proc_drbd83_sync_want.txt":
        (parse_proc_drbd, {**proc(st("drbd0", 0, "Secondary/Primary", "SyncTarget",
                                     "Inconsistent/UpToDate", 44.4)), **unconfigured(1, 2, 3)}),
    "drbd-8.3.12_proc-drbd_ug84-admin-upgrade-before.txt":
        (parse_proc_drbd, proc(st("drbd0", 0, "Secondary/Primary", "Connected", "UpToDate/UpToDate"))),
    "drbd-8.3.1_proc-drbd_ganeti-proc_drbd83.txt":
        (parse_proc_drbd, {**proc(*PROC_FULL), **unconfigured(2)}),
    "drbd-8.3.1_proc-drbd_ganeti-proc_drbd83_sync.txt":
        (parse_proc_drbd, {**proc(*PROC_83_BASE), **unconfigured(2), **proc(
            st("drbd3", 3, "Primary/Secondary", "SyncTarget", "Inconsistent/UpToDate", 34.9))}),
    "drbd-8.3.1_proc-drbd_ganeti-proc_drbd83_sync_krnl2.6.39.txt":  # "...)Mfinish:" glued
        (parse_proc_drbd, {**proc(*PROC_83_BASE), **unconfigured(2), **proc(
            st("drbd3", 3, "Primary/Secondary", "SyncSource", "UpToDate/Inconsistent", 2.4))}),
    "drbd-8.4.0_proc-drbd_ug84-admin-3devices.txt":
        (parse_proc_drbd, proc(
            st("drbd0", 0, "Secondary/Secondary", "Connected", "UpToDate/UpToDate"),
            st("drbd1", 1, "Primary/Secondary", "Connected", "UpToDate/UpToDate"),
            st("drbd2", 2, "Secondary/Primary", "Connected", "UpToDate/UpToDate"))),
    "drbd-8.4.1_proc-drbd_ug84-configure-inconsistent.txt":
        (parse_proc_drbd, proc(st("drbd0", 0, "Secondary/Secondary", "Connected",
                                  "Inconsistent/Inconsistent"))),
    "drbd-8.4.2_proc-drbd_ganeti-proc_drbd84.txt":
        (parse_proc_drbd, {**ONLY_PRIMARY_CONNECTED, **proc(*PROC_84), **unconfigured(2)}),
    "drbd-8.4.2_proc-drbd_ganeti-proc_drbd84_emptyfirst.txt":
        (parse_proc_drbd, {**proc(*PROC_84), **unconfigured(2)}),
    "drbd-8.4.2_proc-drbd_ganeti-proc_drbd84_sync.txt":
        (parse_proc_drbd, {**proc(
            st("drbd0", 0, "Primary/Unknown", "StandAlone", "UpToDate/DUnknown"),
            st("drbd5", 5, "Secondary/Secondary", "SyncSource", "UpToDate/Inconsistent", 68.5)),
            **unconfigured(3)}),
    "drbd-8.4.3_proc-drbd_node-exporter-fixture.txt":
        (parse_proc_drbd, proc(st("drbd1", 1, "Primary/Primary", "Connected", "UpToDate/UpToDate"))),
    # drbdadm / drbdsetup status text, 8.4 and 9
    "drbd-8.4_drbdadm-status_ug84-admin-home.txt":
        (parse_drbdadm_status, {"home": st("home", None, "Secondary/Secondary", "Connected",
                                           "UpToDate/UpToDate")}),
    "drbd-8.4_drbdsetup-status-verbose-statistics_utils-manpage.txt":
        (parse_drbdadm_status, {"fs-data": st("fs-data", 1, "Primary/Secondary", "Connected",
                                              "UpToDate/UpToDate")}),
    "drbd-8.4_drbdsetup-status_utils-manpage.txt":
        (parse_drbdadm_status, {"fs-backoffice": st("fs-backoffice", None, "Primary/Secondary",
                                                    "Connected", "UpToDate/UpToDate")}),
    "drbd9_drbdadm-status_ug9-admin-home-3peers.txt":  # nono is still connecting: worst wins
        (parse_drbdadm_status, {"home": st("home", None, "Secondary/Secondary/Secondary/Unknown",
                                           "Connecting", "UpToDate/UpToDate/UpToDate/DUnknown")}),
    "drbd9_drbdadm-status_ug9-configure-r0-inconsistent.txt":
        (parse_drbdadm_status, {"r0": st("r0", None, "Secondary/Secondary", "Connected",
                                         "Inconsistent/Inconsistent")}),
    "drbd9_drbdadm-status_ug9-upgrading-all.txt":
        (parse_drbdadm_status, {"data": st("data", None, "Secondary/Primary", "Connected",
                                           "UpToDate/UpToDate")}),
    "drbd9_drbdsetup-status-verbose_utils-manpage.txt":  # older field set: still handshaking
        (parse_drbdadm_status, {"drbd0": st("drbd0", 1, "Primary/Secondary", "WFReportParams",
                                            "UpToDate/UpToDate")}),
    "drbd9_drbdsetup-status_utils-manpage.txt":
        (parse_drbdadm_status, {"drbd0": st("drbd0", None, "Primary/Secondary", "Connected",
                                            "UpToDate/UpToDate")}),
    # DRBD 9's other formats, which no task reads
    "drbd9_drbdsetup-status-json_ha-cluster-exporter-fake_drbdsetup.json": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2-diff_utils-test-all-create-change.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2-full_utils-test-all-create-change.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2-statistics_utils-test-all-create-change.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2-statistics_utils-test-sync.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-all-create-change.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-all-create-destroy.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-all-create-helper.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-change-before-exists.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-create-before-exists.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-destroy-before-exists.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-device-create-destroy.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-exists-before-create.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-first-out-of-order.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-may-promote-peer-data.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-may-promote-peer-role.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-may-promote-quorum.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-no-resources.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-out-of-order.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-promotion-score-devices.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-promotion-score-inconsistent.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-resource-create-destroy.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-resource-exists.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-events2_utils-test-sync.txt": (None, NOT_STATUS_TEXT),
    # config dumps, not status
    "drbd-8.0-8.3_drbdsetup-show_ganeti-bdev-drbd-disk.txt": (None, NOT_STATUS_TEXT),
    "drbd-8.0-8.3_drbdsetup-show_ganeti-bdev-drbd-net-ip4.txt": (None, NOT_STATUS_TEXT),
    "drbd-8.0-8.3_drbdsetup-show_ganeti-bdev-drbd-net-ip6.txt": (None, NOT_STATUS_TEXT),
    "drbd-8.0_drbdsetup-show_ganeti-bdev-drbd-8.0.txt": (None, NOT_STATUS_TEXT),
    "drbd-8.3_drbdsetup-show_ganeti-bdev-drbd-8.3.txt": (None, NOT_STATUS_TEXT),
    "drbd-8.4_drbdsetup-show_ganeti-bdev-drbd-8.4-no-disk-params.txt": (None, NOT_STATUS_TEXT),
    "drbd-8.4_drbdsetup-show_ganeti-bdev-drbd-8.4.txt": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-show-json_utils-test-2-device.json": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-show-json_utils-test-normal.json": (None, NOT_STATUS_TEXT),
    "drbd9_drbdsetup-show-json_utils-test-resource.json": (None, NOT_STATUS_TEXT),
}
TEXT_PARSERS = (parse_proc_drbd, parse_drbdadm_status)


def read(corpus: Path, name: str) -> str:
    # 8.3's /proc/drbd holds NUL bytes, kept as they are.
    return (corpus / "drbd-status" / name).read_text(encoding="utf-8")


def test_every_corpus_file_has_expectations(corpus):
    files = {p.name for p in (corpus / "drbd-status").iterdir()} - {"MANIFEST.tsv"}
    assert files == set(CORPUS)


@pytest.mark.parametrize("name", sorted(n for n, (_, e) in CORPUS.items() if e is not NOT_STATUS_TEXT))
def test_corpus_state(corpus, name):
    parser, expected = CORPUS[name]
    assert parser(read(corpus, name)) == expected


@pytest.mark.parametrize("parser", TEXT_PARSERS, ids=lambda p: p.__name__)
@pytest.mark.parametrize("name", sorted(n for n, (_, e) in CORPUS.items() if e is NOT_STATUS_TEXT))
def test_formats_no_task_reads_are_refused(corpus, name, parser):
    with pytest.raises(ValueError, match=r"^not .* output"):
        parser(read(corpus, name))


# --- the helpers the guards use -------------------------------------------------

@pytest.mark.parametrize("state, connected, syncing, uptodate_pair, primary, peer_primary", [
    (st("r", 1, "Primary/Secondary", "Connected", "UpToDate/UpToDate"), True, False, True, True, False),
    (st("r", 1, "Secondary/Primary", "SyncTarget", "Inconsistent/UpToDate", 3.0),
     True, True, False, False, True),
    (st("r", 1, "Secondary/Secondary", "VerifyS", "UpToDate/UpToDate"), True, False, True, False, False),
    (st("r", 1, "Primary/Unknown", "WFConnection", "UpToDate/DUnknown"), False, False, False, True, False),
    (st("r", 1, "Secondary", "StandAlone", "UpToDate"), False, False, False, False, False),
    (st("r", 1, "Secondary/Secondary/Primary", "Connected", "UpToDate/UpToDate/Outdated"),
     True, False, False, False, True),
    (st("r", 2, "Unknown", "Unconfigured", "Unconfigured"), False, False, False, False, False),
])
def test_guard_helpers(state, connected, syncing, uptodate_pair, primary, peer_primary):
    assert (state.is_connected, state.is_syncing, state.is_uptodate_pair, state.is_primary,
            any(p.role == "Primary" for p in state.peer_list())) == (connected, syncing, uptodate_pair, primary,
                                                                       peer_primary)


# --- drbdadm role | cstate | dstate ---------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Primary/Secondary\n", ("Primary", ("Secondary",))),
    ("Secondary/Unknown\n", ("Secondary", ("Unknown",))),
    ("Primary\n", ("Primary", ())),                      # DRBD 9 prints the local role only
    ("Unconfigured\n", ("Unknown", ())),                 # 8.x, resource down
    ("\x1b[1mSecondary\x1b[0m/Primary", ("Secondary", ("Primary",))),   # coloured on a pty
])
def test_parse_role(text, expected):
    assert parse_role(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Connected\n", "Connected"),
    ("WFConnection\n", "WFConnection"),
    ("SyncSource\n", "SyncSource"),
    ("Connected\nConnecting\nConnected\n", "Connecting"),    # 9: one line per connection
    ("Connected\nSyncTarget\n", "SyncTarget"),
])
def test_parse_cstate(text, expected):
    assert parse_cstate(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("UpToDate/UpToDate\n", ("UpToDate", ("UpToDate",))),
    ("Diskless/DUnknown\n", ("Diskless", ("DUnknown",))),
    ("UpToDate\n", ("UpToDate", ())),                                       # 9 without peers
    ("UpToDate/UpToDate/Outdated\n", ("UpToDate", ("UpToDate", "Outdated"))),  # 9, two peers
    ("UpToDate/UpToDate\nInconsistent/UpToDate\n", ("Inconsistent", ("UpToDate",))),  # 2 volumes
    ("UpToDate/UpToDate\nUpToDate/Diskless\n", ("UpToDate", ("Diskless",))),
])
def test_parse_dstate(text, expected):
    assert parse_dstate(text) == expected


@pytest.mark.parametrize("parser, text", [
    (parse_role, ""),
    (parse_role, "Primary\nSecondary\n"),
    (parse_role, "primary/secondary"),
    (parse_role, "r0: No such resource"),
    (parse_cstate, ""),
    (parse_cstate, "r0: No such connection"),
    (parse_dstate, "   \n"),
    (parse_dstate, "UpToDate/UpToDate\nUpToDate\n"),
    (parse_dstate, "Up To Date"),
])
def test_one_line_answers_refuse_garbage(parser, text):
    with pytest.raises(ValueError) as exc:
        parser(text)
    assert "\n" not in str(exc.value)


# --- status text beyond the corpus ------------------------------------------------

def test_status_multi_volume_reports_the_worst_volume_and_sync():
    text = """\
vm-data role:Secondary
  volume:0 disk:UpToDate
  volume:1 disk:Inconsistent
  kvm1 role:Primary
    volume:0 peer-disk:UpToDate
    volume:1 replication:SyncTarget peer-disk:UpToDate done:12.50
"""
    assert parse_drbdadm_status(text) == {
        "vm-data": st("vm-data", None, "Secondary/Primary", "SyncTarget", "Inconsistent/UpToDate", 12.5)}


def test_status_unnamed_connection_and_no_resources_line():
    text = """\
# No currently configured DRBD found.
r1 role:Primary
  disk:UpToDate
  node-id:1 connection:Connecting
"""
    assert parse_drbdadm_status(text) == {
        "r1": st("r1", None, "Primary/Unknown", "Connecting", "UpToDate/DUnknown")}


def test_status_strips_colours():
    text = "r0 role:\x1b[1;32mPrimary\x1b[0m\n  disk:\x1b[32mUpToDate\x1b[0m\n"
    assert parse_drbdadm_status(text) == {"r0": st("r0", None, "Primary", "StandAlone", "UpToDate")}


# --- every peer apart, and quorum (DRBD 9) -----------------------------------------

def test_each_peer_of_the_three_peer_sample_is_kept_with_its_name(corpus):
    home = parse_drbdadm_status(read(corpus, "drbd9_drbdadm-status_ug9-admin-home-3peers.txt"))["home"]
    assert home.peers == (Peer("nina", "Secondary", "Connected", "UpToDate"),
                          Peer("nino", "Secondary", "Connected", "UpToDate"),
                          Peer("nono", "Unknown", "Connecting", "DUnknown"))
    assert home.connection == "Connecting" and not home.is_connected


def test_the_84_peer_is_named_peer_and_the_8x_parsers_give_one_peer_from_their_fields(corpus):
    home = parse_drbdadm_status(read(corpus, "drbd-8.4_drbdadm-status_ug84-admin-home.txt"))["home"]
    assert home.peer_list() == (Peer("peer", "Secondary", "Connected", "UpToDate"),)
    proc = parse_proc_drbd(read(corpus, "drbd-8.4.2_proc-drbd_ganeti-proc_drbd84.txt"))[4]
    assert proc.peers == ()
    assert proc.peer_list() == (Peer("peer", "Unknown", "WFConnection", "DUnknown"),)


# drbd-utils' drbdsetup.c device_status(): ` quorum:no` follows the disk on a device line only
# when the device has lost quorum (always with --verbose); a Primary that froze its I/O for it
# says `suspended:quorum` on the resource line.
NO_QUORUM = """\
r0 role:Primary suspended:quorum
  disk:UpToDate quorum:no
  kvm1 connection:Connecting
  dr1 connection:Connecting

"""


def test_status_shows_lost_quorum_on_the_device_line():
    r0 = parse_drbdadm_status(NO_QUORUM)["r0"]
    assert r0.quorum is False and r0.disk == "UpToDate"
    assert [(p.name, p.connection) for p in r0.peers] == [("kvm1", "Connecting"), ("dr1", "Connecting")]
    text = NO_QUORUM.replace("  disk:UpToDate quorum:no", "  volume:0 disk:UpToDate quorum:yes\n"
                                                           "  volume:1 disk:UpToDate quorum:no")
    assert parse_drbdadm_status(text)["r0"].quorum is False, "one volume without quorum is enough"
    assert parse_drbdadm_status(NO_QUORUM.replace(" quorum:no", ""))["r0"].quorum is True


@pytest.mark.parametrize("line", ["  disk:UpToDate quorum:maybe", "  disk:UpToDate quorum:",
                                  "  disk:Up-To-Date", "  kvm1 connection:Conn\x07ected"])
def test_status_refuses_a_state_value_that_is_not_a_word(line):
    with pytest.raises(ValueError) as exc:
        parse_drbdadm_status(f"r0 role:Secondary\n{line}\n")
    assert "\n" not in str(exc.value)


# --- garbage in: {} for "nothing there", ValueError for anything else ---------------

@pytest.mark.parametrize("parser", TEXT_PARSERS, ids=lambda p: p.__name__)
@pytest.mark.parametrize("text", ["", "\n\n", "   \n"])
def test_empty_output_means_no_resources(parser, text):
    assert parser(text) == {}


def test_proc_drbd_of_drbd9_lists_nothing():
    """DRBD 9 keeps only its banner in /proc/drbd; its state comes from drbdsetup."""
    text = ("version: 9.1.16 (api:2/proto:86-121)\n"
            "GIT-hash: 22e2b4e0cb3e3d5a24bc1c4e1b1c9a0c4a1b4e2f build by root@kvm1, 2023-08-01\n"
            "Transports (api:18): tcp (9.1.16)\n")
    assert parse_proc_drbd(text) == {}


@pytest.mark.parametrize("parser, text", [
    (parse_proc_drbd, "hello world\n"),
    (parse_proc_drbd, " 0: cs:Connected\n"),                       # configured minor without roles
    (parse_proc_drbd, " 0: cs:Connected ro:Primary/primary ds:UpToDate/UpToDate C r---\n"),
    (parse_proc_drbd, "    ns:0 nr:0\n"),                          # detail line with no minor
    (parse_drbdadm_status, "r0: No such resource\n"),
    (parse_drbdadm_status, "  disk:UpToDate\n"),                   # volume without resource
    (parse_drbdadm_status, "r0 role:Boss\n"),
    (parse_drbdadm_status, "r0 role:Primary\n  volume:x disk:UpToDate\n"),
    (parse_drbdadm_status, "r0 role:Primary\n  peer role:Secondary\n    replication:SyncSource done:lots\n"),
])
def test_garbage_is_a_one_line_value_error(parser, text):
    with pytest.raises(ValueError) as exc:
        parser(text)
    assert "\n" not in str(exc.value)


FRAGMENTS = list("ab:/ \n\t0123456789.-#>{}[]\"'\x00\x1b") + [
    " 0: ", "cs:", "ro:", "ds:", "role:", "disk:", "peer-disk:", "done:", "Primary", "UpToDate",
    "volume:", "exists ", "change ", "destroy ", "resource ", "device ", "name:r", "->"]


@settings(max_examples=300, deadline=None)
@given(text=hs.lists(hs.sampled_from(FRAGMENTS), max_size=40).map("".join))
def test_any_text_gives_states_or_value_error(text):
    for parser in TEXT_PARSERS:
        try:
            result = parser(text)
        except ValueError as exc:
            assert "\n" not in str(exc)
        else:
            assert all(isinstance(s, DrbdState) for s in result.values())
