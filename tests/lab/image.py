"""The guest's disks: a real minimal Debian built once, copied fresh for every lab and reset.

The root file system is `debootstrap --variant=minbase bookworm` plus openssh-server, systemd
and initramfs-tools (so the guest stage meets a real init and initramfs setup),
customised by xen-tools' own hooks (networking, hostname, fstab with xvda names) as
xen-create-image would, and packed into an ext4 image without mounting anything
(`mkfs.ext4 -d`), so a crash leaves no mount behind.  The image is cached in
tests/lab/.cache and rebuilt when missing or when IMAGE_VERSION changes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from . import CACHE, GUEST, RESOURCES, SWAP, WORK, mirror, realguest
from .spaces import LabError

IMAGE_VERSION = 2            # bump when the build below changes
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SYSTEM_SIZE = "1G"
VAR_SIZE = "64M"
SWAP_SIZE = "64M"
XEN_TOOLS_HOOKS = Path("/usr/share/xen-tools/debian.d")
DISKS = WORK / "disks"

PRISTINE = CACHE / "logger-system.img"
PRISTINE_META = CACHE / "logger-system.json"


def apt_mirror() -> str:
    """The Debian mirror apt uses on this machine for the suite (the guest must come from it)."""
    for uri, suites in mirror.apt_sources():
        if SUITE in suites:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def cached() -> bool:
    try:
        meta = json.loads(PRISTINE_META.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("version") == IMAGE_VERSION and PRISTINE.is_file()


def _xen_tools_env() -> dict[str, str]:
    """The variables xen-create-image hands its hooks, for this guest's three partitions."""
    parts = [
        f"swap:{SWAP_SIZE}:swap:::phy::{SWAP['path']}",
        *(f"{r['resource']}:{SYSTEM_SIZE if r['mount'] == '/' else VAR_SIZE}:ext4:{r['mount']}:"
          f"noatime,nodiratime,errors=remount-ro:phy::/dev/drbd{r['minor']}" for r in RESOURCES),
    ]
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "hostname": GUEST["name"], "ip1": GUEST["address"], "ip_count": "1",
        "netmask": "255.255.255.0", "nameserver": "10.77.0.1", "nohosts": "1",
        "dist": SUITE, "NUMPARTITIONS": str(len(parts)),
    }
    env.update({f"PARTITION{i}": p for i, p in enumerate(parts, 1)})
    return env


def build(log) -> None:
    """debootstrap the guest and pack it: about 80 s, once per machine (then cached)."""
    work = CACHE / "build"
    shutil.rmtree(work, ignore_errors=True)
    rootfs = work / "rootfs"
    rootfs.mkdir(parents=True)
    mirror_url = apt_mirror()
    log(f"building the guest image: debootstrap {SUITE} from {mirror_url} (once; cached in {CACHE})")
    logfile = CACHE / "build.log"
    steps = [
        # debootstrap mounts /proc and /sys in the target: a private mount namespace
        # makes sure those mounts die with it even if the build is interrupted.
        (["unshare", "--mount", "--propagation", "private", "--", "debootstrap", "--variant=minbase",
          "--include=openssh-server,systemd-sysv,initramfs-tools", SUITE, str(rootfs), mirror_url], None),
        *((["sh", str(XEN_TOOLS_HOOKS / hook), str(rootfs)], _xen_tools_env())
          for hook in ("40-setup-networking", "50-setup-hostname", "90-make-fstab")),
    ]
    with logfile.open("w") as out:
        for argv, env in steps:
            if subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT).returncode:
                raise LabError(f"building the guest image failed at `{shlex.join(argv)}`; see {logfile}")
    # xen-create-image moves the hooks' resolv.conf.old into place once they ran.
    os.replace(rootfs / "etc/resolv.conf.old", rootfs / "etc/resolv.conf")
    (rootfs / "srv/var").mkdir(parents=True, exist_ok=True)
    (rootfs / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    image = work / PRISTINE.name
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "logger-root", "-d", str(rootfs), str(image), SYSTEM_SIZE],
                   check=True, capture_output=True)
    os.replace(image, PRISTINE)
    PRISTINE_META.write_text(json.dumps({"version": IMAGE_VERSION, "suite": SUITE, "mirror": mirror_url}) + "\n")
    shutil.rmtree(work)


def ensure(log, image: str = "minbase") -> None:
    """The guest image, built once: ours (minbase), or xen-create-image's (realguest.py)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    if image != "minbase":
        realguest.ensure(image, log=log)
    elif not cached():
        build(log)


def real_guest(image: str) -> "realguest.Guest":
    guest = realguest.cached(image)
    if guest is None:
        raise LabError(f"the {image} guest is not built (image.ensure builds it)")
    return guest


def root_image(image: str) -> Path:
    return PRISTINE if image == "minbase" else real_guest(image).root


def guest_host_key(image: str = "minbase") -> str:
    """The guest's ed25519 host public key, read from its pristine root image without mounting it."""
    return _debugfs(root_image(image), "cat /etc/ssh/ssh_host_ed25519_key.pub", write=False).strip()


def _debugfs(image: Path, commands: str, write: bool) -> str:
    """Run debugfs commands on an unmounted image; the output of a single read command."""
    if write:
        argv, stdin = ["debugfs", "-w", "-f", "-", str(image)], commands
    else:
        argv, stdin = ["debugfs", "-R", commands, str(image)], None
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True).stdout


def disk_paths(hosts) -> dict[str, Path]:
    """Image files by name: one per DRBD resource (shared by both hosts), one swap per host."""
    paths = {r["resource"]: DISKS / f"{r['resource']}.img" for r in RESOURCES}
    paths.update({f"swap@{h}": DISKS / f"{h}-logger-swap.img" for h in hosts})
    return paths


def restore(hosts, authorized_key: Path, image: str = "minbase") -> dict[str, Path]:
    """Write the guest's disks as freshly installed, in place (loop devices stay attached).

    The control side's public key becomes root's authorized_keys in the guest, written
    with debugfs so nothing is mounted.
    """
    DISKS.mkdir(parents=True, exist_ok=True)
    paths = disk_paths(hosts)
    for r in RESOURCES:
        path = paths[r["resource"]]
        if r["mount"] == "/":
            subprocess.run(["cp", "--sparse=always", str(root_image(image)), str(path)], check=True)
            _debugfs(path, f"mkdir /root/.ssh\nsif /root/.ssh mode 040700\ncd /root/.ssh\nrm authorized_keys\n"
                           f"write {authorized_key} authorized_keys\n"
                           "sif authorized_keys mode 0100600\nsif authorized_keys uid 0\n"
                           "sif authorized_keys gid 0\n", write=True)
        elif image != "minbase":
            subprocess.run(["cp", "--sparse=always", str(real_guest(image).var), str(path)], check=True)
        else:
            path.touch()
            subprocess.run(["mkfs.ext4", "-q", "-F", "-L", r["resource"], str(path), VAR_SIZE],
                           check=True, capture_output=True)
    for host in hosts:
        path = paths[f"swap@{host}"]
        if not path.exists():
            subprocess.run(["truncate", "-s", SWAP_SIZE, str(path)], check=True)
            subprocess.run(["mkswap", "-q", "-L", f"swap-{host}", str(path)], check=True)
    return paths
