"""Data safety on real lab hosts: files written through symlinks, a status that outlives a host."""

from __future__ import annotations

import pytest

from tests.integration.runner import ON_XEN, ok, where

pytestmark = pytest.mark.lab

CFG, REAL_CFG = "/etc/xen/auto/logger.cfg", "/etc/xen/logger.cfg"


def listing(lab, host: str, directory: str) -> list[str]:
    return lab.exec(host, ["ls", "-A", directory], check=True).stdout.split()


def test_prepare_cfg_edits_the_file_a_symlinked_cfg_points_at(lab, fab, tmp_path):
    """/etc/xen/auto/logger.cfg -> ../logger.cfg, a common layout: the link stays a link and the
    file it names gets the dual-boot cfg, its backup beside it."""
    original = lab.exec("xen1", ["cat", CFG], check=True).stdout
    lab.exec("xen1", ["sh", "-c", f"mv {CFG} {REAL_CFG} && ln -s ../logger.cfg {CFG}"], check=True)
    (tmp_path / "logger.cfg").write_text(original)
    root_fs = lab.exec("xen1", ["blkid", "-p", "-o", "value", "-s", "UUID", "/dev/drbd5"], check=True).stdout.strip()
    expected = ok(fab("xenhost.convert-cfg", "--cfg", str(tmp_path / "logger.cfg"), "--root-uuid", root_fs)).stdout
    assert f"UUID={root_fs}" in expected
    assert expected != original

    out = ok(fab("xenhost.prepare-cfg", "--vm", "logger")).stdout

    assert f"* xen1: write {CFG} -> {REAL_CFG} (backup {REAL_CFG}.xenkvm-" in out
    assert lab.exec("xen1", ["readlink", CFG], check=True).stdout.strip() == "../logger.cfg"
    assert lab.exec("xen1", ["cat", REAL_CFG], check=True).stdout == expected
    assert listing(lab, "xen1", "/etc/xen/auto") == ["logger.cfg"]
    backups = [name for name in listing(lab, "xen1", "/etc/xen") if name.startswith("logger.cfg.xenkvm-")]
    assert len(backups) == 1
    assert lab.exec("xen1", ["cat", f"/etc/xen/{backups[0]}"], check=True).stdout == original
    again = ok(fab("xenhost.prepare-cfg", "--vm", "logger")).stdout
    assert f"* xen1: {CFG} ... unchanged" in again


def test_a_dangling_symlink_is_refused_in_one_line(lab, fab):
    """The cfg's link names nothing: prepare-cfg finds no cfg; the domain XML's link names nothing:
    define refuses to write through it. Neither creates the file the link names."""
    lab.exec("xen1", ["sh", "-c", f"rm {CFG} && ln -s ../gone.cfg {CFG}"], check=True)
    cfg = fab("xenhost.prepare-cfg", "--vm", "logger")
    assert (cfg.returncode, cfg.stderr) == (1, f"error: xen1: {CFG} does not exist\n")
    assert lab.exec("xen1", ["readlink", CFG], check=True).stdout.strip() == "../gone.cfg"
    assert "gone.cfg" not in listing(lab, "xen1", "/etc/xen")
    lab.reset()   # the real cfg back: define renders the domain from it
    xml = "/var/lib/xenkvm/logger.xml"
    lab.exec("kvm1", ["sh", "-c", f"mkdir -p /var/lib/xenkvm && ln -s /var/lib/xenkvm/gone/logger.xml {xml}"],
             check=True)
    define = fab("kvmhost.define", "--vm", "logger")
    assert define.returncode == 3
    assert define.stderr == (f"error: kvm1: {xml} is a symlink to a file that does not exist: refusing to "
                             f"write through it; point it at the real file or remove it\n")
    assert listing(lab, "kvm1", "/var/lib/xenkvm") == ["logger.xml"]
    assert lab.exec("kvm1", ["readlink", xml], check=True).stdout.strip() == "/var/lib/xenkvm/gone/logger.xml"


def test_status_reports_kvm1_while_xen1_does_not_answer_and_exits_non_zero(lab, fab):
    """xen1's sshd is ended (by its pid, inside xen1): status still reports kvm1's side."""
    lab.exec("xen1", ["sh", "-c", "kill $(cat /run/sshd.pid)"], check=True)
    result = fab("status", timeout=60)
    lines = result.stdout.splitlines()
    rows = [line.split() for line in lines[1:] if not line.startswith("!")]
    assert {(r[0], r[1]) for r in rows} == {("logger", "xen1?")}
    assert sorted(tuple(r[2:5]) for r in rows) == [
        ("logger-system", "kvm1", "Secondary"), ("logger-system", "xen1", "unreachable"),
        ("logger-var", "kvm1", "Secondary"), ("logger-var", "xen1", "unreachable")]
    assert any(line.startswith("! xen1: cannot connect to root@") for line in lines), result.stdout
    # Before it, paramiko prints its own traceback of the failed proxy (issue 13 item 11, not this test's).
    assert (result.returncode, result.stderr.splitlines()[-1]) == (1, "error: status incomplete: xen1 unreachable")


def test_a_move_refuses_to_format_a_kvm_swap_that_holds_only_a_partition_table(lab, fab):
    """blkid shows a bare partition table as PTTYPE without TYPE: once taken for blank, and
    formatted. Now the move refuses before any change and names the volume."""
    swap = "/dev/vg_main/logger-swap"
    lab.exec("kvm1", ["sh", "-c", f"wipefs -a -q {swap} && printf 'label: dos\\n,1M,L\\n' | sfdisk -q {swap}"],
             check=True)
    result = fab("migrate", "--vm", "logger")
    assert result.returncode != 0, result.stdout   # migrate reports a guard's refusal with exit 1
    assert result.stderr.splitlines()[-1] == (
        f"error: logger: kvm1:{swap} holds dos (at 0x1fe): refusing to format it as the guest's swap; if it is meant "
        f"to be that swap, wipe it first (wipefs -a), else fix the inventory's local: disk")
    assert where(lab) == ON_XEN
    assert lab.exec("kvm1", ["wipefs", "-n", "-p", swap], check=True).stdout == "0x1fe,,,dos\n"
    assert not [entry for entry in fab.audit() if entry["kind"] == "change"], "nothing changed"
