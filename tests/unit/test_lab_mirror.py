"""The lab's apt proxy (tests/lab/mirror.py) refuses everything but the allowed archives.

Served on loopback in this process; no request here reaches any other address: refusals are
answered by the proxy itself and the one allowed file comes from its cache.
"""

from __future__ import annotations

import http.client

import pytest

from tests.lab.mirror import Mirror

ARCHIVE = ("deb.example", "/debian/")


@pytest.fixture
def proxy(tmp_path):
    cached = tmp_path / "deb.example" / "debian" / "pool" / "main" / "h" / "hello_1.0_amd64.deb"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"!<arch>\n")
    with Mirror(None, "127.0.0.1", 0, cache=tmp_path, archives=[ARCHIVE]) as mirror:
        yield mirror


def ask(mirror: Mirror, method: str, target: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=10)
    try:
        conn.request(method, target)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("method, target", [
    ("GET", "http://other.example/debian/dists/bookworm/Release"),     # another host
    ("GET", "http://deb.example/other/dists/bookworm/Release"),        # another path on it
    ("GET", "http://deb.example/debian/../etc/passwd"),                # climbing out
    ("GET", "http://deb.example:8080/debian/dists/bookworm/Release"),  # another port
    ("GET", "/debian/dists/bookworm/Release"),                         # not proxy form
    ("POST", "http://deb.example/debian/dists/bookworm/Release"),
    ("CONNECT", "deb.example:443"),
])
def test_everything_but_the_archives_is_refused(proxy, method, target):
    status, _ = ask(proxy, method, target)
    assert status == 403
    assert proxy.stats["refused"] == 1 and proxy.stats["misses"] == proxy.stats["passed"] == 0


def test_a_cached_package_is_served_without_going_upstream(proxy):
    status, body = ask(proxy, "GET", "http://deb.example/debian/pool/main/h/hello_1.0_amd64.deb")
    assert (status, body) == (200, b"!<arch>\n")
    assert proxy.stats["hits"] == 1 and proxy.stats["misses"] == 0
