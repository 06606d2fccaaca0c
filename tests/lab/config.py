"""Every text file the lab writes into a host's view, and the lab inventory.

Kept apart from the namespace plumbing so each file can be read (and checked) as
what a real site would have: the Xen cfg comes from xen-tools' own renderer, the
DRBD resource files are the form `drbdadm dump` accepts for both 8.4 and 9.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from . import (
    CLIENT_KEY,
    FLEET_MAX,
    FLEET_MEMORY,
    GUEST,
    HOST_PYTHON,
    HOSTS,
    IMAGES,
    KNOWN_HOSTS,
    REPO,
    RESOURCES,
    STATE_DIR,
    SWAP,
    SWITCH_NS,
    fleet_vms,
)

XEN_CFG = f"/etc/xen/auto/{GUEST['name']}.cfg"


@dataclass(frozen=True)
class Settings:
    """What `up` and `reset` can vary between test cases."""

    drbd_style: str = "9"
    toolstack: str = "xl"
    shutdown_delay: float = 1.0
    fleet: int = 0             # light VMs beside the guest (fleet01...)
    image: str = "minbase"     # the guest: see IMAGES
    xen: str = "sim"           # xen1: the xl simulator, or "real": Xen 4.17 in a TCG VM (realxen.py)

    @property
    def real_guest(self) -> bool:
        """The KVM side boots the guest's own disk under qemu (no namespace stands in for it)."""
        return self.image != "minbase"

    def __post_init__(self):
        if self.drbd_style not in ("9", "8.4"):
            raise ValueError(f"drbd style must be 9 or 8.4, got {self.drbd_style!r}")
        if self.toolstack not in ("xl", "xm"):
            raise ValueError(f"toolstack must be xl or xm, got {self.toolstack!r}")
        if self.shutdown_delay < 0:
            raise ValueError(f"shutdown delay must not be negative, got {self.shutdown_delay}")
        if self.image not in IMAGES:
            raise ValueError(f"image must be one of {', '.join(IMAGES)}, got {self.image!r}")
        if self.xen not in ("sim", "real"):
            raise ValueError(f"xen must be sim or real, got {self.xen!r}")
        if self.xen == "real" and not self.real_guest:
            raise ValueError("a real Xen boots a real guest: image systemd or sysvinit")
        if not 0 <= self.fleet <= FLEET_MAX:
            raise ValueError(f"fleet must be 0 to {FLEET_MAX} VMs, got {self.fleet}")

    def as_dict(self) -> dict:
        return asdict(self)


def proxy_command(address: str) -> str:
    """How the control side reaches a lab address: only from inside the lab's switch namespace.

    When the lab is down the namespace does not exist, `ip` fails at once and
    nothing is ever sent towards the address from the machine's own network.
    """
    return f"{shutil.which('ip') or 'ip'} netns exec {SWITCH_NS} {shutil.which('nc') or 'nc'} {address} 22"


def lab_command(*args: str) -> list[str]:
    """`python -m tests.lab ARGS` as a lab host runs it.

    With the machine's own python3: a host's /root is its own, so a venv whose
    interpreter lives under the real /root (pyenv) is not there.
    """
    return ["env", f"PYTHONPATH={REPO}", HOST_PYTHON, "-m", "tests.lab", *args]


def guest_command(host: str, verb: str) -> list[str]:
    """The argv a host runs to boot or halt a lab guest (the domain name is appended; nothing
    happens for a domain with no guest OS, such as a fleet VM)."""
    return lab_command("guest", verb, "--host", host, "--if-lab")


def host_json(host: str, settings: Settings) -> str:
    """/etc/xenkvm-lab/host.json: the simulators' view of the lab (contract with tests/lab/sim)."""
    data = {
        "host": host,
        "role": HOSTS[host]["role"],
        "state_dir": str(STATE_DIR),
        "drbd_style": settings.drbd_style,
        "xen_shutdown_delay": settings.shutdown_delay,
        "guest_start": guest_command(host, "start"),
        "guest_stop": guest_command(host, "stop"),
        "guests": [GUEST["name"]],
        "guest_mounts": guest_mounts(settings),
        "real_guest": settings.real_guest,
        "peers": {name: dict(spec) for name, spec in HOSTS.items() if name != host},
    }
    return json.dumps(data, indent=2) + "\n"


def guest_mounts(settings: Settings) -> dict[str, str]:
    """Where the guest's namespace boot mounts its DRBD disks, by Xen name (as its fstab says)."""
    return {r["vdev"]: "/var" if r["mount"] != "/" and settings.real_guest else r["mount"] for r in RESOURCES}


def real_xen_cfg(text: str) -> str:
    """xen-create-image's own cfg with its image-file disks replaced by the lab's devices."""
    disks = re.search(r"^disk\s*=\s*\[.*?\]\s*$", xen_cfg(), re.M | re.S).group(0)
    return re.sub(r"^disk\s*=\s*\[.*?\]\s*$", lambda _: disks, text, count=1, flags=re.M | re.S)


def xen_cfg() -> str:
    """The guest's cfg as xen-tools renders it (xt-create-xen-config, pygrub), disks on DRBD.

    The partitions are handed over the way xen-create-image exports them; the
    template lists the root disk first, then the others from the last one down,
    which gives the order xvda2 (root), xvda3 (/srv/var), xvda1 (swap).
    """
    parts = [f"swap:64M:swap:::phy::{SWAP['path']}"]
    parts += [f"{r['resource']}::ext4:{r['mount']}:defaults:phy::/dev/drbd{r['minor']}" for r in RESOURCES]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "hostname": GUEST["name"], "memory": f"{GUEST['memory']}M", "vcpus": "1", "pygrub": "1",
        "dist": "bookworm", "ips": GUEST["address"], "mac": GUEST["mac"], "bridge": GUEST["bridge"],
        "lvm": "vg_main", "NUMPARTITIONS": str(len(parts)),
        **{f"PARTITION{i}": p for i, p in enumerate(parts, 1)},
    }
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(["xt-create-xen-config", f"--output={out}"], env=env, check=True, capture_output=True)
        return (Path(out) / f"{GUEST['name']}.cfg").read_text()


def fleet_cfg(vm: dict) -> str:
    """A fleet VM's cfg, in the shape xen-tools gives (pygrub, root on xvda2, one DRBD disk)."""
    return (f"bootloader = 'pygrub'\nvcpus = '1'\nmemory = '{FLEET_MEMORY}'\n"
            f"root = '/dev/{vm['vdev']} ro'\ndisk = [ 'phy:/dev/drbd{vm['minor']},{vm['vdev']},w' ]\n"
            f"name = '{vm['name']}'\nvif = [ 'mac={vm['mac']},bridge={GUEST['bridge']}' ]\n"
            "on_poweroff = 'destroy'\non_reboot = 'restart'\non_crash = 'restart'\n")


def drbd_res(resource: dict) -> str:
    """A resource file in the two-host form that drbdadm 8.4 and 9 both accept."""
    hosts = "".join(f"    on {name} {{\n        address   {spec['address']}:{resource['port']};\n    }}\n"
                    for name, spec in HOSTS.items())
    return (f"resource {resource['resource']} {{\n"
            f"    device    /dev/drbd{resource['minor']};\n"
            f"    disk      /dev/vg_main/{resource['resource']};\n"
            f"    meta-disk internal;\n{hosts}}}\n")


SSHD_CONFIG = """\
# The lab host's sshd: key-only root login, no PAM, host key and keys of this view only.
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
UsePAM no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile /etc/ssh/lab_authorized_keys
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
MaxSessions 100
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
"""

# LAB-NOTES: what libvirtd's QEMU driver needs to run inside a host's namespaces.
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""


def libvirt_hook(host: str) -> str:
    """/etc/libvirt/hooks/qemu: the lab guest boots once qemu runs and halts when it stops.

    qemu itself has no OS to boot in the lab; the hook stands in for the guest, so
    after a migration the guest answers SSH from the KVM side, on the same disk.
    """
    start = " ".join(guest_command(host, "start"))
    stop = " ".join(guest_command(host, "stop"))
    return ("#!/bin/sh\n"
            "# libvirt runs: qemu DOMAIN OPERATION SUB-OPERATION EXTRA (domain XML on stdin)\n"
            f'[ "$1" = {GUEST["name"]} ] || exit 0   # fleet VMs have no guest OS\n'
            'case "$2" in\n'
            f'    started) exec {start} "$1" </dev/null ;;\n'
            f'    stopped) exec {stop} "$1" </dev/null ;;\n'
            "esac\n")


def etc_hosts() -> str:
    base = Path("/etc/hosts").read_text()
    lab = "".join(f"{spec['address']}\t{name}\n" for name, spec in HOSTS.items())
    return f"{base.rstrip()}\n# lab\n{lab}{GUEST['address']}\t{GUEST['name']}\n"


# kvm1's qemu and libvirtd share this machine's CPUs with everything else in the lab: each
# start is a burst of CPU (qemu's own start, and some 400 QMP qom-get calls from libvirtd in
# its monitor log), so it starts as many domains at once as there are CPUs, as an operator
# would set for a small host.
KVM_MAX_STARTS = os.cpu_count() or 1


# A Xen host's /etc/default/xencommons as Debian's xen-utils-common ships it, with xenconsoled's
# guest logs on: what a proof of life by console needs there (the lab's xl writes the log).
XENCOMMONS = """\
# Log xenconsoled messages (cf xl dmesg)
#XENCONSOLED_TRACE=[none|guest|hv|all]
XENCONSOLED_TRACE=guest
"""


def inventory(settings: Settings) -> str:
    """tests/lab/hosts.yml: the tool's inventory for this lab (absolute paths of this checkout)."""
    keys = {"known_hosts": str(KNOWN_HOSTS), "identity_file": str(CLIENT_KEY)}
    hosts = {}
    for name, spec in HOSTS.items():
        entry = {"address": spec["address"], "role": spec["role"], "max_parallel": 8}
        entry.update({"toolstack": settings.toolstack} if spec["role"] == "xen" else
                     {"libvirt_uri": "qemu:///system", "max_starts": KVM_MAX_STARTS})
        entry.update(keys, proxy_command=proxy_command(spec["address"]))
        if spec["role"] == "xen" and settings.xen == "real":
            from . import realxen, vms

            entry.update(address=realxen.ADDRESS, known_hosts=str(vms.KNOWN_HOSTS),
                         proxy_command=proxy_command(realxen.ADDRESS))
        hosts[name] = entry
    disks = [{"resource": r["resource"], "device": f"/dev/drbd{r['minor']}",
              "backing": f"/dev/vg_main/{r['resource']}", "meta_disk": "internal",
              "port": r["port"], "vdev": r["vdev"]} for r in RESOURCES]
    disks.append({"local": SWAP["path"], "vdev": SWAP["vdev"]})
    xen, kvm = (next(n for n, s in HOSTS.items() if s["role"] == role) for role in ("xen", "kvm"))
    vm = {
        "xen_host": xen, "kvm_host": kvm, "cfg": XEN_CFG,
        "guest_address": GUEST["address"], "guest_proxy_command": proxy_command(GUEST["address"]),
        "guest_identity_file": str(CLIENT_KEY), "guest_known_hosts": str(KNOWN_HOSTS),
        "mac": GUEST["mac"], "memory": GUEST["memory"], "bridge": GUEST["bridge"], "bus": "ide",
        "domain_type": "qemu", "machine": "pc",
        # The sysvinit guest proves the other boot mode: its kernel copied to the KVM host.
        "boot": "direct-kernel" if settings.image == "sysvinit" else "grub",
        "snapshot": "qcow2",   # no device-mapper here, so no LVM snapshots
        "verify": "ssh",       # sshd answers in the guest on both sides; boots in seconds, TCG ones in minutes
        "boot_timeout": 600 if settings.real_guest else 60,
        "disks": disks,
    }
    vms = {GUEST["name"]: vm}
    for f in fleet_vms(settings.fleet):
        vms[f["name"]] = {
            "xen_host": xen, "kvm_host": kvm, "cfg": f"/etc/xen/auto/{f['name']}.cfg", "mac": f["mac"],
            "memory": FLEET_MEMORY, "bridge": GUEST["bridge"], "bus": "ide", "domain_type": "qemu",
            "machine": "pc", "snapshot": "qcow2", "verify": "none",   # no guest OS: only the domain runs
            "disks": [{"resource": f["resource"], "device": f"/dev/drbd{f['minor']}",
                       "backing": f"/dev/vg_main/{f['resource']}", "meta_disk": "internal", "port": f["port"],
                       "vdev": f["vdev"]}],
        }
    header = ("# The local lab's inventory, written by `python -m tests.lab up` and `reset`\n"
              "# (absolute paths of this checkout; do not edit). Settings: "
              f"drbd {settings.drbd_style}, toolstack {settings.toolstack}, fleet {settings.fleet}, "
              f"image {settings.image}, xen {settings.xen}.\n")
    return header + yaml.safe_dump({"hosts": hosts, "vms": vms}, sort_keys=False)
