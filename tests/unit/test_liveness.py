"""Proof of life's pure parts, its console script in a real shell, and the knock on real sockets
(loopback only: a listening socket here, reached directly and through a ProxyCommand)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading

import pytest
import yaml

from tasks import liveness, ssh
from tasks.errors import InputError
from tasks.inventory import parse_inventory
from tasks.liveness import Downtime, Timeline
from tests.conftest import REPO


def vm_with(**keys):
    """The example inventory's logger, without its guest_address, with `keys`."""
    data = yaml.safe_load((REPO / "hosts.yml").read_text())
    del data["vms"]["logger"]["guest_address"]
    data["vms"]["logger"].update(keys)
    return parse_inventory(yaml.safe_dump(data)).vm("logger")


@pytest.mark.parametrize("text, up", [
    ("Debian GNU/Linux 12 logger ttyS0\r\n\r\nlogger login: ", True),
    ("logger login: \r\n", True),
    ("CentOS Linux 7 (Core)\nKernel 3.10 on an x86_64\n\nweb login:", True),
    ("Begin: Waiting for root file system ... done.\nGave up waiting for root device.\n(initramfs) ", False),
    ("Last login: Mon Dec  1 10:00:00 2026 on ttyS0\nroot@logger:~# ", False),
    ("", False),
])
def test_a_login_prompt_is_getty_at_the_end_of_a_line(text, up):
    assert liveness.shows_login(text) is up


@pytest.mark.parametrize("text, trace", [
    ("## Type: string\n#XENCONSOLED_TRACE=[none|guest|hv|all]\n", None),
    ("XENCONSOLED_TRACE=guest\n", "guest"),
    ('XENCONSOLED_TRACE="all"  # every console\n', "all"),
    ("XENCONSOLED_TRACE=guest\nXENCONSOLED_TRACE=none\n", "none"),   # the shell's last word counts
    ("export XENCONSOLED_TRACE='hv'\n", "hv"),
])
def test_xencommons_trace_is_read_as_the_shell_would(text, trace):
    assert liveness.parse_console_trace(text) == trace
    assert liveness.logs_guests(trace) is (trace in ("guest", "all"))


def test_the_console_paths_are_libvirts_serial_log_and_xenconsoleds_guest_log():
    assert liveness.console_path("kvm", "web") == "/var/log/libvirt/qemu/web-console.log"
    assert liveness.console_path("xen", "web") == "/var/log/xen/console/guest-web.log"


def test_downtime_is_its_parts_from_the_last_answer_to_the_first():
    line = Timeline(last_answer=100.0, gone=103.1, start_sent=103.3, up=114.2)
    down = line.downtime()
    assert down == Downtime(down=pytest.approx(14.2), shutdown=pytest.approx(3.1), switch=pytest.approx(0.2),
                            boot=pytest.approx(10.9))
    assert down.line("logger") == "logger: down 14.2 s = shutdown 3.1 + switch 0.2 + boot 10.9"
    assert down.record() == {"down": 14.2, "shutdown": 3.1, "switch": 0.2, "boot": 10.9}
    assert Timeline(last_answer=1.0, gone=2.0, start_sent=3.0).downtime() is None, "never up: no downtime"


def test_the_last_lines_kept_end_with_the_console():
    text = "".join(f"line {n}\r\n" for n in range(100)) + "(initramfs) "
    kept = liveness.last_lines(text, 3)
    assert kept == "line 98\nline 99\n(initramfs) \n"


@pytest.mark.parametrize("keys, verify, port", [
    ({}, "console", 22),
    ({"guest_address": "192.0.2.50"}, "ssh", 22),
    ({"guest_address": "192.0.2.50", "guest_port": 2222}, "ssh", 2222),
    ({"guest_address": "192.0.2.50", "verify": "port", "verify_port": 80}, "port", 80),
    ({"verify": "none"}, "none", 22),
])
def test_inventory_verify_defaults_to_ssh_with_an_address_else_console(keys, verify, port):
    vm = vm_with(**keys)
    assert (vm.verify, vm.verify_port, vm.boot_timeout) == (verify, port, 300.0)


@pytest.mark.parametrize("keys, problem", [
    ({"verify": "ssh"}, "vms.logger.verify: ssh knocks on the guest's address: set guest_address"),
    ({"guest_address": "192.0.2.50", "verify": "port"}, "vms.logger.verify_port: is required with verify: port"),
    ({"verify": "ping"}, "vms.logger.verify: must be one of console, ssh, port, none, got 'ping'"),
    ({"boot_timeout": 0}, "vms.logger.boot_timeout: must be positive, got 0"),
    ({"boot_timeout": 86401}, "vms.logger.boot_timeout: must be at most 86400, got 86401"),
])
def test_inventory_verify_refusals_name_the_key(keys, problem):
    with pytest.raises(InputError) as info:
        vm_with(**keys)
    assert problem in str(info.value)


# -- the console script in a real shell ------------------------------------------------------------

def since(path, offset: int) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", liveness._CONSOLE_SINCE, "sh", str(path), str(offset)],
                          capture_output=True, text=True, check=False)


def test_the_console_script_prints_the_size_then_what_was_written_since(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("old boot\nlogin: ")
    first = since(log, 0)
    assert first.stdout == "16\nold boot\nlogin: "
    with log.open("a") as fh:
        fh.write("\nnew boot\n")
    assert since(log, 16).stdout == "26\n\nnew boot\n"
    assert since(log, 26).stdout == "26\n"


def test_the_console_script_reads_a_rotated_log_from_its_start(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("after rotation\n")
    assert since(log, 5000).stdout == "15\nafter rotation\n"


def test_the_console_script_says_a_missing_log_is_missing(tmp_path):
    assert since(tmp_path / "none.log", 0).returncode == 66


# -- the knock, on real loopback sockets -----------------------------------------------------------

@pytest.fixture
def server():
    """A loopback TCP server that greets with a banner, as sshd does; its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def target(port: int, proxy: str | None = None) -> ssh.SshTarget:
    return ssh.SshTarget("web (guest)", "127.0.0.1", "root", port, proxy_command=proxy)


def test_knock_directly_sees_a_banner_an_open_port_and_a_closed_one(server):
    assert ssh.knock(target(server), expect=b"SSH-")
    assert ssh.knock(target(server))
    assert not ssh.knock(target(server), expect=b"220 ")   # another service's banner
    assert not ssh.knock(target(closed_port()), timeout=2)


@pytest.mark.skipif(shutil.which("nc") is None, reason="netcat-openbsd is not installed")
def test_knock_through_a_proxy_command_needs_the_services_first_bytes(server):
    nc = shutil.which("nc")
    assert ssh.knock(target(server, f"{nc} 127.0.0.1 {server}"), expect=b"SSH-", timeout=5)
    assert not ssh.knock(target(server, f"{nc} 127.0.0.1 {closed_port()}"), expect=b"SSH-", timeout=5)
    assert not ssh.knock(target(server, "/nonexistent/proxy"), expect=b"SSH-", timeout=5)
