"""The lab itself: hosts reachable only through their namespaces, a real guest, real libvirt.

These pin down what the flow tests rely on, so a failure here points at the lab and
not at the tool.  The up/down test runs last: it takes the lab down and brings it back.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time

import pytest

from tasks.errors import ToolError
from tasks.inventory import load_inventory
from tasks.remote import Site
from tasks.ssh import SshTarget, open_connection
from tests.lab import SWITCH_NS
from tests.lab.spaces import LabError

pytestmark = pytest.mark.lab

TINY = """<domain type='qemu'>
  <name>tiny</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='block' device='disk'>
      <source dev='/dev/vg_main/logger-swap'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <source bridge='br0'/>
      <model type='e1000'/>
    </interface>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>
"""


@pytest.fixture
def fresh(lab):
    """The lab in its initial state, whatever an earlier test left."""
    lab.reset()
    return lab


@pytest.fixture
def site(lab):
    site = Site(load_inventory(lab.inventory))
    yield site
    site.close()


def test_hosts_answer_through_the_inventory_proxy(lab, site):
    for name in ("xen1", "kvm1"):
        started = time.monotonic()
        out = site.host(name).probe(["hostname"])
        assert (out.exit_code, out.stdout.strip()) == (0, name)
        assert time.monotonic() - started < 5


def test_each_host_has_its_own_view(lab):
    xen = lab.exec("xen1", ["sh", "-c", "cat /etc/hostname; ls /etc/xen/auto; readlink -f /dev/drbd5"], check=True)
    assert xen.stdout.split() == ["xen1", "logger.cfg", "/dev/drbd5"]
    kvm = lab.exec("kvm1", ["sh", "-c", "test -e /etc/xen/auto/logger.cfg || echo no-cfg; id -un libvirt-qemu"])
    assert kvm.stdout.split() == ["no-cfg", "libvirt-qemu"]
    cfg = lab.exec("xen1", ["cat", "/etc/xen/auto/logger.cfg"], check=True).stdout
    assert "'phy:/dev/drbd5,xvda2,w'" in cfg and "bootloader = 'pygrub'" in cfg


@pytest.mark.usefixtures("fresh")
def test_guest_answers_ssh_on_its_drbd_disks(lab, site):
    guest = site.guest(load_inventory(lab.inventory).vm("logger"))
    out = guest.probe(["sh", "-c", "hostname; findmnt -n -o SOURCE /; findmnt -n -o SOURCE /srv/var; "
                                   ". /etc/os-release; echo $VERSION_CODENAME"])
    assert out.stdout.split() == ["logger", "/dev/xvda2", "/dev/xvda3", "bookworm"]


@pytest.mark.usefixtures("fresh")
def test_xl_list_shows_the_guest_on_xen1(lab):
    out = lab.exec("xen1", ["xl", "list"], check=True).stdout
    assert any(line.split()[:1] == ["logger"] for line in out.splitlines()), out


@pytest.mark.usefixtures("fresh")
def test_guest_data_reaches_the_other_host_through_the_shared_disk(lab, site):
    guest = site.guest(load_inventory(lab.inventory).vm("logger"))
    guest.probe(["sh", "-c", "echo written-on-xen1 > /srv/var/marker && sync"])
    site.close()
    lab.exec("xen1", ["xl", "destroy", "logger"], check=True)
    lab.exec("xen1", ["drbdadm", "secondary", "logger-var"], check=True)
    lab.exec("kvm1", ["drbdadm", "primary", "logger-var"], check=True)
    out = lab.exec("kvm1", ["debugfs", "-R", "cat /marker", "/dev/drbd6"], check=True)
    assert out.stdout.strip() == "written-on-xen1"
    lab.reset()


LOGGER = """<domain type='qemu'>
  <name>logger</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <features><acpi/></features>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='block' device='disk'><source dev='/dev/drbd5'/><target dev='sda' bus='ide'/></disk>
    <disk type='block' device='disk'><source dev='/dev/drbd6'/><target dev='sdb' bus='ide'/></disk>
    <disk type='block' device='disk'><source dev='/dev/vg_main/logger-swap'/><target dev='sdc' bus='ide'/></disk>
    <interface type='bridge'>
      <mac address='00:16:3e:37:d0:70'/><source bridge='br0'/><model type='e1000'/>
    </interface>
  </devices>
</domain>
"""


@pytest.mark.usefixtures("fresh")
def test_the_guest_follows_its_domain_to_kvm1(lab, site):
    """By hand, the moves a migration makes: the guest then answers from kvm1, on the same data,
    and powers off when asked."""
    vm = load_inventory(lab.inventory).vm("logger")
    site.guest(vm).probe(["sh", "-c", "echo before-the-move > /root/marker && sync"])
    site.close()
    virsh = ["virsh", "-c", "qemu:///system"]
    lab.exec("kvm1", ["sh", "-c", "cat > /tmp/logger.xml"], input=LOGGER, check=True)
    lab.exec("kvm1", [*virsh, "define", "/tmp/logger.xml"], check=True)
    try:
        # While xen1 runs the guest, kvm1 cannot start it a second time: DRBD does not let qemu
        # open the device, a Secondary beside a connected Primary (DRBD 9 cannot auto-promote it).
        refused = lab.exec("kvm1", [*virsh, "start", "logger"])
        assert refused.returncode != 0 and "Could not open '/dev/drbd5'" in refused.stderr
        lab.exec("xen1", ["xl", "destroy", "logger"], check=True)
        for resource in ("logger-system", "logger-var"):
            lab.exec("xen1", ["drbdadm", "secondary", resource], check=True)
            lab.exec("kvm1", ["drbdadm", "primary", resource], check=True)
        lab.exec("kvm1", [*virsh, "start", "logger"], check=True)
        assert lab.state()["vms"]["logger"]["running_on"] == "kvm1"
        out = Site(load_inventory(lab.inventory)).guest(vm).probe(["cat", "/root/marker"])
        assert out.stdout.strip() == "before-the-move"
        # No OS runs in qemu, yet the power button works: the lab's ACPI stand-in powers it off.
        lab.exec("kvm1", [*virsh, "shutdown", "logger"], check=True)
        deadline = time.monotonic() + 10
        while lab.exec("kvm1", [*virsh, "domstate", "logger"]).stdout.strip() != "shut off":
            assert time.monotonic() < deadline, "virsh shutdown did not complete"
            time.sleep(0.2)
        assert lab.exec("kvm1", [*virsh, "domstate", "--reason", "logger"]).stdout.strip() == "shut off (shutdown)"
        assert lab.state()["vms"]["logger"]["running_on"] is None
        with pytest.raises(LabError, match="not running"):
            lab.exec("logger", ["true"])
    finally:
        lab.reset()


def test_libvirt_runs_a_tcg_domain_through_the_wrapper(lab):
    lab.exec("kvm1", ["sh", "-c", "cat > /tmp/tiny.xml"], input=TINY, check=True)
    virsh = ["virsh", "-c", "qemu:///system"]
    try:
        lab.exec("kvm1", [*virsh, "define", "/tmp/tiny.xml"], check=True)
        assert lab.exec("kvm1", [*virsh, "domstate", "tiny"]).stdout.strip() == "shut off"
        lab.exec("kvm1", [*virsh, "start", "tiny"], check=True)
        assert lab.exec("kvm1", [*virsh, "domstate", "tiny"]).stdout.strip() == "running"
        lab.exec("kvm1", [*virsh, "destroy", "tiny"], check=True)
        assert lab.exec("kvm1", [*virsh, "domstate", "tiny"]).stdout.strip() == "shut off"
    finally:
        lab.exec("kvm1", [*virsh, "destroy", "tiny"])
        lab.exec("kvm1", [*virsh, "undefine", "tiny"])
    assert lab.exec("kvm1", [*virsh, "domstate", "tiny"]).returncode != 0


def test_a_fault_makes_a_command_fail(lab):
    lab.fault_add("xen1", "xl list", exit_code=7, once=True)
    try:
        assert lab.exec("xen1", ["xl", "list"]).returncode == 7
        assert lab.exec("xen1", ["xl", "list"]).returncode == 0
        lab.fault_add("kvm1", "virsh domstate", exit_code=3)
        assert lab.exec("kvm1", ["virsh", "-c", "qemu:///system", "domstate", "logger"]).returncode == 3
    finally:
        lab.fault_clear()
    assert lab.exec("kvm1", ["virsh", "-c", "qemu:///system", "domstate", "logger"]).returncode == 1


@pytest.mark.usefixtures("fresh")
def test_cli_state_and_exec(lab):
    state = lab.cli("state")
    assert state.returncode == 0, state.stderr
    assert json.loads(state.stdout)["vms"]["logger"]["running_on"] == "xen1"
    out = lab.cli("exec", "kvm1", "--", "hostname")
    assert (out.returncode, out.stdout.strip()) == (0, "kvm1")


def test_up_and_down_are_idempotent_and_down_leaves_nothing(lab):
    inventory = load_inventory(lab.inventory)
    lab.down()
    lab.down()
    assert lab.leftovers() == {"processes": [], "netns": [], "loops": [], "mounts": []}

    # With the lab down its way in is gone: the proxy command fails on this machine, at once,
    # without anything being sent towards the lab's addresses.
    xen1 = inventory.host("xen1")
    started = time.monotonic()
    proxy = subprocess.run(shlex.split(xen1.proxy_command), input=b"", capture_output=True, timeout=5)
    assert proxy.returncode != 0 and SWITCH_NS.encode() in proxy.stderr
    assert time.monotonic() - started < 1
    # The tool's connection fails too.  (paramiko notices a proxy that died only after the
    # connect timeout when it has already written its banner, hence the short timeout here.)
    started = time.monotonic()
    with pytest.raises(ToolError, match="cannot connect"):
        open_connection(SshTarget("xen1", xen1.address, "root", 22, proxy_command=xen1.proxy_command,
                                  known_hosts=xen1.known_hosts, connect_timeout=3))
    assert time.monotonic() - started < 5

    started = time.monotonic()
    lab.up()
    took = time.monotonic() - started
    assert took < 60
    started = time.monotonic()
    lab.up()
    assert lab.is_up() and time.monotonic() - started < 2, "a second up only checks"
    site = Site(load_inventory(lab.inventory))
    try:
        assert site.host("kvm1").probe(["hostname"]).stdout.strip() == "kvm1"
    finally:
        site.close()
