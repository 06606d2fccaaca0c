"""The libvirt domain XML: the seed's domain element by element; every render valid against
libvirt 11.3's schemas, the host's schemas and libvirt's own parser (virsh); the corpus
configs against the XML libvirt itself derives from them; hostile strings escaped."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from tasks.diskmap import MappedDisk, disk_name, plan_disk_map
from tasks.formats.domainxml import (
    BUSES,
    KVM_CONSOLES,
    DomainDisk,
    DomainInterface,
    DomainSpec,
    DomainXmlError,
    default_schema_dir,
    plan_domain_spec,
    render_domain_xml,
    validate_domain_xml,
)
from tasks.formats.xencfg import parse_xen_cfg
from tasks.inventory import VM, is_domain_name, load_inventory
from tests.conftest import corpus_params, need_corpus

REPO = Path(__file__).resolve().parents[2]
HOST_SCHEMAS = default_schema_dir()

SEED = DomainSpec(
    name="logger",
    memory_mib=2048,
    vcpus=1,
    disks=(
        DomainDisk("sda", "/dev/drbd5", "block"),
        DomainDisk("sdb", "/dev/drbd6", "block"),
        DomainDisk("sdc", "/dev/vg_main/logger-swap", "block"),
    ),
    interfaces=(DomainInterface("00:16:3e:37:d0:70", "br0"),),
)

# The seed's cfg as xen-tools wrote it, after the xenhost stage renamed xvda* to sd*.
SEED_CFG = """\
kernel      = '/boot/vmlinuz-6.1.0-18-amd64'
ramdisk     = '/boot/initrd.img-6.1.0-18-amd64'
vcpus       = '1'
memory      = '2048'
root        = '/dev/sda ro'
disk        = [
                  'phy:/dev/drbd5,sda,w',
                  'phy:/dev/drbd6,sdb,w',
                  'phy:/dev/vg_main/logger-swap,sdc,w',
              ]
name        = 'logger'
vif         = [ 'ip=192.0.2.50,mac=00:16:3E:37:D0:70' ]
on_poweroff = 'destroy'
on_reboot   = 'restart'
on_crash    = 'restart'
extra       = 'elevator=noop'
"""


@pytest.fixture(scope="module")
def schema_dirs(corpus) -> list[Path]:
    """libvirt 11.3's schemas from the corpus, plus the host's when libvirt is installed."""
    return [corpus / "libvirt-schemas"] + ([HOST_SCHEMAS] if HOST_SCHEMAS else [])


def assert_valid(xml: str, schema_dirs: list[Path]) -> None:
    for schema_dir in schema_dirs:
        validate_domain_xml(xml, schema_dir)


def parse(xml: str):
    return etree.fromstring(xml.encode())


def seed_vm(**changes) -> VM:
    vm = load_inventory(REPO / "hosts.yml").vm("logger")
    return dataclasses.replace(vm, **changes)


def seed_disk_map(vm: VM) -> list[MappedDisk]:
    return plan_disk_map(parse_xen_cfg(SEED_CFG), vm)


def xen_cfg(**lines: str):
    """A minimal parsed cfg: name, memory and one vif, with `lines` added or replacing them."""
    fields = {"name": "'web'", "memory": "512", "vif": "[ 'mac=00:16:3e:00:00:01,bridge=xenbr0' ]"}
    fields.update(lines)
    return parse_xen_cfg("".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None))


# --- 1. the seed ---------------------------------------------------------------------------

def test_seed_domain_element_by_element():
    doc = parse(render_domain_xml(SEED))
    assert doc.xpath("/domain/@type") == ["kvm"]
    assert doc.xpath("/domain/name/text()") == ["logger"]
    assert doc.xpath("/domain/uuid") == []
    assert doc.xpath("/domain/memory[@unit='MiB']/text()") == ["2048"]
    assert doc.xpath("/domain/currentMemory[@unit='MiB']/text()") == ["2048"]
    assert doc.xpath("/domain/vcpu/text()") == ["1"]
    assert doc.xpath("/domain/os/type[@arch='x86_64'][@machine='pc']/text()") == ["hvm"]
    assert doc.xpath("/domain/os/boot/@dev") == ["hd"]
    assert doc.xpath("/domain/os/kernel | /domain/os/initrd | /domain/os/cmdline") == []
    assert [f.tag for f in doc.xpath("/domain/features/*")] == ["acpi", "apic"]
    assert doc.xpath("/domain/clock/@offset") == ["utc"]
    assert doc.xpath("/domain/on_poweroff/text()") == ["destroy"]
    assert doc.xpath("/domain/on_reboot/text()") == ["restart"]
    assert doc.xpath("/domain/on_crash/text()") == ["restart"]
    assert doc.xpath("/domain/devices/emulator") == []
    disks = doc.xpath("/domain/devices/disk")
    assert [(d.get("type"), d.get("device")) for d in disks] == [("block", "disk")] * 3
    assert [d.xpath("source/@dev")[0] for d in disks] == ["/dev/drbd5", "/dev/drbd6", "/dev/vg_main/logger-swap"]
    assert [(d.xpath("target/@dev")[0], d.xpath("target/@bus")[0]) for d in disks] == [
        ("sda", "ide"), ("sdb", "ide"), ("sdc", "ide")]
    assert [dict(d.find("driver").attrib) for d in disks] == [{"name": "qemu", "type": "raw", "cache": "none"}] * 3
    assert doc.xpath("/domain/devices/disk/readonly") == []
    assert doc.xpath("/domain/devices/controller") == []
    nics = doc.xpath("/domain/devices/interface")
    assert [n.get("type") for n in nics] == ["bridge"]
    assert nics[0].xpath("mac/@address") == ["00:16:3e:37:d0:70"]
    assert nics[0].xpath("source/@bridge") == ["br0"]
    assert nics[0].xpath("model/@type") == ["virtio"]
    assert doc.xpath("/domain/devices/serial[@type='pty']/target/@port") == ["0"]
    assert [dict(log.attrib) for log in doc.xpath("/domain/devices/serial/log")] == [
        {"file": "/var/log/libvirt/qemu/logger-console.log", "append": "on"}]
    console = doc.xpath("/domain/devices/console[@type='pty']/target")
    assert [dict(t.attrib) for t in console] == [{"type": "serial", "port": "0"}]
    assert [dict(i.attrib) for i in doc.xpath("/domain/devices/input")] == [{"type": "tablet", "bus": "usb"}]
    assert [dict(g.attrib) for g in doc.xpath("/domain/devices/graphics")] == [
        {"type": "vnc", "port": "-1", "autoport": "yes"}]
    assert doc.xpath("/domain/devices/video/model/@type") == ["cirrus"]


def test_seed_planned_from_inventory_cfg_and_disk_map_is_the_seed_domain():
    vm = seed_vm()
    spec = plan_domain_spec(parse_xen_cfg(SEED_CFG), seed_disk_map(vm), vm)
    assert spec == SEED
    assert render_domain_xml(spec) == render_domain_xml(SEED)


def test_disks_render_in_target_order_whatever_the_input_order():
    shuffled = dataclasses.replace(SEED, disks=SEED.disks[::-1])
    assert render_domain_xml(shuffled) == render_domain_xml(SEED)


# --- 2. every render valid: schemas and libvirt's own parser --------------------------------

def variants() -> dict[str, DomainSpec]:
    """One spec per shape the renderer can produce; names differ so virsh keeps them all."""
    return {
        "seed": SEED,
        **{f"bus-{bus}": dataclasses.replace(SEED, name=f"logger-{bus}", bus=bus) for bus in BUSES},
        "direct-kernel": dataclasses.replace(
            SEED, name="logger-kernel", kernel="/var/lib/xenkvm/boot/logger-kernel/vmlinuz",
            initrd="/var/lib/xenkvm/boot/logger-kernel/initrd.img", cmdline=f"root=/dev/sda ro {KVM_CONSOLES}"),
        "tcg": dataclasses.replace(SEED, name="logger-tcg", domain_type="qemu", machine="q35", bus="sata",
                                   uuid="c7a5fdb2-cdaf-9455-926a-d65c16db1809",
                                   emulator="/usr/bin/qemu-system-x86_64"),
        "files": DomainSpec(
            name="files", memory_mib=256, vcpus=2, bus="virtio",
            disks=(DomainDisk("sda", "/srv/img/root.qcow2", "file", format="qcow2"),
                   DomainDisk("sdb", "/srv/iso/<&'\">.iso", "file", readonly=True)),
            interfaces=(DomainInterface("52:54:00:00:00:01", "br0"),
                        DomainInterface("52:54:00:00:00:02", "ovsbr0.42", model="e1000")),
            on_poweroff="restart", on_crash="coredump-restart"),
        "diskless": DomainSpec(name="pxe", memory_mib=64, vcpus=1, disks=(), interfaces=()),
    }


@pytest.mark.parametrize("variant", sorted(variants()))
def test_every_variant_matches_the_schemas(variant, schema_dirs):
    assert_valid(render_domain_xml(variants()[variant]), schema_dirs)


def test_host_schemas_are_found_when_libvirt_is_installed():
    if not Path("/usr/share/libvirt/schemas/domain.rng").is_file():
        pytest.skip("libvirt's schemas are not installed on this host")
    assert HOST_SCHEMAS == Path("/usr/share/libvirt/schemas")


def test_libvirt_itself_defines_every_variant(tmp_path):
    """One virsh on the test driver, which forgets on exit; --validate adds the host's schema."""
    virsh = shutil.which("virsh")
    if virsh is None:
        pytest.skip("virsh is not installed")
    specs = variants()
    commands = []
    for key, spec in specs.items():
        path = tmp_path / f"{key}.xml"
        path.write_text(render_domain_xml(spec))
        commands.append(f"define --validate {path}")
    commands.append("list --all --name")
    run = subprocess.run([virsh, "-q", "-c", "test:///default", "; ".join(commands)],
                         capture_output=True, text=True, timeout=60)
    # virsh goes on after a failed command and still exits 0: read what it said.
    assert run.stderr == ""
    assert run.returncode == 0
    defined = run.stdout.split()
    for spec in specs.values():
        assert spec.name in defined


# --- 3. corpus: libvirt's own XML for real Xen configs is the oracle ------------------------

PCI_HOSTDEV = "devices/hostdev[@type='pci']"   # libvirt's reading of a cfg's pci= list
PCI_REFUSED = r"^pci= \(host PCI devices passed through\): the KVM domain would lack them"


def corpus_cases(kind: str) -> list[str]:
    """Case names at collection time, when fixtures are not there yet (the `corpus` one's path)."""
    folder = REPO.parent / "shared" / "corpus" / f"libvirt-{kind}config"
    return sorted(p.stem for p in folder.glob("*.cfg") if p.with_suffix(".xml").is_file())


@pytest.mark.parametrize("kind,case", corpus_params([(k, c) for k in ("xm", "xl") for c in corpus_cases(k)], 2))
def test_corpus_config_plans_like_libvirt(kind, case, corpus, schema_dirs):
    folder = corpus / f"libvirt-{kind}config"
    oracle = etree.parse(str(folder / f"{case}.xml")).getroot()
    if oracle.findtext("os/type") not in ("linux", "hvm"):
        pytest.skip("not a PV or HVM guest")
    macs = oracle.xpath("devices/interface/mac/@address")
    if not oracle.xpath("devices/disk[@device='disk']") or not macs:
        pytest.skip("no disk or no vif with a MAC")
    cfg = parse_xen_cfg((folder / f"{case}.cfg").read_text())
    if oracle.xpath(PCI_HOSTDEV):
        with pytest.raises(ValueError, match=PCI_REFUSED):
            plan_disk_map(cfg)
        return
    if oracle.xpath("devices/disk[@device='disk'][@type='network']"):
        with pytest.raises(ValueError, match=r"^disk hdb: 'rbd:.* is not an absolute path"):
            plan_disk_map(cfg)
        return
    disk_map = plan_disk_map(cfg)
    if oracle.findtext("os/type") == "hvm" and oracle.findtext("os/kernel"):
        with pytest.raises(ValueError, match=r"an HVM guest booted from a kernel on the Xen host is not supported"):
            plan_domain_spec(cfg, disk_map)
        return
    spec = plan_domain_spec(cfg, disk_map)
    if any(d.readonly for d in spec.disks) or len(spec.disks) > 4:
        spec = dataclasses.replace(spec, bus="scsi")  # what IDE cannot carry
    xml = render_domain_xml(spec)
    assert_valid(xml, schema_dirs)
    doc = parse(xml)
    vcpu = oracle.find("vcpu")
    assert int(doc.findtext("currentMemory")) * 1024 == int(oracle.findtext("currentMemory"))
    assert int(doc.findtext("vcpu")) == int(vcpu.get("current", vcpu.text))
    assert doc.xpath("devices/interface/mac/@address") == [m.lower() for m in macs]
    assert doc.findtext("uuid") == oracle.findtext("uuid")
    assert doc.findtext("name") == oracle.findtext("name")
    assert len(doc.xpath("devices/disk")) == len(disk_map)


def test_corpus_cases_were_collected(corpus):
    """An empty parameter list would pass silently."""
    assert len(corpus_cases("xm")) >= 30 and len(corpus_cases("xl")) >= 40


# --- 4. hypothesis: any name, any path, any bus: valid and escaped --------------------------

HOSTILE = st.text(
    alphabet=st.one_of(st.sampled_from("<>&'\"; $`\\/]]>"),
                       st.characters(blacklist_categories=("Cs", "Cc", "Cn"))),
    min_size=1, max_size=24)
LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True)
DNS_NAME = st.lists(LABEL, min_size=1, max_size=3).map(".".join).filter(is_domain_name)
PATH = HOSTILE.map(lambda s: "/" + s)
BRIDGE = st.from_regex(r"[A-Za-z0-9_.:-]{1,15}", fullmatch=True)
HOSTILE_BRIDGE = st.builds(lambda a, c, b: a + c + b, BRIDGE, st.sampled_from("<>&'\""), BRIDGE)
MAC = st.builds(lambda first, rest: ":".join(f"{b:02x}" for b in (first * 2, *rest)),
                st.integers(0, 127), st.lists(st.integers(0, 255), min_size=5, max_size=5))


@st.composite
def specs(draw, names=DNS_NAME, bridges=BRIDGE):
    bus = draw(st.sampled_from(BUSES))
    slots = range(4) if bus == "ide" else range(60)
    indices = draw(st.sets(st.sampled_from(slots), max_size=5))
    # Each disk on the spec's bus or on one of its own (as an HVM guest's are).
    own_buses = {i: draw(st.none() | st.sampled_from([b for b in BUSES if b != "ide" or i < 4])) for i in indices}
    disks = tuple(DomainDisk(
        target=disk_name(i),
        source=draw(PATH),
        kind=draw(st.sampled_from(("block", "file"))),
        readonly=(own_buses[i] or bus) in ("scsi", "virtio") and draw(st.booleans()),
        format=draw(st.sampled_from(("raw", "qcow2"))),
        bus=own_buses[i],
        shareable=draw(st.booleans()),
    ) for i in indices)
    nics = tuple(DomainInterface(mac=draw(MAC), bridge=draw(bridges), model=draw(st.sampled_from(("virtio", "e1000"))))
                 for _ in range(draw(st.integers(0, 3))))
    direct = draw(st.booleans())
    return DomainSpec(
        name=draw(names), memory_mib=draw(st.integers(16, 1 << 20)), vcpus=draw(st.integers(1, 64)),
        disks=disks, interfaces=nics, bus=bus,
        domain_type=draw(st.sampled_from(("kvm", "qemu"))), machine=draw(st.sampled_from(("pc", "q35"))),
        uuid=draw(st.none() | st.uuids().map(str)),
        kernel=draw(PATH) if direct else None, initrd=draw(st.none() | PATH) if direct else None,
        cmdline=draw(st.none() | HOSTILE) if direct else None,
        emulator=draw(st.none() | PATH),
        scsi_model=draw(st.sampled_from(("virtio-scsi", "lsilogic"))),
        clock_offset=draw(st.sampled_from(("utc", "localtime"))),
    )


def assert_round_trip(xml: str, spec: DomainSpec) -> None:
    """Parsing the document back gives every string exactly as it went in."""
    doc = parse(xml)
    ordered = sorted(spec.disks, key=lambda d: (len(d.target), d.target))
    buses = [d.bus or spec.bus for d in ordered]
    assert doc.findtext("name") == spec.name
    assert doc.findtext("uuid") == spec.uuid
    assert doc.findtext("os/kernel") == spec.kernel
    assert doc.findtext("os/initrd") == spec.initrd
    assert doc.findtext("os/cmdline") == spec.cmdline
    assert doc.findtext("devices/emulator") == spec.emulator
    assert (doc.find("os/boot") is None) == bool(spec.kernel)
    assert doc.xpath("devices/disk/source/@dev | devices/disk/source/@file") == [d.source for d in ordered]
    assert doc.xpath("devices/disk/@type") == [d.kind for d in ordered]
    assert doc.xpath("devices/disk/target/@dev") == [
        ("vd" if bus == "virtio" else "sd") + d.target[2:] for d, bus in zip(ordered, buses, strict=False)]
    assert doc.xpath("devices/disk/target/@bus") == buses
    assert [d.find("readonly") is not None for d in doc.iterfind("devices/disk")] == [d.readonly for d in ordered]
    assert [d.find("shareable") is not None for d in doc.iterfind("devices/disk")] == [d.shareable for d in ordered]
    assert doc.xpath("clock/@offset") == [spec.clock_offset]
    assert doc.xpath("devices/interface/source/@bridge") == [n.bridge for n in spec.interfaces]
    assert doc.xpath("devices/interface/mac/@address") == [n.mac for n in spec.interfaces]
    assert doc.xpath("devices/controller[@type='scsi']/@model") == [spec.scsi_model] * ("scsi" in buses)


@settings(max_examples=150, deadline=None)
@given(spec=specs())
def test_any_spec_is_valid_and_escaped(spec, schema_dirs):
    xml = render_domain_xml(spec)
    assert_valid(xml, schema_dirs)
    assert_round_trip(xml, spec)


@settings(max_examples=60, deadline=None)
@given(spec=specs(names=HOSTILE))
def test_hostile_names_are_escaped_and_valid(spec, schema_dirs):
    xml = render_domain_xml(spec)
    assert_valid(xml, schema_dirs)
    assert_round_trip(xml, spec)


@settings(max_examples=40, deadline=None)
@given(spec=specs(bridges=HOSTILE_BRIDGE).filter(lambda s: s.interfaces))
def test_hostile_bridge_is_escaped_and_refused_by_the_schema(spec, corpus):
    """libvirt's schema allows only [A-Za-z0-9_.\\-:/ ] in a bridge name: escaped, then refused."""
    xml = render_domain_xml(spec)
    assert_round_trip(xml, spec)
    with pytest.raises(DomainXmlError, match="/domain/devices"):
        validate_domain_xml(xml, corpus / "libvirt-schemas")


@pytest.mark.parametrize("bus,prefix", [("sata", "sd"), ("scsi", "sd"), ("virtio", "vd")])
def test_virtio_names_disks_vd_with_the_same_index(bus, prefix):
    spec = dataclasses.replace(SEED, bus=bus, disks=(DomainDisk("sdaa", "/dev/drbd9", "block"), *SEED.disks))
    targets = parse(render_domain_xml(spec)).xpath("devices/disk/target/@dev")
    assert targets == [prefix + s for s in ("a", "b", "c", "aa")]


# --- 5. validation errors: one line, naming the problem and its line -----------------------

def test_schema_error_is_one_line_naming_element_and_line(corpus):
    xml = render_domain_xml(SEED).replace("<memory unit='MiB'>2048", "<memory unit='MiB'>lots")
    with pytest.raises(DomainXmlError) as caught:
        validate_domain_xml(xml, corpus / "libvirt-schemas")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("domain XML line 3: ")
    assert "'lots'" in message and "/domain/memory" in message
    assert isinstance(caught.value, ValueError)


def test_interleave_error_still_gets_a_line(corpus):
    xml = render_domain_xml(SEED).replace("bridge='br0'", "bridge='br 0!'")
    with pytest.raises(DomainXmlError, match=r"^domain XML line \d+: .* at /domain/devices "):
        validate_domain_xml(xml, corpus / "libvirt-schemas")


def test_malformed_document_names_its_line(corpus):
    xml = render_domain_xml(SEED).replace("</name>", "</nam>")
    with pytest.raises(DomainXmlError, match=r"^domain XML line 2: not well-formed: ") as caught:
        validate_domain_xml(xml, corpus / "libvirt-schemas")
    assert "\n" not in str(caught.value)


def test_missing_schema_dir_is_a_one_line_error(tmp_path):
    with pytest.raises(DomainXmlError, match=r"domain\.rng: cannot load the libvirt schema") as caught:
        validate_domain_xml(render_domain_xml(SEED), tmp_path)
    assert "\n" not in str(caught.value)


def test_default_schema_dir_takes_the_first_with_domain_rng(tmp_path, corpus):
    assert default_schema_dir((str(tmp_path), corpus / "libvirt-schemas")) == corpus / "libvirt-schemas"
    assert default_schema_dir((str(tmp_path / "absent"),)) is None


# --- specs qemu would not run are refused before rendering ---------------------------------

@pytest.mark.parametrize("change,message", [
    ({"bus": "usb"}, "bus must be one of ide, sata, scsi, virtio, got 'usb'"),
    ({"domain_type": "xen"}, "domain type must be one of kvm, qemu, got 'xen'"),
    ({"disks": (DomainDisk("xvda", "/dev/drbd5", "block"),)}, "disk target 'xvda' is not a whole-disk name"),
    ({"disks": (DomainDisk("sda1", "/dev/drbd5", "block"),)}, "disk target 'sda1' is not a whole-disk name"),
    ({"disks": (DomainDisk("sda", "/dev/drbd5", "block"),) * 2}, "two disks have target sda"),
    ({"disks": (DomainDisk("sda", "/dev/drbd5", "network"),)}, "kind must be block or file, got 'network'"),
    ({"disks": (DomainDisk("sda", "rbd:pool/image", "file"),)}, "source 'rbd:pool/image' is not an absolute path"),
    ({"disks": (DomainDisk("sde", "/dev/drbd5", "block"),)}, "IDE has room for 4 disks"),
    ({"disks": (DomainDisk("sda", "/dev/drbd5", "block", readonly=True),)}, "qemu refuses a read-only IDE"),
    ({"bus": "sata", "disks": (DomainDisk("sda", "/dev/drbd5", "block", readonly=True),)},
     "qemu refuses a read-only SATA"),
    ({"name": "log\x00ger"}, "holds a control character"),
    ({"cmdline": "root=/dev/sda\nro", "kernel": "/k"}, "holds a control character"),
    ({"interfaces": (DomainInterface("00:16:3e:37:d0:70", "br\t0"),)}, "holds a control character"),
])
def test_specs_qemu_cannot_run_are_refused(change, message):
    with pytest.raises(DomainXmlError, match=message.replace("(", r"\(")):
        render_domain_xml(dataclasses.replace(SEED, **change))


def test_importing_the_module_loads_neither_jinja2_nor_lxml():
    code = ("import sys, tasks.formats.domainxml; "
            "loaded = {'jinja2', 'lxml'} & {m.split('.')[0] for m in sys.modules}; "
            "assert not loaded, loaded")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


# --- plan_domain_spec: the Xen cfg, the disk map and the inventory ------------------------

def test_plan_without_inventory_takes_the_cfg():
    cfg = xen_cfg(uuid="'c7a5fdb2-cdaf-9455-926a-d65c16db1809'", vcpus=None,
                  vif="[ 'mac=00:16:3E:00:00:01,bridge=xenbr1', 'mac=00:16:3e:00:00:02' ]")
    spec = plan_domain_spec(cfg, [])
    assert (spec.name, spec.memory_mib, spec.vcpus, spec.uuid) == ("web", 512, 1, "c7a5fdb2-cdaf-9455-926a-d65c16db1809")
    assert spec.interfaces == (DomainInterface("00:16:3e:00:00:01", "xenbr1"),
                               DomainInterface("00:16:3e:00:00:02", "br0"))
    assert (spec.bus, spec.domain_type, spec.machine, spec.kernel) == ("ide", "kvm", "pc", None)


def test_plan_takes_maxmem_without_memory():
    assert plan_domain_spec(xen_cfg(memory=None, maxmem="768"), []).memory_mib == 768


def test_plan_refuses_a_vif_without_mac():
    cfg = xen_cfg(vif="[ 'mac=00:16:3e:00:00:01', 'bridge=xenbr0' ]")
    with pytest.raises(ValueError, match=r"^vif 1 has no mac=: Xen draws a random one at each start and KVM "
                                         r"would invent another, so the guest's network would change: give "
                                         r"every vif's MAC in macs: of its inventory entry \(and --vm\)$"):
        plan_domain_spec(cfg, [])


def test_plan_refuses_a_cfg_without_memory_or_name():
    with pytest.raises(ValueError, match="no memory= or maxmem="):
        plan_domain_spec(xen_cfg(memory=None), [])
    with pytest.raises(ValueError, match="the Xen cfg has no name="):
        plan_domain_spec(xen_cfg(name=None), [])


def test_inventory_overrides_the_cfg():
    vm = seed_vm(memory=4096, vcpus=4, mac="00:16:3e:aa:bb:cc", bridge="br1", bus="virtio",
                 domain_type="qemu", machine="q35")
    cfg = parse_xen_cfg(SEED_CFG.replace("'ip=192.0.2.50,mac=00:16:3E:37:D0:70'",
                                         "'mac=00:16:3e:37:d0:70', 'mac=00:16:3e:37:d0:71,bridge=xenbr9'"))
    spec = plan_domain_spec(cfg, seed_disk_map(vm), vm)
    assert (spec.memory_mib, spec.vcpus, spec.bus, spec.domain_type, spec.machine) == (4096, 4, "virtio", "qemu", "q35")
    # the inventory describes the first NIC; a second keeps what the cfg says
    assert spec.interfaces == (DomainInterface("00:16:3e:aa:bb:cc", "br1"),
                               DomainInterface("00:16:3e:37:d0:71", "xenbr9"))
    assert parse(render_domain_xml(spec)).xpath("devices/disk/target/@dev") == ["vda", "vdb", "vdc"]


def test_inventory_mac_gives_a_vifless_guest_its_nic():
    vm = seed_vm()
    spec = plan_domain_spec(xen_cfg(vif=None), [], vm)
    assert spec.interfaces == (DomainInterface("00:16:3e:37:d0:70", "br0"),)


def test_disk_map_becomes_disks_with_qemu_format_names():
    disk_map = [
        MappedDisk("xvda", "sda", "/dev/drbd5", "block", "r0"),
        MappedDisk("xvdb", "sdb", "/k/b.vhd", "file", None, readonly=True, format="vhd"),
        MappedDisk("xvdc", "sdc", "/k/c.img", "file", None, format="qcow2"),
    ]
    assert plan_domain_spec(xen_cfg(), disk_map).disks == (
        DomainDisk("sda", "/dev/drbd5", "block"),
        DomainDisk("sdb", "/k/b.vhd", "file", readonly=True, format="vpc"),
        DomainDisk("sdc", "/k/c.img", "file", format="qcow2"),
    )


def test_direct_kernel_boots_the_kvm_hosts_copy_with_kvm_consoles(schema_dirs):
    vm = seed_vm(boot="direct-kernel")
    spec = plan_domain_spec(parse_xen_cfg(SEED_CFG), seed_disk_map(vm), vm)
    assert spec.kernel == "/var/lib/xenkvm/boot/logger/vmlinuz"
    assert spec.initrd == "/var/lib/xenkvm/boot/logger/initrd.img"
    assert spec.cmdline == "root=/dev/sda ro elevator=noop net.ifnames=0 console=ttyS0,115200n8 console=tty0"
    doc = parse(render_domain_xml(spec))
    assert doc.xpath("os/boot") == []
    assert doc.findtext("os/cmdline") == spec.cmdline
    assert_valid(render_domain_xml(spec), schema_dirs)


def test_direct_kernel_takes_root_from_extra_or_xl_cmdline_and_needs_one():
    vm = seed_vm(boot="direct-kernel")
    spec = plan_domain_spec(xen_cfg(extra="'root=/dev/sda1 quiet'"), [], vm)
    assert spec.cmdline == f"root=/dev/sda1 quiet net.ifnames=0 {KVM_CONSOLES}"
    spec = plan_domain_spec(xen_cfg(root="'/dev/sdb ro'", cmdline="'root=/dev/sda2 ro'"), [], vm)
    assert spec.cmdline == f"root=/dev/sda2 ro net.ifnames=0 {KVM_CONSOLES}"
    with pytest.raises(ValueError, match="direct-kernel boot needs root="):
        plan_domain_spec(xen_cfg(extra="'quiet'"), [], vm)


def test_direct_kernel_names_the_nic_eth0_whatever_the_cfg_said():
    """The guest's interfaces file says eth0; udev would call KVM's PCI NIC ens3 without this."""
    vm = seed_vm(boot="direct-kernel")
    spec = plan_domain_spec(xen_cfg(extra="'root=/dev/sda1 net.ifnames=1 quiet'"), [], vm)
    assert spec.cmdline == f"root=/dev/sda1 quiet net.ifnames=0 {KVM_CONSOLES}"


@pytest.mark.parametrize("poweroff,reboot,crash,expected", [
    ("destroy", "restart", "restart", ("destroy", "restart", "restart")),
    ("preserve", "destroy", "preserve", ("destroy", "destroy", "preserve")),
    ("rename-restart", "rename-restart", "rename-restart", ("restart", "restart", "restart")),
    ("coredump-destroy", "coredump-restart", "coredump-destroy", ("destroy", "restart", "coredump-destroy")),
    (None, None, None, ("destroy", "restart", "restart")),
])
def test_lifecycle_actions_qemu_can_carry_out(poweroff, reboot, crash, expected):
    quoted = {k: v and f"'{v}'" for k, v in (("on_poweroff", poweroff), ("on_reboot", reboot), ("on_crash", crash))}
    spec = plan_domain_spec(xen_cfg(**quoted), [])
    assert (spec.on_poweroff, spec.on_reboot, spec.on_crash) == expected


def test_lifecycle_qemu_refuses_is_refused():
    with pytest.raises(ValueError, match="on_poweroff restart with on_reboot destroy"):
        plan_domain_spec(xen_cfg(on_poweroff="'restart'", on_reboot="'destroy'"), [])


# --- HVM guests: the hardware they have under Xen -------------------------------------------

def hvm_corpus_cases() -> list[tuple[str, str]]:
    """libvirt's HVM cases with a disk and a MAC, at collection time (as corpus_cases); those that boot a
    kernel from the Xen host are refused (test_corpus_config_plans_like_libvirt)."""
    cases = []
    for kind in ("xm", "xl"):
        folder = REPO.parent / "shared" / "corpus" / f"libvirt-{kind}config"
        for case in corpus_cases(kind):
            oracle = etree.parse(str(folder / f"{case}.xml")).getroot()
            if (oracle.findtext("os/type") == "hvm" and not oracle.findtext("os/kernel")
                    and oracle.xpath("devices/disk[@device='disk']")
                    and oracle.xpath("devices/interface/mac") and not oracle.xpath("devices/disk[@type='network']")):
                cases.append((kind, case))
    return cases


@pytest.mark.parametrize("kind,case", corpus_params(hvm_corpus_cases(), 2))
def test_corpus_hvm_guest_keeps_its_disk_buses_and_nic_models_as_libvirt_reads_them(kind, case, corpus):
    """libvirt's own reading of the cfg is the oracle: the same target and bus for every disk, the
    same NIC model (rtl8139, libxl's default, where libvirt names none or the PV-only netfront)."""
    folder = corpus / f"libvirt-{kind}config"
    oracle = etree.parse(str(folder / f"{case}.xml")).getroot()
    cfg = parse_xen_cfg((folder / f"{case}.cfg").read_text())
    models = [m if m != "netfront" else "rtl8139" for m in
              (n.xpath("string(model/@type)") or "rtl8139" for n in oracle.iterfind("devices/interface"))]
    if oracle.xpath(PCI_HOSTDEV):
        with pytest.raises(ValueError, match=PCI_REFUSED):
            plan_disk_map(cfg)
        return
    if "fakemodel" in models:
        with pytest.raises(ValueError, match=r"^vif 0: model=fakemodel is not a NIC qemu emulates"):
            plan_domain_spec(cfg, plan_disk_map(cfg))
        return
    doc = parse(render_domain_xml(plan_domain_spec(cfg, plan_disk_map(cfg))))
    assert doc.xpath("devices/disk/target/@dev") == oracle.xpath("devices/disk[@device='disk']/target/@dev")
    assert doc.xpath("devices/disk/target/@bus") == oracle.xpath("devices/disk[@device='disk']/target/@bus")
    assert doc.xpath("devices/interface/model/@type") == models


def test_hvm_corpus_cases_were_collected():
    need_corpus()
    assert len(hvm_corpus_cases()) >= 40


HVM_CFG = """\
type = 'hvm'
name = 'mixed'
memory = 1024
disk = [ '/dev/vg/a,raw,hda,rw', '/dev/vg/b,raw,sdb,rw', '/dev/vg/c,raw,xvdc,rw' ]
vif = [ 'mac=00:16:3e:00:00:01,model=virtio-net' ]
"""


def test_hvm_disks_keep_their_place_on_the_controller_qemu_xen_gave_them():
    cfg = parse_xen_cfg(HVM_CFG)
    spec = plan_domain_spec(cfg, plan_disk_map(cfg))
    assert [(d.target, d.bus) for d in spec.disks] == [("hda", "ide"), ("sdb", "scsi"), ("hdc", "ide")]
    assert spec.scsi_model == "lsilogic" and spec.interfaces[0].model == "virtio"


def test_hdtype_ahci_puts_hd_and_xvd_disks_on_sata():
    cfg = parse_xen_cfg(HVM_CFG + "hdtype = 'ahci'\n")
    spec = plan_domain_spec(cfg, plan_disk_map(cfg))
    assert [(d.target, d.bus) for d in spec.disks] == [("hda", "sata"), ("sdb", "scsi"), ("hdc", "sata")]


@pytest.mark.parametrize("bus, devs", [("virtio", ["vda", "vdb", "vdc"]), ("sata", ["hda", "sdb", "hdc"]),
                                       ("scsi", ["hda", "sdb", "hdc"])])
def test_an_inventory_bus_other_than_ide_moves_every_hvm_disk_to_it(bus, devs, schema_dirs):
    """For a guest given drivers for that bus; its SCSI controller is then the PV guests' virtio-scsi."""
    cfg = parse_xen_cfg(HVM_CFG)
    vm = dataclasses.replace(seed_vm(), name="mixed", bus=bus, disks=())
    spec = plan_domain_spec(cfg, plan_disk_map(cfg), vm)
    assert {d.bus for d in spec.disks} == {bus} and spec.scsi_model == "virtio-scsi"
    xml = render_domain_xml(spec)
    assert_valid(xml, schema_dirs)
    assert parse(xml).xpath("devices/disk/target/@dev") == devs


def test_an_hvm_guest_does_not_boot_direct_kernel():
    cfg = parse_xen_cfg(HVM_CFG)
    vm = dataclasses.replace(seed_vm(), name="mixed", boot="direct-kernel", disks=())
    with pytest.raises(ValueError, match=r"^vms.mixed.boot is direct-kernel, but an HVM guest boots its own boot "
                                         r"loader from its disk: use boot: grub$"):
        plan_domain_spec(cfg, plan_disk_map(cfg), vm)


def test_a_pv_guests_nics_are_virtio_whatever_model_says():
    spec = plan_domain_spec(xen_cfg(vif="[ 'mac=00:16:3e:00:00:01,model=e1000' ]"), [])
    assert [n.model for n in spec.interfaces] == ["virtio"]


def test_a_shared_disk_is_shareable_and_uncached(schema_dirs):
    disk_map = [MappedDisk("sdb1", "sdb", "/dev/drbd22", "block", "gfs", shared=True)]
    spec = plan_domain_spec(xen_cfg(), disk_map)
    xml = render_domain_xml(spec)
    assert_valid(xml, schema_dirs)
    disk = parse(xml).find("devices/disk")
    assert disk.find("shareable") is not None and disk.find("driver").get("cache") == "none"
