"""Namespaces and processes: start a lab host, enter it, and find everything the lab left.

A lab host is a PID 1 (a tiny reaper) in its own PID, mount, UTS and IPC namespaces,
started inside a named network namespace.  Its daemons are started inside it and
re-parented to that PID 1, so killing the PID 1 ends the whole host at once.  Every
process started from the control side carries MARKER in its environment, so `down`
finds them even when the lab's state file is gone.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from . import HOST_PYTHON, MARKER, PREFIX, VM_PREFIX, WORK

# PID 1 of a host: reaps orphans so no zombie piles up; SIGTERM ends the host.
REAPER = ("import os, signal, time\n"
          "signal.signal(signal.SIGTERM, lambda *_: os._exit(0))\n"
          "while True:\n"
          "    try:\n"
          "        os.wait()\n"
          "    except ChildProcessError:\n"
          "        time.sleep(0.5)\n")
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LabError(Exception):
    """A lab step failed; the message says which and how."""


def run(argv, *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command to completion; on failure raise LabError quoting the command and its output."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise LabError(f"`{shlex.join(str(a) for a in argv)}` failed (exit {done.returncode}): {detail}")
    return done


def marked_env() -> dict[str, str]:
    """A clean environment for the lab's long-lived processes, with the marker `down` looks for."""
    return {"PATH": HOST_PATH, "LANG": "C.UTF-8", "HOME": "/root", MARKER: str(WORK)}


def spawn(argv, log: Path) -> int:
    """Start a long-lived process detached from us (own session, stdio to a log); its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env=marked_env(), start_new_session=True, close_fds=True)
    return proc.pid


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def child_of(pid: int, timeout: float = 5.0) -> int:
    """The first child of pid (unshare --fork's PID 1 of the new namespaces)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            raise LabError(f"process {pid} exited before starting its namespace") from None
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise LabError(f"process {pid} started no child within {timeout}s")


def start_host(netns: str, log: Path) -> tuple[int, int]:
    """A new host inside the named netns: (unshare's pid, the host's PID 1 as seen from here)."""
    outer = spawn(["ip", "netns", "exec", netns, "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork",
                   "--kill-child", "--mount-proc", "--propagation", "private", "--", HOST_PYTHON, "-c", REAPER], log)
    return outer, child_of(outer)


def enter(pid: int, argv) -> list[str]:
    """argv run inside the mount, UTS, IPC, network and PID namespaces of pid."""
    return ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "--", *[str(a) for a in argv]]


def daemon(pid: int, argv, log: str) -> None:
    """Start argv inside pid's namespaces, re-parented to its PID 1; log is a path in that view."""
    script = 'log=$1; shift; exec setsid -f "$@" </dev/null >>"$log" 2>&1'
    run(enter(pid, ["env", "-i", *(f"{k}={v}" for k, v in marked_env().items()),
                    "sh", "-c", script, "sh", log, *argv]))


def netns_names() -> list[str]:
    """The host lab's named network namespaces, also those of a lab that crashed (not the VMs')."""
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(PREFIX) and not n.startswith(VM_PREFIX))
    except FileNotFoundError:
        return []


def _netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def lab_pids() -> set[int]:
    """Every live process of the lab: marked ones and any inside a lab network namespace."""
    inodes = {i for i in map(_netns_inode, netns_names()) if i}
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino in inodes:
                found.add(pid)
                continue
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"{MARKER}={WORK}".encode() in environ:
            found.add(pid)
    return {p for p in found if alive(p)}


def kill(pids, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after timeout; returns once all are gone."""
    pids = {p for p in pids if alive(p)}
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = {p for p in pids if alive(p)}
            time.sleep(0.02)
        if not pids:
            return
    raise LabError(f"processes survived SIGKILL: {sorted(pids)}")


def wait_for(what: str, test, timeout: float, interval: float = 0.05):
    """Poll test() until it returns something true; LabError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = test()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def listening(pid: int, port: int) -> bool:
    """Whether something listens on TCP port in pid's network namespace (read from /proc)."""
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            return False
        for line in lines:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
                return True
    return False
