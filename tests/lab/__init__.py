"""The local lab: two hosts (xen1, kvm1) and one guest (logger) in namespaces on this machine.

This module only names things (paths, addresses, devices) so that every part of the
lab agrees on them.  It imports nothing beyond the standard library: lab hosts run
parts of the lab (guest start/stop, the ACPI stand-in) with the machine's python3,
without the venv.
"""

from __future__ import annotations

import os
from pathlib import Path

LAB = Path(__file__).resolve().parent
REPO = LAB.parent.parent
WORK = LAB / ".work"            # everything a running lab owns (gitignored)
CACHE = LAB / ".cache"          # guest image, libvirt's qemu probe: kept between runs (gitignored)
INVENTORY = LAB / "hosts.yml"   # written by `up`: absolute paths differ per checkout
STATE_DIR = WORK / "state"      # the simulators' shared state (contract with tests/lab/sim)
HOST_FILE = "/etc/xenkvm-lab/host.json"   # a lab host's own settings, in its view (config.host_json)
KEYS = WORK / "keys"
KNOWN_HOSTS = KEYS / "known_hosts"
CLIENT_KEY = KEYS / "id_ed25519"

# What lab hosts run the lab's own Python code with (guest start/stop, the simulators).
HOST_PYTHON = "/usr/bin/python3"
# Every process the lab starts carries this variable, so `down` finds them after a crash.
MARKER = "XENKVM_LAB"
# The lab's named network namespaces; another prefix lets a second checkout run its own lab
# beside this one (everything else a lab owns is under its checkout's .work).
PREFIX = os.environ.get("XENKVM_LAB_PREFIX", "xkl-")
VM_PREFIX = PREFIX + "vm-"       # the lab VMs' namespaces (vms.py): a host lab `reset` leaves them
SWITCH_NS = PREFIX + "net"      # the lab's switch; the control side's only way in
SWITCH_BRIDGE = "xklsw"
SWITCH_ADDRESS = "10.77.0.1"
NETMASK = 24

HOSTS = {
    "xen1": {"role": "xen", "address": "10.77.0.11"},
    "kvm1": {"role": "kvm", "address": "10.77.0.12"},
}
GUEST = {
    "name": "logger",
    "address": "10.77.0.50",
    "mac": "00:16:3e:37:d0:70",
    "memory": 256,
    "bridge": "br0",
}
# The guest's disks in the Xen cfg's order: root first, as xen-tools writes it.
RESOURCES = [
    {"resource": "logger-system", "minor": 5, "vdev": "xvda2", "port": 7790, "mount": "/"},
    {"resource": "logger-var", "minor": 6, "vdev": "xvda3", "port": 7791, "mount": "/srv/var"},
]
SWAP = {"path": "/dev/vg_main/logger-swap", "vdev": "xvda1"}

# The guest's image: "minbase" (debootstrap + xen-tools' hooks; runs as namespaces on both
# sides), or a guest made by the real xen-create-image (realguest.py) that the KVM side
# boots for real under qemu, with systemd or sysvinit.
IMAGES = ("minbase", "systemd", "sysvinit")
APT_PROXY_PORT = 3142     # tests/lab/mirror.py on the switch address, for guests that use apt

# Light fleet VMs (Settings.fleet of them), for many VMs at once: each is a Xen domain
# of the simulator and a real (diskless-booting) qemu domain on kvm1, over one small DRBD
# resource; no guest OS runs inside.
FLEET_MAX = 64
FLEET_MEMORY = 32    # MiB: SeaBIOS finds nothing to boot and idles
FLEET_DISK_SIZE = "1M"


def fleet_vms(count: int) -> list[dict]:
    """Names, resource, minor, port and MAC of the first `count` fleet VMs."""
    return [{"name": f"fleet{i:02d}", "resource": f"fleet{i:02d}-disk", "minor": 20 + i, "port": 7800 + i,
             "mac": f"00:16:3e:77:f0:{i:02x}", "vdev": "xvda2"} for i in range(1, count + 1)]


def netns(host: str) -> str:
    """The named network namespace of a lab host."""
    return PREFIX + host


def host_dir(host: str) -> Path:
    return WORK / "hosts" / host
