"""The lab's simulators (tests/lab/sim): real output formats, real refusals, one shared state.

They run the way lab hosts run them: the entry script run as subprocesses, each told which host it
is by a host.json (xen1 and kvm1 here) naming one shared state directory. DRBD devices are
plain files standing behind symlinks, as /dev/drbdN stands for a loop device in the lab.
Every test runs twice: each call its own Python ("started"), and each call answered by a
simulator server as on a lab host ("served").
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from invoke import Result

from tests.lab import sim
from tests.lab.sim import drbdadm, faults, server, store, xl

BIN = Path(sim.__file__).parent / "bin"
DELAY = 0.1
RES = "logger-system"


class Lab:
    """Two lab hosts over one temporary state directory."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.state = str(tmp / "state")
        self.hook_calls = tmp / "hook-calls"
        self.hook = tmp / "hook"
        self.hook.write_text(f'#!/bin/sh\necho "$*" >> {self.hook_calls}\n')
        self.hook.chmod(0o755)
        self.dev, self.real = {}, {}
        for host in ("xen1", "kvm1"):
            self.real[host] = tmp / f"loop-{host}"
            self.real[host].write_bytes(b"")
            self.dev[host] = tmp / f"{host}-drbd0"
            self.dev[host].symlink_to(self.real[host])
        self.served = {}
        self.set_style("9")
        sim.write_vms(self.state, {"logger": {"xen_host": "xen1", "kvm_host": "kvm1", "resources": [RES]}})

    def set_style(self, style, sync_delay=DELAY):
        for host, role, peer in (("xen1", "xen", "kvm1"), ("kvm1", "kvm", "xen1")):
            (self.tmp / f"{host}.json").write_text(json.dumps({
                "host": host, "role": role, "state_dir": self.state, "drbd_style": style,
                "xen_shutdown_delay": DELAY, "drbd_sync_delay": sync_delay,
                "guest_start": [str(self.hook), "start"], "guest_stop": [str(self.hook), "stop"],
                "peers": {peer: "kvm" if role == "xen" else "xen"}}))

    def serve(self):
        """A simulator server, started as the lab starts one on each host; calls go to it."""
        sock = self.tmp / "sim.sock"
        self.server = subprocess.Popen(["/usr/bin/python3", "-I", "-S", str(BIN.parent), "--serve", str(sock)],
                                       stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert self.server.poll() is None and time.monotonic() < deadline, "the simulator server did not start"
            time.sleep(0.02)
        self.served = {server.SOCKET_ENV: str(sock)}

    def stop_serving(self):
        self.server.kill()
        self.server.wait(timeout=30)

    def env(self, host, path=None):
        env = {**os.environ, store.HOST_FILE_ENV: str(self.tmp / f"{host}.json"), **self.served}
        if path:
            env["PATH"] = path
        return env

    def run(self, host, *argv, path=None):
        # stdin not a terminal, as over SSH (bin/sim runs the simulator itself on a terminal)
        return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True,
                              env=self.env(host, path), stdin=subprocess.DEVNULL, timeout=30, check=False)

    def start(self, host, *argv):
        """A simulator call left running, for races."""
        return subprocess.Popen([str(BIN / argv[0]), *argv[1:]], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env(host))

    def seed(self, primary="xen1", uptodate=True, name=RES, hosts=None):
        hosts = hosts or {h: str(d) for h, d in self.dev.items()}
        sim.seed_resource(self.state, name, 0, hosts, primary, uptodate)

    def cfg(self, disk, bootloader=False, name="logger"):
        path = self.tmp / f"{name}.cfg"
        lines = ["# written like xen-tools does", "vcpus       = '1'", "memory      = '256'",
                 "root        = '/dev/xvda2 ro'", f"disk        = [\n    '{disk}',\n]", f"name        = '{name}'",
                 "vif         = [ 'ip=10.0.0.5,mac=00:16:3E:00:00:01,bridge=xenbr0' ]"]
        path.write_text("\n".join((["bootloader = 'pygrub'"] if bootloader else []) + lines) + "\n")
        return str(path)

    def roles(self):
        return sim.lab_state(self.state)["vms"]["logger"]["drbd"][RES]

    def hooks(self):
        return self.hook_calls.read_text().splitlines() if self.hook_calls.exists() else []

    def events(self, kind):
        return [e for e in store.read_events(self.state) if e["event"] == kind]


@pytest.fixture(params=["started", "served"])
def lab(request, tmp_path):
    lab = Lab(tmp_path)
    if request.param == "served":
        lab.serve()
        request.addfinalizer(lab.stop_serving)
    return lab


def sample(corpus, name):
    return (corpus / "drbd-status" / name).read_text()


# ---------------------------------------------------------------- drbdadm: formats


def test_drbd9_status_reproduces_the_users_guide_samples(lab, corpus):
    """drbdsetup prints a blank line after each resource; the guide's older samples say
    `disk:` where drbd-utils now says `peer-disk:` for a peer's disk."""
    lab.seed(primary="node-1", name="data", hosts={"xen1": str(lab.dev["xen1"]), "node-1": "/dev/drbd0"})
    lab.seed(primary=None, name="home", hosts={h: "/dev/drbd0" for h in ("xen1", "nina", "nino", "nono")})
    lab.seed(primary=None, uptodate=False, name="r0", hosts={"xen1": "/dev/drbd0", "bob": "/dev/drbd0"})
    sim.tamper(lab.state, lambda st: st.doc("drbd")["resources"]["home"]["hosts"]["nono"].update(up=False))

    result = lab.run("xen1", "drbdadm", "status")

    expected = [sample(corpus, "drbd9_drbdadm-status_ug9-upgrading-all.txt"),
                sample(corpus, "drbd9_drbdadm-status_ug9-admin-home-3peers.txt"),
                sample(corpus, "drbd9_drbdadm-status_ug9-configure-r0-inconsistent.txt")]
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(text.replace("    disk:", "    peer-disk:") + "\n" for text in expected)


def test_drbd84_status_reproduces_the_samples(lab, corpus):
    lab.set_style("8.4")
    lab.seed(primary=None, name="home")
    lab.seed(primary="xen1", name="fs-backoffice")

    result = lab.run("xen1", "drbdadm", "status")

    assert result.returncode == 0, result.stderr
    assert result.stdout == (sample(corpus, "drbd-8.4_drbdadm-status_ug84-admin-home.txt") + "\n"
                             + sample(corpus, "drbd-8.4_drbdsetup-status_utils-manpage.txt") + "\n")


@pytest.mark.parametrize("style, role", [("9", "Secondary"), ("8.4", "Secondary/Primary")])
def test_role_cstate_dstate(lab, style, role):
    lab.set_style(style)
    lab.seed(primary="xen1")

    answers = [lab.run("kvm1", "drbdadm", cmd, RES) for cmd in ("role", "cstate", "dstate")]

    assert [(a.returncode, a.stdout) for a in answers] == [
        (0, role + "\n"), (0, "Connected\n"), (0, "UpToDate/UpToDate\n")]


def test_drbd83_refuses_without_its_force_word_and_reports_status_as_xml(lab):
    """8.3 spells force --overwrite-data-of-peer, has its own -2 text, and its status is XML."""
    lab.set_style("8.3", sync_delay=60)   # still syncing when the status is read, however slow the machine
    lab.seed(primary=None, uptodate=False)

    refused = lab.run("xen1", "drbdadm", "primary", "--force", RES)
    forced = lab.run("xen1", "drbdadm", "--", "--overwrite-data-of-peer", "primary", RES)
    status = lab.run("kvm1", "drbdadm", "status", RES)

    assert refused.returncode == 17
    assert refused.stderr == ("0: State change failed: (-2) Refusing to be Primary without at least one UpToDate disk\n"
                              "Command 'drbdsetup 0 primary' terminated with exit code 17\n"
                              f"drbdadm primary {RES}: exited with code 17\n")
    assert forced.returncode == 0, forced.stderr
    root = ET.fromstring(status.stdout)
    assert (root.tag, root.get("version")) == ("drbd-status", "8.3.13")
    resource = root.find("resources/resource")
    assert {k: resource.get(k) for k in ("minor", "name", "cs", "ro1", "ro2", "ds1", "ds2")} == {
        "minor": "0", "name": RES, "cs": "SyncTarget", "ro1": "Secondary", "ro2": "Primary",
        "ds1": "Inconsistent", "ds2": "UpToDate"}
    assert 0.0 <= float(resource.get("resynced_percent")) <= 100.0


# ---------------------------------------------------------------- drbdadm: refusals


def test_second_primary_is_refused_and_primary_on_primary_is_a_no_op(lab):
    lab.seed(primary="xen1")

    second = lab.run("kvm1", "drbdadm", "primary", RES)
    again = lab.run("xen1", "drbdadm", "primary", RES)

    assert second.returncode == 11
    assert second.stderr == (f"{RES}: State change failed: (-1) Multiple primaries not allowed by config\n"
                             f"Command 'drbdsetup primary {RES}' terminated with exit code 11\n")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert sim.lab_state(lab.state)["violations"] == []


def test_demote_is_refused_while_a_process_holds_the_device_by_its_real_path(lab):
    """qemu opens the resolved device; the refusal is logged as refused, not as a violation."""
    lab.seed(primary="xen1")
    hold = "import sys, time; f = open(sys.argv[1]); print('open', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(lab.real["xen1"])], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "open\n"
        refused = lab.run("xen1", "drbdadm", "secondary", RES)
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait()
    released = lab.run("xen1", "drbdadm", "secondary", RES)

    assert refused.returncode == 11
    assert refused.stderr == (f"{RES}: State change failed: (-12) Device is held open by someone\n"
                              f"Command 'drbdsetup secondary {RES}' terminated with exit code 11\n")
    comm = os.path.basename(sys.executable)[:15]  # python3 under .venv/bin/pytest, python under python -m
    assert [e["holder"] for e in lab.events("drbd.refused")] == [f"pid {holder.pid} ({comm})"]
    assert (released.returncode, released.stderr) == (0, "")
    assert sim.lab_state(lab.state)["violations"] == []


def test_promote_needs_uptodate_data_not_a_connection_and_outdate_stops_it(lab):
    """Without a fence-peer handler DRBD promotes a disconnected node with UpToDate data (the
    split brain --allow-disconnected must avoid); `drbdadm outdate` is what stops it."""
    lab.set_style("9", sync_delay=0)
    lab.seed(primary=None)
    lab.run("xen1", "drbdadm", "disconnect", RES)

    cstates = [lab.run(h, "drbdadm", "cstate", RES).stdout for h in ("xen1", "kvm1")]
    outdated = lab.run("xen1", "drbdadm", "outdate", RES)
    seen = lab.run("xen1", "drbdadm", "status", RES).stdout
    refused = lab.run("xen1", "drbdadm", "primary", RES)
    promoted = lab.run("kvm1", "drbdadm", "primary", RES)
    lab.run("xen1", "drbdadm", "connect", RES)
    resynced = lab.run("xen1", "drbdadm", "dstate", RES).stdout

    assert cstates == ["StandAlone\n", "Connecting\n"]
    assert (outdated.returncode, outdated.stderr) == (0, "")
    assert seen == f"{RES} role:Secondary\n  disk:Outdated\n  kvm1 connection:StandAlone\n\n"
    assert refused.returncode == 17
    assert refused.stderr.startswith(f"{RES}: State change failed: (-2) Need access to UpToDate data\n")
    assert promoted.returncode == 0
    assert lab.roles() == {"xen1": "Secondary", "kvm1": "Primary"}
    assert resynced == "UpToDate/UpToDate\n", "reconnected, the Outdated side took the Primary's data"
    assert sim.lab_state(lab.state)["violations"] == []


def test_outdate_refuses_what_the_kernel_refuses(lab):
    """outdate names its device by minor (drbdsetup's CTX_MINOR)."""
    lab.seed(primary="xen1")

    connected = lab.run("kvm1", "drbdadm", "outdate", RES)
    lab.run("kvm1", "drbdadm", "disconnect", RES)
    primary = lab.run("xen1", "drbdadm", "outdate", RES)

    assert connected.returncode == 11
    assert connected.stderr == ("0: State change failed: (-6) Refusing to be Outdated while Connected\n"
                                "Command 'drbdsetup outdate 0' terminated with exit code 11\n")
    assert primary.returncode == 17
    assert primary.stderr.startswith("0: State change failed: (-2) Need access to UpToDate data\n")
    assert lab.roles() == {"xen1": "Primary", "kvm1": "Secondary"}


def test_drbdadm_84_outdate_refuses_without_a_word(lab):
    """As drbd-utils 9.22's drbdadm-84 does over drbd.ko 8.4.11 (tests/data/conformance)."""
    lab.set_style("8.4")
    lab.seed(primary="xen1")

    connected = lab.run("kvm1", "drbdadm", "outdate", RES)
    state = lab.run("kvm1", "drbdadm", "dstate", RES).stdout
    lab.run("kvm1", "drbdadm", "disconnect", RES)
    primary = lab.run("xen1", "drbdadm", "outdate", RES)

    assert (connected.returncode, connected.stdout, connected.stderr, state) == (0, "", "", "UpToDate/UpToDate\n")
    assert (primary.returncode, primary.stdout, primary.stderr) == (17, "", "")
    assert lab.roles() == {"xen1": "Primary", "kvm1": "Secondary"}


def test_outdate_of_inconsistent_data_and_of_a_resource_that_is_down(lab):
    lab.seed(primary=None, uptodate=False)
    lab.run("kvm1", "drbdadm", "disconnect", RES)
    lower = lab.run("kvm1", "drbdadm", "outdate", RES)
    lab.run("xen1", "drbdadm", "down", RES)
    down = lab.run("xen1", "drbdadm", "outdate", RES)

    assert lower.returncode == 5 and "(-16) Disk state is lower than outdated" in lower.stderr
    assert (down.returncode, lab.run("xen1", "drbdadm", "dstate", RES).stdout) == (0, "Outdated\n")


def test_both_hosts_racing_for_primary_get_exactly_one(lab):
    lab.seed(primary=None)
    env = {h: {**os.environ, store.HOST_FILE_ENV: str(lab.tmp / f"{h}.json")} for h in ("xen1", "kvm1")}

    racers = [subprocess.Popen([str(BIN / "drbdadm"), "primary", RES], env=env[h], stderr=subprocess.DEVNULL)
              for h in ("xen1", "kvm1")]

    assert sorted(r.wait(timeout=30) for r in racers) == [0, 11]
    assert sorted(lab.roles().values()) == ["Primary", "Secondary"]
    assert sim.lab_state(lab.state)["violations"] == []


def test_down_and_adjust(lab):
    lab.seed(primary="xen1")

    down = lab.run("kvm1", "drbdadm", "down", RES)
    seen = lab.run("xen1", "drbdadm", "status", RES).stdout
    roles = lab.roles()
    back = lab.run("kvm1", "drbdadm", "adjust", RES)

    assert down.returncode == 0
    assert seen == f"{RES} role:Primary\n  disk:UpToDate\n  kvm1 connection:Connecting\n\n"
    assert roles == {"xen1": "Primary", "kvm1": "Unconfigured"}
    assert back.returncode == 0
    assert lab.roles() == {"xen1": "Primary", "kvm1": "Secondary"}


def test_unknown_resource_and_command(lab):
    lab.seed()

    unknown = lab.run("xen1", "drbdadm", "role", "nosuch")
    bad = lab.run("xen1", "drbdadm", "frobnicate", RES)

    assert (unknown.returncode, unknown.stderr) == (1, "'nosuch' not defined in your config (for this host).\n")
    assert (bad.returncode, bad.stderr) == (1, "drbdadm: Unknown command 'frobnicate'\n")


def test_new_resource_from_config_needs_meta_data_then_syncs_after_forced_primary(lab, tmp_path):
    """The resync runs for a minute here (so it is surely seen running), then is cut short."""
    lab.set_style("9", sync_delay=60)
    (tmp_path / "drbd.d").mkdir()
    (tmp_path / "drbd.d" / "r9.res").write_text(
        "resource r9 {  # as the tool writes them\n  meta-disk internal;\n"
        + "".join(f"  on {h} {{\n    device {tmp_path}/{h}-r9 minor 9;\n    disk /dev/vg/r9;\n"
                  f"    address 10.0.0.{i}:7789;\n  }}\n" for i, h in ((1, "xen1"), (2, "kvm1")))
        + "}\n")
    conf = tmp_path / "drbd.conf"
    conf.write_text('global { usage-count no; }\ninclude "drbd.d/*.res";\n')

    def adm(host, *args):
        return lab.run(host, "drbdadm", "-c", str(conf), *args)

    no_md = adm("xen1", "up", "r9")
    made = [adm(h, "create-md", "--force", "r9") for h in ("xen1", "kvm1")]
    ups = [adm(h, "up", "r9") for h in ("xen1", "kvm1")]
    inconsistent = adm("xen1", "primary", "r9")
    dry = adm("xen1", "-d", "primary", "--force", "r9")
    forced = adm("xen1", "primary", "--force", "r9")
    syncing = adm("kvm1", "status", "r9")
    sim.tamper(lab.state, lambda st: st.doc("drbd")["resources"]["r9"]["sync"].update(duration=0))
    synced = adm("kvm1", "status", "r9")
    busy = adm("xen1", "create-md", "r9")

    assert no_md.returncode == 10
    assert no_md.stderr.startswith("9: Failure: (119) No valid meta-data signature found.\n")
    assert [m.returncode for m in made] == [0, 0]
    assert "New drbd meta data block successfully created." in made[0].stdout
    assert [u.returncode for u in ups] == [0, 0]
    assert inconsistent.returncode == 17
    assert (dry.returncode, dry.stdout) == (0, "drbdsetup primary r9 --force\n")
    assert forced.returncode == 0
    lines = syncing.stdout.splitlines()
    assert lines[:3] == ["r9 role:Secondary", "  disk:Inconsistent", "  xen1 role:Primary"]
    assert lines[3].startswith("    replication:SyncTarget peer-disk:UpToDate done:")
    assert synced.stdout == "r9 role:Secondary\n  disk:UpToDate\n  xen1 role:Primary\n    peer-disk:UpToDate\n\n"
    assert (busy.returncode, busy.stderr.splitlines()[0]) == (20, "Device '9' is configured!")


@pytest.mark.parametrize("style, version", [("9", "9.2.12"), ("8.4", "8.4.11"), ("8.3", "8.3")])
def test_version_is_read_as_the_tool_reads_it(lab, style, version):
    """drbd-utils 9.22 over a 9.2 module, or its 8.4 drbdadm over Debian's 8.4.11 module; 8.3 has none."""
    from tasks.drbd import drbd_version
    from tasks.remote import Remote
    from tests.wire import bare
    lab.set_style(style)

    class Conn:
        def run(self, command, **kwargs):
            done = lab.run("xen1", *bare(command).split())
            return Result(stdout=done.stdout, stderr=done.stderr, exited=done.returncode)

    assert drbd_version(Remote("xen1", Conn())) == version


def in_uts(host, lab, *argv):
    """A simulator call on a host whose hostname is `host`, as on a lab host (drbdadm dump needs it)."""
    return subprocess.run(["unshare", "-u", "sh", "-c", 'hostname "$1" && shift && exec "$@"', "sh", host,
                           str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, env=lab.env(host),
                          stdin=subprocess.DEVNULL, timeout=30, check=False)


@pytest.mark.parametrize("style, auto_promote", [("9", "no"), ("8.4", None)])
def test_dump_is_answered_by_the_real_drbdadm(lab, tmp_path, style, auto_promote):
    from tasks.formats.drbdconf import parse_dump_options, render_drbd_resource
    from tasks.inventory import load_inventory
    from tests.conftest import REPO
    lab.set_style(style)
    inv = load_inventory(REPO / "hosts.yml")
    conf = tmp_path / "drbd.conf"
    conf.write_text("".join(render_drbd_resource(inv.vm("logger"), inv.hosts, style).values()))

    dumped = in_uts("kvm1", lab, "drbdadm", "-c", str(conf), "dump", "logger-system", "logger-var")
    real = subprocess.run(["unshare", "-u", "sh", "-c", 'hostname kvm1 && exec "$@"', "sh",
                           drbdadm.REAL_DRBDADM[style], "-c", str(conf), "dump", "logger-system", "logger-var"],
                          capture_output=True, text=True, timeout=30, check=False)

    assert (dumped.returncode, dumped.stdout) == (real.returncode, real.stdout) == (0, real.stdout)
    options = parse_dump_options(dumped.stdout)["logger-var"]
    assert options.get("auto-promote") == auto_promote
    assert [(c["argv"][-3:], c["rc"]) for c in lab.events("call")] == [(["dump", "logger-system", "logger-var"], None)]


# DRBD 9, three nodes: xen1, kvm1 and a third one, dr1, that stands for a disaster-recovery copy.
THREE = ("xen1", "kvm1", "dr1")


def seed_three(lab, primary="xen1"):
    lab.seed(primary=primary, hosts={h: str(lab.dev.get(h, "/dev/drbd0")) for h in THREE})


def test_a_resource_with_two_peers_shows_both_and_refuses_beside_either_primary(lab):
    seed_three(lab, primary="dr1")

    seen = lab.run("kvm1", "drbdadm", "status", RES).stdout
    refused = lab.run("kvm1", "drbdadm", "primary", RES)
    sim.tamper(lab.state, lambda st: st.doc("drbd")["resources"][RES]["hosts"]["dr1"].update(connect=False))
    alone = lab.run("kvm1", "drbdadm", "status", RES).stdout

    assert seen == (f"{RES} role:Secondary\n  disk:UpToDate\n  xen1 role:Secondary\n    peer-disk:UpToDate\n"
                    f"  dr1 role:Primary\n    peer-disk:UpToDate\n\n")
    assert refused.returncode == 11 and "(-1) Multiple primaries not allowed by config" in refused.stderr
    assert alone == f"{RES} role:Secondary\n  disk:UpToDate\n  xen1 role:Secondary\n    peer-disk:UpToDate\n" \
                    f"  dr1 connection:Connecting\n\n"


def write_conf(tmp_path, options=""):
    """The lab's resource as a drbd.conf for `drbdadm -c`, with these resource options."""
    conf = tmp_path / "drbd.conf"
    conf.write_text(f"resource {RES} {{\n  device /dev/drbd0;\n  options {{ {options} }}\n"
                    + "".join(f"  on {h} {{ disk /dev/vg/{RES}; address 10.0.0.{i}:7789; }}\n"
                              for i, h in enumerate(THREE, 1)) + "}\n")
    return str(conf)


def test_lost_quorum_shows_in_status_and_refuses_promotion(lab, tmp_path):
    seed_three(lab, primary=None)
    conf = write_conf(tmp_path, "quorum majority;")
    adjusted = lab.run("kvm1", "drbdadm", "-c", conf, "adjust", RES)
    for peer in ("xen1", "dr1"):
        sim.tamper(lab.state, lambda st, peer=peer: st.doc("drbd")["resources"][RES]["hosts"][peer].update(up=False))

    seen = lab.run("kvm1", "drbdadm", "status", RES).stdout
    refused = lab.run("kvm1", "drbdadm", "primary", RES)
    forced = lab.run("kvm1", "drbdadm", "primary", "--force", RES)
    frozen = lab.run("kvm1", "drbdadm", "status", RES).stdout

    assert adjusted.returncode == 0, adjusted.stderr
    assert seen == (f"{RES} role:Secondary\n  disk:UpToDate quorum:no\n  xen1 connection:Connecting\n"
                    f"  dr1 connection:Connecting\n\n")
    assert refused.returncode == 11
    assert refused.stderr == (f"{RES}: State change failed: (-25) No quorum\n"
                              f"Command 'drbdsetup primary {RES}' terminated with exit code 11\n")
    assert forced.returncode == 0
    assert frozen.splitlines()[0] == f"{RES} role:Primary suspended:quorum"
    assert [e["code"] for e in lab.events("drbd.refused")] == [-25]


def test_quorum_majority_holds_with_one_of_two_peers_gone(lab, tmp_path):
    seed_three(lab, primary=None)
    lab.run("kvm1", "drbdadm", "-c", write_conf(tmp_path, "quorum majority;"), "adjust", RES)
    sim.tamper(lab.state, lambda st: st.doc("drbd")["resources"][RES]["hosts"]["dr1"].update(up=False))

    promoted = lab.run("kvm1", "drbdadm", "primary", RES)

    assert promoted.returncode == 0, promoted.stderr
    assert "quorum" not in lab.run("kvm1", "drbdadm", "status", RES).stdout


# ---------------------------------------------------------------- DRBD 9's auto-promote


def split_by_hand(lab, conf=None):
    """logger's resource Primary on kvm1, xen1 Secondary (with the resource options of `conf`,
    if given) and disconnected from it."""
    lab.seed(primary="kvm1")
    if conf:
        adjusted = lab.run("xen1", "drbdadm", "-c", conf, "adjust", RES)
        assert adjusted.returncode == 0, adjusted.stderr
    lab.run("xen1", "drbdadm", "disconnect", RES)


def test_auto_promote_lets_an_xl_create_make_a_second_primary(lab):
    """What the start guard is for: DRBD 9 promotes the Secondary that xl opens, and with the
    peer disconnected nothing stops it (the lab records the two Primaries)."""
    split_by_hand(lab)

    created = lab.run("xen1", "xl", "create", lab.cfg(f"phy:{lab.dev['xen1']},xvda2,w"))

    assert created.returncode == 0, created.stderr
    assert lab.roles() == {"xen1": "Primary", "kvm1": "Primary"}
    assert [(e["host"], e["auto"]) for e in lab.events("drbd.role")] == [("xen1", True)]
    assert sim.lab_state(lab.state)["violations"] == [f"two Primaries: resource {RES} is Primary on xen1 and kvm1"]


@pytest.mark.parametrize("style, options", [("9", "auto-promote no;"), ("8.4", "")])
def test_without_auto_promote_xl_cannot_open_a_secondary(lab, tmp_path, style, options):
    lab.set_style(style)
    split_by_hand(lab, write_conf(tmp_path, options))

    created = lab.run("xen1", "xl", "create", lab.cfg(f"phy:{lab.dev['xen1']},xvda2,w"))

    assert created.returncode == 3 and "unable to add disk devices" in created.stderr
    assert lab.roles() == {"xen1": "Secondary", "kvm1": "Primary"}
    assert sim.lab_state(lab.state)["violations"] == []


def test_auto_promote_refuses_beside_a_connected_primary_and_demotes_on_close(lab):
    lab.seed(primary="kvm1")
    cfg = lab.cfg(f"phy:{lab.dev['xen1']},xvda2,w")
    refused = lab.run("xen1", "xl", "create", cfg)
    lab.run("kvm1", "drbdadm", "secondary", RES)
    created = lab.run("xen1", "xl", "create", cfg)
    while_running = lab.roles()
    lab.run("xen1", "xl", "destroy", "logger")

    assert refused.returncode == 3
    assert created.returncode == 0, created.stderr
    assert while_running == {"xen1": "Primary", "kvm1": "Secondary"}
    assert lab.roles() == {"xen1": "Secondary", "kvm1": "Secondary"}, "DRBD demotes what it promoted itself"
    assert sim.lab_state(lab.state)["violations"] == []


def test_an_explicit_primary_outlives_its_domain(lab):
    lab.seed(primary=None)
    lab.run("xen1", "drbdadm", "primary", RES)
    lab.run("xen1", "xl", "create", lab.cfg(f"phy:{lab.dev['xen1']},xvda2,w"))
    lab.run("xen1", "xl", "destroy", "logger")

    assert lab.roles() == {"xen1": "Primary", "kvm1": "Secondary"}


@pytest.mark.parametrize("style, version", [("9", "9.22.0"), ("8.4", "8.4.11"), ("8.3", "8.3.13")])
def test_each_drbdadm_takes_the_tools_force_spelling(lab, style, version):
    """drbd.setup's forced create-md and primary, as spelled for each userland (tasks.drbd.forced)."""
    from tasks.drbd import forced
    lab.set_style(style)
    lab.seed(primary=None, uptodate=False)

    down = lab.run("kvm1", "drbdadm", "down", RES)
    made = lab.run("kvm1", "drbdadm", *forced("create-md", version), RES)
    primary = lab.run("xen1", "drbdadm", *forced("primary", version), RES)

    assert down.returncode == 0
    assert made.returncode == 0 and "*** confirmation forced via --force option ***" in made.stderr
    assert primary.returncode == 0, primary.stderr
    assert lab.roles()["xen1"] == "Primary"


# ---------------------------------------------------------------- xl / xm


def test_xl_create_refuses_what_xl_refuses(lab):
    lab.seed(primary="kvm1")
    missing_cfg = str(lab.tmp / "nope.cfg")

    no_cfg = lab.run("xen1", "xl", "create", missing_cfg)
    no_disk = lab.run("xen1", "xl", "create", lab.cfg(f"file:{lab.tmp}/missing.img,xvda2,w"))
    secondary = lab.run("xen1", "xl", "create", lab.cfg(f"phy:{lab.dev['xen1']},xvda2,w"))
    pygrub = lab.run("xen1", "xl", "create", lab.cfg(f"phy:{lab.dev['xen1']},xvda2,w", bootloader=True))
    secondary_xm = lab.run("xen1", "xm", "create", lab.cfg(f"phy:{lab.dev['xen1']},xvda2,w"))

    assert (no_cfg.returncode, no_cfg.stderr) == (
        3, f"Failed to read config file: {missing_cfg}: No such file or directory\n")
    assert no_disk.returncode == 3
    assert (f"Disk vdev=xvda2 failed to stat: {lab.tmp}/missing.img: No such file or directory"
            in no_disk.stderr)
    assert secondary.returncode == 3
    assert "Domain 2:unable to add device with path /local/domain/0/backend/vbd/2/51714" in secondary.stderr
    assert pygrub.returncode == 3
    assert "Domain 3:bootloader failed - consult logfile /var/log/xen/bootloader.3.log" in pygrub.stderr
    assert secondary_xm.returncode == 1
    assert "Error: Device 51714 (vbd) could not be connected." in secondary_xm.stderr
    assert lab.hooks() == []


def test_xl_domain_holds_its_device_and_shuts_down_lazily(lab):
    lab.seed(primary="xen1")
    cfg = lab.cfg(f"phy:{lab.dev['xen1']},xvda2,w")

    created = lab.run("xen1", "xl", "create", cfg)
    twice = lab.run("xen1", "xl", "create", cfg)
    listed = lab.run("xen1", "xl", "list")
    held = lab.run("xen1", "drbdadm", "secondary", RES)
    shutdown = lab.run("xen1", "xl", "shutdown", "logger")
    still = sim.lab_state(lab.state)["vms"]["logger"]["running_on"]  # in-process: well before the delay
    time.sleep(DELAY)
    gone = lab.run("xen1", "xl", "list", "logger")
    demoted = lab.run("xen1", "drbdadm", "secondary", RES)

    assert (created.returncode, created.stderr) == (0, f"Parsing config from {cfg}\n")
    assert twice.returncode == 3
    assert 'Domain 2:Domain with name "logger" already exists.' in twice.stderr
    rows = listed.stdout.splitlines()
    assert rows[0] == "Name                                        ID   Mem VCPUs\tState\tTime(s)"
    assert rows[1].split()[:5] == ["Domain-0", "0", "1024", str(os.cpu_count()), "r-----"]
    assert rows[2].split()[:5] == ["logger", "1", "256", "1", "-b----"]
    assert held.returncode == 11 and "(-12) Device is held open by someone" in held.stderr
    assert (shutdown.returncode, shutdown.stderr) == (0, "Shutting down domain 1\n")
    assert still == "xen1"
    assert (gone.returncode, gone.stderr) == (1, "logger is an invalid domain identifier (rc=-6)\n")
    assert demoted.returncode == 0
    assert lab.hooks() == ["start logger", "stop logger"]


def test_xl_shutdown_wait_and_destroy(lab):
    lab.seed(primary="xen1")
    cfg = lab.cfg(f"phy:{lab.dev['xen1']},xvda2,w")

    lab.run("xen1", "xl", "create", cfg)
    began = time.monotonic()
    waited = lab.run("xen1", "xl", "shutdown", "-w", "logger")
    elapsed = time.monotonic() - began
    after_wait = sim.lab_state(lab.state)["vms"]["logger"]["running_on"]
    lab.run("xen1", "xl", "create", cfg)
    destroyed = lab.run("xen1", "xl", "destroy", "logger")
    again = lab.run("xen1", "xl", "destroy", "logger")

    assert waited.returncode == 0 and elapsed >= DELAY
    assert waited.stderr == ("Shutting down domain 1\nWaiting for 1 domains\n"
                             "Domain 1 has been shut down, reason code 0\n")
    assert after_wait is None
    assert destroyed.returncode == 0
    assert (again.returncode, again.stderr) == (1, "logger is an invalid domain identifier (rc=-6)\n")
    assert lab.hooks() == ["start logger", "stop logger", "start logger", "stop logger"]


def test_a_failed_guest_stop_hook_is_a_violation(lab):
    lab.hook.write_text(f'#!/bin/sh\necho "$*" >> {lab.hook_calls}\n[ "$1" = stop ] && exit 4\nexit 0\n')
    lab.seed(primary="xen1")
    lab.run("xen1", "xl", "create", lab.cfg(f"phy:{lab.dev['xen1']},xvda2,w"))
    assert sim.lab_state(lab.state)["violations"] == []
    lab.run("xen1", "xl", "shutdown", "logger")
    time.sleep(DELAY)
    lab.run("xen1", "xl", "list")   # settles the shutdown: the hook runs and fails

    assert lab.hooks() == ["start logger", "stop logger"]
    assert sim.lab_state(lab.state)["violations"] == [
        "guest_stop hook for logger on xen1 exited 4: its guest may still hold its disks (see hooks.log)"]


def gate_guest_stop(lab):
    """Make the guest_stop hook wait for a gate file; returns the gate."""
    gate = lab.tmp / "gate"
    lab.hook.write_text(f'#!/bin/sh\necho "$*" >> {lab.hook_calls}\n'
                        f'if [ "$1" = stop ]; then while [ ! -e {gate} ]; do sleep 0.01; done; fi\n')
    return gate


def shutdown_fallen_due(lab):
    """logger created on xen1 and asked to shut down; its shutdown is due, not yet settled."""
    lab.seed(primary="xen1")
    lab.run("xen1", "xl", "create", lab.cfg(f"phy:{lab.dev['xen1']},xvda2,w"))
    lab.run("xen1", "xl", "shutdown", "logger")
    time.sleep(DELAY)


def stop_hook_running(lab):
    deadline = time.monotonic() + 20
    while "stop logger" not in lab.hooks():
        assert time.monotonic() < deadline, "the guest_stop hook never started"
        time.sleep(0.01)


def test_a_domain_stays_listed_as_dying_until_its_guest_stop_hook_has_run(lab):
    """Another process must not see the domain gone while its guest still holds the disks:
    with eight VMs moving at once, a concurrent `xl list` finished logger's shutdown, and
    the tool's `drbdadm secondary` met the guest's mounts (exit 11)."""
    gate = gate_guest_stop(lab)
    shutdown_fallen_due(lab)
    settler = lab.start("xen1", "xl", "list")  # finishes the shutdown and runs the hook
    try:
        stop_hook_running(lab)
        during = lab.run("xen1", "xl", "list", "logger")
        held = lab.run("xen1", "drbdadm", "secondary", RES)
    finally:
        gate.touch()
    settler.wait(timeout=30)
    after = lab.run("xen1", "xl", "list", "logger")
    demoted = lab.run("xen1", "drbdadm", "secondary", RES)

    assert during.returncode == 0 and during.stdout.splitlines()[1].split()[:5] == \
        ["logger", "1", "256", "1", "---s-d"]
    assert held.returncode == 11 and "(-12) Device is held open by someone" in held.stderr
    assert settler.returncode == 0
    assert after.returncode == 1
    assert demoted.returncode == 0
    assert [e["domain"] for e in lab.events("xen.domain_dying")] == ["logger"]
    assert [e["domain"] for e in lab.events("xen.domain_gone")] == ["logger"]


def test_only_the_guests_own_host_finishes_its_shutdown(lab):
    """kvm1 cannot reach xen1's guest namespaces, so its look leaves the shutdown to xen1."""
    shutdown_fallen_due(lab)

    kvm_look = lab.run("kvm1", "drbdadm", "role", RES)
    hooks_after_kvm_look = lab.hooks()
    xen_look = lab.run("xen1", "xl", "list", "logger")

    assert kvm_look.returncode == 0
    assert hooks_after_kvm_look == ["start logger"]
    assert xen_look.returncode == 1
    assert lab.hooks() == ["start logger", "stop logger"]
    assert [(e["by"], e["argv"][-2]) for e in lab.events("hook")] == [("xen1", "stop")]


def test_a_teardown_whose_runner_died_ends_at_the_next_look(lab):
    if lab.served:
        pytest.skip("a served call outlives its caller: only a started simulator can die mid-hook")
    gate = gate_guest_stop(lab)
    shutdown_fallen_due(lab)
    settler = lab.start("xen1", "xl", "list")
    try:
        stop_hook_running(lab)
        settler.kill()
        settler.wait(timeout=30)
        listed = lab.run("xen1", "xl", "list", "logger")
        demoted = lab.run("xen1", "drbdadm", "secondary", RES)
    finally:
        gate.touch()   # the orphaned hook ends too

    assert listed.returncode == 1
    assert demoted.returncode == 0


def test_a_served_call_fails_loudly_once_its_server_is_gone(tmp_path):
    lab = Lab(tmp_path)
    lab.serve()
    lab.seed()
    served = lab.run("xen1", "drbdadm", "role", RES)
    lab.stop_serving()
    orphaned = lab.run("xen1", "drbdadm", "role", RES)

    assert (served.returncode, served.stdout) == (0, "Primary\n")
    assert orphaned.returncode == 127
    assert orphaned.stderr.endswith("drbdadm: the lab's simulator server did not answer\n")


def test_xm_speaks_xend(lab):
    lab.seed(primary="xen1")
    cfg = lab.cfg(f"phy:{lab.dev['xen1']},xvda2,w")

    created = lab.run("xen1", "xm", "create", cfg)
    listed = lab.run("xen1", "xm", "list")
    stopped = lab.run("xen1", "xm", "shutdown", "-w", "logger")
    missing = lab.run("xen1", "xm", "list", "logger")

    assert (created.returncode, created.stdout) == (0, f'Using config file "{cfg}".\nStarted domain logger (id=1)\n')
    assert listed.stdout.splitlines()[0] == ("Name                                        ID   Mem VCPUs"
                                             "      State   Time(s)")
    assert listed.stdout.splitlines()[2].split()[:5] == ["logger", "1", "256", "1", "-b----"]
    assert (stopped.returncode, stopped.stdout) == (0, "Domain logger terminated\nAll domains terminated\n")
    assert (missing.returncode, missing.stderr) == (1, "Error: Domain 'logger' does not exist.\n")


def test_drbd_disk_is_promoted_and_demoted_by_block_drbd(lab):
    """block-drbd (drbd:RES) promotes on start and demotes on stop; it cannot beat a Primary peer."""
    lab.seed(primary=None)
    cfg = lab.cfg(f"drbd:{RES},xvda2,w")

    created = lab.run("xen1", "xl", "create", cfg)
    while_running = lab.roles()
    lab.run("xen1", "xl", "destroy", "logger")
    after = lab.roles()
    lab.run("kvm1", "drbdadm", "primary", RES)
    refused = lab.run("xen1", "xl", "create", cfg)

    assert created.returncode == 0, created.stderr
    assert while_running == {"xen1": "Primary", "kvm1": "Secondary"}
    assert after == {"xen1": "Secondary", "kvm1": "Secondary"}
    assert refused.returncode == 3 and "unable to add disk devices" in refused.stderr
    assert sim.lab_state(lab.state)["violations"] == []


# ---------------------------------------------------------------- faults and the virsh wrapper


def test_faults_fail_hang_and_fire_once(lab):
    lab.seed(primary=None)
    sim.add_fault(lab.state, "kvm1", "drbdadm primary", exit_code=7, once=True)
    sim.add_fault(lab.state, "xen1", "xl list", exit_code=0, hang=0.3)
    sim.add_fault(lab.state, "*", "drbdadm role", exit_code=3)

    failed = lab.run("kvm1", "drbdadm", "primary", RES)
    passed = lab.run("kvm1", "drbdadm", "primary", RES)
    began = time.monotonic()
    slow = lab.run("xen1", "xl", "list")
    slow_took = time.monotonic() - began
    broken = lab.run("xen1", "drbdadm", "role", RES)
    sim.clear_faults(lab.state)
    healed = lab.run("xen1", "drbdadm", "role", RES)

    assert (failed.returncode, failed.stderr) == (7, "lab fault: 'drbdadm primary' on kvm1 exits 7\n")
    assert passed.returncode == 0
    assert slow.returncode == 0 and slow_took >= 0.3
    assert broken.returncode == 3
    assert (healed.returncode, healed.stdout) == (0, "Secondary\n")
    assert len(lab.events("fault.fired")) == 3


def test_fault_prefix_matches_words_in_order_after_options():
    assert faults.matches("drbdadm primary", ["/usr/sbin/drbdadm", "-c", "/etc/drbd.conf", "primary", "r0"])
    assert faults.matches("virsh start logger", ["virsh", "-c", "qemu:///system", "start", "logger"])
    assert not faults.matches("virsh start logger", ["virsh", "start", "other"])
    assert not faults.matches("drbdadm primary", ["drbdsetup", "primary", "r0"])


def fake_virsh(lab):
    """A PATH with the wrapper first and, after it, a stand-in for the real virsh; returns the PATH."""
    real = lab.tmp / "realbin"
    real.mkdir()
    domstate = lab.tmp / "domstate"
    (real / "virsh").write_text(f"""#!/bin/sh
[ "$1" = -c ] && shift 2
case "$1" in
  start) echo running > {domstate}; echo "Domain '$2' started";;
  destroy) echo "shut off" > {domstate}; echo "Domain '$2' destroyed";;
  domstate) cat {domstate} 2>/dev/null || {{ echo "error: failed to get domain '$2'" >&2; exit 1; }};;
  *) echo "real virsh $*";;
esac
""")
    (real / "virsh").chmod(0o755)
    return f"{BIN}:{real}:{os.environ['PATH']}"


def test_virsh_wrapper_runs_the_real_virsh_and_keeps_kvm_domains_true(lab):
    path = fake_virsh(lab)
    lab.seed(primary="kvm1")
    sim.add_fault(lab.state, "kvm1", "virsh start", exit_code=5, once=True)

    faulted = lab.run("kvm1", "virsh", "-c", "qemu:///system", "start", "logger", path=path)
    started = lab.run("kvm1", "virsh", "-c", "qemu:///system", "start", "logger", path=path)
    running = sim.lab_state(lab.state)["vms"]["logger"]["running_on"]
    passed = lab.run("kvm1", "virsh", "version", path=path)
    lab.run("kvm1", "virsh", "destroy", "logger", path=path)
    stopped = sim.lab_state(lab.state)["vms"]["logger"]["running_on"]
    asked = sim.lab_state(lab.state, kvm_running=lambda host, vm: (host, vm) == ("kvm1", "logger"))

    assert faulted.returncode == 5
    assert (started.returncode, started.stdout) == (0, "Domain 'logger' started\n")
    assert running == "kvm1"
    assert passed.stdout == "real virsh version\n"
    assert stopped is None
    assert asked["vms"]["logger"]["running_on"] == "kvm1"
    assert asked["violations"] == []


def test_a_kvm_start_on_a_secondary_auto_promotes_on_drbd9_and_demotes_when_it_stops(lab):
    """qemu opens the domain's DRBD devices for writing: DRBD 9 promotes them even beside a
    disconnected Primary (the two Primaries the start guard is there to prevent)."""
    path = fake_virsh(lab)
    lab.seed(primary="xen1")
    lab.run("xen1", "drbdadm", "disconnect", RES)

    started = lab.run("kvm1", "virsh", "start", "logger", path=path)
    while_running = lab.roles()
    lab.run("kvm1", "virsh", "destroy", "logger", path=path)

    assert started.returncode == 0, started.stderr
    assert while_running == {"xen1": "Primary", "kvm1": "Primary"}
    assert lab.roles() == {"xen1": "Primary", "kvm1": "Secondary"}
    assert f"two Primaries: resource {RES} is Primary on xen1 and kvm1" in sim.lab_state(lab.state)["violations"]


@pytest.mark.parametrize("style, options, reason", [("9", "auto-promote no;", "Wrong medium type"),
                                                    ("8.4", "", "Read-only file system")])
def test_a_kvm_start_on_a_secondary_fails_without_auto_promote(lab, tmp_path, style, options, reason):
    path = fake_virsh(lab)
    lab.set_style(style)
    lab.seed(primary="xen1")
    assert lab.run("kvm1", "drbdadm", "-c", write_conf(tmp_path, options), "adjust", RES).returncode == 0
    lab.run("xen1", "drbdadm", "disconnect", RES)      # no connected Primary to refuse beside: only the option

    started = lab.run("kvm1", "virsh", "start", "logger", path=path)

    assert started.returncode == 1
    assert started.stderr.splitlines()[0] == "error: Failed to start domain 'logger'"
    assert started.stderr.rstrip().endswith(f"Could not open '{lab.dev['kvm1']}': {reason}")
    assert not (lab.tmp / "domstate").exists(), "the real virsh was never asked"
    assert sim.lab_state(lab.state)["vms"]["logger"]["running_on"] is None
    assert sim.lab_state(lab.state)["violations"] == []


# ---------------------------------------------------------------- the lab report


def test_lab_state_reports_roles_and_every_violation_once(lab):
    lab.seed(primary="xen1")
    clean = sim.lab_state(lab.state)

    def both_primary(st):
        st.doc("drbd")["resources"][RES]["hosts"]["kvm1"]["role"] = "Primary"

    def xen_domain_running(st):
        st.doc("xen").setdefault("hosts", {})["xen1"] = {"next_id": 2, "domains": {"logger": {
            "id": 1, "memory": 256, "vcpus": 1, "cfg": "/etc/xen/logger.cfg", "started": 0, "shutdown_at": None,
            "drbd": [], "guest_stop": None}}}

    sim.tamper(lab.state, both_primary)
    sim.tamper(lab.state, both_primary)
    sim.tamper(lab.state, xen_domain_running)
    sim.note_kvm_domain(lab.state, "kvm1", "logger", True)
    report = sim.lab_state(lab.state)

    assert clean == {"hosts": {"xen": "xen1", "kvm": "kvm1"},
                     "vms": {"logger": {"running_on": None, "drbd": {RES: {"xen1": "Primary", "kvm1": "Secondary"}}}},
                     "violations": []}
    assert report == {"hosts": {"xen": "xen1", "kvm": "kvm1"},
                      "vms": {"logger": {"running_on": "xen1", "drbd": {RES: {"xen1": "Primary", "kvm1": "Primary"}}}},
                      "violations": [f"two Primaries: resource {RES} is Primary on xen1 and kvm1",
                                     "domain logger running on two hosts: xen1 (xen) and kvm1 (kvm)"]}
    assert all(e["ts"] > 0 for e in lab.events("violation"))


def test_a_domain_running_where_its_disk_is_not_primary_is_a_violation(lab):
    lab.seed(primary="xen1")

    sim.note_kvm_domain(lab.state, "kvm1", "logger", True)

    assert sim.lab_state(lab.state)["violations"] == [
        f"domain logger running on kvm1 (kvm) while {RES} is Secondary there"]


def test_every_call_and_state_change_is_logged(lab):
    lab.seed(primary="xen1")

    lab.run("xen1", "drbdadm", "secondary", RES)

    calls = lab.events("call")
    assert [(c["host"], c["argv"][1:], c["rc"]) for c in calls] == [("xen1", ["secondary", RES], 0)]
    assert [(e["host"], e["resource"], e["role"]) for e in lab.events("drbd.role")] == [("xen1", RES, "Secondary")]


# ---------------------------------------------------------------- parsers


def test_xen_cfg_parser_agrees_with_libvirt_on_the_corpus(corpus):
    """Name, memory and disks (vdev and source) as libvirt derives them from the same file."""
    checked = 0
    for path in sorted(glob.glob(str(corpus / "libvirt-x[ml]config" / "*.cfg"))):
        cfg = xl.parse_cfg(Path(path).read_text())
        xml_path = Path(path[:-4] + ".xml")
        if not xml_path.exists():
            continue
        root = ET.parse(xml_path).getroot()
        theirs = []
        for disk in root.findall("devices/disk"):
            source = disk.find("source")
            theirs.append((disk.find("target").get("dev"),
                           None if source is None or source.get("name") else source.get("dev") or source.get("file")))
        ours = [(d["vdev"], d["target"] or None) for d in map(xl.parse_disk, cfg.get("disk", []))]
        ours = [(v, None if t and root.find(f"devices/disk/target[@dev='{v}']/../source[@name]") is not None else t)
                for v, t in ours]
        assert (cfg["name"], int(cfg["memory"]) * 1024, ours) == (
            root.findtext("name"), int(root.findtext("currentMemory")), theirs), path
        checked += 1
    assert checked > 70


def test_drbd_config_parser_follows_includes_volumes_and_on_sections(tmp_path):
    (tmp_path / "r.res").write_text(
        'resource "r1" {\n  volume 0 { device /dev/drbd3; disk /dev/vg/a; meta-disk internal; }\n'
        "  on xen1 { address 10.0.0.1:7788; }\n  on kvm1 { disk /dev/vg/b; address 10.0.0.2:7788; }\n}\n")
    (tmp_path / "drbd.conf").write_text('include "*.res"; # one resource\ncommon { net { protocol C; } }\n')

    assert drbdadm.parse_config(str(tmp_path / "drbd.conf")) == {"r1": {"minor": 3, "options": {}, "hosts": {
        "xen1": {"device": "/dev/drbd3", "disk": "/dev/vg/a"},
        "kvm1": {"device": "/dev/drbd3", "disk": "/dev/vg/b"}}}}


def test_drbd_config_parser_takes_resource_options_over_common_ones(tmp_path):
    (tmp_path / "drbd.conf").write_text(
        "common { options { auto-promote no; quorum majority; } }\n"
        "resource r1 { device /dev/drbd3; options { quorum off; }\n  on xen1 { disk /dev/vg/a; } }\n"
        "resource r2 { device /dev/drbd4;\n  on xen1 { disk /dev/vg/b; } }\n")

    parsed = drbdadm.parse_config(str(tmp_path / "drbd.conf"))

    assert parsed["r1"]["options"] == {"auto-promote": "no", "quorum": "off"}
    assert parsed["r2"]["options"] == {"auto-promote": "no", "quorum": "majority"}


def test_disk_specs_and_device_numbers():
    assert xl.parse_disk("phy:/dev/drbd0,xvda2,w") == {"kind": "phy", "target": "/dev/drbd0", "vdev": "xvda2",
                                                       "cdrom": False}
    assert xl.parse_disk(f"drbd:{RES},xvda1,w")["kind"] == "drbd"
    assert xl.parse_disk("format=raw, vdev=xvdb, access=rw, target=/dev/vg/x") == {
        "kind": "phy", "target": "/dev/vg/x", "vdev": "xvdb", "cdrom": False}
    assert xl.parse_disk("/var/lib/xen/images/disk.img,raw,xvda,rw")["kind"] == "file"
    assert [xl.devno(v) for v in ("xvda", "xvda2", "xvdb", "sda", "hdc")] == [51712, 51714, 51728, 2048, 5632]


@pytest.mark.parametrize("tool", ["xl", "xm"])
def test_xl_and_xm_info_print_free_memory_as_xen_does(lab, tool):
    """The layout of `xl info` / `xm info` (key padded to 23 columns, then `: `), free_memory in
    MiB: what the tool's capacity check reads, taken by each running domain's memory."""
    from tasks.capacity import parse_info, xen_free_mib

    lab.seed(primary="xen1")
    before = lab.run("xen1", tool, "info")
    assert lab.run("xen1", tool, "create", lab.cfg(f"phy:{lab.dev['xen1']},xvda2,w")).returncode == 0
    after = lab.run("xen1", tool, "info")
    assert before.returncode == 0 and before.stdout.splitlines()[0] == "host                   : xen1"
    info = parse_info(before.stdout)
    assert list(info)[:2] == ["host", "release"] and "xen_version" in info
    assert ("outstanding_claims" in info) is (tool == "xl")
    assert xen_free_mib(before.stdout) - xen_free_mib(after.stdout) == 256   # the cfg's memory
