"""Connections from the inventory: probes vs changes, quoting, host keys, audit log.

Every command is a list of arguments joined with shlex quoting, so no value
from the inventory or a remote file reaches a shell unquoted.  Probes read and
always run (a dry run needs their facts); changes honour the dry run.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import takewhile
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from .errors import GuardError, ToolError
from .inventory import VM, Host, Inventory

BACKUP_SUFFIX = ".xenkvm-"
T = TypeVar("T")
_print_lock = threading.Lock()
_output = threading.local()          # .prefix: the VM a fleet worker thread is moving
_sink: Callable[[str], None] = lambda line: print(line, flush=True)


def say(line: str) -> None:
    """One line of progress; whole lines, tagged with the VM, when several VMs move at once."""
    prefix = getattr(_output, "prefix", "")
    with _print_lock:
        _sink(f"[{prefix}] {line}" if prefix else line)


def set_output_prefix(prefix: str) -> None:
    _output.prefix = prefix


def concurrently(*calls: Callable[[], T]) -> list[T]:
    """Run the calls at once (probes of different hosts), results in call order; the first call
    that failed, in that order, raises. Lines they print keep the caller's VM tag."""
    from concurrent.futures import ThreadPoolExecutor

    prefix = getattr(_output, "prefix", "")

    def tagged(call: Callable[[], T]) -> T:
        set_output_prefix(prefix)
        return call()

    with ThreadPoolExecutor(max_workers=max(1, len(calls) - 1)) as pool:
        others = [pool.submit(tagged, call) for call in calls[1:]]
        first = calls[0]()
        return [first, *(future.result() for future in others)]


def set_sink(sink: Callable[[str], None] | None) -> None:
    """Send progress lines elsewhere (a live display); None restores plain printing."""
    global _sink
    _sink = sink or (lambda line: print(line, flush=True))


def join(argv: Sequence[str]) -> str:
    """The shell command for an argument list, every argument quoted."""
    return shlex.join(str(a) for a in argv)


_DANGLING = 67


def _write_script(make_parent: bool) -> str:
    """Remote.write_file on the host: "$1" the path, "$2" the backup suffix, "$3" the staged upload
    (empty: the text comes on stdin). The file written is the one "$1" resolves to (readlink -f,
    so a symlink keeps pointing at it); it prints that file when "$1" is not it. `sync FILE`
    fsyncs the one file (coreutils 8.24 and later); an older sync says it ignores its argument
    and syncs everything, which covers it too."""
    return (
        f'set -e; if [ -L "$1" ] && [ ! -e "$1" ]; then exit {_DANGLING}; fi; '
        + ('mkdir -p -- "$(dirname -- "$1")"; ' if make_parent else '')
        + 'file=$(readlink -f -- "$1"); tmp=$(mktemp "$file.tmp.XXXXXX"); '
        'if [ -n "$3" ]; then cat -- "$3" > "$tmp"; rm -f -- "$3"; else cat > "$tmp"; fi; '
        'if [ -e "$file" ]; then cp -p -- "$file" "$file$2"; chmod --reference="$file" "$tmp"; fi; '
        'sync -- "$tmp"; mv -f -- "$tmp" "$file"; sync -- "$(dirname -- "$file")"; '
        'if [ "$file" != "$1" ]; then printf %s "$file"; fi'
    )


def printable(text: str) -> str:
    """Remote text for a line of output: every control character shown as `?`, so none splits it."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


class RemoteError(ToolError):
    """A command on a host failed; the message names the host, the command and its output."""

    def __init__(self, host: str, command: str, exit_code: int | None, output: str):
        detail = output.strip().splitlines()[-1] if output.strip() else "no output"
        super().__init__(f"{host}: `{command}` failed (exit {exit_code}): {detail}")
        self.host = host
        self.command = command
        self.exit_code = exit_code
        self.output = output


@dataclass(frozen=True)
class Outcome:
    """What a command returned: the parts a caller reads."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class AuditLog:
    """JSON lines on the control machine: time, host, command, exit code, duration; the file is
    made 0600, in a directory made 0700."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path).expanduser() if path else None
        self._lock = threading.Lock()

    def record(self, host: str, command: str, exit_code: int | None, duration: float, kind: str) -> None:
        if self.path is None:
            return
        entry = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "host": host,
            "kind": kind,
            "command": command,
            "exit": exit_code,
            "duration": round(duration, 3),
        }
        with self._lock:
            make_private_dir(self.path.parent)
            with open(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a") as fh:
                fh.write(json.dumps(entry) + "\n")


@dataclass
class _Listing:
    """One shared listing command: whether a run is in flight, the last run's outcome and
    when that run began (time.monotonic())."""

    running: bool = False
    outcome: Outcome | None = None
    outcome_began: float = float("-inf")


class Remote:
    """One host as seen by the stages: run probes and changes, read and edit files.

    `conn` is anything with Fabric's `run(command, hide=, warn=, in_stream=, timeout=)`:
    a fabric Connection in production, invoke's MockContext in tests.
    """

    def __init__(self, name: str, conn, *, sudo: bool = False, dry_run: bool = False,
                 audit: AuditLog | None = None):
        self.name = name
        self.conn = conn
        self.sudo = sudo
        self.dry_run = dry_run
        self.audit = audit or AuditLog(None)
        self.facts: dict = {}   # probe results that hold for the whole run (toolstack, ...)
        self._sftp_lock = threading.Lock()
        self._listings: dict[str, _Listing] = {}
        self._listings_changed = threading.Condition()

    def command(self, argv: Sequence[str], env: dict[str, str] | None = None) -> str:
        prefix = ["env", *(f"{k}={v}" for k, v in (env or {}).items())] if env else []
        if self.sudo:
            prefix = ["sudo", "-n", "--", *prefix]
        return join([*prefix, *argv])

    def _run(self, argv, *, kind: str, env=None, stdin: str | None = None,
             timeout: float | None = None) -> Outcome:
        command = self.command(argv, env)
        started = time.monotonic()
        try:
            result = self.conn.run(command, hide=True, warn=True, timeout=timeout,
                                   in_stream=io.StringIO(stdin) if stdin is not None else False)
        except Exception as exc:  # connection loss, timeout: report it as this host's failure
            self.audit.record(self.name, command, None, time.monotonic() - started, kind)
            raise ToolError(f"{self.name}: `{command}` did not complete: {describe_ssh_error(exc)}") from None
        outcome = Outcome(result.exited, result.stdout, result.stderr)
        self.audit.record(self.name, command, outcome.exit_code, time.monotonic() - started, kind)
        return outcome

    def probe(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
              timeout: float | None = None) -> Outcome:
        """Read-only: always runs, even in a dry run; the caller judges the exit code."""
        return self._run(argv, kind="probe", env=env, timeout=timeout)

    def shared_probe(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
                     max_age: float = 0.0) -> Outcome:
        """A read-only listing (`xl list`) run once for every thread asking at the same time.

        Each caller gets the output of a run begun at most `max_age` seconds before it
        asked (by default: after it asked), never an older one; a fleet of VMs polling
        one host costs that host one listing per round instead of one per VM.
        """
        key = self.command(argv, env)
        oldest = time.monotonic() - max_age
        with self._listings_changed:
            listing = self._listings.setdefault(key, _Listing())
            while True:
                if listing.outcome is not None and listing.outcome_began >= oldest:
                    return listing.outcome
                if not listing.running:
                    break
                self._listings_changed.wait()   # that run may be fresh enough; if not, ours follows it
            listing.running, began = True, time.monotonic()
        outcome = None
        try:
            outcome = self.probe(argv, env=env)
            return outcome
        finally:
            with self._listings_changed:
                listing.running = False
                if outcome is not None:
                    listing.outcome, listing.outcome_began = outcome, began
                self._listings_changed.notify_all()

    def change(self, argv: Sequence[str], *, env: dict[str, str] | None = None, stdin: str | None = None,
               ok_codes: tuple[int, ...] = (0,), timeout: float | None = None,
               quiet: bool = False) -> Outcome | None:
        """Mutates the host: printed, skipped in a dry run, raises RemoteError on failure."""
        command = self.command(argv, env)
        if self.dry_run:
            say(f"  would run on {self.name}: {command}")
            return None
        started = time.monotonic()
        outcome = self._run(argv, kind="change", env=env, stdin=stdin, timeout=timeout)
        took = time.monotonic() - started
        if outcome.exit_code not in ok_codes:
            if not quiet:
                say(f"* {self.name}: {command} ... FAILED {took:.1f}s")
            raise RemoteError(self.name, command, outcome.exit_code, outcome.stderr or outcome.stdout)
        if not quiet:
            say(f"* {self.name}: {command} ... ok {took:.1f}s")
        return outcome

    def read_file(self, path: str) -> str | None:
        """The file's text, or None when it does not exist."""
        outcome = self.probe(["sh", "-c", 'if [ -e "$1" ]; then cat -- "$1"; else exit 66; fi', "sh", path])
        if outcome.exit_code == 66:
            return None
        if not outcome.ok:
            raise RemoteError(self.name, f"cat {path}", outcome.exit_code, outcome.stderr)
        return outcome.stdout

    def write_file(self, path: str, text: str, *, make_parent: bool = False) -> None:
        """Atomic replace of the file `path` names: timestamped backup of the old file, temp file
        beside it, fsync, rename, fsync of the directory; one command.

        A symlink (/etc/xen/auto/NAME.cfg -> ../NAME.cfg) is resolved on the host and its target
        edited, backup beside it: a rename over the link would leave the real file as it was.
        A dangling link is refused (GuardError). `make_parent` creates a missing directory first.
        """
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        backup = f"{path}{BACKUP_SUFFIX}{stamp}"
        if self.dry_run:
            say(f"  would write {self.name}:{path} (backup {backup})")
            return
        started = time.monotonic()
        staged = self._stage(text)
        outcome = self.change(["sh", "-c", _write_script(make_parent), "sh", path, f"{BACKUP_SUFFIX}{stamp}",
                               staged or ""],
                              stdin=None if staged else text, ok_codes=(0, _DANGLING), quiet=True)
        if outcome.exit_code == _DANGLING:
            raise GuardError(f"{self.name}: {path} is a symlink to a file that does not exist: refusing to "
                             f"write through it; point it at the real file or remove it")
        target = printable(outcome.stdout)   # the link's target, when path is a symlink
        if target:
            path, backup = f"{path} -> {target}", f"{target}{BACKUP_SUFFIX}{stamp}"
        say(f"* {self.name}: write {path} (backup {backup} if it existed) ... ok {time.monotonic() - started:.1f}s")

    @contextmanager
    def sftp(self):
        """This host's one SFTP session, for one thread at a time (paramiko's SFTP client is not
        thread-safe, and fleet runs share the connection); None if the connection has none."""
        open_sftp = getattr(self.conn, "sftp", None)
        if open_sftp is None:
            yield None
            return
        with self._sftp_lock:
            yield open_sftp()

    def _stage(self, text: str) -> str | None:
        """Upload the content over SFTP to a private temp file; None if the connection has no SFTP.

        Streaming it on the command's stdin also works, but invoke feeds stdin a byte
        per poll, which takes seconds for a domain XML.
        """
        import uuid

        staged = f"/tmp/.xenkvm-{uuid.uuid4().hex}"
        started = time.monotonic()
        with self.sftp() as sftp:
            if sftp is None:
                return None
            with sftp.open(staged, "wx") as fh:
                fh.chmod(0o600)
                fh.write(text.encode())
        self.audit.record(self.name, f"sftp put {staged}", 0, time.monotonic() - started, "upload")
        return staged

    def edit_file(self, path: str, transform: Callable[[str], str], *, create: bool = False) -> bool:
        """Read, transform with a pure function, show the diff, write if it differs.

        With `create`, a missing file is written, and its missing directory made.

        Returns whether the file changed (or would change, in a dry run).
        """
        old = self.read_file(path)
        if old is None and not create:
            raise ToolError(f"{self.name}: {path} does not exist")
        new = transform(old or "")
        if new == old:
            say(f"* {self.name}: {path} ... unchanged")
            return False
        say(unified_diff(old or "", new, f"{self.name}:{path}"))
        self.write_file(path, new, make_parent=old is None)
        return True


def unified_diff(old: str, new: str, label: str) -> str:
    import difflib

    return "".join(difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"{label} (now)", tofile=f"{label} (new)")).rstrip("\n")


def describe_ssh_error(exc: BaseException) -> str:
    """One line for the usual SSH failures, without a traceback."""
    import paramiko

    if isinstance(exc, paramiko.BadHostKeyException):
        return (f"HOST KEY CHANGED for {exc.hostname} (got {exc.key.get_name()} "
                f"{exc.key.get_base64()[:16]}...): refusing; verify the host and fix known_hosts")
    if isinstance(exc, UnknownHostKey):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text


class UnknownHostKey(Exception):
    pass


def _host_key_policy(known_hosts: Path, accept_new: bool, label: str):
    """Refuse unknown keys (Fabric's default silently accepts them); opt-in: record new ones."""
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            if not accept_new:
                raise UnknownHostKey(
                    f"{label}: host key for {hostname} is not in {known_hosts}: refusing to connect; "
                    f"verify it (ssh-keyscan) and add it, or set accept_new_host_key: true in the inventory")
            client.get_host_keys().add(hostname, key.get_name(), key)
            known_hosts.parent.mkdir(parents=True, exist_ok=True)
            with known_hosts.open("a") as fh:
                fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            say(f"* {label}: recorded new host key {key.get_name()} for {hostname} in {known_hosts}")

    return Policy()


def _proxy(command: str):
    """paramiko's ProxyCommand, except that a proxy that exits fails the connection at once
    (paramiko's own spins on end-of-file until the connect timeout)."""
    import os
    from select import select

    import paramiko
    from paramiko.ssh_exception import ProxyCommandFailure

    class Proxy(paramiko.ProxyCommand):
        connected = False   # once the session is up, end of stream is the connection's end, quietly

        def recv(self, size):
            buffer = b""
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            while len(buffer) < size:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    if buffer:
                        return buffer
                    raise TimeoutError("proxy command timed out")
                ready, _, _ = select([self.process.stdout], [], [], wait)
                if ready:
                    chunk = os.read(self.process.stdout.fileno(), size - len(buffer))
                    if not chunk:
                        if buffer or self.connected:
                            return buffer
                        raise ProxyCommandFailure(" ".join(self.cmd), "the proxy command exited")
                    buffer += chunk
            return buffer

    return Proxy(command)


def open_connection(label: str, address: str, user: str, port: int, *, proxy_command: str | None,
                    identity_file: str | None, known_hosts: str | None, accept_new: bool,
                    timeout: float = 15):
    """A connected fabric Connection with strict host key checking."""
    from fabric import Connection

    kwargs = {}
    if identity_file:
        kwargs["key_filename"] = [str(Path(identity_file).expanduser())]
    proxy = _proxy(proxy_command) if proxy_command else None
    if proxy:
        kwargs["sock"] = proxy
    conn = Connection(address, user=user, port=port, gateway=False, connect_timeout=timeout,
                      connect_kwargs=kwargs)
    known = Path(known_hosts or "~/.ssh/known_hosts").expanduser()
    if known.exists():
        conn.client.load_host_keys(str(known))
    conn.client.set_missing_host_key_policy(_host_key_policy(known, accept_new, label))
    try:
        conn.open()
    except Exception as exc:
        raise ToolError(f"{label}: cannot connect to {user}@{address}:{port}: {describe_ssh_error(exc)}") from None
    if proxy:
        proxy.connected = True   # closing the connection ends the proxy: no "proxy exited" then
    return conn


class Site:
    """The run's connections: one per host (and per guest), opened on first use, then reused."""

    def __init__(self, inventory: Inventory, *, dry_run: bool = False, audit: AuditLog | None = None,
                 connect: Callable[..., object] = open_connection):
        self.inventory = inventory
        self.dry_run = dry_run
        self.audit = audit or AuditLog(None)
        self._connect = connect
        self._remotes: dict[str, Remote] = {}
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}

    def _remote(self, key: str, opener: Callable[[], object], sudo: bool) -> Remote:
        with self._lock:
            lock = self._host_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._remotes:
                self._remotes[key] = Remote(key, opener(), sudo=sudo, dry_run=self.dry_run, audit=self.audit)
            return self._remotes[key]

    def host(self, name: str) -> Remote:
        h: Host = self.inventory.host(name)
        return self._remote(name, lambda: self._connect(
            h.name, h.address, h.user, h.port, proxy_command=h.proxy_command,
            identity_file=h.identity_file, known_hosts=h.known_hosts, accept_new=h.accept_new_host_key),
            h.needs_sudo)

    def guest(self, vm: VM) -> Remote:
        if not vm.guest_address:
            raise ToolError(f"vms.{vm.name}.guest_address is not set: the guest stage needs SSH to the guest")
        return self._remote(f"guest:{vm.name}", lambda: self._connect(
            f"{vm.name} (guest)", vm.guest_address, vm.guest_user, vm.guest_port,
            proxy_command=vm.guest_proxy_command, identity_file=vm.guest_identity_file,
            known_hosts=vm.guest_known_hosts, accept_new=False), vm.guest_user != "root")

    def close(self) -> None:
        for remote in self._remotes.values():
            close = getattr(remote.conn, "close", None)
            if close:
                close()
        self._remotes.clear()


def audit_path(c) -> Path:
    return Path(c.config.get("audit_log") or state_dir(c) / "audit.jsonl").expanduser()


def make_private_dir(path: Path) -> Path:
    """`mkdir -p` where every directory it makes is 0700: the state dir's journals, locks and audit
    log name hosts, guests and operators. A directory that exists keeps its mode."""
    missing = list(takewhile(lambda directory: not directory.exists(), (path, *path.parents)))
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
    return path


def state_dir(c) -> Path:
    """Where journals, locks and the audit log live on the control machine."""
    default = Path(os.environ.get("XDG_STATE_HOME", "~/.local/state")) / "xenkvm"
    return Path(c.config.get("state_dir") or default).expanduser()


def site_from_context(c, inventory: Inventory, dry_run: bool = False) -> Site:
    return Site(inventory, dry_run=dry_run, audit=AuditLog(audit_path(c)))
