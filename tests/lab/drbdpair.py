"""A real DRBD pair: two lab VMs (vms.py) running Debian 12's own drbd.ko 8.4.11 and drbd-utils
9.22, as a Xen host and a KVM host of an inventory the tool drives.

    pair = drbdpair.start(log=print)      # both VMs booted at once; the inventory written
    pair.vm("rxen").ssh(["drbdadm", "status"])
    FABRIC_INVENTORY=<pair.inventory> fab drbd.setup --vm web --force-initial-sync

VM `web` has two DRBD resources, one per metadata layout: web-root (internal metadata at
the end of /dev/vdb) and web-data (its data on /dev/vdc, its metadata on /dev/vdd). Neither
VM runs a hypervisor: rxen has no Xen (the tool's `xl` calls would fail there), and rkvm's
libvirt URI is libvirt's built-in test driver, which answers that no domain `web` exists.
rxen also has Pacemaker (pacemaker-based, the CIB manager, can run there without corosync)
and its command line tools.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import CLIENT_KEY, WORK, vms

DRBD_IMAGE = vms.ImageSpec("drbd", packages=("drbd-utils", "libvirt-clients"))
PACEMAKER_IMAGE = vms.ImageSpec("drbd-pacemaker",
                                packages=("drbd-utils", "libvirt-clients", "pacemaker", "pacemaker-cli-utils"))
DISKS = {"vdb": "96M", "vdc": "32M", "vdd": "8M"}
XEN, KVM = "rxen", "rkvm"
SPECS = (vms.VmSpec(XEN, PACEMAKER_IMAGE, "10.77.1.11", disks=DISKS, modules=("drbd",)),
         vms.VmSpec(KVM, DRBD_IMAGE, "10.77.1.12", disks=DISKS, modules=("drbd",)))
VM = "web"
RESOURCES = (
    {"resource": "web-root", "device": "/dev/drbd1", "backing": "/dev/vdb", "meta_disk": "internal", "port": 7789},
    {"resource": "web-data", "device": "/dev/drbd2", "backing": "/dev/vdc", "meta_disk": "/dev/vdd", "port": 7790},
)
INVENTORY = WORK / "drbdpair" / "hosts.yml"


def inventory() -> str:
    """The tool's inventory for the pair (absolute paths of this checkout)."""
    hosts = {}
    for spec, role in zip(SPECS, ("xen", "kvm"), strict=True):
        hosts[spec.name] = {"address": spec.address, "role": role, "known_hosts": str(vms.KNOWN_HOSTS),
                            "identity_file": str(CLIENT_KEY), "proxy_command": vms.proxy_command(spec.address),
                            **({"toolstack": "xl"} if role == "xen" else {"libvirt_uri": "test:///default"})}
    vm = {"xen_host": XEN, "kvm_host": KVM, "bridge": "br0", "disks": [dict(r) for r in RESOURCES]}
    return ("# The real DRBD pair's inventory, written by tests/lab/drbdpair.py (do not edit).\n"
            + yaml.safe_dump({"hosts": hosts, "vms": {VM: vm}}, sort_keys=False))


def resource_files() -> dict[str, str]:
    """The pair's DRBD resource files as the tool renders them for its 8.4.11 kernel."""
    from tasks.formats.drbdconf import render_drbd_resource
    from tasks.inventory import load_inventory

    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "hosts.yml"
        path.write_text(inventory())
        inv = load_inventory(path)
    return render_drbd_resource(inv.vm(VM), inv.hosts, "8.4.11")


@dataclass
class Pair:
    vms: dict[str, vms.Vm]
    inventory: Path = INVENTORY

    def vm(self, name: str) -> vms.Vm:
        return self.vms[name]


def start(log=print) -> Pair:
    """Both VMs booted at once, fresh disks, the inventory written."""
    running = vms.start(list(SPECS), log=log)
    shutil.rmtree(INVENTORY.parent, ignore_errors=True)
    INVENTORY.parent.mkdir(parents=True)
    INVENTORY.write_text(inventory())
    return Pair(running)
