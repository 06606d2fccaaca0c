"""convert_fstab / fstab_devices and the device-name checks.

XEN_TOOLS is what xen-tools' hooks/common/90-make-fstab writes (header with tabs-and-spaces
columns, proc and devpts, then one `/dev/xvdaN` line per partition); OPERATOR is a hand-edited
one as admins grow them. Both written by hand from those sources and Debian practice.
"""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.formats import FormatError
from tasks.formats.fstab import check_renames, convert_fstab, fstab_devices

XEN_TOOLS = """\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
proc            /proc           proc    defaults        0       0
devpts          /dev/pts        devpts  rw,noexec,nosuid,gid=5,mode=620 0  0
/dev/xvda2 / ext4 errors=remount-ro 0 1
/dev/xvda1 none swap sw 0 0
/dev/xvda3 /var ext4 defaults 0 1
"""

RENAMES = {"xvda2": "sda", "xvda1": "sdb", "xvda3": "sdc"}

OPERATOR = """\
# /etc/fstab: static file system information.
#
# <file system>\t<mount point>\t<type>\t<options>\t<dump>\t<pass>
proc\t\t/proc\tproc\tdefaults\t0\t0
/dev/xvda2\t/\text3\terrors=remount-ro\t0\t1
  /dev/xvda1   none   swap   sw   0   0
UUID=5b1e6f0c-3c61-4d9f-9b5c-2f0c1f1a3e77 /srv ext4 defaults 0 2
LABEL=backup /backup ext4 noauto 0 0
/dev/mapper/vg0-data /data xfs defaults 0 2
tmpfs /tmp tmpfs nodev,nosuid,size=256m 0 0
#/dev/xvda3 /old ext3 defaults 0 2
/dev/xvda10 /scratch ext4 defaults 0 2
192.0.2.10:/export/home /home nfs rw,hard 0 0
"""


def test_xen_tools_exact():
    assert convert_fstab(XEN_TOOLS, RENAMES) == """\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
proc            /proc           proc    defaults        0       0
devpts          /dev/pts        devpts  rw,noexec,nosuid,gid=5,mode=620 0  0
/dev/sda / ext4 errors=remount-ro 0 1
/dev/sdb none swap sw 0 0
/dev/sdc /var ext4 defaults 0 1
"""


def test_uuids_replace_known_names_only():
    uuids = {"sda": "0f3e8a1c-6d2b-4f7e-9a51-3b8c2d4e5f60", "sdb": "7c2d1e9f-0a3b-4c5d-8e6f-1a2b3c4d5e6f"}
    out = convert_fstab(XEN_TOOLS, RENAMES, uuids)
    assert out.splitlines()[5:] == [
        "UUID=0f3e8a1c-6d2b-4f7e-9a51-3b8c2d4e5f60 / ext4 errors=remount-ro 0 1",
        "UUID=7c2d1e9f-0a3b-4c5d-8e6f-1a2b3c4d5e6f none swap sw 0 0",
        "/dev/sdc /var ext4 defaults 0 1",
    ]
    assert convert_fstab(out, RENAMES, uuids) == out


def test_a_per_host_disk_by_uuid_gets_nofail_once():
    """A local swap LV has another UUID on the other host: without nofail that boot waits for it."""
    uuids = {"sda": "0f3e8a1c-6d2b-4f7e-9a51-3b8c2d4e5f60", "sdb": "7c2d1e9f-0a3b-4c5d-8e6f-1a2b3c4d5e6f"}
    out = convert_fstab(XEN_TOOLS, RENAMES, uuids, per_host=frozenset({"sdb", "sdc"}))
    assert out.splitlines()[5:] == [
        "UUID=0f3e8a1c-6d2b-4f7e-9a51-3b8c2d4e5f60 / ext4 errors=remount-ro 0 1",
        "UUID=7c2d1e9f-0a3b-4c5d-8e6f-1a2b3c4d5e6f none swap sw,nofail 0 0",
        "/dev/sdc /var ext4 defaults 0 1",   # a name, not a UUID: the same on both sides
    ]
    assert convert_fstab(out, RENAMES, uuids, per_host=frozenset({"sdb", "sdc"})) == out


def test_operator_fstab_keeps_spacing_and_stable_names():
    assert convert_fstab(OPERATOR, RENAMES) == """\
# /etc/fstab: static file system information.
#
# <file system>\t<mount point>\t<type>\t<options>\t<dump>\t<pass>
proc\t\t/proc\tproc\tdefaults\t0\t0
/dev/sda\t/\text3\terrors=remount-ro\t0\t1
  /dev/sdb   none   swap   sw   0   0
UUID=5b1e6f0c-3c61-4d9f-9b5c-2f0c1f1a3e77 /srv ext4 defaults 0 2
LABEL=backup /backup ext4 noauto 0 0
/dev/mapper/vg0-data /data xfs defaults 0 2
tmpfs /tmp tmpfs nodev,nosuid,size=256m 0 0
#/dev/xvda3 /old ext3 defaults 0 2
/dev/xvda10 /scratch ext4 defaults 0 2
192.0.2.10:/export/home /home nfs rw,hard 0 0
"""


def test_only_the_first_field_is_renamed():
    text = "/dev/xvda2 /mnt/dev/xvda2 ext4 defaults 0 2\n"
    assert convert_fstab(text, RENAMES) == "/dev/sda /mnt/dev/xvda2 ext4 defaults 0 2\n"


def test_crlf_and_no_final_newline_are_kept():
    text = "/dev/xvda2 / ext4 defaults 0 1\r\n/dev/xvda1 none swap sw 0 0"
    assert convert_fstab(text, RENAMES) == "/dev/sda / ext4 defaults 0 1\r\n/dev/sdb none swap sw 0 0"


def test_fstab_devices():
    assert fstab_devices(XEN_TOOLS) == ["xvda2", "xvda1", "xvda3"]
    assert fstab_devices(OPERATOR) == ["xvda2", "xvda1", "mapper/vg0-data", "xvda10"]
    assert fstab_devices("/dev/ /x ext4 defaults 0 0\n") == []


@pytest.mark.parametrize("renames, message", [
    ({"xvda2": "sda b"}, "not a plain device name"),
    ({"xvda2": "sda\n/dev/sdb"}, "not a plain device name"),
    ({"../xvda2": "sda"}, "not a plain device name"),
    ({"xvda2": ""}, "not a plain device name"),
    ({"xvda": "sda", "sda": "sdb"}, "a second run would rename again"),
    ({"xvda1": "sda", "xvda2": "sda"}, "more than one old device"),
])
def test_bad_renames_are_refused(renames, message):
    with pytest.raises(FormatError, match=message):
        convert_fstab(XEN_TOOLS, renames)


def test_bad_uuid_is_refused():
    with pytest.raises(FormatError, match="not a filesystem UUID"):
        convert_fstab(XEN_TOOLS, RENAMES, {"sda": "0f3e /dev/sdz"})


def test_plain_names_pass():
    check_renames({"cciss/c0d0p1": "sda", "nvme0n1p2": "vdb", "xvda2": "sda1"})


# ---- properties -----------------------------------------------------------------------------

POOL = (XEN_TOOLS + OPERATOR).splitlines() + ["", "   ", "\t# comment", "/dev/xvda2", "none /dev/xvda2 x"]
line = st.one_of(st.sampled_from(POOL), st.text(st.characters(exclude_characters="\n"), max_size=40))
texts = st.builds(lambda ls, nl: "\n".join(ls) + nl, st.lists(line, max_size=20), st.sampled_from(["", "\n"]))
names = st.sampled_from(["xvda1", "xvda2", "xvda3", "xvda10", "hda1", "sda1"])
new_names = st.sampled_from(["sda", "sdb", "sdc", "vda", "vdb"])
renames_st = st.dictionaries(names, new_names, max_size=4).filter(
    lambda d: len(set(d.values())) == len(d))


HOSTILE = ["sd a", 'sd"a', "sda\n", "sd'a", "sda;reboot", "../sda", "-sda", "sda#x", "$(x)", "sd\ta",
           "sda\r", "", "xvda2 / ext4", "sda,console=tty0"]
PLAIN = ["xvda1", "xvda2", "xvda3", "sda", "sdb", "sdc"]
hostile = st.one_of(st.sampled_from(HOSTILE + PLAIN), st.text(max_size=10))


def _fields(line):
    return line.split()


def _around_device(line):
    """The text before and after the first field."""
    m = re.match(r"([ \t]*)\S+", line)
    return m.group(1), line[m.end():]


@given(texts, renames_st, st.booleans())
def test_property_idempotent_and_untouched_lines_kept(text, renames, with_uuids):
    uuids = {"sda": "0f3e8a1c-6d2b-4f7e-9a51-3b8c2d4e5f60"} if with_uuids else None
    out = convert_fstab(text, renames, uuids)
    assert convert_fstab(out, renames, uuids) == out
    before, after = text.split("\n"), out.split("\n")
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=False):
        if old != new:
            assert _fields(old)[0][5:] in renames
            assert _around_device(old) == _around_device(new)


@given(texts, st.dictionaries(hostile, hostile, max_size=3),
       st.dictionaries(st.text(max_size=6), st.text(max_size=40), max_size=2))
def test_property_hostile_names_never_break_a_line(text, renames, uuids):
    try:
        out = convert_fstab(text, renames, uuids)
    except FormatError:
        return
    before, after = text.split("\n"), out.split("\n")
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=False):
        assert len(_fields(old)) == len(_fields(new))
        assert "#" not in new or new == old
