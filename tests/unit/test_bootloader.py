"""device.map, /etc/default/grub, menu.lst and the Xen-only kernel rule.

BOOKWORM_GRUB is Debian 12's /etc/default/grub (grub2 2.06) and MENU_LST a lenny-era
update-grub (grub-legacy 0.97) menu.lst as xen-tools' pygrub layout leaves it, with its
`## ## Start/End Default Options ##` magic section; the kernel config excerpts follow Debian's
config-* files of those flavours. All written by hand from knowledge of those releases.
"""

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.formats import FormatError
from tasks.formats.bootloader import (
    CONSOLE_ARGS,
    NIC_NAMES,
    convert_default_grub,
    convert_menu_lst,
    kernel_is_xen_only,
    render_device_map,
)

RENAMES = {"xvda2": "sda", "xvda1": "sdb"}
CONSOLES = " ".join(CONSOLE_ARGS)
GRUB_ARGS = f"{NIC_NAMES} {CONSOLES}"     # what grub 2's command line gets, in this order

BOOKWORM_GRUB = """\
# If you change this file or any /etc/default/grub.d/*.cfg file,
# run 'update-grub' afterwards to update /boot/grub/grub.cfg.
# For full documentation of the options in these files, see:
#   info -f grub -n 'Simple configuration'

GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`( . /etc/os-release; echo ${NAME:-Debian} ) 2>/dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX=""

# If your computer has multiple operating systems installed, then you
# probably want to run os-prober. However, if your computer is a host
# for guest OSes installed via LVM or raw disk devices, running
# os-prober can cause damage to those guest OSes as it mounts
# filesystems to look for things.
#GRUB_DISABLE_OS_PROBER=false

# Uncomment to enable BadRAM filtering, modify to suit your needs
# This works with Linux (no patch required) and with any kernel that obtains
# the memory map information from GRUB (GNU Mach, kernel of FreeBSD ...)
#GRUB_BADRAM="0x01234567,0xfefefefe,0x89abcdef,0xefefefef"

# Uncomment to disable graphical terminal
#GRUB_TERMINAL=console

# The resolution used on graphical terminal
# note that you can use only modes which your graphic card supports via VBE
# you can see them in real GRUB with the command `vbeinfo'
#GRUB_GFXMODE=640x480

# Uncomment if you don't want GRUB to pass "root=UUID=xxx" parameter to Linux
#GRUB_DISABLE_LINUX_UUID=true

# Uncomment to disable generation of recovery mode menu entries
#GRUB_DISABLE_RECOVERY="true"

# Uncomment to get a beep at grub start
#GRUB_INIT_TUNE="480 440 1"
"""


def test_bookworm_exact():
    out = convert_default_grub(BOOKWORM_GRUB, RENAMES)
    assert out == BOOKWORM_GRUB.replace(
        'GRUB_CMDLINE_LINUX=""', 'GRUB_CMDLINE_LINUX="net.ifnames=0 console=ttyS0,115200n8 console=hvc0"') + (
        'GRUB_TERMINAL="console serial"\n'
        'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n')
    assert convert_default_grub(out, RENAMES) == out


def test_xen_tools_pvgrub_style_console_and_root():
    """xen-tools' 82-install-grub writes console=hvc0; an admin disabled UUIDs and set root=."""
    text = ('GRUB_CMDLINE_LINUX_DEFAULT="quiet console=tty0"\n'
            "GRUB_CMDLINE_LINUX='console=hvc0 root=/dev/xvda2 resume=/dev/xvda1'  # set by hand\n"
            "GRUB_DISABLE_LINUX_UUID=true\n"
            "GRUB_TERMINAL=console\n")
    assert convert_default_grub(text, RENAMES) == (
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
        "GRUB_CMDLINE_LINUX='root=/dev/sda resume=/dev/sdb net.ifnames=0 console=ttyS0,115200n8 console=hvc0'"
        "  # set by hand\n"
        "GRUB_DISABLE_LINUX_UUID=true\n"
        'GRUB_TERMINAL="console serial"\n'
        'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n')


def test_root_argument_wins_over_generated_root():
    text = 'GRUB_CMDLINE_LINUX_DEFAULT="quiet root=/dev/xvda2"\nGRUB_CMDLINE_LINUX="elevator=noop"\n'
    out = convert_default_grub(text, RENAMES, root="UUID=0f3e8a1c-6d2b-4f7e-9a51-3b8c2d4e5f60")
    assert out == (
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n'
        'GRUB_CMDLINE_LINUX="elevator=noop root=UUID=0f3e8a1c-6d2b-4f7e-9a51-3b8c2d4e5f60 '
        'net.ifnames=0 console=ttyS0,115200n8 console=hvc0"\n'
        'GRUB_TERMINAL="console serial"\nGRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n')
    assert convert_default_grub(out, RENAMES, root="UUID=0f3e8a1c-6d2b-4f7e-9a51-3b8c2d4e5f60") == out


def test_consoles_go_on_the_last_assignment():
    text = 'GRUB_CMDLINE_LINUX="console=hvc0"\nGRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX net.ifnames=0"\n'
    assert convert_default_grub(text, {}).splitlines()[:2] == [
        'GRUB_CMDLINE_LINUX=""',
        f'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX {GRUB_ARGS}"',
    ]


def test_eth0_names_win_over_an_earlier_choice_and_stay_single():
    """net.ifnames=1 on _DEFAULT (appended later by grub) would give KVM's NIC ens3 again."""
    text = 'GRUB_CMDLINE_LINUX_DEFAULT="quiet net.ifnames=1"\nGRUB_CMDLINE_LINUX="net.ifnames=1 biosdevname=0"\n'
    out = convert_default_grub(text, {})
    assert out.splitlines()[:2] == [
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet"',
        f'GRUB_CMDLINE_LINUX="biosdevname=0 {GRUB_ARGS}"',
    ]
    assert out.count("net.ifnames") == 1
    assert convert_default_grub(out, {}) == out


def test_menu_lst_keeps_the_kernels_nic_names():
    """pygrub's menu.lst boots the Xen side only, where netfront is eth0 anyway."""
    assert NIC_NAMES not in convert_menu_lst(MENU_LST, RENAMES)


def test_missing_cmdline_is_added():
    assert convert_default_grub("GRUB_TIMEOUT=5", {}) == (
        "GRUB_TIMEOUT=5\n"
        f'GRUB_CMDLINE_LINUX="{GRUB_ARGS}"\n'
        'GRUB_TERMINAL="console serial"\nGRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n')


@pytest.mark.parametrize("line", [
    'GRUB_CMDLINE_LINUX="quiet',
    'GRUB_CMDLINE_LINUX="$(cat /etc/kernel/cmdline)"',
    "GRUB_CMDLINE_LINUX=`cat /etc/kernel/cmdline`",
    "export GRUB_CMDLINE_LINUX_DEFAULT=quiet\\ splash",
])
def test_computed_or_multiline_values_are_refused(line):
    with pytest.raises(FormatError, match="line 2 is not a plain assignment"):
        convert_default_grub("GRUB_DEFAULT=0\n" + line + "\n", RENAMES)


@pytest.mark.parametrize("root", ['/dev/sda"', "UUID=$(reboot)", "/dev/sda root=/dev/sdb", "sda"])
def test_bad_root_is_refused(root):
    with pytest.raises(FormatError, match="root"):
        convert_default_grub(BOOKWORM_GRUB, RENAMES, root=root)


MENU_HEAD = """\
# menu.lst - See: grub(8), info grub, update-grub(8)
#            grub-install(8), grub-floppy(8),
#            grub-md5-crypt, /usr/share/doc/grub
#            and /usr/share/doc/grub-legacy-doc/.

## default num
# Set the default entry to the entry number NUM. Numbering starts from 0, and
# the entry number 0 is the default if the command is not used.
#
# You can specify 'saved' instead of a number. In this case, the default entry
# is the entry saved with the command 'savedefault'.
# WARNING: If you are using dmraid do not use 'savedefault' or your
# array will desync and will not let you boot your system.
default\t\t0

## timeout sec
# Set a timeout, in SEC seconds, before automatically booting the default entry
# (normally the first entry defined).
timeout\t\t5

# Pretty colours
color cyan/blue white/blue

### BEGIN AUTOMAGIC KERNELS LIST
## lines between the AUTOMAGIC KERNELS LIST markers will be modified
## by the debian update-grub script except for the default options below

## DO NOT UNCOMMENT THEM, Just edit them to your needs

## ## Start Default Options ##
## default kernel options
## default kernel options for automagic boot options
## If you want special options for specific kernels use kopt_x_y_z
## where x.y.z is kernel version. Minor versions can be omitted.
## e.g. kopt=root=/dev/hda1 ro
##      kopt_2_6_8=root=/dev/hdc1 ro
##      kopt_2_6_8_2_686=root=/dev/hdc2 ro
"""

MENU_OPTIONS = """\

## default grub root device
## e.g. groot=(hd0,0)
# groot=(hd0,1)

## should update-grub create alternative automagic boot options
## e.g. alternative=true
##      alternative=false
# alternative=true

## Xen Linux kernel options to use with the default Xen boot option
# xenkopt=console=tty0

## altoption boot targets option
## multiple altoptions lines are allowed
## e.g. altoptions=(extra menu suffix) extra boot options
##      altoptions=(recovery) single
# altoptions=(single-user) single

## specify if running in Xen domU or have grub detect automatically
## update-grub will ignore non-xen kernels when running in domU and vice versa
## e.g. indomU=detect
##      indomU=true
##      indomU=false
# indomU=detect

## ## End Default Options ##

"""

MENU_LST = MENU_HEAD + "# kopt=root=/dev/xvda2 ro\n" + MENU_OPTIONS + """\
title\t\tDebian GNU/Linux, kernel 2.6.26-2-xen-686
root\t\t(hd0,1)
kernel\t\t/boot/vmlinuz-2.6.26-2-xen-686 root=/dev/xvda2 ro console=hvc0
initrd\t\t/boot/initrd.img-2.6.26-2-xen-686

title\t\tDebian GNU/Linux, kernel 2.6.26-2-xen-686 (single-user mode)
root\t\t(hd0,1)
kernel\t\t/boot/vmlinuz-2.6.26-2-xen-686 root=/dev/xvda2 ro single
initrd\t\t/boot/initrd.img-2.6.26-2-xen-686

### END DEBIAN AUTOMAGIC KERNELS LIST
"""


def test_menu_lst_exact():
    out = convert_menu_lst(MENU_LST, RENAMES)
    assert out == MENU_HEAD + f"# kopt=root=/dev/sda ro {CONSOLES}\n" + MENU_OPTIONS + f"""\
title\t\tDebian GNU/Linux, kernel 2.6.26-2-xen-686
root\t\t(hd0,1)
kernel\t\t/boot/vmlinuz-2.6.26-2-xen-686 root=/dev/sda ro {CONSOLES}
initrd\t\t/boot/initrd.img-2.6.26-2-xen-686

title\t\tDebian GNU/Linux, kernel 2.6.26-2-xen-686 (single-user mode)
root\t\t(hd0,1)
kernel\t\t/boot/vmlinuz-2.6.26-2-xen-686 root=/dev/sda ro single {CONSOLES}
initrd\t\t/boot/initrd.img-2.6.26-2-xen-686

### END DEBIAN AUTOMAGIC KERNELS LIST
"""
    assert convert_menu_lst(out, RENAMES) == out


def test_menu_lst_without_console_only_remaps():
    text = "# kopt_2_6_32=root=/dev/xvda2 ro \nkernel /boot/vmlinuz-2.6.32-5-amd64 root=UUID=0f3e-1a2b ro\n"
    assert convert_menu_lst(text, RENAMES, console=False) == (
        "# kopt_2_6_32=root=/dev/sda ro\nkernel /boot/vmlinuz-2.6.32-5-amd64 root=UUID=0f3e-1a2b ro\n")
    assert convert_menu_lst(text, {}, console=False) == text


def test_device_map():
    assert render_device_map(["sda", "sdb", "sdc"]) == "(hd0) /dev/sda\n(hd1) /dev/sdb\n(hd2) /dev/sdc\n"
    assert render_device_map([]) == ""
    with pytest.raises(FormatError):
        render_device_map(["sda\n(hd9) /dev/sdz"])


ETCH_XEN_CONFIG = """\
#
# Automatically generated make config: don't edit
# Linux kernel version: 2.6.18-6-xen-686
#
CONFIG_X86_32=y
CONFIG_X86_XEN=y
CONFIG_XEN=y
CONFIG_BLK_DEV_SD=m
CONFIG_ATA_PIIX=m
CONFIG_XEN_BLKDEV_FRONTEND=m
"""
LENNY_XEN_CONFIG = """\
CONFIG_64BIT=y
CONFIG_X86_64=y
CONFIG_X86_64_XEN=y
CONFIG_XEN=y
CONFIG_BLK_DEV_SD=m
CONFIG_SATA_AHCI=m
CONFIG_ATA_PIIX=m
"""
SQUEEZE_XEN_CONFIG = """\
CONFIG_PARAVIRT_GUEST=y
CONFIG_XEN=y
CONFIG_XEN_DOM0=y
CONFIG_PARAVIRT=y
CONFIG_BLK_DEV_SD=m
CONFIG_SATA_AHCI=m
CONFIG_ATA_PIIX=m
CONFIG_VIRTIO_BLK=m
CONFIG_VIRTIO_PCI=m
"""
BUSTER_CONFIG = """\
CONFIG_HYPERVISOR_GUEST=y
CONFIG_PARAVIRT=y
CONFIG_XEN=y
CONFIG_XEN_PV=y
CONFIG_KVM_GUEST=y
CONFIG_BLK_DEV_SD=m
CONFIG_ATA_PIIX=m
CONFIG_SATA_AHCI=m
CONFIG_VIRTIO_BLK=m
CONFIG_VIRTIO_PCI=m
CONFIG_SCSI_VIRTIO=m
"""
CLOUD_CONFIG = """\
CONFIG_PARAVIRT=y
CONFIG_XEN=y
CONFIG_BLK_DEV_SD=m
# CONFIG_ATA_PIIX is not set
# CONFIG_SATA_AHCI is not set
CONFIG_SCSI_VIRTIO=m
CONFIG_VIRTIO_BLK=m
CONFIG_VIRTIO_PCI=y
"""
DOMU_ONLY_CONFIG = """\
CONFIG_PARAVIRT=y
CONFIG_XEN=y
CONFIG_XEN_BLKDEV_FRONTEND=y
# CONFIG_BLK_DEV_SD is not set
# CONFIG_VIRTIO_BLK is not set
CONFIG_VIRTIO_PCI=y
"""


@pytest.mark.parametrize("version, expected", [
    ("2.6.18-6-xen-686", True),
    ("2.6.26-2-xen-amd64", True),
    ("2.6.32-5-xen-amd64", True),
    ("2.6.24-19-xen", True),
    ("2.6.18-398.el5xen", True),
    ("2.6.32-5-amd64", False),
    ("4.19.0-20-amd64", False),
    ("6.1.0-18-cloud-amd64", False),
    ("5.10.0-xenomai-amd64", False),
])
def test_xen_only_by_name(version, expected):
    assert kernel_is_xen_only(version) is expected


@pytest.mark.parametrize("version, config, expected", [
    ("2.6.18-6-xen-686", ETCH_XEN_CONFIG, True),
    ("2.6.26-2-xen-amd64", LENNY_XEN_CONFIG, True),
    ("2.6.32-5-xen-amd64", SQUEEZE_XEN_CONFIG, False),
    ("4.19.0-20-amd64", BUSTER_CONFIG, False),
    ("6.1.0-18-cloud-amd64", CLOUD_CONFIG, False),
    ("6.1.99-domu", DOMU_ONLY_CONFIG, True),
    ("2.6.32-custom", "CONFIG_XEN=y\nCONFIG_BLK_DEV_SD=y\nCONFIG_ATA_PIIX=y\n", True),
])
def test_xen_only_by_config(version, config, expected):
    assert kernel_is_xen_only(version, config) is expected


# ---- properties -----------------------------------------------------------------------------

OWNED = ("GRUB_CMDLINE_LINUX=", "GRUB_CMDLINE_LINUX_DEFAULT=", "GRUB_TERMINAL=", "GRUB_SERIAL_COMMAND=")
GRUB_POOL = BOOKWORM_GRUB.splitlines() + [
    "GRUB_CMDLINE_LINUX='root=/dev/xvda2 ro'", 'GRUB_CMDLINE_LINUX="console=hvc0 resume=/dev/xvda1"',
    "GRUB_CMDLINE_LINUX=console=hvc0", 'export GRUB_TERMINAL="serial"', "GRUB_CMDLINE_LINUX=$(x)", "GRUB_TERMINAL_OUTPUT=console",
    'GRUB_CMDLINE_LINUX="a \\" b"', 'GRUB_CMDLINE_LINUX="unterminated', "GRUB_SERIAL_COMMAND=serial",
]
free_line = st.text(st.characters(exclude_characters="\n"), max_size=40)
grub_texts = st.builds(lambda ls, nl: "\n".join(ls) + nl,
                       st.lists(st.one_of(st.sampled_from(GRUB_POOL), free_line), max_size=20),
                       st.sampled_from(["", "\n"]))
hostile = st.one_of(st.sampled_from(["sd a", 'sd"a', "sda\n", "sd'a", "sda;reboot", "../sda", "$(x)", "sda\"",
                                     "sda`x`", "sda console=tty0", "xvda1", "xvda2", "sda", "sdb"]),
                    st.text(max_size=10))
renames_st = st.sampled_from([{}, RENAMES, {"xvda2": "vda"}])
roots = st.sampled_from([None, "/dev/sda", "UUID=0f3e8a1c-6d2b-4f7e-9a51-3b8c2d4e5f60", "LABEL=root"])


def _lines(text):
    """Lines without their newline; a final newline does not start another line."""
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n") if text else []


def _owned(line):
    return line.lstrip(" \t").removeprefix("export").lstrip(" \t").startswith(OWNED)


@given(grub_texts, renames_st, roots)
def test_property_default_grub_idempotent_and_other_lines_kept(text, renames, root):
    try:
        out = convert_default_grub(text, renames, root)
    except FormatError:
        assert any(_owned(line) for line in _lines(text))
        return
    assert convert_default_grub(out, renames, root) == out
    before, after = _lines(text), _lines(out)
    assert len(after) >= len(before)
    for old, new in zip(before, after, strict=False):
        assert old == new or _owned(old)


@given(grub_texts, st.dictionaries(hostile, hostile, max_size=3),
       st.one_of(st.none(), hostile, hostile.map("/dev/{}".format), hostile.map("UUID={}".format)))
def test_property_default_grub_hostile_names_keep_shell_words(text, renames, root):
    """A value from the disk map or the root argument never splits or unbalances a shell word."""
    try:
        out = convert_default_grub(text, renames, root)
    except FormatError:
        return
    before, after = _lines(text), _lines(out)
    for old, new in zip(before, after, strict=False):
        try:
            words = shlex.split(old, comments=True)
        except ValueError:
            continue
        assert len(shlex.split(new, comments=True)) == len(words)
    for added in after[len(before):]:
        assert len(shlex.split(added)) <= 1


MENU_POOL = MENU_LST.splitlines() + [
    "kernel /vmlinuz root=/dev/xvda1", "  kernel\t/boot/vmlinuz-3.2.0-4-amd64 root=/dev/xvda2 ro quiet  ",
    "# kopt=", "#kopt=root=/dev/xvda2", "kernel", "kernel /boot/x console=xvc0 console=tty0",
]
menu_texts = st.builds(lambda ls, nl: "\n".join(ls) + nl,
                       st.lists(st.one_of(st.sampled_from(MENU_POOL), free_line), max_size=20),
                       st.sampled_from(["", "\n", "\r\n"]))


@given(menu_texts, renames_st, st.booleans())
def test_property_menu_lst_idempotent_and_other_lines_kept(text, renames, console):
    out = convert_menu_lst(text, renames, console)
    assert convert_menu_lst(out, renames, console) == out
    before, after = _lines(text), _lines(out)
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=False):
        stripped = old.lstrip(" \t")
        assert old == new or stripped.startswith("kernel") or stripped.lstrip("#").lstrip(" \t").startswith("kopt")


@given(menu_texts, st.dictionaries(hostile, hostile, max_size=3))
def test_property_menu_lst_hostile_names_never_add_lines(text, renames):
    try:
        out = convert_menu_lst(text, renames)
    except FormatError:
        return
    assert out.count("\n") == text.count("\n")
    for old, new in zip(text.split("\n"), out.split("\n"), strict=False):
        assert new == old or new.split()[:2] == old.split()[:2] or new.split()[0].startswith("#")
