"""A real Xen host: Debian's Xen 4.17 with a Debian 12 dom0 in a lab VM (vms.py), as the lab's xen1.

    vm = realxen.start(log=print)       # boots the cached image (built once); dom0 answers SSH
    vm.ssh(["xl", "list"])

The VM is booted once and outlives lab resets: its NIC is a tap on a bridge in a VM namespace of
its own, which `up` links to the lab's switch with a veth, so dom0 (br0, where the domUs' vifs
go) sits on the lab's network beside kvm1, and the guest has the same address under either
hypervisor. The control side reaches dom0 and the guest through the inventory's ProxyCommand
into the switch's namespace, as it reaches every lab host.

DRBD's role change, the lab's way (see tests/lab/README.md, "Real Xen"): the guest's disks are
the lab's image files on this machine. dom0's `drbdadm` is a stand-in (DRBDADM below) that hands
each call to the relay (`python -m tests.lab.realxen relay`, in the VM's namespace), which runs
it through the DRBD simulator as host xen1 and then makes the VM's disks follow xen1's roles over
QMP: a resource is attached to the VM (a SCSI disk, LUN = its minor) while xen1 is Primary and
detached as soon as it is not. The simulator refuses a second Primary and a demotion of a
device a domain holds open (the stand-in reports what dom0's blkback and mounts hold), so no
disk is ever open on both sides.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

from tasks.formats.bootloader import NIC_NAMES

from . import HOSTS, REPO, RESOURCES, SWAP, SWITCH_BRIDGE, SWITCH_NS, VM_PREFIX, vms
from .spaces import LabError, kill, run

IMAGE = vms.ImageSpec("xen", packages=("xen-hypervisor-4.17-amd64", "xen-utils-4.17", "bridge-utils", "lvm2"),
                      hypervisor=True)
XEN_HOST = next(name for name, spec in HOSTS.items() if spec["role"] == "xen")
ADDRESS = "10.77.0.21"          # dom0 on the lab's switch (xen1's namespace host keeps 10.77.0.11)
NETNS = VM_PREFIX + "xen"       # the VM's own switch: a lab reset leaves it
BRIDGE = "xkxensw"
UPLINK = "xen1r"                # the veth from the lab's switch to the VM's
RELAY_ADDRESS = "10.77.0.2"     # the relay, on the VM's switch
RELAY_PORT = 7007
SWAP_LUN = 1
DOMU_MEMORY = 512               # MiB: 256 dies unpacking a MODULES=most initramfs (LAB-NOTES)
MODULES = ("xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xen-blkback", "xen-netback", "bridge",
           "virtio_scsi", "sd_mod")

# dom0's daemons, as Debian's init script starts them (systemd would cost tens of seconds under
# TCG); xenconsoled keeps each guest's console in /var/log/xen/console/guest-NAME.log.
DOM0_INIT = """\
mkdir -p /var/log/xen/console /etc/xen/auto /dev/vg_main
ip addr flush dev eth0
ip link add br0 address "$(cat /sys/class/net/eth0/address)" type bridge forward_delay 0
ip link set eth0 master br0
ip addr add "$address" dev br0
ip link set br0 up
XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console" /etc/init.d/xen start >/dev/console 2>&1
"""

SPEC = vms.VmSpec(XEN_HOST, IMAGE, ADDRESS, memory=2048, cpus=2, cpu="qemu64,+svm", modules=MODULES,
                  cmdline="console=hvc0", init=DOM0_INIT, switch=(NETNS, BRIDGE),
                  xen_cmdline="console=com1 com1=115200,8n1 dom0_mem=768M,max:768M",
                  devices=("virtio-scsi-pci,id=scsi0",))

# Device nodes in dom0 by the LUN of their SCSI disk.
NODES = {f"/dev/drbd{r['minor']}": r["minor"] for r in RESOURCES} | {SWAP["path"]: SWAP_LUN}

DRBDADM = f"""\
#!/usr/bin/python3
# drbdadm in the real Xen lab's dom0 (tests/lab/realxen.py): the lab's relay runs the call
# through the DRBD simulator as host {XEN_HOST} and attaches or detaches this VM's disks to match
# its roles; this side says which devices a domain or a mount holds, and keeps their nodes.
import glob, json, os, re, socket, subprocess, sys, time

def held():
    listing = subprocess.run(["xenstore-ls", "-f", "/local/domain/0/backend/vbd"], capture_output=True,
                             text=True).stdout
    paths = set(re.findall(r'/params = "([^"]*)"', listing))
    for path in glob.glob("/dev/drbd*"):
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_EXCL))
        except OSError:
            paths.add(path)
    return sorted(paths)

def node(path, lun):
    for _ in range(300):
        found = glob.glob(f"/sys/bus/scsi/devices/*:0:0:{{lun}}/block/*/dev")
        if found:
            major, minor = map(int, open(found[0]).read().split(":"))
            try:
                if os.stat(path).st_rdev == os.makedev(major, minor):
                    return
                os.unlink(path)
            except FileNotFoundError:
                pass
            os.mknod(path, 0o60660, os.makedev(major, minor))
            return
        time.sleep(0.1)
    sys.exit(f"drbdadm (lab): no disk at LUN {{lun}} for {{path}} after 30 s")

with socket.create_connection(({RELAY_ADDRESS!r}, {RELAY_PORT}), timeout=600) as relay:
    relay.sendall(json.dumps({{"argv": sys.argv[1:], "held": held()}}).encode() + b"\\n")
    answer = json.loads(relay.makefile().readline())
for path, lun in answer["nodes"].items():
    node(path, lun)
for path in answer["gone"]:
    if os.path.exists(path):
        os.unlink(path)
sys.stdout.write(answer["stdout"])
sys.stderr.write(answer["stderr"])
sys.exit(answer["exit"])
"""


def vm() -> vms.Vm:
    return vms.Vm(SPEC, vms.VM_WORK / SPEC.name)


def running() -> bool:
    return vm().pid() is not None


def start(log=print) -> vms.Vm:
    """Boot the Xen VM (its image built once) with the relay beside it; dom0 answers SSH."""
    _network_up()
    started = time.monotonic()
    xen = vms.start([SPEC], log=log, timeout=300)[SPEC.name]
    xen.ssh(["sh", "-c", 'cat >/usr/local/sbin/drbdadm && chmod 755 /usr/local/sbin/drbdadm'], input=DRBDADM,
            check=True)
    answer = xen.ssh(["xl", "list"], check=True)
    if "Domain-0" not in answer.stdout:
        raise LabError(f"{SPEC.name}: xl list shows no Domain-0: {answer.stdout.strip()}")
    log(f"real Xen host {SPEC.name}: dom0 answers `xl list` {time.monotonic() - started:.0f} s after qemu started")
    return xen


def stop() -> None:
    """The VM, its relay and its switch gone (a lab reset leaves them; this does not)."""
    kill(vms.vm_pids([NETNS]))
    run(["ip", "netns", "delete", NETNS], check=False)


def _network_up() -> None:
    """The VM's own switch, with the relay's address, and the relay on it."""
    if not vms.switch_up(NETNS, BRIDGE, RELAY_ADDRESS):
        return
    log = vms.VM_WORK / "relay.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    subprocess.Popen(["ip", "netns", "exec", NETNS, sys.executable, "-m", "tests.lab.realxen", "relay"],
                     cwd=REPO, stdout=log.open("a"), stderr=subprocess.STDOUT,
                     stdin=subprocess.DEVNULL, start_new_session=True,
                     env={**os.environ, vms.VM_MARKER: str(vms.WORK)})


def boot_guest(image_name: str, log=print) -> None:
    """`up`'s last step with a real Xen: the VM (booted once) on the lab's new switch, xen1's
    disks attached, and the guest started as its operator would, from xen-tools' cfg."""
    from . import config, image

    xen = vm() if running() else start(log)
    link_to_switch()
    reconcile(switching=False)
    cfg = config.real_xen_cfg(image.real_guest(image_name).cfg.read_text())
    cfg = re.sub(r"^memory\s*=.*$", f"memory = '{DOMU_MEMORY}'", cfg, count=1, flags=re.M)
    # Without it the guest has no network under Xen: systemd 252 renames netfront's eth0 to enX0
    # and xen-tools' interfaces file configures eth0 (an operator's fix, the one the tool makes)
    cfg += f"extra = '{NIC_NAMES}'\n"
    xen.ssh(["sh", "-c", 'cat >"$1"', "sh", config.XEN_CFG], input=cfg, check=True)
    # dom0's drbdadm makes the device nodes of what is attached
    xen.ssh(["sh", "-c", 'drbdadm status >/dev/null && xl create -q "$1"', "sh", config.XEN_CFG], check=True,
            timeout=300)


def release() -> None:
    """Before a lab reset replaces the disk files: no domain, no lab disk in the VM, no cfg."""
    xen = vm()
    xen.ssh(["sh", "-c", "xl list | awk 'NR > 2 { print $1 }' | xargs -r -n 1 xl destroy; "
                         "rm -f /etc/xen/auto/* /var/log/xen/console/guest-*.log " + " ".join(NODES)], timeout=120)
    for lun in sorted(_attached(xen)):
        detach(xen, lun)


def link_to_switch() -> None:
    """A veth from the lab's switch (made afresh by every `up`) to the VM's."""
    run(["ip", "-n", SWITCH_NS, "link", "add", UPLINK, "type", "veth", "peer", "name", "uplink", "netns", NETNS])
    run(["ip", "-n", SWITCH_NS, "link", "set", UPLINK, "master", SWITCH_BRIDGE, "up"])
    run(["ip", "-n", NETNS, "link", "set", "uplink", "master", BRIDGE, "up"])


# --- the relay: dom0's drbdadm calls, and the VM's disks following xen1's roles --------------

def _disk_files() -> dict[int, Path]:
    from . import image

    paths = image.disk_paths(HOSTS)
    return {r["minor"]: paths[r["resource"]] for r in RESOURCES} | {SWAP_LUN: paths[f"swap@{XEN_HOST}"]}


def _attached(xen: vms.Vm) -> set[int]:
    found = (re.search(r"lab-lun(\d+)$", block.get("qdev", "")) for block in xen.qmp("query-block")["return"])
    return {int(match[1]) for match in found if match}


def attach(xen: vms.Vm, lun: int, path: Path) -> None:
    for command, args in (("blockdev-add", {"driver": "raw", "node-name": f"lab-node{lun}",
                                           "file": {"driver": "file", "filename": str(path)}}),
                          ("device_add", {"driver": "scsi-hd", "id": f"lab-lun{lun}", "drive": f"lab-node{lun}",
                                          "bus": "scsi0.0", "channel": 0, "scsi-id": 0, "lun": lun})):
        answer = xen.qmp(command, **args)
        if "error" in answer:
            raise LabError(f"QMP {command} of LUN {lun} ({path}): {answer['error']['desc']}")


def detach(xen: vms.Vm, lun: int) -> None:
    """Unplug the disk, then close qemu's file: until then the VM may still write to it."""
    xen.qmp("device_del", id=f"lab-lun{lun}")
    deadline = time.monotonic() + 30
    while lun in _attached(xen):
        if time.monotonic() > deadline:
            raise LabError(f"LUN {lun} still attached to {xen.name} 30 s after device_del")
        time.sleep(0.1)
    answer = xen.qmp("blockdev-del", **{"node-name": f"lab-node{lun}"})
    if "error" in answer:
        raise LabError(f"QMP blockdev-del of LUN {lun}: {answer['error']['desc']}")


def wanted_luns() -> set[int]:
    """xen1's Primary resources, and its swap (a local disk: always there while the lab is up)."""
    from . import STATE_DIR
    from .sim import model

    if not (STATE_DIR / "drbd.json").exists():
        return set()
    with model.transaction(str(STATE_DIR), "realxen") as st:
        resources = model.resources(st)
    return {SWAP_LUN} | {r["minor"] for r in RESOURCES
                         if resources.get(r["resource"], {}).get("hosts", {}).get(XEN_HOST, {}).get("role")
                         == model.PRIMARY}


def reconcile(switching: bool = True) -> set[int]:
    """Attach and detach the VM's disks to match xen1's roles; the LUNs attached.

    When a drbdadm call moved a resource (`switching`), DRBD's other promise is checked, the
    same bytes on both: the image file as the Xen VM leaves or finds it (qemu has closed it)
    against what kvm1 reads from its device of the resource, recorded in SWITCHES."""
    xen = vm()
    files = _disk_files()
    want, have = wanted_luns(), _attached(xen)
    for lun in sorted(have - want):
        detach(xen, lun)
        if switching and lun != SWAP_LUN:
            _record_switch("to kvm", lun, files[lun])
    for lun in sorted(want - have):
        if switching and lun != SWAP_LUN:
            _record_switch("to xen", lun, files[lun])
        attach(xen, lun, files[lun])
    return want


SWITCHES = vms.WORK / "realxen-switches.jsonl"


def _record_switch(direction: str, lun: int, path: Path) -> None:
    from . import control

    digest = hashlib.sha256()
    with path.open("rb") as image_file:
        for block in iter(lambda: image_file.read(1 << 20), b""):
            digest.update(block)
    kvm = next(name for name, spec in HOSTS.items() if spec["role"] == "kvm")
    seen = control.exec_(kvm, ["sha256sum", f"/dev/drbd{lun}"], capture_output=True, text=True, timeout=300)
    with SWITCHES.open("a") as log:
        log.write(json.dumps({"direction": direction, "device": f"/dev/drbd{lun}", "xen": digest.hexdigest(),
                              kvm: seen.stdout.split()[0] if seen.returncode == 0 else seen.stderr.strip()}) + "\n")


def drbdadm(argv: list[str], held: list[str]) -> dict:
    """One dom0 drbdadm call: the simulator answers as xen1 (a device dom0 holds open counts as
    held there too: a process in xen1's namespaces, where the simulator looks, keeps xen1's node
    of it open meanwhile), then the disks follow."""
    from . import control

    devices = {f"/dev/drbd{r['minor']}" for r in RESOURCES}
    holders = [subprocess.Popen(control.exec_argv(XEN_HOST, ["sh", "-c", 'exec 3<"$1" && echo held && read -r _',
                                                              "sh", path]),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for path in held if path in devices]
    try:
        for holder in holders:
            if holder.stdout is None or holder.stdout.readline() != "held\n":
                raise LabError(f"could not hold {XEN_HOST}'s device open: {holder.args[-1]}")
        done = control.exec_(XEN_HOST, ["drbdadm", *argv], capture_output=True, text=True, timeout=300)
    finally:
        for holder in holders:
            if holder.stdin is not None:
                holder.stdin.close()
            holder.wait(timeout=30)
    attached = reconcile()
    nodes = {path: lun for path, lun in NODES.items() if lun in attached}
    return {"exit": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "nodes": nodes,
            "gone": sorted(set(NODES) - set(nodes))}


class _Relay(socketserver.StreamRequestHandler):
    lock = threading.Lock()

    def handle(self) -> None:
        request = json.loads(self.rfile.readline())
        with self.lock:
            try:
                answer = drbdadm(request["argv"], request["held"])
            except (LabError, OSError, KeyError) as exc:
                answer = {"exit": 20, "stdout": "", "stderr": f"drbdadm (lab relay): {exc}\n", "nodes": {},
                          "gone": []}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


def serve() -> None:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer((RELAY_ADDRESS, RELAY_PORT), _Relay) as server:
        server.serve_forever()


if __name__ == "__main__" and sys.argv[1:] == ["relay"]:
    serve()
