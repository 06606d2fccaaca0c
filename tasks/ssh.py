"""SSH connections: where to connect (inventory first, then ~/.ssh/config), host keys, time limits.

OpenSSH's rule is that the first value obtained wins, command line first: here the inventory
plays the command line.  Fabric applies ~/.ssh/config only in part once user and port are
passed, and forwards the agent when it says `ForwardAgent yes`; so the file is read here,
once, and Fabric gets every setting explicitly.  The agent is never forwarded: a tool that
logs into every host and guest must not lend them the operator's keys.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ToolError
from .output import log

CONNECT_TIMEOUT = 15.0      # TCP or proxy, the server's banner, authentication
KEEPALIVE_INTERVAL = 15     # seconds between SSH keepalives on an idle connection
MAX_JUMPS = 5               # ProxyJump hops followed


@dataclass(frozen=True)
class SshTarget:
    """Everything needed to open one connection, resolved."""

    label: str                          # how messages name it: xen1, "logger (guest)"
    hostname: str
    user: str
    port: int
    identity_files: tuple[str, ...] = ()
    proxy_command: str | None = None
    jumps: tuple["SshTarget", ...] = ()  # ProxyJump hops, first hop first
    known_hosts: str | None = None
    accept_new: bool = False
    command_timeout: float = 60.0       # also bounds opening a session on the connection
    connect_timeout: float = CONNECT_TIMEOUT

    def describe(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def _user_ssh_config() -> str:
    """~/.ssh/config's text ("" when there is none)."""
    path = Path("~/.ssh/config").expanduser()
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolError(f"{path}: cannot read it: {exc}") from None


def lookup(alias: str, *, user: str | None, port: int | None, config_text: str) -> dict:
    """The ~/.ssh/config settings for `alias`, with the inventory's user and port taking the
    place of the command line's -l and -p: they win, and %r/%p in the file expand to them."""
    import paramiko

    given = "".join(f"    {key} {value}\n" for key, value in (("User", user), ("Port", port)) if value is not None)
    text = (f"Host {alias}\n{given}\n" if given else "") + config_text
    try:
        return paramiko.SSHConfig.from_text(text).lookup(alias)
    except Exception as exc:   # paramiko raises several kinds for a malformed file
        raise ToolError(f"~/.ssh/config: cannot use it for {alias}: {exc}") from None


def expand_tokens(command: str, hostname: str, port: int, user: str) -> str:
    """%h, %p, %r and %% in an inventory proxy command, as ssh expands them."""
    values = {"h": hostname, "p": str(port), "r": user, "%": "%"}
    return re.sub(r"%([hpr%])", lambda m: values[m.group(1)], command)


def resolve(label: str, address: str, *, user: str | None = None, port: int | None = None,
            proxy_command: str | None = None, identity_file: str | None = None,
            known_hosts: str | None = None, accept_new: bool = False, command_timeout: float = 60.0,
            config_text: str | None = None, _depth: int = 0) -> SshTarget:
    """Inventory values first, then ~/.ssh/config (Hostname, User, Port, IdentityFile,
    ProxyCommand, ProxyJump), then the defaults (root, 22)."""
    text = _user_ssh_config() if config_text is None else config_text
    found = lookup(address, user=user, port=port, config_text=text)
    hostname = found.get("hostname", address)
    user = found.get("user", "root")
    try:
        port = int(found.get("port", 22))
    except ValueError:
        raise ToolError(f"~/.ssh/config: Port for {address} is not a number") from None
    identities = (identity_file,) if identity_file else tuple(found.get("identityfile", ()))
    jumps: tuple[SshTarget, ...] = ()
    if proxy_command:
        proxy_command = expand_tokens(proxy_command, hostname, port, user)
    elif (found.get("proxyjump") or "none").lower() != "none":
        if _depth >= MAX_JUMPS:
            raise ToolError(f"~/.ssh/config: ProxyJump for {address} nests more than {MAX_JUMPS} hops")
        jumps = tuple(_jump(hop.strip(), label, known_hosts, accept_new, command_timeout, text, _depth)
                      for hop in found["proxyjump"].split(","))
    elif (found.get("proxycommand") or "none").lower() != "none":
        proxy_command = found["proxycommand"]
    return SshTarget(label, hostname, user, port, tuple(str(Path(p).expanduser()) for p in identities),
                     proxy_command, jumps, known_hosts, accept_new, command_timeout)


def _jump(hop: str, label: str, known_hosts, accept_new, command_timeout, text, depth) -> SshTarget:
    """One ProxyJump hop, `[user@]host[:port]`, with its own ~/.ssh/config settings."""
    match = re.fullmatch(r"(?:([^@]+)@)?(\[[^\]]+\]|[^:]+)(?::(\d+))?", hop)
    if not match:
        raise ToolError(f"~/.ssh/config: cannot read the ProxyJump hop {hop[:80]!r} for {label}")
    user, host, port = match.group(1), match.group(2).strip("[]"), match.group(3)
    return resolve(f"{label} via {host}", host, user=user, port=int(port) if port else None,
                   known_hosts=known_hosts, accept_new=accept_new, command_timeout=command_timeout,
                   config_text=text, _depth=depth + 1)


# -- host keys, the proxy, the connection ----------------------------------------------------------

class UnknownHostKey(Exception):
    pass


class ConnectError(ToolError):
    """A host that cannot be reached; `reason` says why, without the host's name."""

    def __init__(self, label: str, reason: str):
        super().__init__(f"{label}: {reason}")
        self.reason = reason


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


def host_stopped_answering(conn, exc: BaseException) -> bool:
    """Whether a failed command means the host itself is gone (the connection dropped, or it
    cannot even open a session), not just that one command failed: then the run asks it
    nothing more, so that the undo moves on to the hosts that answer."""
    transport = getattr(conn, "transport", None)
    if transport is not None and not transport.is_active():
        return True
    return "Timeout opening channel" in str(exc)


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
            log.info(f"* {label}: recorded new host key {key.get_name()} for {hostname} in {known_hosts}")

    return Policy()


def _proxy(command: str):
    """paramiko's ProxyCommand, except that it runs in a session of its own, so that the Ctrl-C
    a terminal sends to its whole foreground group does not cut the connections the undo then
    needs, and that a proxy that exits fails the connection at once (paramiko's own spins on
    end-of-file until the connect timeout)."""
    import shlex
    import subprocess
    from select import select

    import paramiko
    from paramiko.ssh_exception import ProxyCommandFailure

    class Proxy(paramiko.ProxyCommand):
        connected = False   # once the session is up, end of stream is the connection's end, quietly

        def __init__(self, command_line):   # paramiko's, with start_new_session
            self.cmd = shlex.split(command_line)
            self.process = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, bufsize=0, start_new_session=True)
            self.timeout = None

        def recv(self, size):
            buffer = b""
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            while len(buffer) < size:
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    if buffer:
                        return buffer
                    raise TimeoutError("proxy command timed out")
                stdout = self.process.stdout
                assert stdout is not None   # Popen(stdout=PIPE)
                ready, _, _ = select([stdout], [], [], wait)
                if ready:
                    chunk = os.read(stdout.fileno(), size - len(buffer))
                    if not chunk:
                        if buffer or self.connected:
                            return buffer
                        raise ProxyCommandFailure(" ".join(self.cmd), "the proxy command exited")
                    buffer += chunk
            return buffer

    return Proxy(command)


def _quiet_paramiko() -> None:
    """paramiko logs a failed handshake with its traceback (logger "paramiko.transport") before
    the caller gets the exception; the caller's one line says it all."""
    import logging

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def _connection(target: SshTarget, gateway=None):
    """An unopened fabric Connection for the target, with strict host key checking."""
    from fabric import Config, Connection
    from paramiko import SSHConfig

    kwargs: dict = {"banner_timeout": target.connect_timeout, "auth_timeout": target.connect_timeout,
                    "channel_timeout": target.command_timeout}
    if target.identity_files:
        kwargs["key_filename"] = list(target.identity_files)
    proxy = None
    if target.proxy_command:
        proxy = kwargs["sock"] = _proxy(target.proxy_command)
    conn = Connection(target.hostname, user=target.user, port=target.port, config=Config(ssh_config=SSHConfig()),
                      gateway=gateway or False, forward_agent=False, connect_timeout=target.connect_timeout,
                      connect_kwargs=kwargs)
    known = Path(target.known_hosts or "~/.ssh/known_hosts").expanduser()
    if known.exists():
        conn.client.load_host_keys(str(known))
    conn.client.set_missing_host_key_policy(_host_key_policy(known, target.accept_new, target.label))
    return conn, proxy


def open_connection(target: SshTarget):
    """A connected fabric Connection: host keys verified, every wait bounded, no agent forwarding."""
    _quiet_paramiko()
    gateway = None
    for hop in target.jumps:   # each hop is reached through the previous one
        gateway = _open(hop, gateway)
    return _open(target, gateway)


def _open(target: SshTarget, gateway):
    conn, proxy = _connection(target, gateway)
    try:
        conn.open()
    except Exception as exc:
        raise ConnectError(target.label, f"cannot connect to {target.describe()}: {describe_ssh_error(exc)}") from None
    if proxy:
        proxy.connected = True   # closing the connection ends the proxy: no "proxy exited" then
    conn.transport.set_keepalive(KEEPALIVE_INTERVAL)
    return conn


# -- a guest's port, as the proof that it is up ----------------------------------------------------

def knock(target: SshTarget, *, expect: bytes = b"", timeout: float = 5.0) -> bool:
    """Whether the target's address answers on its port: a TCP connection opens, and with
    `expect` the service's first bytes begin with it (b"SSH-": sshd's banner, so a guest whose
    network is up but whose sshd is not does not count).

    It goes the way the target's SSH connection would: directly, through its ProxyJump hops (the
    last hop connects, so a refused port is seen there) or through its ProxyCommand. A proxy
    command hides whether its connection opened (nc waits the same for a slow or a dead address),
    so through one a port counts only once its service has said something: a service that waits
    for the client first (HTTP) can be checked directly or through ProxyJump only.
    """
    import socket

    want = len(expect) or 1
    try:
        if target.proxy_command:
            proxy = _proxy(target.proxy_command)
            try:
                proxy.settimeout(timeout)
                return proxy.recv(want).startswith(expect)
            finally:
                proxy.close()
        if target.jumps:
            hops: list = []
            try:
                for hop in target.jumps:
                    hops.append(_open(hop, hops[-1] if hops else None))
                channel = hops[-1].transport.open_channel("direct-tcpip", (target.hostname, target.port),
                                                          ("127.0.0.1", 0), timeout=timeout)
                channel.settimeout(timeout)
                return not expect or _first_bytes(channel.recv, want).startswith(expect)
            finally:
                for opened in reversed(hops):
                    opened.close()
        with socket.create_connection((target.hostname, target.port), timeout=timeout) as sock:
            return not expect or _first_bytes(sock.recv, want).startswith(expect)
    except Exception:   # refused, unreachable, timed out, a proxy or a hop gone: no answer
        return False


def _first_bytes(recv, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data
