"""The VM locks every control machine sees: flock on the VM's Xen host, held through SSH.

The lock in STATE_DIR keeps two runs of one control machine apart, but an operator on
another machine does not see it.  So a move also locks the VM on its Xen host: one shell
per host and run (one SSH session, however many VMs: sshd allows few sessions per
connection), in which each held lock is a subshell holding `flock` on
/var/lock/xenkvm/VM.lock.  When the run ends, or its process dies, the session closes and
the kernel releases every lock it held; a lock is never left behind to break by hand.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from datetime import datetime
from typing import Any

from .errors import GuardError, ToolError

LOCK_DIR = "/var/lock/xenkvm"

# $1 the lock directory, $2 who holds the locks. Reads `lock NAME` / `unlock NAME` lines and
# answers each with one line. A holder closes the lock's fd for its sleep, so that killing it
# releases the lock at once; it also ends when the manager does, however that dies.
MANAGER = r'''
dir=$1 who=$2
command -v flock >/dev/null 2>&1 || { echo "error flock is not installed (util-linux)"; exit 1; }
mkdir -p -- "$dir" && held=$(mktemp -d) || { echo "error cannot use $dir"; exit 1; }
trap 'for p in "$held"/*; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done; rm -rf -- "$held"' EXIT
echo ready
while read -r verb name; do
  case $verb in
  lock)
    ( exec 9>>"$dir/$name.lock"
      if flock -n 9; then
        printf '%s\n' "$who" >"$dir/$name.lock"
        echo "locked $name"
        while kill -0 $$ 2>/dev/null; do sleep 1 9>&-; done
      else
        echo "busy $name $(head -c 200 "$dir/$name.lock" | tr -c '[:print:]' ' ')"
      fi ) &
    echo $! >"$held/$name" ;;
  unlock)
    if [ -f "$held/$name" ]; then pid=$(cat "$held/$name"); kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
    rm -f -- "$held/$name"
    echo "unlocked $name" ;;
  esac
done
'''


def operator() -> str:
    """user@control-machine: who ran a journal's run, or holds a lock."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def holder() -> str:
    """Who holds a lock, as the operator who meets it reads it."""
    return f"pid {os.getpid()} ({operator()}) since {datetime.now().isoformat(timespec='seconds')}"


class HostLocks:
    """The run's locks on one host, over one long-lived session of its SSH connection."""

    def __init__(self, remote, who: str):
        self.remote = remote
        self.who = who
        self._channel: Any = None   # a paramiko Channel (a double in tests)
        self._buffer = b""
        self._lock = threading.Lock()

    def acquire(self, name: str) -> None:
        """Lock `name`, or GuardError naming who holds it."""
        reply = self._ask(f"lock {name}", ("locked", "busy"), name)
        if reply.startswith("busy"):
            who = reply.split(" ", 2)[2].strip() if reply.count(" ") >= 2 else ""
            raise GuardError(f"{name} is already being handled by {who or 'another run'} (its lock on "
                             f"{self.remote.name}, {LOCK_DIR}/{name}.lock); wait for it to finish")

    def release(self, name: str) -> None:
        self._ask(f"unlock {name}", ("unlocked",), name)

    def close(self) -> None:
        """End the session: the host releases whatever it still holds."""
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None

    def _ask(self, request: str, answers: tuple[str, ...], name: str) -> str:
        with self._lock:
            started = time.monotonic()
            if self._channel is None:
                self._channel = self.remote.open_session(["sh", "-c", MANAGER, "sh", LOCK_DIR, self.who])
                self._expect(("ready",), "")
            try:
                self._channel.sendall(f"{request}\n".encode())
            except (OSError, ValueError, EOFError):
                raise ToolError(f"{self.remote.name}: its VM lock session ended") from None
            reply = self._expect(answers, name)
            self.remote.audit.record(self.remote.name, request, 0, time.monotonic() - started, "lock")
            return reply

    def _expect(self, answers: tuple[str, ...], name: str) -> str:
        """The next line naming one of `answers` (and `name`), within the host's command timeout."""
        deadline = time.monotonic() + self.remote.command_timeout
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                text = line.decode(errors="replace")
                verb, _, rest = text.partition(" ")
                if verb == "error":
                    raise ToolError(f"{self.remote.name}: cannot lock VMs there: {rest}")
                if verb in answers and (not name or rest.split(" ", 1)[0] == name):
                    return text
            if time.monotonic() >= deadline:
                raise ToolError(f"{self.remote.name}: its VM lock gave no answer within "
                                f"{self.remote.command_timeout:.0f}s")
            try:
                chunk = self._channel.recv(4096)
            except TimeoutError:
                chunk = b"" if self._channel.closed else None
            if chunk is None:
                continue
            if not chunk:
                raise ToolError(f"{self.remote.name}: its VM lock session ended"
                                f"{': ' + self._buffer.decode(errors='replace').strip() if self._buffer else ''}")
            self._buffer += chunk
