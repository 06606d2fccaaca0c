"""Inventory: the seed loads, every kind of mistake is one line naming file and key."""

import os
import subprocess
import textwrap

import pytest
import yaml

from tasks.errors import GuardError, InputError
from tasks.inventory import (
    LocalDisk,
    ReplicatedDisk,
    check_sharers_selected,
    is_domain_name,
    load_inventory,
    missing_sharers,
    parse_inventory,
)
from tests.conftest import REPO

SEED = REPO / "hosts.yml"


def seed_data() -> dict:
    return yaml.safe_load(SEED.read_text())


def errors_of(data: dict) -> list[str]:
    with pytest.raises(InputError) as info:
        parse_inventory(yaml.safe_dump(data), "inv.yml")
    lines = str(info.value).splitlines()
    assert all(line.startswith("inv.yml") for line in lines), lines
    return lines


def test_seed_inventory_is_the_seeds_site():
    inv = load_inventory(SEED)
    assert set(inv.hosts) == {"xen1", "kvm1"}
    assert inv.hosts["xen1"].role == "xen" and inv.hosts["kvm1"].role == "kvm"
    vm = inv.vm("logger")
    assert (vm.xen_host, vm.kvm_host) == ("xen1", "kvm1")
    assert vm.cfg == "/etc/xen/auto/logger.cfg"
    assert vm.mac == "00:16:3e:37:d0:70"
    assert vm.memory == 2048 and vm.bridge == "br0" and vm.bus == "ide"
    system, var, swap = vm.disks
    assert isinstance(system, ReplicatedDisk) and system.resource == "logger-system"
    assert system.device == {"xen1": "/dev/drbd5", "kvm1": "/dev/drbd5"}
    assert isinstance(var, ReplicatedDisk) and var.device["kvm1"] == "/dev/drbd6"
    assert isinstance(swap, LocalDisk) and swap.path["kvm1"] == "/dev/vg_main/logger-swap"


def test_max_starts_is_no_limit_unless_given():
    data = seed_data()
    data["hosts"]["kvm1"]["max_starts"] = 2
    inv = parse_inventory(yaml.safe_dump(data))
    assert inv.host("kvm1").max_starts == 2 and inv.host("xen1").max_starts is None


def test_cfg_path_defaults_to_xen_auto():
    data = seed_data()
    del data["vms"]["logger"]["cfg"]
    assert parse_inventory(yaml.safe_dump(data)).vm("logger").cfg == "/etc/xen/auto/logger.cfg"


def test_per_host_device_mapping():
    data = seed_data()
    data["vms"]["logger"]["disks"][0]["device"] = {"xen1": "/dev/drbd5", "kvm1": "/dev/drbd15"}
    disk = parse_inventory(yaml.safe_dump(data)).vm("logger").disks[0]
    assert disk.device == {"xen1": "/dev/drbd5", "kvm1": "/dev/drbd15"}


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["hosts"]["xen1"].update(colour="red"), "inv.yml: hosts.xen1.colour: unknown key"),
    (lambda d: d["hosts"]["xen1"].update(port="22"), "inv.yml: hosts.xen1.port: expected int, got str '22'"),
    (lambda d: d["hosts"]["xen1"].update(role="hyperv"), "inv.yml: hosts.xen1.role: must be one of xen, kvm"),
    (lambda d: d["hosts"]["kvm1"].update(toolstack="xl"), "inv.yml: hosts.kvm1.toolstack: only Xen hosts"),
    (lambda d: d["hosts"]["kvm1"].update(max_starts=0), "inv.yml: hosts.kvm1.max_starts: must be positive, got 0"),
    (lambda d: d["hosts"]["kvm1"].update(max_starts=True), "inv.yml: hosts.kvm1.max_starts: expected int, got bool"),
    (lambda d: d["vms"]["logger"].update(xen_host="xen9"), "inv.yml: vms.logger.xen_host: names undefined host 'xen9'"),
    (lambda d: d["vms"]["logger"].update(xen_host="kvm1"), "inv.yml: vms.logger.xen_host: host 'kvm1' has role kvm"),
    (lambda d: d["vms"]["logger"].update(mac="00:16:3E:37:D0"), "inv.yml: vms.logger.mac: not a MAC address"),
    (lambda d: d["vms"]["logger"].update(bus="usb"), "inv.yml: vms.logger.bus: must be one of"),
    (lambda d: d["vms"]["logger"]["disks"][0].update(device="drbd5"), "inv.yml: vms.logger.disks[0].device.xen1: expected an absolute path"),
    (lambda d: d["vms"]["logger"]["disks"][0].update(device="/dev/sda"), "inv.yml: vms.logger.disks[0].device: expected /dev/drbdN"),
    (lambda d: d["vms"]["logger"]["disks"][0].update(device={"xen1": "/dev/drbd5"}), "inv.yml: vms.logger.disks[0].device: has no entry for kvm1"),
    (lambda d: d["vms"]["logger"]["disks"][0].update(resource="a b"), "inv.yml: vms.logger.disks[0].resource: not a valid DRBD resource name"),
    (lambda d: d["vms"]["logger"]["disks"][0].update(resource="all"), "inv.yml: vms.logger.disks[0].resource: not a valid DRBD resource name"),
    (lambda d: d["vms"].update({"bad_name": d["vms"].pop("logger")}), "inv.yml: vms.bad_name: VM name is not a valid domain name"),
    (lambda d: d["vms"]["logger"].update(disks=[]), "inv.yml: vms.logger.disks: expected a non-empty list"),
])
def test_each_mistake_is_one_line_naming_the_key(mutate, expected):
    data = seed_data()
    mutate(data)
    assert any(line.startswith(expected) for line in errors_of(data)), errors_of(data)


def test_two_vms_may_not_share_resource_device_or_mac():
    data = seed_data()
    twin = yaml.safe_load(yaml.safe_dump(data["vms"]["logger"]))
    twin["disks"] = [twin["disks"][0]]
    data["vms"]["twin"] = twin
    lines = errors_of(data)
    assert any("vms.twin: MAC 00:16:3e:37:d0:70 is also used by VM 'logger'" in l for l in lines)
    assert any("vms.twin: DRBD resource logger-system is also used by VM 'logger'" in l for l in lines)
    assert any("vms.twin: device /dev/drbd5 on xen1 is also used by VM 'logger'" in l for l in lines)


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(InputError) as info:
        parse_inventory("hosts:\n  xen1: [unclosed\n", "inv.yml")
    assert str(info.value).startswith("inv.yml:3: YAML syntax error")


def test_domain_names():
    assert is_domain_name("logger") and is_domain_name("web-1.example.org")
    assert not any(map(is_domain_name, ["", "-x", "a_b", "a b", "x" * 64, "a..b", "logger;rm", "logger\n", "xen1\n"]))


def _fab(*args, env_extra=None, cwd=REPO):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([str(REPO / ".venv" / "bin" / "fab"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_fabric_inventory_env_and_one_line_error(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(textwrap.dedent("""\
        hosts:
          xen1: {address: 192.0.2.1, role: xen}
        vms:
          web: {xen_host: xen1, kvm_host: kvm9, disks: [{resource: web, device: /dev/drbd1}]}
        """))
    result = _fab("inventory.check", env_extra={"FABRIC_INVENTORY": str(bad)})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {bad}: vms.web.kvm_host: names undefined host 'kvm9'"


def test_fabric_yaml_sets_the_inventory(tmp_path):
    """A fabric.yaml (here given with -f, as runtime config) names the inventory."""
    inv = tmp_path / "site.yml"
    inv.write_text(SEED.read_text())
    (tmp_path / "fabric.yaml").write_text(f"inventory: {inv}\n")
    result = _fab("-f", str(tmp_path / "fabric.yaml"), "inventory.check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{inv}: ok, 2 hosts, 1 VMs")


def test_two_resources_may_not_listen_on_one_port():
    data = seed_data()
    data["vms"]["logger"]["disks"][1]["port"] = 7790
    assert "inv.yml: vms.logger.disks[1].port: port 7790 on xen1 is also used by DRBD resource logger-system" \
        in errors_of(data)


# -- macs: and shared: -----------------------------------------------------------------------------

SHARING = REPO / "tests" / "data" / "cfgs" / "inventory.yml"


def sharing_data() -> dict:
    """Two GFS nodes sharing DRBD resource gfs-data, and VMs with macs:."""
    return yaml.safe_load(SHARING.read_text())


def test_macs_give_one_mac_per_vif_lowercased():
    inv = parse_inventory(SHARING.read_text())
    assert inv.vm("router1").macs == ("00:16:3e:10:30:01", "00:16:3e:10:30:02")
    assert inv.vm("router1").mac is None and inv.vm("gfs1").macs == ()


@pytest.mark.parametrize("macs, expected", [
    ("00:16:3e:10:30:01", "inv.yml: vms.router1.macs: expected a non-empty list of MAC addresses, one per vif "
                          "in the cfg's order"),
    ([], "inv.yml: vms.router1.macs: expected a non-empty list of MAC addresses, one per vif in the cfg's order"),
    (["00:16:3e:10:30:01", "nope"], "inv.yml: vms.router1.macs[1]: not a MAC address: 'nope'"),
    (["00:16:3e:10:30:01", "00:16:3E:10:30:01"], "inv.yml: vms.router1.macs[1]: MAC 00:16:3e:10:30:01 is listed twice"),
])
def test_bad_macs_are_one_line_naming_the_entry(macs, expected):
    data = sharing_data()
    data["vms"]["router1"]["macs"] = macs
    assert errors_of(data) == [expected]


def test_mac_and_macs_are_not_both_given():
    data = sharing_data()
    data["vms"]["router1"]["mac"] = "00:16:3e:10:30:09"
    assert errors_of(data) == ["inv.yml: vms.router1.macs: give mac: (the first vif's) or macs: (every vif's), not both"]


@pytest.mark.parametrize("owner, key, mac, expected", [
    ("gfs2", "mac", "00:16:3E:10:30:02", "vms.router1: MAC 00:16:3e:10:30:02 is also used by VM 'gfs2'"),
    ("winfw", "macs", ["00:16:3e:10:31:01", "00:16:3e:10:30:02"],
     "vms.winfw: MAC 00:16:3e:10:30:02 is also used by VM 'router1'"),
])
def test_macs_are_unique_across_vms_and_against_mac(owner, key, mac, expected):
    """Reported at the VM listed second in the file."""
    data = sharing_data()
    data["vms"][owner][key] = mac
    assert errors_of(data) == [f"inv.yml: {expected}"]


def test_vms_that_declare_a_disk_shared_may_both_name_it():
    inv = parse_inventory(SHARING.read_text())
    assert [d.shared for d in inv.vm("gfs1").resources] == [False, True]
    assert inv.vm("gfs1").disks[1] == inv.vm("gfs2").disks[1]


def test_undeclared_sharing_is_still_refused_and_says_how_to_declare_it():
    data = sharing_data()
    del data["vms"]["gfs2"]["disks"][1]["shared"]
    hint = " (a disk several VMs use needs shared: true in each)"
    assert errors_of(data) == [f"inv.yml: vms.gfs2: DRBD resource gfs-data is also used by VM 'gfs1'{hint}",
                               f"inv.yml: vms.gfs2: device /dev/drbd22 on xen1 is also used by VM 'gfs1'{hint}",
                               f"inv.yml: vms.gfs2: device /dev/drbd22 on kvm1 is also used by VM 'gfs1'{hint}",
                               "inv.yml: vms.gfs1: DRBD resource gfs-data is shared: true but no other VM names it "
                               "(every guest that shares it belongs in the inventory)"]


def test_sharers_describe_the_shared_disk_alike_on_the_same_hosts():
    data = sharing_data()
    data["vms"]["gfs2"]["disks"][1]["backing"] = "/dev/vg0/gfs-data"
    assert errors_of(data) == ["inv.yml: vms.gfs2: shares DRBD resource gfs-data with VM 'gfs1' but describes it "
                               "otherwise (device, backing, meta_disk and port must match)"]
    data = sharing_data()
    data["hosts"]["kvm2"] = {"address": "192.0.2.13", "role": "kvm"}
    data["vms"]["gfs2"]["kvm_host"] = "kvm2"
    assert errors_of(data) == ["inv.yml: vms.gfs2: shares DRBD resource gfs-data with VM 'gfs1', which runs on "
                               "other hosts"]


def test_a_shared_disk_no_other_vm_names_is_refused():
    """Its other guests are not in the inventory, so they could never move with it."""
    data = sharing_data()
    del data["vms"]["gfs2"]
    assert errors_of(data) == ["inv.yml: vms.gfs1: DRBD resource gfs-data is shared: true but no other VM names it "
                               "(every guest that shares it belongs in the inventory)"]


def test_only_a_drbd_disk_can_be_declared_shared():
    data = sharing_data()
    data["vms"]["router1"]["disks"].append({"local": "/dev/vg0/router1-swap", "shared": True})
    assert errors_of(data)[0].startswith("inv.yml: vms.router1.disks[1].shared: unknown key")


def test_a_move_names_the_sharers_it_leaves_out():
    inv = parse_inventory(SHARING.read_text())
    assert missing_sharers(inv, [inv.vm("gfs1")]) == {"gfs2": ("gfs1", "gfs-data")}
    assert missing_sharers(inv, [inv.vm("gfs2"), inv.vm("gfs1")]) == {}
    assert missing_sharers(inv, [inv.vm("router1"), inv.vm("wincl2")]) == {"wincl1": ("wincl2", "quorum")}
    assert missing_sharers(inv, [inv.vm("router1")]) == {}


def test_a_move_without_every_sharer_is_refused_in_one_line():
    inv = parse_inventory(SHARING.read_text())
    with pytest.raises(GuardError) as refusal:
        check_sharers_selected(inv, [inv.vm("router1"), inv.vm("gfs1")])
    assert str(refusal.value) == ("gfs1 shares DRBD resource gfs-data with gfs2, which this move leaves out: "
                                  "guests that share a disk move together (--vm router1,gfs1,gfs2)")
    assert refusal.value.code == 3
    check_sharers_selected(inv, list(inv.vms.values()))


def test_migrate_refuses_a_partial_group_before_contacting_any_host():
    """The inventory's hosts are documentation addresses: a contact would fail, not refuse."""
    result = _fab("migrate", "--vm", "gfs1", "--to", "kvm", env_extra={"FABRIC_INVENTORY": str(SHARING)})
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == ["error: gfs1 shares DRBD resource gfs-data with gfs2, which this move "
                                          "leaves out: guests that share a disk move together (--vm gfs1,gfs2)"]
