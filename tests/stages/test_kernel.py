"""Direct-kernel boot at command level: kvmhost.fetch-kernel copies the guest's kernel and initrd
to the KVM host, and a move to KVM or a rehearsal refuses a direct-kernel VM without them."""

from __future__ import annotations

import dataclasses
import json

import pytest
from invoke import Config, Context

from tasks import flows, kvmhost
from tasks.errors import GuardError, InputError, ToolError
from tasks.inventory import Inventory, load_inventory
from tasks.remote import AuditLog, Site
from tests.conftest import REPO
from tests.seed import SEED_CFG
from tests.stages.fakehosts import FakeHost, Shared

RESOURCES = ("logger-system", "logger-var")
GUEST = "guest:logger"
BOOT = "/var/lib/xenkvm/boot/logger"
KVM_CONFIG = "CONFIG_PARAVIRT=y\nCONFIG_XEN=y\nCONFIG_BLK_DEV_SD=m\nCONFIG_ATA_PIIX=m\n"
XEN_CONFIG = "CONFIG_X86_64_XEN=y\nCONFIG_XEN=y\n"


def kernel(version: str) -> bytes:
    return f"\x7fELF kernel {version}\x00\xff".encode("latin-1") * 1000


def initrd(version: str, build: int = 1) -> bytes:
    return f"\x1f\x8b initrd {version} build {build}\x00".encode("latin-1") * 3000


def install_kernel(shared: Shared, version: str, config: str | None = KVM_CONFIG) -> None:
    """As the kernel package does; without a config, the version's name decides whether it is Xen-only."""
    shared.files[(GUEST, f"/boot/vmlinuz-{version}")] = kernel(version)
    shared.files[(GUEST, f"/boot/initrd.img-{version}")] = initrd(version)
    if config is not None:
        shared.files[(GUEST, f"/boot/config-{version}")] = config


def direct_kernel_inventory() -> Inventory:
    inv = load_inventory(REPO / "hosts.yml")
    vms = {**inv.vms, "logger": dataclasses.replace(inv.vm("logger"), boot="direct-kernel")}
    return dataclasses.replace(inv, vms=vms)


@pytest.fixture
def world(tmp_path):
    """The seed's site with logger on Xen, booting direct-kernel. Its guest has two kernels that
    boot under KVM, of which 6.1.0-13 is the newer (a string sort says -9), and Xen-only ones,
    one of them the newest of all."""
    inv = direct_kernel_inventory()
    shared = Shared(roles={r: {"xen1": "Primary", "kvm1": "Secondary"} for r in RESOURCES},
                    disk={r: {"xen1": "UpToDate", "kvm1": "UpToDate"} for r in RESOURCES},
                    xen_running={"logger"})
    shared.files[("xen1", "/etc/xen/auto/logger.cfg")] = SEED_CFG
    install_kernel(shared, "2.6.32-5-xen-amd64", XEN_CONFIG)
    install_kernel(shared, "6.1.0-20-xen-amd64", config=None)
    install_kernel(shared, "6.1.0-9-amd64")
    install_kernel(shared, "6.1.0-13-amd64")
    hosts = {"xen1": FakeHost("xen1", "xen", "kvm1", shared), "kvm1": FakeHost("kvm1", "kvm", "xen1", shared),
             "logger (guest)": FakeHost(GUEST, "guest", None, shared)}

    class World:
        def __init__(self):
            self.shared, self.inv, self.tmp, self.hosts = shared, inv, tmp_path, hosts
            self.audit = tmp_path / "audit.jsonl"

        def site(self, dry_run=False):
            return Site(inv, dry_run=dry_run, audit=AuditLog(self.audit),
                        connect=lambda label, *a, **k: hosts[label], knock=shared.knock)

        def fetch(self, dry_run=False):
            return kvmhost.fetch_guest_kernel(self.site(dry_run), inv.vm("logger"))

        def move(self, to="kvm"):
            ctx = flows.Ctx(self.site(), inv, inv.vm("logger"), timeout=0.2)
            return flows.move(ctx, to, tmp_path / "journal", tmp_path / "locks")

        def entries(self, *kinds):
            """Audit entries of these kinds, since the last call."""
            if not self.audit.exists():
                return []
            lines = self.audit.read_text().splitlines()
            self.audit.unlink()
            return [f"{e['host']}: {e['command']}" for e in map(json.loads, lines) if e["kind"] in kinds]

        def kvm_files(self):
            return {p: c for (h, p), c in shared.files.items() if h == "kvm1" and p.startswith(BOOT)}

    return World()


def test_fetch_copies_the_newest_kernel_that_boots_under_kvm(world, capsys):
    assert world.fetch() == "6.1.0-13-amd64"
    assert world.kvm_files() == {f"{BOOT}/vmlinuz": kernel("6.1.0-13-amd64"),
                                 f"{BOOT}/initrd.img": initrd("6.1.0-13-amd64"),
                                 f"{BOOT}/version": "6.1.0-13-amd64\n"}
    uploads = world.entries("upload")
    assert [u.split(" -> ")[0] for u in uploads if "/boot/" in u] == [
        "kvm1: sftp copy guest:logger:/boot/vmlinuz-6.1.0-13-amd64",
        "kvm1: sftp copy guest:logger:/boot/initrd.img-6.1.0-13-amd64"]
    assert not any(p.startswith("/tmp/") for h, p in world.shared.files), "no staged file left behind"
    out = capsys.readouterr().out
    assert "* guest:logger: newest kernel that boots under KVM: 6.1.0-13-amd64" in out
    assert f"* kvm1: install vmlinuz, initrd.img in {BOOT} ... ok" in out


def test_second_fetch_changes_nothing(world, capsys):
    world.fetch()
    world.entries()
    before = dict(world.shared.files)
    capsys.readouterr()
    assert world.fetch() == "6.1.0-13-amd64"
    assert world.entries("change", "upload") == []
    assert world.shared.files == before
    out = capsys.readouterr().out
    for name in ("vmlinuz", "initrd.img", "version"):
        assert f"* kvm1: {BOOT}/{name} ... unchanged" in out


def test_a_rebuilt_initrd_alone_is_copied_again(world):
    world.fetch()
    world.entries()
    world.shared.files[(GUEST, "/boot/initrd.img-6.1.0-13-amd64")] = initrd("6.1.0-13-amd64", build=2)
    world.fetch()
    assert [e.split(" -> ")[0] for e in world.entries("upload")] == [
        "kvm1: sftp copy guest:logger:/boot/initrd.img-6.1.0-13-amd64"]
    assert world.kvm_files()[f"{BOOT}/initrd.img"] == initrd("6.1.0-13-amd64", build=2)
    assert world.kvm_files()[f"{BOOT}/vmlinuz"] == kernel("6.1.0-13-amd64")


def test_a_kernel_upgrade_is_fetched_with_its_version(world, capsys):
    world.fetch()
    install_kernel(world.shared, "6.1.0-18-amd64")
    capsys.readouterr()
    assert world.fetch() == "6.1.0-18-amd64"
    files = world.kvm_files()
    assert (files[f"{BOOT}/vmlinuz"], files[f"{BOOT}/initrd.img"]) == (kernel("6.1.0-18-amd64"),
                                                                      initrd("6.1.0-18-amd64"))
    assert files[f"{BOOT}/version"] == "6.1.0-18-amd64\n"
    out = capsys.readouterr().out
    assert "-6.1.0-13-amd64\n+6.1.0-18-amd64" in out


def test_a_guest_with_xen_kernels_only_is_refused_naming_them(world):
    for name in ("vmlinuz", "config", "initrd.img"):
        for version in ("6.1.0-9-amd64", "6.1.0-13-amd64"):
            del world.shared.files[(GUEST, f"/boot/{name}-{version}")]
    with pytest.raises(GuardError) as info:
        world.fetch()
    assert str(info.value) == ("guest:logger: no kernel in /boot boots under KVM (2.6.32-5-xen-amd64 (Xen only), "
                               "6.1.0-20-xen-amd64 (Xen only)): `fab guest.prepare --vm logger` installs one")
    assert info.value.code == 3
    assert world.entries("change", "upload") == [] and world.kvm_files() == {}


def test_a_missing_initrd_is_refused_before_any_change(world):
    del world.shared.files[(GUEST, "/boot/initrd.img-6.1.0-13-amd64")]
    with pytest.raises(GuardError, match=r"^guest:logger: /boot/initrd.img-6.1.0-13-amd64 is missing: make it "
                                         r"in the guest with `update-initramfs -c -k 6.1.0-13-amd64`$"):
        world.fetch()
    assert world.entries("change", "upload") == [] and world.kvm_files() == {}


def test_dry_run_says_what_it_would_copy_and_changes_nothing(world, capsys):
    assert world.fetch(dry_run=True) == "6.1.0-13-amd64"
    assert world.entries("change", "upload") == []
    assert world.kvm_files() == {}
    assert not any(line.startswith("sftp put") for _, line in world.shared.log)
    out = capsys.readouterr().out
    assert f"would copy guest:logger:/boot/vmlinuz-6.1.0-13-amd64 to kvm1:{BOOT}/vmlinuz" in out
    assert f"would copy guest:logger:/boot/initrd.img-6.1.0-13-amd64 to kvm1:{BOOT}/initrd.img" in out
    assert f"would write kvm1:{BOOT}/version" in out


def test_a_guest_without_sha256sum_is_hashed_over_sftp(world):
    """Debian 4's coreutils has no sha256sum; the hash is taken from the bytes as SFTP reads them."""
    world.shared.without_sha256sum.add(GUEST)
    world.fetch()
    assert world.kvm_files()[f"{BOOT}/vmlinuz"] == kernel("6.1.0-13-amd64")
    world.entries()
    world.fetch()
    assert world.entries("change", "upload") == []


def test_a_file_that_changes_while_it_is_copied_is_not_installed(world, mocker):
    guest = world.hosts["logger (guest)"]
    real = guest.sftp

    def initramfs_rebuilt_meanwhile():
        world.shared.files[(GUEST, "/boot/initrd.img-6.1.0-13-amd64")] = initrd("6.1.0-13-amd64", build=2)
        return real()

    mocker.patch.object(guest, "sftp", initramfs_rebuilt_meanwhile)
    with pytest.raises(ToolError, match="initrd.img-6.1.0-13-amd64 changed while it was copied") as info:
        world.fetch()
    assert type(info.value) is ToolError
    assert world.kvm_files() == {}
    assert not any(p.startswith("/tmp/") for h, p in world.shared.files), "staged files removed"


def test_a_grub_vm_has_no_kernel_to_fetch(world):
    vm = dataclasses.replace(world.inv.vm("logger"), boot="grub")
    with pytest.raises(InputError, match="vms.logger.boot is grub: only a direct-kernel VM"):
        kvmhost.fetch_guest_kernel(world.site(), vm)


# -- the guards: a direct-kernel domain needs its kernel on the KVM host ------------------------

def test_move_to_kvm_without_a_fetched_kernel_is_refused_before_any_change(world):
    before = dict(world.shared.files)
    with pytest.raises(GuardError) as info:
        world.move()
    assert str(info.value) == (f"kvm1: {BOOT} lacks vmlinuz or initrd.img, which logger boots "
                               f"(boot: direct-kernel): run `fab kvmhost.fetch-kernel --vm logger`")
    assert world.entries("change", "upload") == []
    assert world.shared.files == before
    assert world.shared.xen_running == {"logger"} and world.shared.kvm_defined == set()


def test_an_empty_initrd_counts_as_missing(world):
    world.fetch()
    world.shared.files[("kvm1", f"{BOOT}/initrd.img")] = b""
    with pytest.raises(GuardError, match="lacks vmlinuz or initrd.img"):
        world.move()


def test_move_to_kvm_after_fetch_boots_the_fetched_kernel(world, capsys):
    world.fetch()
    capsys.readouterr()
    outcome = world.move()
    assert outcome.ok and outcome.runs_on == ["kvm1"]
    assert "ok: kvm1 has kernel 6.1.0-13-amd64 and its initrd for logger's direct boot" in capsys.readouterr().out
    xml = world.shared.files[("kvm1", "/var/lib/xenkvm/logger.xml")]
    assert f"<kernel>{BOOT}/vmlinuz</kernel>" in xml and f"<initrd>{BOOT}/initrd.img</initrd>" in xml
    assert "net.ifnames=0" in xml


def test_rehearsal_without_a_fetched_kernel_is_refused_before_any_snapshot(world):
    with pytest.raises(GuardError, match=r"run `fab kvmhost.fetch-kernel --vm logger`"):
        kvmhost.rehearse_vm(world.site(), world.inv, world.inv.vm("logger"), seconds=0.1, method="qcow2")
    assert world.shared.snapshots == []
    assert world.entries("change", "upload") == []


# -- the tasks --------------------------------------------------------------------------------

@pytest.fixture
def tasks_see(world, mocker):
    mocker.patch.object(kvmhost.inventory, "from_context", lambda c: world.inv)
    mocker.patch.object(kvmhost, "site_from_context", lambda c, inv, dry_run=False: world.site(dry_run))
    return Context(Config())


def test_state_says_which_kernel_kvm_boots(world, tasks_see, capsys):
    kvmhost.state(tasks_see, vm="logger")
    assert capsys.readouterr().out.splitlines() == [
        "kvm1: logger not found",
        f"kvm1: logger has no kernel in {BOOT}: run `fab kvmhost.fetch-kernel --vm logger`"]
    kvmhost.fetch_kernel(tasks_see, vm="logger")
    capsys.readouterr()
    kvmhost.state(tasks_see, vm="logger")
    assert capsys.readouterr().out.splitlines()[1] == f"kvm1: logger boots kernel 6.1.0-13-amd64 from {BOOT}"


def test_fetch_kernel_task_honours_dry_run(world, tasks_see):
    kvmhost.fetch_kernel(tasks_see, vm="logger", dry_run=True)
    assert world.kvm_files() == {}
    kvmhost.fetch_kernel(tasks_see, vm="logger")
    assert set(world.kvm_files()) == {f"{BOOT}/vmlinuz", f"{BOOT}/initrd.img", f"{BOOT}/version"}


def test_every_kvmhost_task_has_a_docstring_and_help_for_every_argument():
    for name in kvmhost.ns.task_names:
        task = kvmhost.ns[name]
        assert task.__doc__, name
        assert all(arg.help for arg in task.get_arguments()), name
