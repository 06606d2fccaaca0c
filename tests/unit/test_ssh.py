"""Where a connection goes: the inventory first, then ~/.ssh/config, then the defaults; never the agent."""

import subprocess
import sys

import pytest

from tasks import ssh
from tasks.errors import ToolError
from tests.conftest import REPO

CONFIG = """\
Host xen1
    Hostname 10.0.0.11
    User admin
    Port 2222
    IdentityFile ~/.ssh/xen_%r
    ProxyCommand ssh -W %h:%p bastion -l %r

Host kvm1
    Hostname 10.0.0.12
    ProxyJump jumper@bastion:2200,inner

Host inner
    Hostname 10.9.9.9
    User innerman

Host direct
    ProxyCommand none

Host *
    ForwardAgent yes
"""


def resolve(address, **kw):
    return ssh.resolve(address, address, config_text=CONFIG, **kw)


def test_ssh_config_fills_what_the_inventory_leaves_out():
    t = resolve("xen1")
    assert (t.hostname, t.user, t.port) == ("10.0.0.11", "admin", 2222)
    assert t.proxy_command == "ssh -W 10.0.0.11:2222 bastion -l admin"
    assert t.identity_files[0].endswith("/.ssh/xen_admin")


def test_inventory_values_win_and_the_config_expands_with_them():
    t = resolve("xen1", user="root", port=22)
    assert (t.hostname, t.user, t.port) == ("10.0.0.11", "root", 22)
    assert t.proxy_command == "ssh -W 10.0.0.11:22 bastion -l root", "%p and %r follow the inventory"


def test_an_inventory_proxy_command_wins_and_expands_tokens():
    t = resolve("xen1", proxy_command="ip netns exec lab nc %h %p # 100%%")
    assert t.proxy_command == "ip netns exec lab nc 10.0.0.11 2222 # 100%"


def test_an_inventory_identity_file_wins():
    assert resolve("xen1", identity_file="/keys/site").identity_files == ("/keys/site",)


def test_proxy_jump_hops_each_with_their_own_settings():
    t = resolve("kvm1")
    assert t.proxy_command is None
    assert [(j.hostname, j.user, j.port) for j in t.jumps] == [("bastion", "jumper", 2200),
                                                               ("10.9.9.9", "innerman", 22)]


def test_defaults_without_any_config():
    t = resolve("elsewhere.example")
    assert (t.hostname, t.user, t.port, t.proxy_command, t.jumps) == ("elsewhere.example", "root", 22, None, ())
    assert resolve("direct").proxy_command is None


def test_a_bad_port_in_the_config_is_one_line():
    with pytest.raises(ToolError, match="^~/.ssh/config: Port for odd is not a number$"):
        ssh.resolve("odd", "odd", config_text="Host odd\n    Port twenty\n")


def test_the_agent_is_never_forwarded_and_fabric_reads_no_config_of_its_own():
    """`ForwardAgent yes` in ~/.ssh/config must not lend the operator's keys to every host."""
    conn, proxy = ssh._connection(resolve("xen1"))
    assert conn.forward_agent is False
    assert conn.ssh_config == {"hostname": "10.0.0.11"}, "no file read: every setting is passed explicitly"
    assert (conn.host, conn.user, conn.port) == ("10.0.0.11", "admin", 2222)
    assert proxy is not None and conn.connect_kwargs["sock"] is proxy
    proxy.close()


def test_a_failing_proxy_command_is_one_line_without_paramikos_traceback(tmp_path):
    """The proxy exits while paramiko writes its banner: paramiko's thread logs the failure with
    a traceback before the caller gets it; the operator must see only the caller's line.
    (A process of its own: pytest would capture the log records this is about.)"""
    script = f"""
from tasks import ssh
from tasks.errors import ToolError
target = ssh.SshTarget("xen1", "10.77.0.11", "root", 22, proxy_command="sh -c 'exit 3'",
                       known_hosts={str(tmp_path / "known_hosts")!r})
try:
    ssh.open_connection(target)
except ToolError as exc:
    print(exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.stdout.startswith("xen1: cannot connect to root@10.77.0.11:22: ProxyCommand")
    assert done.stderr == ""


def test_the_proxy_command_runs_in_a_session_of_its_own():
    """A terminal's Ctrl-C reaches its whole foreground group: a proxy in that group would die
    with it and cut the connections the undo needs."""
    import os

    proxy = ssh._proxy("sleep 30")
    try:
        assert os.getsid(proxy.process.pid) == proxy.process.pid != os.getsid(0)
    finally:
        proxy.close()
