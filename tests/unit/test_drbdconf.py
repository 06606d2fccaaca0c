"""DRBD resource files from the inventory, checked with the real drbdadm (9, 8.4 and 8.3):
see tests/realdrbd.py for how it runs here.
"""

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from tasks.errors import InputError
from tasks.formats.drbdconf import parse_dump_options, render_drbd_resource
from tasks.inventory import load_inventory, parse_inventory
from tests.realdrbd import drbdadm, needs_drbdadm

REPO = Path(__file__).resolve().parents[2]

# (file written for, read by): each version's own spelling, and the 8.3 one read by newer userland.
READERS = [("9", "9"), ("8.4", "8.4"), ("8.3", "8.3"), ("8.3", "8.4"), ("8.3", "9")]

SEED_DISKS = {  # hosts.yml, written out: resource -> (minor, backing, meta disk, port)
    "logger-system": (5, "/dev/vg_main/logger-system", "/dev/vg_main/logger-system-md", 7790),
    "logger-var": (6, "/dev/vg_main/logger-var", "/dev/vg_main/logger-var-md", 7791),
}
SEED_ADDRESSES = {"xen1": "192.0.2.11", "kvm1": "192.0.2.12"}


@pytest.fixture(scope="module")
def seed():
    inventory = load_inventory(REPO / "hosts.yml")
    return inventory.vm("logger"), inventory.hosts


_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[{};]|[^\s{};"]+')


def _word(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1]) if token.startswith('"') else token


def dump_sections(dump: str) -> dict[str, dict[str, str]]:
    """`on NAME { keyword words; ... }` of a `drbdadm dump`, quoted words unescaped."""
    text = "\n".join(line for line in dump.splitlines() if not line.lstrip().startswith("#"))
    tokens = _TOKEN.findall(text)
    sections = {}
    for i, token in enumerate(tokens):
        if token == "on" and tokens[i + 2] == "{":
            body, words, j = {}, [], i + 3
            while tokens[j] != "}":
                if tokens[j] == ";":
                    body[words[0]] = " ".join(words[1:])
                    words = []
                else:
                    words.append(_word(tokens[j]))
                j += 1
            sections[_word(tokens[i + 1])] = body
    return sections


def expected_section(reader: str, minor, disk, meta, address) -> dict[str, str]:
    """What each drbdadm's dump says for one host; 8.3 keeps the flexible-meta-disk keyword."""
    meta_key = "flexible-meta-disk" if reader == "8.3" and meta != "internal" else "meta-disk"
    return {"device": f"/dev/drbd{minor} minor {minor}", "disk": disk, meta_key: meta,
            "address": address}


def test_one_file_per_replicated_disk(seed):
    vm, hosts = seed
    files = render_drbd_resource(vm, hosts)
    assert list(files) == ["logger-system", "logger-var"]      # the swap LV is not replicated
    assert all(text.startswith("# Written by xenkvm") for text in files.values())


AUTO_PROMOTE_OFF = "  options {\n    auto-promote no;   # only `drbdadm primary` (drbd.promote and its guards) makes it Primary\n  }\n"


def test_versions_differ_only_where_8_3_needs_it_and_9_has_auto_promote(seed):
    vm, hosts = seed
    modern = render_drbd_resource(vm, hosts, "9")["logger-system"]
    assert AUTO_PROMOTE_OFF in modern
    assert render_drbd_resource(vm, hosts, "8.4.11")["logger-system"] == modern.replace(AUTO_PROMOTE_OFF, "")
    legacy = render_drbd_resource(vm, hosts, "8.3.13")["logger-system"]
    assert "net {" in modern and "net {" not in legacy
    assert "\n  protocol C;\n" in legacy
    assert 'flexible-meta-disk "/dev/vg_main/logger-system-md";' in legacy
    assert 'meta-disk "/dev/vg_main/logger-system-md";' in modern


@needs_drbdadm
@pytest.mark.parametrize("written_for, reader", READERS)
@pytest.mark.parametrize("hostname", ["xen1", "kvm1"])
@pytest.mark.parametrize("resource", sorted(SEED_DISKS))
def test_drbdadm_dump_accepts_the_seed(seed, tmp_path, written_for, reader, hostname, resource):
    vm, hosts = seed
    text = render_drbd_resource(vm, hosts, written_for)[resource]
    result = drbdadm(tmp_path, reader, hostname, text, "dump", resource)
    assert result.returncode == 0, result.stderr
    minor, disk, meta, port = SEED_DISKS[resource]
    sections = dump_sections(result.stdout)
    for host, ip in SEED_ADDRESSES.items():
        got = {k: v for k, v in sections[host].items() if k != "node-id"}
        assert got == expected_section(reader, minor, disk, meta, f"ipv4 {ip}:{port}")
    assert re.search(r"^\s*protocol\s+C;", result.stdout, re.M)


# The drbdsetup calls `drbdadm -d up` prints on xen1, per reader; node ids are drbdadm's choice.
UP_CALLS = {
    "9": [r"drbdsetup new-resource logger-system \d+",
          r"drbdsetup new-minor logger-system 5 0",
          r"drbdsetup new-peer logger-system \d+ --_name=kvm1 --protocol=C",
          r"drbdsetup new-path logger-system \d+ ipv4:192\.0\.2\.11:7790 ipv4:192\.0\.2\.12:7790",
          r"drbdmeta 5 v09 /dev/vg_main/logger-system-md flex-external apply-al",
          r"drbdsetup attach 5 /dev/vg_main/logger-system /dev/vg_main/logger-system-md flexible",
          r"drbdsetup connect logger-system \d+"],
    "8.4": [r"/usr/lib/drbd/drbdsetup-84 new-resource logger-system",
            r"/usr/lib/drbd/drbdsetup-84 new-minor logger-system 5 0",
            r"drbdmeta 5 v08 /dev/vg_main/logger-system-md flex-external apply-al",
            r"/usr/lib/drbd/drbdsetup-84 attach 5 /dev/vg_main/logger-system "
            r"/dev/vg_main/logger-system-md flexible",
            r"/usr/lib/drbd/drbdsetup-84 connect logger-system ipv4:192\.0\.2\.11:7790 "
            r"ipv4:192\.0\.2\.12:7790 --protocol=C"],
    "8.3": [r"/usr/lib/drbd/drbdsetup-83 5 disk /dev/vg_main/logger-system "
            r"/dev/vg_main/logger-system-md flexible --set-defaults --create-device",
            r"/usr/lib/drbd/drbdsetup-83 5 syncer --set-defaults --create-device",
            r"/usr/lib/drbd/drbdsetup-83 5 net ipv4:192\.0\.2\.11:7790 ipv4:192\.0\.2\.12:7790 C "
            r"--set-defaults --create-device"],
}


@needs_drbdadm
@pytest.mark.parametrize("written_for, reader", READERS)
def test_drbdadm_up_plans_the_expected_drbdsetup_calls(seed, tmp_path, written_for, reader):
    vm, hosts = seed
    text = render_drbd_resource(vm, hosts, written_for)["logger-system"]
    result = drbdadm(tmp_path, reader, "xen1", text, "-d", "up", "logger-system")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    expected = list(UP_CALLS[reader])
    if written_for == "9":     # the kernel gets the resource option at creation
        expected[0] += " --auto-promote=no"
    assert len(lines) == len(expected)
    for line, pattern in zip(lines, expected, strict=False):
        assert re.fullmatch(pattern, line), (line, pattern)


@needs_drbdadm
def test_drbdadm_9_reads_auto_promote_no_and_dump_shows_it(seed, tmp_path):
    vm, hosts = seed
    text = render_drbd_resource(vm, hosts, "9.22.0")["logger-var"]
    result = drbdadm(tmp_path, "9", "kvm1", text, "dump", "logger-var")
    assert result.returncode == 0, result.stderr
    assert parse_dump_options(result.stdout) == {"logger-var": {"auto-promote": "no"}}


@needs_drbdadm
def test_8_4_refuses_auto_promote_so_only_9_files_carry_it(seed, tmp_path):
    vm, hosts = seed
    text = render_drbd_resource(vm, hosts, "9")["logger-system"]
    result = drbdadm(tmp_path, "8.4", "xen1", text, "dump", "logger-system")
    assert result.returncode != 0 and "auto-promote" in result.stderr


@needs_drbdadm
def test_dump_options_of_real_dumps(tmp_path):
    """A resource without options maps to {}; `drbdadm dump RES` leaves a `common` section out."""
    def hosts(minor):
        return "".join(f"  on {h} {{ device /dev/drbd{minor}; disk /dev/vg/r{minor}; "
                       f"address 10.0.0.{i}:{7790 + minor}; meta-disk internal; }}\n"
                       for i, h in ((1, "xen1"), (2, "kvm1")))

    text = ("common { options { auto-promote no; } }\n"
            f"resource r0 {{\n{hosts(5)}}}\n"
            f"resource r1 {{\n  options {{ quorum majority; auto-promote yes; }}\n{hosts(6)}}}\n")
    result = drbdadm(tmp_path, "9", "xen1", text, "dump", "r0", "r1")
    assert result.returncode == 0, result.stderr
    assert parse_dump_options(result.stdout) == {"r0": {}, "r1": {"auto-promote": "yes", "quorum": "majority"}}


@pytest.mark.parametrize("text", ["resource r0 {\n  options {\n", "}\n", "resource r0 { on x { disk a; }\n"])
def test_dump_options_refuse_what_is_not_a_dump(text):
    with pytest.raises(ValueError, match="not drbdadm dump output"):
        parse_dump_options(text)


@needs_drbdadm
def test_8_3_refuses_the_modern_spelling(seed, tmp_path):
    """Why the 8.3 spelling exists: 8.3's parser knows no `net { protocol }`."""
    vm, hosts = seed
    text = render_drbd_resource(vm, hosts, "9")["logger-system"]
    assert drbdadm(tmp_path, "8.3", "xen1", text, "dump", "logger-system").returncode != 0


INTERNAL_IPV6 = """\
hosts:
  xen1: {address: xen1.example.net, role: xen, drbd_address: "fd00::11"}
  kvm1: {address: kvm1.example.net, role: kvm, hostname: kvm1.example.net, drbd_address: "fd00::12"}
vms:
  web:
    xen_host: xen1
    kvm_host: kvm1
    disks:
      - resource: web-disk
        device: {xen1: /dev/drbd0, kvm1: /dev/drbd3}
        backing: {xen1: /dev/xen/web, kvm1: /dev/kvm/web}
        meta_disk: internal
"""


@needs_drbdadm
@pytest.mark.parametrize("written_for, reader", READERS)
def test_internal_metadata_ipv6_and_per_host_paths(tmp_path, written_for, reader):
    inventory = parse_inventory(INTERNAL_IPV6)
    text = render_drbd_resource(inventory.vm("web"), inventory.hosts, written_for)["web-disk"]
    result = drbdadm(tmp_path, reader, "kvm1.example.net", text, "dump", "web-disk")
    assert result.returncode == 0, result.stderr
    sections = {h: {k: v for k, v in s.items() if k != "node-id"}
                for h, s in dump_sections(result.stdout).items()}
    assert sections == {
        "xen1": expected_section(reader, 0, "/dev/xen/web", "internal", "ipv6 [fd00::11]:7789"),
        "kvm1.example.net": expected_section(reader, 3, "/dev/kvm/web", "internal",
                                             "ipv6 [fd00::12]:7789"),
    }


# --- refusals, each naming the inventory key -----------------------------------

def with_disk(vm, index, **changes):
    disks = list(vm.disks)
    disks[index] = replace(disks[index], **changes)
    return replace(vm, disks=tuple(disks))


@pytest.mark.parametrize("change, message", [
    (dict(backing={}), r"^vms\.logger\.disks\[0\]\.backing: no entry for host xen1$"),
    (dict(backing={"xen1": "/dev/vg_main/x"}), r"^vms\.logger\.disks\[0\]\.backing: no entry for host kvm1$"),
    (dict(meta_disk={}), r"^vms\.logger\.disks\[0\]\.meta_disk: no entry for host xen1$"),
    (dict(device={"xen1": "/dev/sda", "kvm1": "/dev/drbd5"}), r"^vms\.logger\.disks\[0\]\.device: "),
    (dict(port=70000), r"^vms\.logger\.disks\[0\]\.port: 70000 is not a TCP port$"),
    (dict(port=7791), r"^vms\.logger\.disks\[1\]\.port: 7791 is already used by vms\.logger\.disks\[0\]$"),
    (dict(backing={"xen1": "/dev/a\x1b[2J", "kvm1": "/dev/b"}), r"^vms\.logger\.disks\[0\]\.backing\.xen1: "),
    (dict(backing={"xen1": "/" + "x" * 127, "kvm1": "/dev/b"}), r"at most 127 bytes"),
    (dict(backing={"xen1": "dev/relative", "kvm1": "/dev/b"}), r"is not an absolute path$"),
    (dict(resource="two words"), r"^vms\.logger\.disks\[0\]\.resource: "),
    (dict(resource="all"), r"^vms\.logger\.disks\[0\]\.resource: to drbdadm 'all' means every"),
])
def test_refusals_name_the_inventory_key(seed, change, message):
    vm, hosts = seed
    with pytest.raises(ValueError, match=message) as exc:
        render_drbd_resource(with_disk(vm, 0, **change), hosts)
    assert "\n" not in str(exc.value)


def test_refusals_about_hosts_and_version(seed):
    vm, hosts = seed
    with pytest.raises(ValueError, match=r"^hosts\.xen1\.drbd_address: DRBD needs an IP address"):
        render_drbd_resource(vm, {**hosts, "xen1": replace(hosts["xen1"], drbd_address="xen1.lan")})
    with pytest.raises(ValueError, match=r"^hosts\.xen1 and hosts\.kvm1 have the same hostname"):
        render_drbd_resource(vm, {**hosts, "xen1": replace(hosts["xen1"], hostname="kvm1")})
    with pytest.raises(ValueError, match=r"^vms\.logger\.kvm_host: host 'kvm1' is not in the inventory"):
        render_drbd_resource(vm, {"xen1": hosts["xen1"]})
    for version in ("7.0", "banana", ""):
        with pytest.raises(ValueError, match=r"^drbd_version "):
            render_drbd_resource(vm, hosts, version)


# --- any inventory-valid name or path gives a file drbdadm reads back exactly ----

RESOURCE_NAMES = hs.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}", fullmatch=True).filter(
    lambda name: name != "all")                       # refused on purpose, tested above
# The inventory takes any absolute path without whitespace or NUL; a resource file also
# needs it printable and within the kernel's 127 bytes. drbd.conf's own syntax characters
# come often, any other printable character now and then.
PATH_CHARS = hs.one_of(
    hs.sampled_from('"\\{};#[]:\'$`'),
    hs.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp", "Cf", "Co", "Cn")))
PATHS = hs.lists(PATH_CHARS, max_size=30).map(lambda chars: "/" + "".join(chars)).filter(
    lambda p: len(p.encode()) <= 127)


def inventory_text(resource: str, backing: str, meta: str) -> str:
    return yaml.safe_dump({
        "hosts": {"xen1": {"address": "192.0.2.11", "role": "xen"},
                  "kvm1": {"address": "192.0.2.12", "role": "kvm"}},
        "vms": {"vm1": {"xen_host": "xen1", "kvm_host": "kvm1", "disks": [
            {"resource": resource, "device": "/dev/drbd1", "backing": backing, "meta_disk": meta}]}},
    }, allow_unicode=True)


@needs_drbdadm
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(resource=RESOURCE_NAMES, backing=PATHS, meta=PATHS, written_for=hs.sampled_from(["9", "8.3"]))
def test_inventory_values_survive_drbdadm(tmp_path, resource, backing, meta, written_for):
    inventory = parse_inventory(inventory_text(resource, backing, meta))   # inventory-valid
    text = render_drbd_resource(inventory.vm("vm1"), inventory.hosts, written_for)[resource]
    result = drbdadm(tmp_path, written_for, "xen1", text, "dump", resource)
    assert result.returncode == 0, (text, result.stderr)
    section = dump_sections(result.stdout)["xen1"]
    meta_key = "flexible-meta-disk" if written_for == "8.3" else "meta-disk"
    assert (section["disk"], section[meta_key]) == (backing, meta)


@settings(max_examples=100, deadline=None)
@given(prefix=PATHS, bad=hs.characters(whitelist_categories=("Cc", "Cf", "Co")).filter(
    lambda c: not c.isspace() and c != "\x00"))
def test_unprintable_paths_are_refused(seed, prefix, bad):
    """A resource file must not carry them: the inventory refuses them, and so does the
    renderer, for a VM that did not come from an inventory."""
    vm, hosts = seed
    path = prefix + bad
    with pytest.raises(InputError, match="unprintable character"):
        parse_inventory(inventory_text("r0", path, "/dev/m"))
    with pytest.raises(ValueError, match=r"^vms\.logger\.disks\[0\]\.backing\.xen1: "):
        render_drbd_resource(with_disk(vm, 0, backing={"xen1": path, "kvm1": "/dev/b"}), hosts)


def test_importing_does_not_load_jinja2():
    """The template loads on first render, so `fab --list` stays fast."""
    code = "import sys, tasks.formats.drbdconf; sys.exit('jinja2' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
