"""The remote layer: quoting, dry run, audit, staged uploads, a proxy that dies."""

import io
import json
import shlex

import pytest
from invoke import MockContext, Result

from tasks.errors import ToolError
from tasks.remote import AuditLog, Remote
from tasks.ssh import SshTarget, open_connection


class FakeSftp:
    def __init__(self):
        self.files = {}

    def open(self, path, mode):
        assert mode == "wx", "staged uploads never overwrite"
        sftp = self

        class Handle(io.BytesIO):
            def chmod(self, mode):
                sftp.files[path + ":mode"] = mode

            def __exit__(self, *exc):
                sftp.files[path] = self.getvalue()
                return super().__exit__(*exc)

        return Handle()


class SftpConn(MockContext):
    """MockContext plus the SFTP side of a fabric Connection."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.sftp_client = FakeSftp()

    def sftp(self):
        return self.sftp_client


def test_write_file_stages_over_sftp_then_replaces_atomically(tmp_path, mocker):
    conn = SftpConn(run={__import__("re").compile(".*"): Result()}, repeat=True)
    spy = mocker.spy(conn, "run")
    remote = Remote("kvm1", conn, audit=AuditLog(tmp_path / "audit.jsonl"))
    remote.write_file("/var/lib/xenkvm/my vm.xml", "<domain/>\n")
    (staged, content), = [(k, v) for k, v in conn.sftp_client.files.items() if not k.endswith(":mode")]
    assert content == b"<domain/>\n" and conn.sftp_client.files[staged + ":mode"] == 0o600
    argv = shlex.split(spy.call_args.args[0])
    assert argv[:4] == ["env", "LC_ALL=C", "sh", "-c"] and argv[5:7] == ["sh", "/var/lib/xenkvm/my vm.xml"]
    assert argv[8] == staged and spy.call_args.kwargs["in_stream"] is False
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert kinds == ["upload", "change"]


def test_threads_sharing_a_host_use_its_sftp_session_one_at_a_time():
    """paramiko's SFTP client is not thread-safe: fleet runs must not interleave on it."""
    import threading
    import time

    class Exclusive(FakeSftp):
        def __init__(self):
            super().__init__()
            self.users, self.overlaps = 0, 0

        def open(self, path, mode):
            self.users += 1
            self.overlaps += self.users > 1
            time.sleep(0.01)   # widen the window a second user would hit
            handle = super().open(path, mode)
            self.users -= 1
            return handle

    conn = SftpConn()
    conn.sftp_client = Exclusive()
    remote = Remote("kvm1", conn)
    threads = [threading.Thread(target=remote._stage, args=(f"<domain{i}/>",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert conn.sftp_client.overlaps == 0 and len(conn.sftp_client.files) == 16


def test_write_file_without_sftp_streams_on_stdin(mocker):
    conn = MockContext(run={__import__("re").compile(".*"): Result()}, repeat=True)
    spy = mocker.spy(conn, "run")
    Remote("h", conn).write_file("/etc/fstab", "x\n")
    assert shlex.split(spy.call_args.args[0])[8] == ""
    assert spy.call_args.kwargs["in_stream"].getvalue() == "x\n"


def test_edit_file_creates_a_missing_file_and_its_directory_in_a_real_shell(tmp_path):
    """The write script run by sh here, as on a host: a new file in a new directory, then a
    replacement that keeps a backup of the old content."""
    from invoke import Context
    path = tmp_path / "lib dir" / "my vm.xml"
    remote = Remote("local", Context())

    assert remote.edit_file(str(path), lambda old: "<domain/>\n", create=True)
    assert remote.edit_file(str(path), lambda old: old.replace("domain", "domain type='kvm'"))

    assert path.read_text() == "<domain type='kvm'/>\n"
    backups = [f for f in path.parent.iterdir() if f.name.startswith("my vm.xml.xenkvm-")]
    assert [b.read_text() for b in backups] == ["<domain/>\n"]


def test_dry_run_write_sends_nothing(mocker):
    conn = SftpConn(run={}, repeat=True)
    spy = mocker.spy(conn, "run")
    Remote("h", conn, dry_run=True).write_file("/etc/fstab", "x\n")
    assert spy.call_count == 0 and conn.sftp_client.files == {}


def test_every_command_runs_in_the_c_locale_through_sudo_where_needed_with_quoted_arguments():
    """The parsers read English: virsh's states, lvs, blkid, apt-cache's field names."""
    assert Remote("h", MockContext()).command(["virsh", "start", "a b"]) == "env LC_ALL=C virsh start 'a b'"
    remote = Remote("h", MockContext(), sudo=True)
    assert (remote.command(["apt-get", "install", "x;y"], env={"DEBIAN_FRONTEND": "noninteractive"})
            == "sudo -n -- env LC_ALL=C DEBIAN_FRONTEND=noninteractive apt-get install 'x;y'")


def test_a_proxy_command_whose_output_ends_fails_the_connection_at_once(tmp_path):
    """Its stdin stays open (the banner is sent), its stdout ends: paramiko's own ProxyCommand
    would spin on end-of-file until the 60 s timeout and then report a timeout."""
    with pytest.raises(ToolError) as info:
        open_connection(SshTarget("xen1", "10.77.0.11", "root", 22, proxy_command="sh -c 'exec 1>&-; sleep 3'",
                                  known_hosts=str(tmp_path / "known_hosts"), connect_timeout=60))
    assert "xen1: cannot connect to root@10.77.0.11:22" in str(info.value)
    assert "the proxy command exited" in str(info.value)


def test_once_connected_the_proxys_end_is_a_quiet_end_of_stream():
    """Closing a connection ends its proxy: that must not print paramiko's 'Exception (client)'."""
    from paramiko.ssh_exception import ProxyCommandFailure

    from tasks.ssh import _proxy

    connecting, connected = _proxy("true"), _proxy("true")
    connected.connected = True
    with pytest.raises(ProxyCommandFailure, match="the proxy command exited"):
        connecting.recv(10)
    assert connected.recv(10) == b""


def test_concurrently_overlaps_the_calls_and_keeps_order_tag_and_first_failure():
    import threading

    from tasks import output
    from tasks.output import log, set_vm
    from tasks.remote import concurrently

    meet = threading.Barrier(3, timeout=30)   # passes only if all three calls run at the same time
    lines = []
    set_vm("logger")
    try:
        with output.live(lines.append):
            def call(value):
                meet.wait()
                log.info(f"probe {value}")
                return value
            assert concurrently(lambda: call("a"), lambda: call("b"), lambda: call("c")) == ["a", "b", "c"]

            def fail(text):
                raise ToolError(text)
            with pytest.raises(ToolError, match="^second$"):
                concurrently(lambda: "ok", lambda: fail("second"), lambda: fail("third"))
    finally:
        set_vm("")
    assert sorted(lines) == ["[logger] probe a", "[logger] probe b", "[logger] probe c"]


# -- write_file in a real shell: symlinks, fsync ---------------------------------------------------

def real_shell() -> Remote:
    from invoke import Context
    return Remote("xen1", Context())


def test_a_symlinked_file_is_edited_through_the_link(tmp_path):
    """/etc/xen/auto/NAME.cfg -> ../NAME.cfg: the real cfg changes, the link stays a link, the
    backup lands beside the real cfg."""
    (tmp_path / "auto").mkdir()
    real = tmp_path / "web.cfg"
    real.write_text("memory = 256\n")
    real.chmod(0o640)
    link = tmp_path / "auto" / "web.cfg"
    link.symlink_to("../web.cfg")

    assert real_shell().edit_file(str(link), lambda old: old.replace("256", "512"))

    assert link.is_symlink() and str(link.readlink()) == "../web.cfg"
    assert real.read_text() == "memory = 512\n" and real.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in (tmp_path / "auto").iterdir()) == ["web.cfg"]
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("web.cfg.xenkvm-")]
    assert [b.read_text() for b in backups] == ["memory = 256\n"]


def test_the_write_names_the_file_a_link_points_at(tmp_path, capsys):
    real, link = tmp_path / "web.cfg", tmp_path / "link.cfg"
    real.write_text("a\n")
    link.symlink_to(real)
    real_shell().write_file(str(link), "b\n")
    assert f"* xen1: write {link} -> {real} (backup {real}.xenkvm-" in capsys.readouterr().out


def test_a_dangling_symlink_is_refused_and_nothing_is_written(tmp_path):
    """Writing through it would create the file it names, wherever that is."""
    from tasks.errors import GuardError

    link = tmp_path / "web.cfg"
    link.symlink_to("../gone/web.cfg")
    with pytest.raises(GuardError, match=f"^xen1: {link} is a symlink to a file that does not exist: refusing "
                                         f"to write through it; point it at the real file or remove it$"):
        real_shell().edit_file(str(link), lambda old: "memory = 512\n", create=True)
    assert [p.name for p in tmp_path.iterdir()] == ["web.cfg"] and link.is_symlink()
    assert not (tmp_path.parent / "gone").exists()


def sync_shim(directory, body: str) -> None:
    shim = directory / "sync"
    shim.write_text("#!/bin/sh\n" + body)
    shim.chmod(0o755)


def test_the_new_file_is_fsynced_before_the_rename_and_its_directory_after(tmp_path, mocker):
    """A `sync` that records each argument and what the target held at that moment, then syncs."""
    import os
    bin_dir, data = tmp_path / "bin", tmp_path / "data"
    bin_dir.mkdir(), data.mkdir()
    record = tmp_path / "sync.log"
    sync_shim(bin_dir, f'for a in "$@"; do [ "$a" = -- ] || printf "%s|%s\\n" "$a" "$(cat {data}/web.cfg)" '
                       f'>> {record}; done\nexec /bin/sync "$@"\n')
    mocker.patch.dict(os.environ, {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    (data / "web.cfg").write_text("old")

    real_shell().write_file(str(data / "web.cfg"), "new")

    first, second = [line.split("|") for line in record.read_text().splitlines()]
    assert first[0].startswith(f"{data}/web.cfg.tmp.") and first[1] == "old", "the temp file, before the rename"
    assert second == [str(data), "new"], "the directory, after the rename"


def test_a_host_whose_sync_takes_no_file_still_writes(tmp_path, mocker):
    """coreutils before 8.24 (Debian 8 and older): no option but --help and --version (so no -d
    or -f); `sync FILE` says it ignores the file and syncs everything."""
    import os
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sync_shim(bin_dir, 'for a in "$@"; do case $a in --) ;; -*) echo "sync: invalid option -- $a" >&2; exit 1;; '
                       'esac; done\n[ $# -eq 0 ] || echo "sync: ignoring all arguments" >&2\nexec /bin/sync\n')
    mocker.patch.dict(os.environ, {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    target = tmp_path / "web.cfg"
    target.write_text("old")
    real_shell().write_file(str(target), "new")
    assert target.read_text() == "new"
