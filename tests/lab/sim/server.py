"""The simulators of one lab host as a forking server, so a simulated call costs a fork, not a
Python start-up.

Started simulators cost about 35 ms of CPU each (interpreter, imports); a fleet move makes
hundreds of calls, and on the 2-core machine that was the lab's largest share of CPU, taken
from the tool it measures. Here the modules are imported once; each call is a child forked
from this process that takes the caller's argv, directory and environment, runs the same
main() a started simulator runs, and answers with a shell script that the caller (bin/sim)
evaluates: print the output, then exit with the code, or exec the real command
(cli.hand_off). The child never sees the caller's stdin: a pipe, as over SSH; bin/sim runs
the simulator itself on a terminal. Unlike a started simulator, a served call finishes even
if its caller is killed.
"""

import os
import shlex
import signal
import socket
import sys
import traceback

from . import cli

SOCKET = "/run/xenkvm-lab/sim.sock"   # in a lab host's own /run; bin/sim knows it too
SOCKET_ENV = "XENKVM_LAB_SIM_SOCKET"   # bin/sim's other socket: a test's own server


class HandOff(Exception):
    """A simulator's exec of the real command, left to the caller's shell."""

    def __init__(self, argv):
        super().__init__(argv[0])
        self.argv = argv


def serve(path=SOCKET):
    """Answer calls on the UNIX socket at `path` until killed (the lab host's end)."""
    for module in set(cli.COMMANDS.values()):
        cli.module_for(module)   # import every simulator before the first fork
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # children reap themselves
    while True:
        conn, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)   # the call's own subprocesses are waited for
            try:
                conn.sendall(answer(_read_all(conn)))
            finally:
                os._exit(0)
        conn.close()


def answer(request):
    """Run one call (see bin/sim for the request) with fd 1 and 2 captured; the reply script."""
    fields = request.split(b"\0")
    count = int(fields[0])
    argv = [os.fsdecode(f) for f in fields[1:2 + count]]
    os.chdir(fields[2 + count])
    os.environ.clear()
    os.environ.update(os.fsdecode(f).split("=", 1) for f in fields[3 + count:] if b"=" in f)
    captured = [os.memfd_create(name) for name in ("stdout", "stderr")]
    for fd, memfd in zip((1, 2), captured, strict=True):
        os.dup2(memfd, fd)
    sys.argv = argv
    cli.hand_off = _hand_off
    ending = "exit 1"
    try:
        ending = f"exit {_exit_code(cli.call(argv))}"
    except SystemExit as e:
        ending = f"exit {_exit_code(e.code)}"
    except HandOff as h:
        ending = "exec " + " ".join(shlex.quote(a) for a in h.argv)
    except Exception:
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    out, err = (_contents(fd) for fd in captured)
    return (f"printf '%s' {shlex.quote(out)}\nprintf '%s' {shlex.quote(err)} >&2\n{ending}\n").encode(
        "utf-8", "surrogateescape")


def _hand_off(path, argv):
    raise HandOff([path] + list(argv[1:]))


def _exit_code(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)   # sys.exit("message"), as Python itself does
    return 1


def _contents(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "surrogateescape")


def _read_all(conn):
    chunks = []
    while chunk := conn.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)
