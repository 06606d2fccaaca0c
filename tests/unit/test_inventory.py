"""Inventory: the seed loads, every kind of mistake is one line naming file and key."""

import os
import subprocess
import textwrap

import pytest
import yaml

from tasks.errors import InputError
from tasks.inventory import LocalDisk, ReplicatedDisk, is_domain_name, load_inventory, parse_inventory
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
    assert disk.device_on("xen1") == "/dev/drbd5" and disk.device_on("kvm1") == "/dev/drbd15"


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
