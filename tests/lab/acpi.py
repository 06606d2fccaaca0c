"""The KVM host's stand-in for a guest OS honouring the ACPI power button.

No operating system runs inside the lab's qemu (the guest is a namespace, see guest.py),
so `virsh shutdown` (a power button press) would never finish.  This daemon runs on the
KVM host next to libvirtd, watches qemu's POWERDOWN events through libvirt, and answers
each one as a guest would, if the domain has ACPI: after the lab's shutdown delay (the
same as a Xen guest's) it halts the lab guest and writes "soft off" to the ACPI PM1a
control register (I/O port 0x604 on pc and q35 machines, where SeaBIOS puts the PM
block), so qemu powers off and libvirt records "shut off (shutdown)", as after a real
guest's shutdown.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import xml.etree.ElementTree as ET

from . import GUEST, HOST_FILE
from . import guest as lab_guest

VIRSH = ["/usr/bin/virsh", "-c", "qemu:///system"]
EVENT = re.compile(r"^event POWERDOWN at \S+ for domain '(?P<name>[^']+)'")
SOFT_OFF = "o /w 0x604 0x2000"   # PM1a_CNT: SLP_EN with SLP_TYP 0 (S5) in qemu's DSDT


def _virsh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*VIRSH, *args], capture_output=True, text=True, check=False)


def _host_file() -> dict:
    """Read at every press, so a reset with other settings applies at once."""
    with open(HOST_FILE, encoding="utf-8") as f:
        return json.load(f)


def _has_acpi(name: str) -> bool:
    """Without <acpi/> a real guest never sees the button (and qemu has no PM block to write)."""
    try:
        return ET.fromstring(_virsh("dumpxml", name).stdout).find("features/acpi") is not None
    except ET.ParseError:
        return False


def _power_off(host: str, name: str) -> None:
    settings = _host_file()
    if name == GUEST["name"] and settings.get("real_guest"):
        return   # a real guest OS runs in this qemu and answers the button itself
    domid = _virsh("domid", name).stdout.strip()
    if not _has_acpi(name):
        return
    time.sleep(float(settings.get("xen_shutdown_delay", 1.0)))
    if _virsh("domid", name).stdout.strip() != domid:
        return  # destroyed (and maybe started again) meanwhile: that instance was not asked
    if name == GUEST["name"]:
        lab_guest.stop(host, name)
    _virsh("qemu-monitor-command", "--hmp", name, SOFT_OFF)


def serve(host: str) -> None:
    """Forever: one power-off per POWERDOWN event (re-subscribing if the stream ends)."""
    while True:
        watch = subprocess.Popen(["stdbuf", "-oL", *VIRSH, "qemu-monitor-event", "--loop", "--event", "POWERDOWN"],
                                 stdout=subprocess.PIPE, text=True)
        for line in watch.stdout:
            match = EVENT.match(line)
            if match:
                threading.Thread(target=_power_off, args=(host, match["name"]), daemon=True).start()
        watch.wait()
        time.sleep(1)
