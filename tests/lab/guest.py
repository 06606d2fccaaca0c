"""The lab guest: a real Debian root file system "booted" as namespaces with sshd.

`start` runs inside the host that runs the domain (xl create on xen1 through the
simulator, libvirt's qemu hook on kvm1).  It starts PID 1 of new PID, mount, network,
UTS and IPC namespaces, which mounts that host's /dev/drbd5 (xvda2) as root and
/dev/drbd6 (xvda3) at /srv/var, gives the guest its own /dev (xvda1 is the host's swap
disk; it is not swapped on, that would be the whole machine's swap), and execs the
guest's own sshd chrooted into it.  The guest's eth0 is a veth whose other end
(vif-NAME) is on the host's br0, so it keeps its address wherever it runs.

A lock file held for the guest's whole life answers "is it running?" from any host.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from . import GUEST, HOST_FILE, NETMASK, RESOURCES, SWAP, WORK
from .spaces import LabError, alive, child_of, listening, marked_env, run, wait_for

RECORDS = WORK / "guests"


def _lock_path(name: str) -> Path:
    return RECORDS / f"{name}.lock"


def _record_path(name: str) -> Path:
    return RECORDS / f"{name}.json"


def running(name: str) -> dict | None:
    """The guest's record ({host, pid, ...}) while it runs, else None; works from any namespace."""
    try:
        with _lock_path(name).open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            return json.loads(_record_path(name).read_text())
        except (OSError, ValueError):
            return {"host": None}
    except FileNotFoundError:
        return None
    return None


def _devices() -> dict[str, int]:
    """The guest's disks by Xen name -> this host's device number behind them."""
    disks = {SWAP["vdev"]: SWAP["path"]}
    disks.update({r["vdev"]: f"/dev/drbd{r['minor']}" for r in RESOURCES})
    return {vdev: os.stat(path).st_rdev for vdev, path in disks.items()}


def _mounts() -> dict[str, str]:
    """Mount point by Xen name, as this lab's guest image has them (host.json)."""
    with open(HOST_FILE, encoding="utf-8") as f:
        return json.load(f)["guest_mounts"]


def _boot_script(name: str) -> str:
    """PID 1 of the guest: build its /dev and mounts, then become the guest's sshd."""
    nodes = "\n".join(f"mknod -m 660 /dev/{vdev} b {os.major(rdev)} {os.minor(rdev)}"
                      for vdev, rdev in _devices().items())
    mounts = "\n".join(f"mount /dev/{vdev} $R{'' if point == '/' else point}"
                       for vdev, point in sorted(_mounts().items(), key=lambda item: item[1]))
    return f"""set -eu
hostname {name}
mount -t tmpfs -o mode=755,nosuid guest-dev /dev
mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 666 /dev/full c 1 7
mknod -m 666 /dev/random c 1 8; mknod -m 666 /dev/urandom c 1 9; mknod -m 666 /dev/tty c 5 0
ln -s /proc/self/fd /dev/fd; ln -s fd/0 /dev/stdin; ln -s fd/1 /dev/stdout; ln -s fd/2 /dev/stderr
mkdir /dev/pts /dev/shm
{nodes}
mount -t tmpfs guest-stage /mnt
R=/mnt/root
mkdir $R
{mounts}
mount --move /dev $R/dev
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts $R/dev/pts
ln -s pts/ptmx $R/dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $R/dev/shm
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs $R/run
mkdir -p $R/run/sshd $R/run/lock
exec chroot $R /usr/sbin/sshd -D -e
"""


def start(host: str, name: str) -> None:
    """Boot the guest on this host (nothing to do if it runs here); returns once its sshd listens."""
    RECORDS.mkdir(parents=True, exist_ok=True)
    lock = _lock_path(name).open("a")
    if not _try_lock(lock):
        lock.close()
        where = (running(name) or {}).get("host")
        if where == host:
            return
        raise LabError(f"guest {name} already runs on {where}: refusing to run it twice")
    log = (RECORDS / f"{name}.log").open("ab")
    # unshare (outside the guest) keeps the lock's file open until the guest's PID 1 is gone.
    outer = subprocess.Popen(
        ["unshare", "--net", "--mount", "--uts", "--ipc", "--pid", "--fork", "--propagation", "private",
         "--", "sh", "-c", _boot_script(name)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=[lock.fileno()], start_new_session=True,
        env=marked_env()).pid
    lock.close()
    log.close()
    pid = child_of(outer)
    vif = f"vif-{name}"[:15]
    run(["ip", "link", "add", vif, "type", "veth", "peer", "name", "eth0", "address", GUEST["mac"],
         "netns", str(pid)])
    run(["ip", "link", "set", vif, "master", GUEST["bridge"], "up"])
    inside = ["nsenter", "-t", str(pid), "-n", "ip"]
    run([*inside, "link", "set", "lo", "up"])
    run([*inside, "addr", "add", f"{GUEST['address']}/{NETMASK}", "dev", "eth0"])
    run([*inside, "link", "set", "eth0", "up"])
    # The network namespace's inode is the same from every namespace: it finds the guest from outside.
    netns = os.stat(f"/proc/{pid}/ns/net").st_ino
    _record_path(name).write_text(json.dumps({"host": host, "pid": pid, "outer": outer, "netns": netns}) + "\n")

    def sshd_up() -> bool:
        if not alive(pid):
            raise LabError(f"guest {name} did not boot; see {RECORDS / (name + '.log')}")
        return listening(pid, 22)

    try:
        # Generous: beside eight qemu starts on 2 cores sshd may take a while; a guest that
        # dies ends the wait at once (sshd_up).
        wait_for(f"guest {name}'s sshd", sshd_up, 60)
    except LabError:
        stop(host, name)
        raise


def _try_lock(fh, patience: float = 0.5) -> bool:
    """Take the guest's lock; a `running()` probe holds it for an instant, so retry briefly."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def stop(host: str, name: str, timeout: float = 10.0) -> None:
    """Halt the guest if it runs on this host: SIGTERM its sshd (PID 1), SIGKILL after timeout.

    Returns once the guest's namespaces are gone, so its file systems are unmounted
    and its disks are free for the other host.
    """
    record = running(name)
    if record is None or record.get("host") != host:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(record["pid"], sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while running(name) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not running(name):
            _record_path(name).unlink(missing_ok=True)
            return
    raise LabError(f"guest {name} (pid {record['pid']}) did not stop")
