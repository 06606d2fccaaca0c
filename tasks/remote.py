"""Connections from the inventory: probes vs changes, quoting, host keys, audit log.

Every command is a list of arguments joined with shlex quoting, so no value
from the inventory or a remote file reaches a shell unquoted.  Probes read and
always run (a dry run needs their facts); changes honour the dry run.
"""

from __future__ import annotations

import contextvars
import io
import json
import os
import shlex
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import takewhile
from pathlib import Path
from typing import Any, Callable, Sequence

from . import ssh
from .errors import GuardError, ToolError
from .hostlock import HostLocks, holder
from .interrupt import Interruption
from .inventory import VM, Host, Inventory
from .output import log

BACKUP_SUFFIX = ".xenkvm-"
LOCALE = {"LC_ALL": "C"}
COMMAND_TIMEOUT = 60.0   # one probe or short change (inventory: a host's command_timeout)
START_TIMEOUT = 300.0    # a domain start: Xen scrubs a large guest's memory before it runs
SLOW_TIMEOUT = 1800.0    # package installs, initramfs and grub in a guest


def concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at once (probes of different hosts), results in call order; the first call
    that failed, in that order, raises. Each runs in a copy of the caller's context: the lines
    it prints keep the caller's VM tag, and inside an undo it is shielded as the undo is."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(calls) - 1)) as pool:
        others = [pool.submit(contextvars.copy_context().run, call) for call in calls[1:]]
        first = calls[0]()
        return [first, *(future.result() for future in others)]


_changes_sent: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("changes_sent", default=None)


@contextmanager
def counting_changes():
    """The changes this thread (and the probes it runs `concurrently`) sends, or would send in a
    dry run, collected in the list it yields: a fleet run tells each VM's changed steps apart."""
    sent: list[str] = []
    token = _changes_sent.set(sent)
    try:
        yield sent
    finally:
        _changes_sent.reset(token)


def _count_change(command: str) -> None:
    sent = _changes_sent.get()
    if sent is not None:
        sent.append(command)


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
class CommandResult:
    """What a command returned: the parts a caller reads."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class AuditLog:
    """JSON lines on the control machine: time, host, command, exit code, duration; the file is
    made 0600, in a directory made 0700.

    A record that cannot be written (a full disk) goes to stderr instead, and `failure` says
    why: the caller stops the run, since its journal cannot be kept either, and its undo
    goes on with its records on stderr.
    """

    def __init__(self, path: str | Path | None):
        self.path = Path(path).expanduser() if path else None
        self.failure: str | None = None
        self._lock = threading.Lock()

    def record(self, host: str, command: str, exit_code: int | None, duration: float, kind: str) -> None:
        self.write({"host": host, "kind": kind, "command": command, "exit": exit_code,
                    "duration": round(duration, 3)})

    def write(self, fields: dict) -> None:
        """One record: the time, then `fields` (a command's, or a move's downtime)."""
        if self.path is None:
            return
        line = json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **fields}) + "\n"
        with self._lock:
            try:
                make_private_dir(self.path.parent)
                with open(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a") as fh:
                    fh.write(line)
            except OSError as exc:
                self.failure = self.failure or f"the audit log {self.path} cannot be written ({exc.strerror})"
                sys.stderr.write(f"audit: {line}")


@dataclass
class _Listing:
    """One shared listing command: whether a run is in flight, the last run's outcome (or
    its failure, which its waiters share too) and when that run began (time.monotonic())."""

    running: bool = False
    outcome: CommandResult | ToolError | None = None
    outcome_began: float = float("-inf")


class Remote:
    """One host as seen by the stages: run probes and changes, read and edit files.

    `conn` is anything with Fabric's `run(command, hide=, warn=, in_stream=, timeout=)`:
    a fabric Connection in production, invoke's MockContext in tests.  Every command has a
    time limit (`command_timeout` unless the call gives its own): a host that stops
    answering fails the step with one line, instead of holding the run forever.
    """

    def __init__(self, name: str, conn, *, sudo: bool = False, dry_run: bool = False,
                 audit: AuditLog | None = None, command_timeout: float = COMMAND_TIMEOUT,
                 interruption: Interruption | None = None):
        self.name = name
        self.conn = conn
        self.sudo = sudo
        self.dry_run = dry_run
        self.audit = audit or AuditLog(None)
        self.command_timeout = command_timeout
        self.interruption = interruption or Interruption()
        self.silent: str | None = None   # why the host is not asked again in this run
        self.facts: dict = {}   # probe results that hold for the whole run (toolstack, ...)
        self._sftp_lock = threading.Lock()
        self._listings: dict[str, _Listing] = {}
        self._listings_changed = threading.Condition()

    def command(self, argv: Sequence[str], env: dict[str, str] | None = None) -> str:
        """The exact command line sent: through `sudo -n` for a user other than root, and always
        in the C locale, since the parsers read what virsh, lvs, blkid and the rest print."""
        prefix = ["env", *(f"{k}={v}" for k, v in {**LOCALE, **(env or {})}.items())]
        if self.sudo:
            prefix = ["sudo", "-n", "--", *prefix]
        return join([*prefix, *argv])

    def _run(self, argv, *, kind: str, env=None, stdin: str | None = None,
             timeout: float | None = None) -> CommandResult:
        from invoke.exceptions import CommandTimedOut

        command = self.command(argv, env)
        shown = join(argv)   # error lines name the command without its sudo and locale prefix
        if self.silent:
            raise ToolError(f"{self.name}: `{shown}` not sent: {self.silent}")
        limit = timeout or self.command_timeout
        started = time.monotonic()
        try:
            result = self.conn.run(command, hide=True, warn=True, timeout=limit,
                                   in_stream=io.StringIO(stdin) if stdin is not None else False)
        except CommandTimedOut:
            self._record(command, None, started, kind)
            raise ToolError(f"{self.name}: `{shown}` gave no answer within {limit:.0f}s "
                            f"(it may still be running there)") from None
        except Exception as exc:  # connection loss: report it as this host's failure
            self._record(command, None, started, kind)
            reason = ssh.describe_ssh_error(exc)
            if ssh.host_stopped_answering(self.conn, exc):
                self.silent = f"it stopped answering earlier in this run ({reason})"
            raise ToolError(f"{self.name}: `{shown}` did not complete: {reason}") from None
        outcome = CommandResult(result.exited, result.stdout, result.stderr)
        self._record(command, outcome.exit_code, started, kind)
        return outcome

    def _record(self, command: str, exit_code: int | None, started: float, kind: str) -> None:
        """Audit the command (and show a probe with -v); a log that cannot be written stops the
        run (not its undo)."""
        took = time.monotonic() - started
        self.audit.record(self.name, command, exit_code, took, kind)
        if kind == "probe":
            log.debug(f"  {self.name}: {command} ... exit {exit_code} {took:.1f}s")
        if self.audit.failure:
            self.interruption.request(self.audit.failure)
            self.interruption.check()

    def open_session(self, argv: Sequence[str]):
        """A command that keeps running beside the others, for a conversation over its stdin and
        stdout (the host's VM locks); its channel, with reads bounded by `command_timeout`."""
        command = self.command(argv)
        if self.silent:
            raise ToolError(f"{self.name}: `{argv[0]}` not started: {self.silent}")
        try:
            channel = self.conn.create_session()
            channel.settimeout(self.command_timeout)
            channel.exec_command(command)
        except Exception as exc:
            raise ToolError(f"{self.name}: cannot open a session: {ssh.describe_ssh_error(exc)}") from None
        return channel

    def probe(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
              timeout: float | None = None) -> CommandResult:
        """Read-only: always runs, even in a dry run; the caller judges the exit code."""
        return self._run(argv, kind="probe", env=env, timeout=timeout)

    def shared_probe(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
                     max_age: float = 0.0) -> CommandResult:
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
                    if isinstance(listing.outcome, ToolError):
                        raise listing.outcome
                    return listing.outcome
                if not listing.running:
                    break
                self._listings_changed.wait()   # that run may be fresh enough; if not, ours follows it
            listing.running, began = True, time.monotonic()
        outcome: CommandResult | ToolError | None = None
        try:
            outcome = self.probe(argv, env=env)
            return outcome
        except ToolError as exc:   # a host that hangs fails every caller of this run at once
            outcome = exc
            raise
        finally:
            with self._listings_changed:
                listing.running = False
                if outcome is not None:
                    listing.outcome, listing.outcome_began = outcome, began
                self._listings_changed.notify_all()

    def change(self, argv: Sequence[str], *, env: dict[str, str] | None = None, stdin: str | None = None,
               ok_codes: tuple[int, ...] = (0,), timeout: float | None = None,
               quiet: bool = False) -> CommandResult | None:
        """Mutates the host: printed, skipped in a dry run (which prints the exact command line),
        raises RemoteError on failure."""
        command = self.command(argv, env)
        _count_change(command)
        if self.dry_run:
            log.info(f"  would run on {self.name}: {command}")
            return None
        started = time.monotonic()
        outcome = self._run(argv, kind="change", env=env, stdin=stdin, timeout=timeout)
        took = time.monotonic() - started
        shown = join(argv)   # progress and errors: the command without its sudo and locale prefix
        if outcome.exit_code not in ok_codes:
            if not quiet:
                log.info(f"* {self.name}: {shown} ... FAILED {took:.1f}s")
            raise RemoteError(self.name, shown, outcome.exit_code, outcome.stderr or outcome.stdout)
        if not quiet:
            log.info(f"* {self.name}: {shown} ... ok {took:.1f}s")
        return outcome

    def read_file(self, path: str, max_age: float | None = None) -> str | None:
        """The file's text, or None when it does not exist; with `max_age`, a shared_probe."""
        argv = ["sh", "-c", 'if [ -e "$1" ]; then cat -- "$1"; else exit 66; fi', "sh", path]
        outcome = self.probe(argv) if max_age is None else self.shared_probe(argv, max_age=max_age)
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
            _count_change(f"write {path}")
            log.info(f"  would write {self.name}:{path} (backup {backup})")
            return
        started = time.monotonic()
        staged = self._stage(text)
        outcome = self.change(["sh", "-c", _write_script(make_parent), "sh", path, f"{BACKUP_SUFFIX}{stamp}",
                               staged or ""],
                              stdin=None if staged else text, ok_codes=(0, _DANGLING), quiet=True)
        assert outcome is not None   # not a dry run: that returned above
        if outcome.exit_code == _DANGLING:
            raise GuardError(f"{self.name}: {path} is a symlink to a file that does not exist: refusing to "
                             f"write through it; point it at the real file or remove it")
        target = printable(outcome.stdout)   # the link's target, when path is a symlink
        if target:
            path, backup = f"{path} -> {target}", f"{target}{BACKUP_SUFFIX}{stamp}"
        log.info(f"* {self.name}: write {path} (backup {backup} if it existed) ... ok {time.monotonic() - started:.1f}s")

    @contextmanager
    def sftp(self):
        """This host's one SFTP session, for one thread at a time (paramiko's SFTP client is not
        thread-safe, and fleet runs share the connection); None if the connection has none.
        Each read or write waits for the host at most `command_timeout`."""
        open_sftp = getattr(self.conn, "sftp", None)
        if open_sftp is None:
            yield None
            return
        with self._sftp_lock:
            client = open_sftp()
            channel = getattr(client, "get_channel", lambda: None)()
            if channel is not None:
                channel.settimeout(self.command_timeout)
            yield client

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
            log.info(f"* {self.name}: {path} ... unchanged")
            return False
        log.info(unified_diff(old or "", new, f"{self.name}:{path}"))
        self.write_file(path, new, make_parent=old is None)
        return True


def replaced_by(text: str) -> Callable[[str], str]:
    """An edit_file transform that writes `text` whatever the file held (a rendered file)."""
    return lambda _old: text


def unified_diff(old: str, new: str, label: str) -> str:
    import difflib

    return "".join(difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"{label} (now)", tofile=f"{label} (new)")).rstrip("\n")


class Site:
    """The run's connections: one per host (and per guest), opened on first use, then reused.

    `connect(label, target)` opens one (ssh.open_connection; tests pass a double), and
    `knock(target, expect)` looks at a guest's port (ssh.knock; a double in tests too). All the
    run's hosts share one Interruption: a stop request reaches every move.
    """

    def __init__(self, inventory: Inventory, *, dry_run: bool = False, audit: AuditLog | None = None,
                 connect: Callable[..., object] | None = None, interruption: Interruption | None = None,
                 knock: Callable[[ssh.SshTarget, bytes], bool] | None = None):
        self.inventory = inventory
        self.dry_run = dry_run
        self.audit = audit or AuditLog(None)
        self.interruption = interruption or Interruption()
        self._connect = connect or (lambda _label, target: ssh.open_connection(target))
        self._knock = knock or (lambda target, expect: ssh.knock(target, expect=expect))
        self._remotes: dict[str, Remote] = {}
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}
        self._vm_locks: dict[str, HostLocks] = {}

    def _remote(self, key: str, target: ssh.SshTarget) -> Remote:
        with self._lock:
            lock = self._host_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._remotes:
                self._remotes[key] = Remote(key, self._connect(target.label, target), sudo=target.user != "root",
                                            dry_run=self.dry_run, audit=self.audit,
                                            command_timeout=target.command_timeout, interruption=self.interruption)
            return self._remotes[key]

    def host(self, name: str) -> Remote:
        h: Host = self.inventory.host(name)
        return self._remote(name, ssh.resolve(
            h.name, h.address, user=h.user, port=h.port, proxy_command=h.proxy_command,
            identity_file=h.identity_file, known_hosts=h.known_hosts, accept_new=h.accept_new_host_key,
            command_timeout=h.command_timeout))

    def guest(self, vm: VM) -> Remote:
        if not vm.guest_address:
            raise ToolError(f"vms.{vm.name}.guest_address is not set: the guest stage needs SSH to the guest")
        return self._remote(f"guest:{vm.name}", ssh.resolve(
            f"{vm.name} (guest)", vm.guest_address, user=vm.guest_user, port=vm.guest_port,
            proxy_command=vm.guest_proxy_command, identity_file=vm.guest_identity_file,
            known_hosts=vm.guest_known_hosts))

    def guest_answers(self, vm: VM, port: int, expect: bytes = b"") -> bool:
        """Whether the guest's address answers on `port` (ssh.knock), reached the way its SSH
        connection is (guest_proxy_command, ~/.ssh/config): a probe, in a dry run too."""
        if not vm.guest_address:
            raise ToolError(f"vms.{vm.name}.guest_address is not set: nothing to knock on")
        target = ssh.resolve(f"{vm.name} (guest)", vm.guest_address, user=vm.guest_user, port=port,
                             proxy_command=vm.guest_proxy_command, identity_file=vm.guest_identity_file,
                             known_hosts=vm.guest_known_hosts)
        answered = self._knock(target, expect)
        log.debug(f"  {vm.name}: knock on {target.hostname}:{port} ... {'answered' if answered else 'no answer'}")
        return answered

    @contextmanager
    def vm_lock(self, vm: VM):
        """The VM locked on its Xen host, where every control machine looks (hostlock)."""
        with self._lock:
            locks = self._vm_locks.get(vm.xen_host)
        if locks is None:
            remote = self.host(vm.xen_host)
            with self._lock:
                locks = self._vm_locks.setdefault(vm.xen_host, HostLocks(remote, holder()))
        locks.acquire(vm.name)
        try:
            yield
        finally:
            try:
                locks.release(vm.name)
            except ToolError as exc:
                log.warning(f"! {exc}: the lock of {vm.name} is released when this run ends")

    def close(self) -> None:
        for locks in self._vm_locks.values():
            locks.close()
        self._vm_locks.clear()
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


def read_record(path: Path, limit: int, what: str) -> bytes | None:
    """A record file of the state dir (a journal, a rehearsal), at most `limit` + 1 bytes (its
    parser refuses a longer one); None when there is none."""
    try:
        with path.open("rb") as file:
            return file.read(limit + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ToolError(f"{path}: unreadable {what} ({exc.strerror}); inspect it, then move it away") from None


def state_dir(c) -> Path:
    """Where journals, locks and the audit log live on the control machine."""
    default = Path(os.environ.get("XDG_STATE_HOME", "~/.local/state")) / "xenkvm"
    return Path(c.config.get("state_dir") or default).expanduser()


def site_from_context(c, inventory: Inventory, dry_run: bool = False,
                      interruption: Interruption | None = None) -> Site:
    return Site(inventory, dry_run=dry_run, audit=AuditLog(audit_path(c)), interruption=interruption)
