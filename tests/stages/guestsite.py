"""A site of VMs whose guests answer too: the seed's hosts (FakeHost) and, per VM, a Debian 12
systemd guest as xen-tools made it (FakeGuest), running on Xen and not prepared yet. For the
stage tests of `fab prepare` and `fab readiness`, which use every stage at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml
from invoke import Config, Context

from tasks.inventory import Inventory, parse_inventory
from tasks.prepare import StateDirs
from tasks.remote import AuditLog, Site
from tests.conftest import REPO
from tests.seed import seed_cfg_of
from tests.stages.fakehosts import FakeGuest, FakeHost, GuestOs, Shared

KERNEL = "6.1.0-13-amd64"
KVM_CONFIG = "CONFIG_PARAVIRT=y\nCONFIG_XEN=y\nCONFIG_BLK_DEV_SD=m\nCONFIG_ATA_PIIX=m\nCONFIG_VIRTIO_BLK=m\n"
FSTAB = ("proc /proc proc defaults 0 0\n/dev/xvda1 none swap sw 0 0\n"
         "/dev/xvda2 / ext4 errors=remount-ro 0 1\n/dev/xvda3 /var ext4 defaults 0 2\n")
MODULES = "# List of modules that you want to include in your initramfs.\n"
SWAP = "/dev/vg_main/{}-swap"
SWAP_UUID = "5d1c0b4e-0000-4000-8000-00000000a00{}"


def inventory(names: tuple[str, ...], **changes) -> Inventory:
    """The seed's inventory with `logger` copied as each further name (own disks, cfg and MAC)."""
    data = yaml.safe_load((REPO / "hosts.yml").read_text())
    seed = data["vms"]["logger"]
    for n, name in enumerate(names[1:], 1):
        vm = yaml.safe_load(yaml.safe_dump(seed))
        vm.update(cfg=f"/etc/xen/auto/{name}.cfg", mac=f"00:16:3e:37:d0:7{n}", guest_address=f"192.0.2.{50 + n}", disks=[
            {"resource": f"{name}-system", "device": f"/dev/drbd{10 * n}", "port": 7800 + 10 * n, "meta_disk": "internal"},
            {"resource": f"{name}-var", "device": f"/dev/drbd{10 * n + 1}", "port": 7801 + 10 * n, "meta_disk": "internal"},
            {"local": SWAP.format(name)}])
        data["vms"][name] = vm
    inv = parse_inventory(yaml.safe_dump(data))
    vms = {name: dataclasses.replace(inv.vm(name), **changes) for name in names}
    return dataclasses.replace(inv, vms=vms)


class World:
    """The site, its guests' OS state, and the paths a run keeps its records in."""

    def __init__(self, tmp_path: Path, names: tuple[str, ...] = ("logger",), **vm_changes):
        self.inv = inventory(names, **vm_changes)
        self.names = names
        resources = {vm.name: [d.resource for d in vm.resources] for vm in self.inv.vms.values()}
        every = [r for rs in resources.values() for r in rs]
        self.shared = Shared(roles={r: {"xen1": "Primary", "kvm1": "Secondary"} for r in every},
                             disk={r: {"xen1": "UpToDate", "kvm1": "UpToDate"} for r in every},
                             xen_running=set(names), disks_of=resources,
                             addresses={vm.guest_address: vm.name for vm in self.inv.vms.values() if vm.guest_address})
        self.hosts = {"xen1": FakeHost("xen1", "xen", "kvm1", self.shared),
                      "kvm1": FakeHost("kvm1", "kvm", "xen1", self.shared)}
        self.guests: dict[str, GuestOs] = {}
        for n, name in enumerate(names):
            self.shared.files[("xen1", f"/etc/xen/auto/{name}.cfg")] = seed_cfg_of(name, n)
            self.shared.signatures[("xen1", SWAP.format(name))] = {"TYPE": "swap", "UUID": SWAP_UUID.format(n)}
            self.add_guest(name, n)
        self.tmp = tmp_path
        self.audit = tmp_path / "audit.jsonl"
        self.dirs = StateDirs(tmp_path / "journal", tmp_path / "locks", tmp_path / "rehearsals")
        self.context = Context(Config(overrides={"state_dir": str(tmp_path)}))

    def add_guest(self, name: str, n: int) -> None:
        label = f"guest:{name}"
        os_ = GuestOs(devices={f"/dev/xvda{i}": f"0000000{n}-0000-4000-8000-00000000000{i}" for i in (1, 2, 3)})
        self.guests[name] = os_
        root = next(d for d in self.inv.vm(name).resources if d.resource.endswith("-system"))   # xvda2
        self.shared.signatures[("xen1", root.device["xen1"])] = {"TYPE": "ext4", "UUID": os_.devices["/dev/xvda2"]}
        self.hosts[f"{name} (guest)"] = FakeGuest(label, self.shared, os_)
        self.guest_file("/etc/fstab", FSTAB, name)
        self.guest_file("/etc/initramfs-tools/modules", MODULES, name)
        self.install_kernel(KERNEL, name)
        self.hosts[f"{name} (guest)"].build_initrds()

    def guest_file(self, path: str, content, name: str = "logger") -> None:
        self.shared.files[(f"guest:{name}", path)] = content

    def read_guest(self, path: str, name: str = "logger"):
        return self.shared.files.get((f"guest:{name}", path))

    def install_kernel(self, version: str, name: str = "logger") -> None:
        """As the package does, without its postinst's initramfs and grub runs."""
        self.guest_file(f"/boot/vmlinuz-{version}", f"kernel {version}".encode(), name)
        self.guest_file(f"/boot/config-{version}", KVM_CONFIG, name)

    def site(self, dry_run: bool = False, interruption=None) -> Site:
        return Site(self.inv, dry_run=dry_run, audit=AuditLog(self.audit),
                    connect=lambda label, *a, **k: self.hosts[label], interruption=interruption,
                    knock=self.shared.knock)

    def site_for(self, c, inv, dry_run=False, interruption=None) -> Site:
        """site_from_context's stand-in for the tasks."""
        return self.site(dry_run, interruption)

    def changes(self) -> list[str]:
        """Every command sent that is no probe, as host: command (the audit log's kinds)."""
        import json
        if not self.audit.exists():
            return []
        entries = [json.loads(line) for line in self.audit.read_text().splitlines()]
        return [f"{e['host']}: {e['command']}" for e in entries if e["kind"] in ("change", "upload")]
