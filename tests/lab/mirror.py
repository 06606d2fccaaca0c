"""A caching, restricted HTTP proxy to the machine's Debian mirror, listening inside a netns.

Guests and hosts of the lab live in network namespaces with no route out.  This proxy
lets them use apt all the same, and nothing else:

* its listening socket is created inside a named network namespace (``/run/netns/NAME``):
  one short-lived thread enters it with ``setns(2)``, binds, and goes back; every other
  thread, so every upstream connection, stays in the machine's own namespace;
* it forwards only ``GET`` and ``HEAD`` requests in absolute-URI proxy form
  (``GET http://deb.debian.org/debian/dists/... HTTP/1.1``) whose host and path lie under
  a Debian archive listed in the machine's apt sources (the mirror and, where listed,
  the security archive); anything else, ``CONNECT`` included, gets ``403``;
* ``.deb`` files are immutable by name, so they are cached on disk (``--cache``) and
  served from there on later runs; index files (Release, Packages, ...) pass through.

A guest uses it with ``Acquire::http::Proxy "http://10.77.0.1:3142";`` in
``/etc/apt/apt.conf.d/``; debootstrap with ``http_proxy=http://10.77.0.1:3142``.

    python -m tests.lab.mirror --netns NAME --address 10.77.0.1 --port 3142 --cache DIR

or, in process, ``start(netns, address, port, cache)`` / ``Mirror.stop()``; as a child
process, ``spawn(...)`` / ``terminate(proc)``.  Standard library only (hosts run it with
the machine's python3), self-contained (imports nothing from the lab).
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

CLONE_NEWNET = 0x40000000
DEFAULT_PORT = 3142
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache" / "apt-proxy"
UPSTREAM_TIMEOUT = 60
# Request headers worth passing upstream (apt's conditional and partial requests).
FORWARD_REQUEST = ("range", "if-range", "if-modified-since", "if-none-match", "accept", "user-agent",
                   "cache-control", "pragma")
# Response headers worth passing back.
FORWARD_RESPONSE = ("content-type", "last-modified", "etag", "content-range", "accept-ranges",
                    "expires", "cache-control", "date")
READY = "xenkvm-mirror listening"


# ---------------------------------------------------------------------------------------
# What is allowed: the Debian archives of the machine's apt sources.

def os_codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return ""
    m = re.search(r'^VERSION_CODENAME="?([^"\n]*)"?', text, re.M)
    return m.group(1) if m else ""


def apt_archives(codename: str | None = None) -> list[tuple[str, str]]:
    """(host, path prefix) of every http archive in the apt sources serving the codename.

    A source counts when one of its suites is the codename or starts with ``codename-``
    (bookworm, bookworm-updates, bookworm-security); third-party repositories
    (``nodistro``, ``cloud-sdk-bookworm``) do not.
    """
    codename = codename if codename is not None else os_codename()
    archives: list[tuple[str, str]] = []
    for uri, suites in apt_sources():
        if codename and not any(s == codename or s.startswith(codename + "-") for s in suites):
            continue
        u = urllib.parse.urlsplit(uri)
        if u.scheme != "http" or not u.hostname:
            continue
        item = (u.hostname.lower(), "/" + u.path.strip("/") + "/" if u.path.strip("/") else "/")
        if item not in archives:
            archives.append(item)
    return archives


def apt_sources() -> list[tuple[str, list[str]]]:
    """(URI, suites) of every enabled `deb` source in this machine's apt sources, in apt's order."""
    entries: list[tuple[str, list[str]]] = []
    paths = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):[ \t]*(.*)$", stanza, re.M))
                if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                    for uri in fields.get("URIs", "").split():
                        entries.append((uri, fields.get("Suites", "").split()))
        elif path.suffix == ".list":
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], [words[2]]))
    return entries


# ---------------------------------------------------------------------------------------
# Network namespaces.

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listen_in_netns(netns: str | None, address: str, port: int, backlog: int = 64) -> socket.socket:
    """A listening TCP socket bound inside the named netns (None: the current one).

    The namespace switch happens in a throw-away thread, which also switches back to the
    saved original namespace before it ends: no other thread ever leaves the machine's
    namespace.
    """
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    if not netns:
        return make()
    result: dict = {}

    def run() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
                try:
                    _setns(target)
                finally:
                    os.close(target)
                try:
                    result["sock"] = make()
                finally:
                    _setns(own)
            finally:
                os.close(own)
        except BaseException as e:       # handed to the caller
            result["error"] = e

    t = threading.Thread(target=run, name="mirror-netns-bind")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["sock"]


# ---------------------------------------------------------------------------------------
# The proxy.

class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket, mirror: "Mirror"):
        self.mirror = mirror
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "xenkvm-mirror"
    timeout = 300

    # -- plumbing
    def log_message(self, fmt, *args):       # quiet; the mirror logs its own lines
        pass

    def _refuse(self, code: int, why: str) -> None:
        self.server.mirror._count("refused")
        self.server.mirror.log(f"{code} {self.command} {self.path} ({why})")
        body = f"{code} {why}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if self.command == "CONNECT":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _target(self):
        """(host, port, path) of an allowed request, or None after refusing it."""
        u = urllib.parse.urlsplit(self.path)
        if u.scheme != "http" or not u.hostname:
            self._refuse(403, "only absolute http:// URIs (proxy form) are forwarded")
            return None
        host = u.hostname.lower()
        port = u.port or 80
        path = urllib.parse.unquote(u.path or "/")
        if port != 80 or ".." in path.split("/") or not self.server.mirror.allows(host, path):
            self._refuse(403, f"not a Debian archive of this machine: {host}:{port}")
            return None
        return host, u.path + (f"?{u.query}" if u.query else ""), path

    def do_CONNECT(self):
        self._refuse(403, "CONNECT is not allowed")

    def _not_allowed(self):
        self._refuse(403, f"method {self.command} is not allowed")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = _not_allowed

    def do_GET(self):
        self._serve(head=False)

    def do_HEAD(self):
        self._serve(head=True)

    # -- serving
    def _serve(self, head: bool) -> None:
        target = self._target()
        if target is None:
            return
        host, raw_path, path = target
        mirror = self.server.mirror
        cacheable = path.endswith(".deb") and "Range" not in self.headers
        cached = mirror.cache_path(host, path) if cacheable else None
        if cached is not None and cached.is_file():
            mirror._count("hits")
            mirror.log(f"HIT  {self.command} http://{host}{path}")
            self._send_file(cached, head)
            return
        try:
            conn = http.client.HTTPConnection(host, 80, timeout=UPSTREAM_TIMEOUT)
            headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARD_REQUEST}
            headers["Host"] = host
            conn.request(self.command, raw_path, headers=headers)
            resp = conn.getresponse()
        except OSError as e:
            mirror._count("errors")
            self._refuse(502, f"upstream: {e}")
            return
        try:
            mirror._count("misses" if cacheable else "passed")
            mirror.log(f"{'MISS' if cacheable else 'PASS'} {self.command} http://{host}{path} -> {resp.status}")
            if head or resp.status in (204, 304) or 100 <= resp.status < 200:
                self._send_head(resp, resp.getheader("Content-Length") if head else "0")
                return
            length = resp.getheader("Content-Length")
            if length is None or resp.getheader("Transfer-Encoding"):
                body = resp.read()                 # chunked upstream: index files, small
                self._send_head(resp, str(len(body)))
                self.wfile.write(body)
                return
            self._send_head(resp, length)
            keep = cached if (cacheable and resp.status == 200) else None
            self._relay(resp, int(length), keep)
        finally:
            conn.close()

    def _send_head(self, resp, length) -> None:
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() in FORWARD_RESPONSE:
                self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", length)
        else:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()

    def _relay(self, resp, length: int, keep: Path | None) -> None:
        tmp = None
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=keep.parent, prefix=".part-")
            tmp = (os.fdopen(fd, "wb"), Path(name))
        done = 0
        client_ok = True
        try:
            while done < length:
                chunk = resp.read(min(1 << 16, length - done))
                if not chunk:
                    break
                done += len(chunk)
                if tmp:
                    tmp[0].write(chunk)
                if client_ok:
                    try:
                        self.wfile.write(chunk)
                    except OSError:
                        client_ok = False          # finish the download for the cache anyway
                        self.close_connection = True
                        if not tmp:
                            break
        finally:
            if tmp:
                tmp[0].close()
                if done == length:
                    os.replace(tmp[1], keep)
                else:
                    tmp[1].unlink(missing_ok=True)
        if done != length:
            self.close_connection = True

    def _send_file(self, path: Path, head: bool) -> None:
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.debian.binary-package")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not head:
            with path.open("rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 16)


class Mirror:
    """The proxy, served by a background thread of this process."""

    def __init__(self, netns: str | None, address: str = "10.77.0.1", port: int = DEFAULT_PORT,
                 cache: Path | str = DEFAULT_CACHE, archives: list[tuple[str, str]] | None = None,
                 log=None):
        self.netns = netns
        self.address = address
        self.port = port
        self.cache = Path(cache)
        self.archives = archives if archives is not None else apt_archives()
        if not self.archives:
            raise RuntimeError("no Debian archive found in the apt sources: nothing to allow")
        self._log = log
        self.stats = {"hits": 0, "misses": 0, "passed": 0, "refused": 0, "errors": 0}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def log(self, line: str) -> None:
        if self._log:
            self._log(line)

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def allows(self, host: str, path: str) -> bool:
        return any(host == h and (path + "/").startswith(prefix) for h, prefix in self.archives)

    def cache_path(self, host: str, path: str) -> Path:
        # pool/main/o/openssh/openssh-server_1%3a9.2p1-2+deb12u6_amd64.deb: keep the name,
        # but never let a path component climb out of the cache.
        parts = [p for p in path.split("/") if p not in ("", ".", "..")]
        return self.cache.joinpath(host, *parts)

    def start(self) -> "Mirror":
        self.cache.mkdir(parents=True, exist_ok=True)
        sock = listen_in_netns(self.netns, self.address, self.port)
        self.port = sock.getsockname()[1]
        self._server = _Server(sock, self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mirror", daemon=True)
        self._thread.start()
        self.log(f"{READY} on {self.url} in netns {self.netns or '(own)'}; "
                 f"allowed: {', '.join(h + p for h, p in self.archives)}; cache {self.cache}")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def start(netns: str | None, address: str = "10.77.0.1", port: int = DEFAULT_PORT,
          cache: Path | str = DEFAULT_CACHE, log=None, archives=None) -> Mirror:
    """Serve in a background thread of this process; returns the running Mirror (stop() it)."""
    return Mirror(netns, address, port, cache, archives=archives, log=log).start()


def spawn(netns: str | None, address: str = "10.77.0.1", port: int = DEFAULT_PORT,
          cache: Path | str = DEFAULT_CACHE, logfile: Path | str | None = None,
          python: str = sys.executable, env: dict | None = None, timeout: float = 10) -> subprocess.Popen:
    """Run the proxy as a child process (``python -m tests.lab.mirror``), once it listens.

    Its log goes to logfile (appended) or is discarded; stop it with terminate(proc).
    """
    argv = [python, "-u", "-m", "tests.lab.mirror", "--port", str(port), "--address", address,
            "--cache", str(cache)]
    if netns:
        argv += ["--netns", netns]
    repo = Path(__file__).resolve().parents[2]
    out = open(logfile, "ab") if logfile else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=out, env=env, start_new_session=True)
    finally:
        if logfile:
            out.close()
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line or READY.encode() in line:
            break
    if READY.encode() not in line:
        terminate(proc)
        raise RuntimeError(f"the apt proxy did not start: {line.decode(errors='replace').strip()!r}"
                           + (f"; see {logfile}" if logfile else ""))
    # From now on the child logs to stderr (logfile) only; stdout is not read again.
    proc.stdout.close()
    return proc


def terminate(proc: subprocess.Popen, timeout: float = 5) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.mirror", description=__doc__.split("\n")[0])
    ap.add_argument("--netns", help="named network namespace (/run/netns/NAME) to listen in")
    ap.add_argument("--address", default="10.77.0.1")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help="where .deb files are kept")
    ap.add_argument("--allow", action="append", default=[], metavar="URL",
                    help="an archive to allow besides the apt sources' (http://host/path/)")
    args = ap.parse_args(argv)
    archives = apt_archives()
    for url in args.allow:
        u = urllib.parse.urlsplit(url)
        archives.append((u.hostname.lower(), "/" + u.path.strip("/") + "/" if u.path.strip("/") else "/"))

    def log(line: str) -> None:
        print(time.strftime("%H:%M:%S"), line, file=sys.stderr, flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        mirror = start(args.netns, args.address, args.port, args.cache, log=log, archives=archives)
    except (OSError, RuntimeError) as e:
        print(f"error: {e}", flush=True)
        return 1
    print(f"{READY} on {mirror.url}", flush=True)
    try:
        while not stop.wait(1):
            pass
    finally:
        mirror.stop()
        log(f"stopped; {mirror.stats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
