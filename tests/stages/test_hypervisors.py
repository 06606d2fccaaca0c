"""xenhost and kvmhost stages at command level: exact commands, states, quoting."""

import re
import shlex
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from invoke import Context, MockContext, Result

from tasks import hypervisors, kvmhost, vmplan, xenhost
from tasks.errors import GuardError, ToolError
from tasks.formats.domains import parse_xl_list
from tasks.hypervisors import KvmHost, XenHost
from tasks.interrupt import Interrupted, Interruption
from tasks.inventory import Host, load_inventory
from tasks.remote import Remote, RemoteError, Site
from tasks.ssh import ConnectError
from tests.wire import HostMock, bare

XEN = Host(name="xen1", address="192.0.2.11", role="xen", toolstack="auto")
KVM = Host(name="kvm1", address="192.0.2.12", role="kvm", libvirt_uri="qemu:///system")

# Real `xl list` (Xen 4.17) and `xm list` (Xen 3.2) layouts.
XL_LIST = """\
Name                                        ID   Mem VCPUs\tState\tTime(s)
Domain-0                                     0  1024     2     r-----    6342.2
logger                                       7  2048     1     -b----     131.0
web-01                                      12   512     1     --p---       0.0
"""
XM_LIST = """\
Name                                      ID Mem(MiB) VCPUs State   Time(s)
Domain-0                                   0     3610     4 r-----  45921.7
logger                                    14     2048     1 -b----    862.3
"""


def remote(results: dict, dry_run=False) -> tuple[Remote, MockContext]:
    ctx = HostMock(run=results, repeat=True)
    return Remote("h", ctx, dry_run=dry_run), ctx


def sent(ctx: MockContext) -> list[str]:
    return [bare(call.args[0]) for call in ctx.run.call_args_list]


DOM0_ONLY = "Domain-0                                     0  1024     2     r-----    6342.2\n"


def test_parse_domain_list_both_toolstacks():
    assert parse_xl_list(XL_LIST) == {"logger": "-b----", "web-01": "--p---"}
    assert parse_xl_list(XM_LIST) == {"logger": "-b----"}
    assert parse_xl_list(XL_LIST.splitlines(keepends=True)[0] + DOM0_ONLY) == {}


@pytest.mark.parametrize("listing, why", [
    ("", "no `Name ID ...` header"),
    ("libxl: error: cannot init xl context\n", "no `Name ID ...` header"),
    (XL_LIST.split("\n", 1)[1], "no `Name ID ...` header"),                      # rows without their header
    (XL_LIST.replace(DOM0_ONLY, ""), "no Domain-0"),
    (XL_LIST + "Segmentation fault\n", "line 5 is no domain"),
    (XL_LIST.replace(" 7  2048", " seven 2048"), "line 3 is no domain"),
])
def test_an_xl_listing_it_does_not_recognise_is_an_error_not_stopped(listing, why):
    """Read as "logger is not listed", any of these would let a guard act on a guess."""
    r, _ = remote({re.compile(r".*command -v.* xl$"): Result(), "xl list": Result(listing)})
    with pytest.raises(ToolError, match=rf"^xen1: `xl list` printed a listing this tool does not recognise "
                                        rf"\({re.escape(why)}\): refusing to guess which domains run$"):
        XenHost(r, XEN).running("logger")


def test_toolstack_auto_prefers_xl_and_is_probed_once(mocker):
    r, ctx = remote({re.compile(r".*command -v.* xl$"): Result(), "xl list": Result(XL_LIST)})
    mocker.spy(ctx, "run")
    assert XenHost(r, XEN).running("logger")
    assert not XenHost(r, XEN).running("mail")
    assert sent(ctx) == ["sh -c 'command -v \"$1\"' sh xl", "xl list", "xl list"]


def test_toolstack_auto_falls_back_to_xm():
    r, _ = remote({re.compile(r".* xl$"): Result(exited=1), re.compile(r".* xm$"): Result(), "xm list": Result(XM_LIST)})
    assert XenHost(r, XEN).tool == "xm"


def test_xen_shutdown_waits_until_gone(mocker):
    gone = XL_LIST.replace("logger", "other1")
    lists = iter([XL_LIST, XL_LIST, XL_LIST, gone])
    ctx = HostMock(run={"xl shutdown logger": Result()}, repeat=True)
    r = Remote("xen1", ctx)
    mocker.patch.object(XenHost, "states", side_effect=lambda *_: parse_xl_list(next(lists)))
    mocker.spy(ctx, "run")
    XenHost(r, Host(name="xen1", address="a", role="xen", toolstack="xl")).shutdown("logger", timeout=5, poll=0.01)
    assert sent(ctx) == ["xl shutdown logger"]
    with pytest.raises(StopIteration):  # checked, then polled until gone: four lists read, no more
        next(lists)


VIRSH_LIST = """\
 Id   Name            State
--------------------------------
 1    logger          running
 3    paused          paused
 4    being stopped   in shutdown
 -    off             shut off

"""


def test_kvm_domain_states_from_one_listing():
    r, ctx = remote({"virsh -c qemu:///system list --all": Result(VIRSH_LIST)})
    assert KvmHost(r, KVM).state("logger") == "running"
    assert KvmHost(r, KVM).state("ghost") == "not found"
    assert KvmHost(r, KVM).state("being stopped") == "in shutdown"
    assert not KvmHost(r, KVM).running("off")
    assert not KvmHost(r, KVM).running("ghost")
    assert KvmHost(r, KVM).running("paused")


@pytest.mark.parametrize("listing, why", [
    ("", "no `Id Name State` header"),
    (VIRSH_LIST.split("\n", 2)[2], "no `Id Name State` header"),                 # rows without their header
    (" Id   Name     Status\n-----------------------\n 1    logger   laufend\n", "no `Id Name State` header"),
    (VIRSH_LIST.replace("running", "rebooting"), "line 3 is no domain in a state virsh prints"),
    (VIRSH_LIST + "error: failed to get domain 'x'\n", "line 8 is no domain in a state virsh prints"),
])
def test_a_virsh_listing_it_does_not_recognise_is_an_error_not_stopped(listing, why):
    r, _ = remote({"virsh -c qemu:///system list --all": Result(listing)})
    with pytest.raises(ToolError, match=rf"^kvm1: `virsh list --all` printed a listing this tool does not "
                                        rf"recognise \({re.escape(why)}\): refusing to guess which domains run$"):
        KvmHost(r, KVM).running("logger")


NO_DOMAINS = " Id   Name   State\n--------------------\n\n"


def test_an_empty_virsh_listing_is_no_domain():
    r, _ = remote({"virsh -c qemu:///system list --all": Result(NO_DOMAINS)})
    assert KvmHost(r, KVM).state("logger") == "not found"


def test_a_listing_up_to_max_age_old_is_shared_and_an_older_one_is_not():
    calls = []

    class CountingList:
        def run(self, command, **kw):
            calls.append(command)
            return Result(VIRSH_LIST, exited=0)

    r = Remote("kvm1", CountingList())
    KvmHost(r, KVM).state("logger")
    assert KvmHost(r, KVM).state("paused", max_age=60) == "paused"   # the same listing
    assert len(calls) == 1
    KvmHost(r, KVM).state("logger")   # by default: only a run begun after asking
    assert len(calls) == 2


def test_a_wait_takes_listings_up_to_one_poll_old_but_never_older_than_the_wait(mocker):
    clock, ages = [100.0], []

    def done(max_age):
        ages.append(max_age)
        clock[0] += 0.3          # each listing takes a while
        return len(ages) == 3

    def sleep(seconds):
        clock[0] += seconds

    mocker.patch.object(hypervisors.time, "monotonic", lambda: clock[0])
    interruption = Interruption()
    mocker.patch.object(interruption, "sleep", sleep)
    assert hypervisors.wait_until(done, timeout=10, poll=1.0, label="waiting", interruption=interruption)
    assert ages == [0.0, 1.0, 1.0]


def test_a_stop_request_ends_a_wait_at_once_but_not_inside_an_undo():
    """Ctrl-C during a shutdown wait: the wait ends within one poll, raising Interrupted; the same
    wait inside an undo (shielded) carries on to its end."""
    interruption = Interruption()
    polls = []

    def done(_max_age):
        polls.append(1)
        if len(polls) == 2:
            interruption.request("interrupted by SIGINT", 130)
        return len(polls) == 4

    with pytest.raises(Interrupted, match="interrupted by SIGINT") as info:
        hypervisors.wait_until(done, timeout=60, poll=0.01, label="waiting", interruption=interruption)
    assert len(polls) == 2 and info.value.code == 130
    polls.clear()
    with interruption.shield():
        assert hypervisors.wait_until(done, timeout=60, poll=0.01, label="waiting", interruption=interruption)
    assert len(polls) == 4


def test_virsh_error_is_reported():
    r, _ = remote({re.compile(".*virsh.*"): Result(stderr="error: failed to connect to the hypervisor\n", exited=1)})
    with pytest.raises(ToolError, match="kvm1: `virsh list --all` failed .*connect to the hypervisor"):
        KvmHost(r, KVM).state("logger")


def test_concurrent_askers_share_one_listing_that_began_after_they_asked():
    """Eight threads asking while one listing runs: that run is older than their question, so
    one more runs for all of them; nobody gets the answer of a run begun before they asked."""
    import threading

    started, release, calls = threading.Event(), threading.Event(), []

    class SlowList:
        def run(self, command, **kw):
            calls.append(command)
            if len(calls) == 1:
                started.set()
                release.wait(5)
            return Result(VIRSH_LIST if len(calls) > 1 else NO_DOMAINS, exited=0)

    r = Remote("kvm1", SlowList())
    first = threading.Thread(target=KvmHost(r, KVM).state, args=("logger",))
    first.start()
    started.wait(5)
    answers = []
    askers = [threading.Thread(target=lambda: answers.append(KvmHost(r, KVM).state("logger")))
              for _ in range(8)]
    for t in askers:
        t.start()
    deadline = time.monotonic() + 5
    while len(r._listings_changed._waiters) < 8 and time.monotonic() < deadline:   # all eight wait
        time.sleep(0.01)
    release.set()
    for t in [first, *askers]:
        t.join(5)
    assert answers == ["running"] * 8 and len(calls) == 2


DESTROY = "virsh -c qemu:///system destroy logger"


@pytest.mark.parametrize("stderr", ["error: Requested operation is not valid: domain is not running\n",
                                    "error: failed to get domain 'logger'\n"])
def test_destroy_of_a_stopped_domain_counts_as_success(mocker, stderr):
    r, ctx = remote({DESTROY: Result(stderr=stderr, exited=1)})
    mocker.spy(ctx, "run")
    assert KvmHost(r, KVM).destroy("logger") is None
    assert sent(ctx) == [DESTROY]


def test_destroy_that_fails_otherwise_is_an_error():
    r, _ = remote({DESTROY: Result(stderr="error: Failed to terminate process 4242 with SIGKILL\n", exited=1)})
    with pytest.raises(RemoteError, match="Failed to terminate process 4242"):
        KvmHost(r, KVM).destroy("logger")


def test_dry_run_changes_nothing_but_probes_run(mocker, capsys):
    r, ctx = remote({re.compile(r".*command -v.* xl$"): Result()}, dry_run=True)
    mocker.spy(ctx, "run")
    XenHost(r, XEN).shutdown("logger", timeout=60, force=True)
    assert sent(ctx) == ["sh -c 'command -v \"$1\"' sh xl"], "the toolstack probe ran, no change did"
    assert capsys.readouterr().out.splitlines() == ["  would run on h: env LC_ALL=C xl shutdown logger",
                                                    "  would run on xen1 after 60s: env LC_ALL=C xl destroy logger"]


hostile = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                  min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(name=hostile, cfg=hostile, uri=hostile)
def test_hostile_values_arrive_as_single_arguments(name, cfg, uri):
    """Whatever a name, path or URI holds, the remote shell sees it as one argument."""
    xen = Host(name="xen1", address="a", role="xen", toolstack="xl")
    kvm = Host(name="kvm1", address="a", role="kvm", libvirt_uri=uri)
    ctx = HostMock(run={re.compile(".*", re.S): Result("running\n")}, repeat=True)
    r = Remote("h", ctx)
    commands = []
    ctx.run = lambda command, **kw: commands.append(command) or Result("running\n")
    from tasks.inventory import VM
    vm = VM(name=name, xen_host="xen1", kvm_host="kvm1", cfg=cfg, disks=())
    XenHost(r, xen).start(vm)
    KvmHost(r, kvm).start(vm)
    assert shlex.split(commands[0]) == ["env", "LC_ALL=C", "xl", "create", cfg]
    assert shlex.split(commands[1]) == ["env", "LC_ALL=C", "virsh", "-c", uri, "start", name]


# -- what a cfg becomes on a host: HVM cfgs stay, the KVM host says what a local disk is ----------------

READ = 'if [ -e "$1" ]; then cat -- "$1"; else exit 66; fi'
CFGS = Path(__file__).resolve().parents[1] / "data" / "cfgs"
INVENTORY = load_inventory(CFGS / "inventory.yml")


def read_cfg(path: str, cfg: str) -> MockContext:
    return HostMock(run={shlex.join(["sh", "-c", READ, "sh", path]): Result(stdout=(CFGS / cfg).read_text())})


def test_prepare_cfg_leaves_an_hvm_cfg_as_it_is_and_says_why(mocker, capsys):
    xen = read_cfg("/etc/xen/wincl1.cfg", "hvm-xm-windows-cluster.cfg")
    mocker.patch.object(xenhost.inventory, "from_context", return_value=INVENTORY)
    mocker.patch.object(xenhost, "site_from_context",
                        lambda c, inv, dry_run=False: Site(inv, connect=lambda *a, **k: xen))
    xenhost.prepare_cfg(Context(), vm="wincl1")
    assert sent(xen) == [shlex.join(["sh", "-c", READ, "sh", "/etc/xen/wincl1.cfg"])]
    assert capsys.readouterr().out.splitlines() == [
        f"* xen1:/etc/xen/wincl1.cfg: {vmplan.HVM_CFG_NOTE}",
        "* xen1: /etc/xen/wincl1.cfg ... unchanged"]


@pytest.mark.parametrize("answer, kind", [(Result(), "block"), (Result(exited=1), "file")])
def test_the_kvm_host_says_whether_a_local_disk_is_a_file(answer, kind):
    """One `test -b` per local disk."""
    paths = ("/srv/xen/web3/disk.img", "/srv/xen/web3-swap.img")
    kvm = HostMock(run={f"test -b {path}": answer for path in paths})
    hosts = {"xen1": read_cfg("/etc/xen/web3.cfg", "pv-xm-phy-file.cfg"), "kvm1": kvm}
    site = Site(INVENTORY, connect=lambda label, *a, **k: hosts[label])
    spec = vmplan.of_vm(site, INVENTORY.vm("web3"), kvm_devices=True).domain_spec()
    assert [(d.source, d.kind) for d in spec.disks] == [(path, kind) for path in paths]
    assert sent(kvm) == [f"test -b {path}" for path in paths]


def test_drbd_devices_are_block_devices_without_asking():
    kvm = HostMock(run={})
    hosts = {"xen1": read_cfg("/etc/xen/gfs1.cfg", "pv-xm-gfs.cfg"), "kvm1": kvm}
    site = Site(INVENTORY, connect=lambda label, *a, **k: hosts[label])
    spec = vmplan.of_vm(site, INVENTORY.vm("gfs1"), kvm_devices=True).domain_spec()
    assert [(d.source, d.kind, d.shareable) for d in spec.disks] == [("/dev/drbd20", "block", False),
                                                                    ("/dev/drbd22", "block", True)]
    assert sent(kvm) == []

# -- the start guard: the stage tasks xenhost.start and kvmhost.start --------------------------

RESOURCES = ("logger-system", "logger-var")
START = {"xen1": "xl create /etc/xen/auto/logger.cfg", "kvm1": "virsh -c qemu:///system start logger"}
STAGE = {"xen1": xenhost, "kvm1": kvmhost}


@pytest.fixture
def site_of(mocker):
    """Both stages' tasks on the seed inventory over fakehosts; `down` hosts cannot be reached."""
    from invoke import Config, Context

    from tasks.remote import Site
    from tests.conftest import REPO
    from tests.seed import SEED_CFG
    from tests.stages.fakehosts import FakeHost, Shared

    shared = Shared(roles={r: {"xen1": "Primary", "kvm1": "Secondary"} for r in RESOURCES},
                    disk={r: {"xen1": "UpToDate", "kvm1": "UpToDate"} for r in RESOURCES},
                    kvm_defined={"logger"}, auto_promote=True)
    shared.files[("xen1", "/etc/xen/auto/logger.cfg")] = SEED_CFG
    hosts = {"xen1": FakeHost("xen1", "xen", "kvm1", shared), "kvm1": FakeHost("kvm1", "kvm", "xen1", shared)}
    down = set()

    def connect(label, *args, **kwargs):
        if label in down:
            raise ConnectError(label, f"cannot connect to root@{label}:22: [Errno 113] No route to host")
        return hosts[label]

    for stage in STAGE.values():
        mocker.patch.object(stage, "site_from_context",
                            lambda c, i, dry_run=False: Site(i, dry_run=dry_run, connect=connect))

    class World:
        def __init__(self):
            self.shared, self.down = shared, down
            self.c = Context(Config(overrides={"inventory": str(REPO / "hosts.yml")}))

        def start(self, host, **kw):
            STAGE[host].start(self.c, vm="logger", **kw)

        def sent(self, host):
            return [cmd for h, cmd in shared.log if h == host]

    return World()


@pytest.mark.parametrize("host, other", [("kvm1", "xen1"), ("xen1", "kvm1")])
def test_a_start_on_a_secondary_is_refused_before_auto_promote_could_act(site_of, host, other):
    """The peer is disconnected and Primary: DRBD 9's auto-promote would promote the Secondary on
    the domain's open and make two Primaries (the double does, with the guard removed)."""
    site_of.shared.connection = "Connecting"
    for roles in site_of.shared.roles.values():
        roles.update({host: "Secondary", other: "Primary"})
    with pytest.raises(GuardError) as info:
        site_of.start(host)
    assert str(info.value) == (f"{host}: refusing to start logger: DRBD logger-system is Secondary, logger-var is "
                               f"Secondary there, not Primary; promote it first "
                               f"(fab drbd.promote --vm logger --host {host})")
    assert START[host] not in site_of.sent(host)
    assert site_of.shared.violations == []


@pytest.mark.parametrize("host, other", [("kvm1", "xen1"), ("xen1", "kvm1")])
def test_a_start_is_refused_while_the_domain_runs_on_the_other_host(site_of, host, other):
    for roles in site_of.shared.roles.values():
        roles.update({host: "Primary", other: "Primary"})      # split brain, disconnected
    site_of.shared.connection = "StandAlone"
    (site_of.shared.xen_running if other == "xen1" else site_of.shared.kvm_running).add("logger")
    with pytest.raises(GuardError, match=f"^{host}: refusing to start logger: it runs on {other} "
                                         r"\(never one guest twice\)$"):
        site_of.start(host)
    assert START[host] not in site_of.sent(host)


@pytest.mark.parametrize("host, other", [("kvm1", "xen1"), ("xen1", "kvm1")])
def test_a_start_asks_both_hosts_then_starts(site_of, host, other, capsys):
    for roles in site_of.shared.roles.values():
        roles.update({host: "Primary", other: "Secondary"})
    site_of.start(host)
    listing = {"xen1": "xl list", "kvm1": "virsh -c qemu:///system list --all"}
    assert site_of.sent(host)[-2:] == ["drbdadm status logger-system logger-var", START[host]]
    assert listing[other] in site_of.sent(other)
    assert (site_of.shared.xen_running if host == "xen1" else site_of.shared.kvm_running) == {"logger"}
    assert site_of.shared.violations == []


def test_a_start_needs_the_operators_word_when_the_other_host_cannot_be_asked(site_of, capsys):
    site_of.down.add("xen1")
    for roles in site_of.shared.roles.values():
        roles.update({"kvm1": "Primary", "xen1": "Secondary"})
    with pytest.raises(GuardError) as info:
        site_of.start("kvm1")
    assert str(info.value) == ("kvm1: refusing to start logger: cannot ask xen1 whether it runs there (cannot "
                               "connect to root@xen1:22: [Errno 113] No route to host); only if xen1 is known to be "
                               "down, retry with --allow-disconnected")
    assert START["kvm1"] not in site_of.sent("kvm1")
    site_of.start("kvm1", allow_disconnected=True)
    assert site_of.sent("kvm1")[-1] == START["kvm1"]
    assert "WARNING kvm1: xen1 cannot be reached" in capsys.readouterr().out


def test_a_dry_run_start_runs_the_guard(site_of, capsys):
    with pytest.raises(GuardError, match="logger-system is Secondary"):
        site_of.start("kvm1", dry_run=True)
    for roles in site_of.shared.roles.values():
        roles.update({"kvm1": "Primary", "xen1": "Secondary"})
    site_of.start("kvm1", dry_run=True)
    assert START["kvm1"] not in site_of.sent("kvm1")
    assert f"would run on kvm1: env LC_ALL=C {START['kvm1']}" in capsys.readouterr().out
