"""A guest built by Debian's real xen-create-image (xen-tools), cached per variant.

    from tests.lab import realguest
    paths = realguest.ensure("systemd", log=print)     # or "sysvinit"
    paths.root, paths.var, paths.swap, paths.cfg        # the cached files (copy them; don't boot these)

What xen-create-image 4.9.2 makes of it, as on a real dom0 with ``--dir``:

* ``domains/logger/{swap,root,var}.img``: one image file per partition, each a bare file
  system (no partition table), from a ``--partitions`` file: xvda1 swap, xvda2 ``/``,
  xvda3 ``/var`` (ext4, sparse);
* a Debian bookworm from debootstrap, customised by xen-tools' own hooks: static
  eth0 10.77.0.50/24 (gateway and nameserver 10.77.0.1), hostname ``logger``, fstab with
  ``/dev/xvdaN`` names, openssh-server, and, because distributions.conf marks bookworm
  ``pygrub``: ``linux-image-amd64``, ``grub-legacy`` and a ``/boot/grub/menu.lst``;
* ``logger.cfg`` with ``bootloader = 'pygrub'`` (xen-tools forces pygrub for bookworm:
  no kernel/ramdisk lines), ``root = '/dev/xvda2 ro'`` and ``file:`` disks naming the
  build directory (the lab rewrites the disk lines to its own devices);
* ``/etc/apt/apt.conf.d/01proxy``: ``Acquire::http::Proxy "http://10.77.0.1:3142/";``:
  the build ran with no network but the lab's apt proxy (tests/lab/mirror.py) at that
  address in a private netns, and xen-tools keeps its ``--apt_proxy`` in the guest, so
  the guest can use apt later through the same proxy.

The ``sysvinit`` variant adds a role script: ``sysvinit-core`` replaces systemd-sysv,
then xen-tools' own 30-disable-gettys hook is run again so /etc/inittab is what
xen-tools makes of a sysvinit guest (one getty, on hvc0; tty2-6 commented out).

Build: about 75 s with the .deb files in the proxy's cache, 2 min without; later calls
return the cached images.  The cache key is BUILD_VERSION plus every input (variant,
mirror, sizes, xen-tools version).  Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import APT_PROXY_PORT, GUEST, SWITCH_ADDRESS
from . import CACHE as LAB_CACHE
from . import mirror as apt_proxy

BUILD_VERSION = 1                 # bump when the build below changes
CACHE = LAB_CACHE / "realguest"
PROXY_CACHE = LAB_CACHE / "apt-proxy"

SUITE = "bookworm"
HOSTNAME = GUEST["name"]
ADDRESS = GUEST["address"]
NETMASK = "255.255.255.0"
GATEWAY = SWITCH_ADDRESS
MAC = GUEST["mac"]
BRIDGE = GUEST["bridge"]
MEMORY = "256M"
PASSWORD = "logger"               # root's, for a console login while debugging
PROXY_ADDRESS = SWITCH_ADDRESS     # the guest keeps it as its apt proxy: the lab serves it there
PROXY_PORT = APT_PROXY_PORT
# Sizes: sparse files.  /var holds apt's lists with deb-src (xen-tools' sources.list),
# the .debs being installed and mkinitramfs' temporary tree: 128M and 512M are too small
# (update-initramfs fails with ENOSPC); root needs ~750M with the kernel installed.
SIZES = {"swap": "64M", "root": "1G", "var": "1G"}
VARIANTS = ("systemd", "sysvinit")
BUILD_NETNS = "xkrg-build"        # a private netns for the build: only lo, with the proxy
XEN_TOOLS_HOOKS = Path("/usr/share/xen-tools/debian.d")
PACKAGES = ("xen-tools", "debootstrap")

PARTITIONS = f"""\
[swap]
size={SIZES['swap']}
type=swap

[root]
size={SIZES['root']}
type=ext4
mountpoint=/
options=noatime,nodiratime,errors=remount-ro

[var]
size={SIZES['var']}
type=ext4
mountpoint=/var
options=noatime,nodiratime,nodev
"""

SYSVINIT_ROLE = f"""\
#!/bin/sh
# xen-create-image role: make the guest a sysvinit one, as xen-tools would have made it.
set -e
prefix=$1
chroot "$prefix" env DEBIAN_FRONTEND=noninteractive apt-get install -y sysvinit-core
# The hooks ran before /etc/inittab existed: run xen-tools' getty hook again on it
# (1:2345:respawn:/sbin/getty 38400 hvc0, the other ttys and T0/T1 commented out).
sh {XEN_TOOLS_HOOKS}/30-disable-gettys "$prefix"
chroot "$prefix" apt-get clean
test -e "$prefix/sbin/init" && ! test -L "$prefix/sbin/init" || \\
  {{ echo "sysvinit role: /sbin/init is not sysvinit's" >&2; exit 1; }}
grep -q '^[^#].*getty.*hvc0' "$prefix/etc/inittab"
"""


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Guest:
    variant: str
    dir: Path
    root: Path        # xvda2, /      (ext4, no partition table)
    var: Path         # xvda3, /var   (ext4, no partition table)
    swap: Path        # xvda1         (swap signature)
    cfg: Path         # logger.cfg as xen-create-image wrote it
    meta: dict

    def disks(self) -> dict[str, Path]:
        """Image files by the xvda name xen-tools gave them."""
        return {"xvda1": self.swap, "xvda2": self.root, "xvda3": self.var}


# ---------------------------------------------------------------------------------------

def _xen_tools_version() -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "xen-tools"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def ensure_packages(log=print) -> None:
    """apt-get install xen-tools and debootstrap where missing (root; Debian)."""
    missing = [p for p in PACKAGES
               if subprocess.run(["dpkg-query", "-W", "-f", "${Status}", p], capture_output=True,
                                 text=True).stdout.strip() != "install ok installed"]
    if not missing:
        return
    log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *missing]):
        r = subprocess.run(argv, env=env, capture_output=True, text=True)
        if r.returncode:
            raise BuildError(f"`{' '.join(argv)}` failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")


def mirror_url() -> str:
    """The machine's Debian mirror for the suite (first archive of the apt sources)."""
    for host, prefix in apt_proxy.apt_archives():
        if "security" not in prefix:
            return f"http://{host}{prefix.rstrip('/')}"
    return "http://deb.debian.org/debian"


def cache_key(variant: str, mirror: str) -> dict:
    return {"build_version": BUILD_VERSION, "variant": variant, "suite": SUITE, "mirror": mirror,
            "sizes": SIZES, "xen_tools": _xen_tools_version(), "hostname": HOSTNAME, "address": ADDRESS}


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _guest(variant: str, meta: dict) -> Guest:
    d = CACHE / variant
    return Guest(variant, d, d / "root.img", d / "var.img", d / "swap.img", d / f"{HOSTNAME}.cfg", meta)


def cached(variant: str) -> Guest | None:
    """The cached guest of the variant when its key matches the current inputs."""
    d = CACHE / variant
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("digest") != _digest(cache_key(variant, mirror_url())):
        return None
    g = _guest(variant, meta)
    return g if all(p.is_file() for p in (g.root, g.var, g.swap, g.cfg)) else None


def ensure(variant: str = "systemd", log=print, netns: str = BUILD_NETNS) -> Guest:
    """The paths of the variant's images and cfg, building them once (then cached)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    g = cached(variant)
    if g is None:
        g = build(variant, log=log, netns=netns)
    return g


# ---------------------------------------------------------------------------------------

def _run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def _netns_up(name: str) -> None:
    _netns_down(name)
    for argv in (["ip", "netns", "add", name],
                 ["ip", "-n", name, "link", "set", "lo", "up"],
                 ["ip", "-n", name, "addr", "add", f"{PROXY_ADDRESS}/32", "dev", "lo"]):
        r = _run(argv)
        if r.returncode:
            raise BuildError(f"`{' '.join(argv)}` failed: {r.stderr.strip()}")


def _netns_down(name: str) -> None:
    if Path("/run/netns", name).exists():
        _run(["ip", "netns", "delete", name])


def _trim(image: Path) -> None:
    """Give the blocks of deleted files back as holes (cheap copies later).

    Mounted by a loop device with autoclear in a private mount namespace: when the
    namespace ends, the mount goes and the loop device with it.
    """
    script = ('set -e; m=$(mktemp -d); mount -o loop,nodev,nosuid "$1" "$m"; '
              'fstrim "$m" || true; umount "$m"; rmdir "$m"')
    _run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "trim", str(image)])


def build(variant: str = "systemd", log=print, netns: str = BUILD_NETNS) -> Guest:
    """Run xen-create-image for the variant in a private netns whose only way out is the
    apt proxy; store images, cfg, build log and meta.json under CACHE/variant."""
    ensure_packages(log)
    mirror = mirror_url()
    key = cache_key(variant, mirror)
    final = CACHE / variant
    work = CACHE / f".build-{variant}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "out").mkdir(parents=True)
    (work / "partitions").write_text(PARTITIONS)
    argv = ["ip", "netns", "exec", netns,
            # xen-create-image loop-mounts the images and binds /proc, /dev/pts: a private
            # mount namespace makes sure none of it outlives the build.
            "unshare", "--mount", "--propagation", "private", "--",
            "xen-create-image", f"--hostname={HOSTNAME}", f"--dist={SUITE}", "--arch=amd64",
            f"--mirror={mirror}", f"--apt_proxy=http://{PROXY_ADDRESS}:{PROXY_PORT}/", "--cache=no",
            f"--dir={work}", f"--output={work / 'out'}", f"--partitions={work / 'partitions'}",
            f"--ip={ADDRESS}", f"--netmask={NETMASK}", f"--gateway={GATEWAY}", f"--nameserver={GATEWAY}",
            f"--mac={MAC}", f"--bridge={BRIDGE}", f"--memory={MEMORY}", "--vcpus=1",
            "--nohosts", "--noboot", "--nocopyhosts", f"--password={PASSWORD}", "--force", "--verbose"]
    if variant == "sysvinit":
        role = work / "role-sysvinit"
        role.write_text(SYSVINIT_ROLE)
        role.chmod(0o755)
        argv.append(f"--role={role}")
    logfile = work / "build.log"
    log(f"building the {variant} guest with xen-create-image ({SUITE} from {mirror} through the apt "
        f"proxy; cached in {final})")
    t0 = time.monotonic()
    _netns_up(netns)
    proxy = None
    try:
        proxy = apt_proxy.start(netns, PROXY_ADDRESS, PROXY_PORT, PROXY_CACHE)
        with logfile.open("w") as out:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    stdin=subprocess.DEVNULL)
            for line in proc.stdout:
                out.write(line)
                m = re.match(r"Running hook (\S+)|Role: (\S+)|Executing : (debootstrap|xt-\S+)", line)
                if m:
                    log(f"  {time.monotonic() - t0:5.0f}s {next(g for g in m.groups() if g)}")
            rc = proc.wait()
    finally:
        if proxy is not None:
            proxy.stop()
            stats = proxy.stats
        else:
            stats = {}
        _netns_down(netns)
    text = logfile.read_text()
    domain = work / "domains" / HOSTNAME
    images = {n: domain / f"{n}.img" for n in SIZES}
    # xen-create-image reports a failed hook and goes on in some cases: check the result.
    problems = [] if rc == 0 else [f"exit status {rc}"]
    if "All done" not in text:
        problems.append("no 'All done'")
    problems += [f"missing {p}" for p in [*images.values(), work / "out" / f"{HOSTNAME}.cfg"] if not p.is_file()]
    if "update-initramfs: failed" in text:
        problems.append("update-initramfs failed (space in /var?)")
    if problems:
        raise BuildError(f"xen-create-image failed ({'; '.join(problems)}); see {logfile}")
    for name in ("root", "var"):
        _trim(images[name])
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir(parents=True)
    for name, path in images.items():
        os.replace(path, final / f"{name}.img")
    os.replace(work / "out" / f"{HOSTNAME}.cfg", final / f"{HOSTNAME}.cfg")
    os.replace(logfile, final / "build.log")
    seconds = round(time.monotonic() - t0, 1)
    meta = {**key, "digest": _digest(key), "seconds": seconds, "proxy": stats,
            "build_dir": str(work), "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (final / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    log(f"built the {variant} guest in {seconds:.0f} s (apt proxy: {stats})")
    return _guest(variant, meta)
