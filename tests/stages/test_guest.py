"""The guest stage at the command level: the exact commands sent to a guest and the files written.

Two guests as xen-tools made them: a Debian 5 (lenny) sysvinit guest booted by pygrub with only
a Xen kernel and grub legacy, and a Debian 12 (bookworm) systemd guest booted by pygrub from its
grub 2 files. Each is a MockContext answering the probes; a second run is fed the files the first
run wrote (and the packages it installed) and must change nothing.
"""

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from invoke import Context, MockContext, Result

from tasks import guest as stage
from tasks import vmplan
from tasks.diskmap import MappedDisk, plan_disk_map
from tasks.errors import GuardError, InputError
from tasks.formats.bootloader import convert_default_grub, convert_menu_lst
from tasks.formats.fstab import convert_fstab
from tasks.formats.getty import GuestConsoleFacts
from tasks.formats.inittab import convert_inittab, convert_securetty
from tasks.formats.xencfg import parse_xen_cfg
from tasks.inventory import VM, Host, Inventory, LocalDisk, ReplicatedDisk, parse_inventory
from tasks.remote import Remote, Site
from tests.wire import HostMock, bare

REPO = Path(__file__).resolve().parents[2]
READ = 'if [ -e "$1" ]; then cat -- "$1"; else exit 66; fi'
WRITE = re.compile(r"^sh -c 'set -e; if \[ -L \"\$1\" \] && \[ ! -e \"\$1\" \]; then exit 67; fi; ")
APT = "env DEBIAN_FRONTEND=noninteractive apt-get install -y"

# -- the lenny guest (Debian 5, sysvinit, pygrub, Xen-only kernel) ------------------------------

LENNY_CFG = """\
#
# Configuration file for the Xen instance logger, created
# by xen-tools 4.2 on Thu Mar  3 10:12:41 2011.
#

#
#  Kernel + memory size
#
bootloader = 'pygrub'

vcpus       = '1'
memory      = '256'

#
#  Disk device(s).
#
root        = '/dev/xvda2 ro'
disk        = [
                  'phy:/dev/drbd5,xvda2,w',
                  'phy:/dev/vg_main/logger-swap,xvda1,w',
              ]

#
#  Hostname
#
name        = 'logger'

#
#  Networking
#
vif         = [ 'ip=192.0.2.50,mac=00:16:3E:37:D0:70' ]

#
#  Behaviour
#
on_poweroff = 'destroy'
on_reboot   = 'restart'
on_crash    = 'restart'
"""

LENNY_INITTAB = """\
# /etc/inittab: init(8) configuration.
# $Id: inittab,v 1.91 2002/01/25 13:35:21 miquels Exp $

# The default runlevel.
id:2:initdefault:

# Boot-time system configuration/initialization script.
# This is run first except when booting in emergency (-b) mode.
si::sysinit:/etc/init.d/rcS

# What to do in single-user mode.
~~:S:wait:/sbin/sulogin

l0:0:wait:/etc/init.d/rc 0
l1:1:wait:/etc/init.d/rc 1
l2:2:wait:/etc/init.d/rc 2
l3:3:wait:/etc/init.d/rc 3
l4:4:wait:/etc/init.d/rc 4
l5:5:wait:/etc/init.d/rc 5
l6:6:wait:/etc/init.d/rc 6
# Normally not reached, but fallthrough in case of emergency.
z6:6:respawn:/sbin/sulogin

# What to do when CTRL-ALT-DEL is pressed.
ca:12345:ctrlaltdel:/sbin/shutdown -t1 -a -r now

# /sbin/getty invocations for the runlevels.
#
# Format:
#  <id>:<runlevels>:<action>:<process>
#
1:2345:respawn:/sbin/getty 38400 hvc0
#2:23:respawn:/sbin/getty 38400 tty2
#3:23:respawn:/sbin/getty 38400 tty3
#4:23:respawn:/sbin/getty 38400 tty4
#5:23:respawn:/sbin/getty 38400 tty5
#6:23:respawn:/sbin/getty 38400 tty6

# Example how to put a getty on a serial line (for a terminal)
#
#T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100
#T1:23:respawn:/sbin/getty -L ttyS1 9600 vt100
"""

LENNY_SECURETTY = """\
# /etc/securetty: list of terminals on which root is allowed to login.
# See securetty(5) and login(1).
console

# for people with serial port consoles
ttyS0

# Standard consoles
tty1
tty2
tty3
tty4
tty5
tty6
xvc0
"""

XEN_TOOLS_FSTAB = """\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
proc            /proc           proc    defaults        0       0
devpts          /dev/pts        devpts  rw,noexec,nosuid,gid=5,mode=620 0  0
/dev/xvda1 none swap sw 0 0
/dev/xvda2 / {fs} noatime,nodiratime,errors=remount-ro 0 1
"""
LENNY_FSTAB = XEN_TOOLS_FSTAB.format(fs="ext3")

LENNY_MENU_LST = """\
# menu.lst - See: grub(8), info grub, update-grub(8)
#            grub-install(8), grub-floppy(8),
#            grub-md5-crypt, /usr/share/doc/grub
#            and /usr/share/doc/grub-doc/.

## default num
default\t\t0

## timeout sec
timeout\t\t5

### BEGIN AUTOMAGIC KERNELS LIST
## lines between the AUTOMAGIC KERNELS LIST markers will be modified
## by the debian update-grub script except for the default options below

## ## Start Default Options ##
## default kernel options
## e.g. kopt=root=/dev/hda1 ro
# kopt=root=/dev/xvda2 ro

## default grub root device
# groot=(hd0,0)

## ## End Default Options ##

title\t\tDebian GNU/Linux, kernel 2.6.26-2-xen-amd64
root\t\t(hd0,0)
kernel\t\t/boot/vmlinuz-2.6.26-2-xen-amd64 root=/dev/xvda2 ro console=hvc0
initrd\t\t/boot/initrd.img-2.6.26-2-xen-amd64

### END DEBIAN AUTOMAGIC KERNELS LIST
"""

# What grub-pc 1.96 installs; the guest has it only after the first run.
LENNY_DEFAULT_GRUB = """\
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.

GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX=""

# Uncomment to disable graphical terminal (grub-pc only)
#GRUB_TERMINAL=console

# Uncomment if you don't want GRUB to pass "root=UUID=xxx" parameter to Linux
#GRUB_DISABLE_LINUX_UUID=true
"""

INITRAMFS_MODULES = """\
# List of modules that you want to include in your initramfs.
#
# Syntax:  module_name [args ...]
#
# You must run update-initramfs(8) to effect this change.
#
# Examples:
#
# raid1
# sd_mod
"""

LENNY_XEN_CONFIG = """\
CONFIG_64BIT=y
CONFIG_X86_64=y
CONFIG_X86_64_XEN=y
CONFIG_XEN=y
CONFIG_BLK_DEV_SD=m
CONFIG_ATA_PIIX=m
"""
LENNY_KVM_CONFIG = """\
CONFIG_64BIT=y
CONFIG_X86_64=y
CONFIG_BLK_DEV_SD=m
CONFIG_ATA_PIIX=m
CONFIG_SATA_AHCI=m
"""

LENNY_BOOT = ["System.map-2.6.26-2-xen-amd64", "config-2.6.26-2-xen-amd64", "grub",
              "initrd.img-2.6.26-2-xen-amd64", "vmlinuz-2.6.26-2-xen-amd64"]
LENNY_BOOT_AFTER = sorted(LENNY_BOOT + ["System.map-2.6.26-2-amd64", "config-2.6.26-2-amd64",
                                        "initrd.img-2.6.26-2-amd64", "vmlinuz-2.6.26-2-amd64"])


def policy(package: str, candidate: str | None) -> Result:
    """`apt-cache policy PKG` (C locale) as lenny's apt prints it (nothing at all for an unknown name)."""
    if candidate is None:
        return Result(stdout="")
    return Result(stdout=f"{package}:\n  Installed: (none)\n  Candidate: {candidate}\n  Version table:\n"
                         f"     {candidate} 0\n        500 http://archive.debian.org lenny/main Packages\n")


# -- the bookworm guest (Debian 12, systemd, pygrub reading grub 2's grub.cfg) -------------------

WEB_CFG = """\
#
# Configuration file for the Xen instance web, created
# by xen-tools 4.9.2 on Fri Nov 10 09:00:00 2023.
#

#
#  Kernel + memory size
#
bootloader = 'pygrub'

vcpus       = '2'
memory      = '1024'

type      = 'pv'

#
#  Disk device(s).
#
root        = '/dev/xvda2 ro'
disk        = [
                  'file:/srv/xen/domains/web/disk.img,xvda2,w',
                  'file:/srv/xen/domains/web/swap.img,xvda1,w',
              ]

#
#  Hostname
#
name        = 'web'

#
#  Networking
#
vif         = [ 'ip=192.0.2.60,mac=00:16:3E:12:34:56' ]

#
#  Behaviour
#
on_poweroff = 'destroy'
on_reboot   = 'restart'
on_crash    = 'restart'
"""

BOOKWORM_FSTAB = XEN_TOOLS_FSTAB.format(fs="ext4")

BOOKWORM_DEFAULT_GRUB = """\
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.
# For full documentation of the options in this file, see:
#   info -f grub -n 'Simple configuration'

GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX=""

# Uncomment to disable graphical terminal (grub-pc only)
#GRUB_TERMINAL=console
"""

BOOKWORM_CONFIG = """\
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
"""

BOOKWORM_BOOT = ["System.map-6.1.0-13-amd64", "config-6.1.0-13-amd64", "grub",
                 "initrd.img-6.1.0-13-amd64", "vmlinuz-6.1.0-13-amd64"]

GETTY_UNITS = ["getty.target", "getty@.service", "serial-getty@.service",
               "getty@hvc0.service", "serial-getty@hvc0.service",
               "getty@tty1.service", "serial-getty@tty1.service",
               "getty@ttyS0.service", "serial-getty@ttyS0.service"]


# -- a guest as a MockContext ---------------------------------------------------------------

def read_cmd(path: str) -> str:
    return shlex.join(["sh", "-c", READ, "sh", path])


def guest_ctx(files: dict[str, str | None], probes: dict[str, Result]) -> MockContext:
    """Reads of the listed files (None: absent), the probes, and success for any change.

    Any other command raises in MockContext, which Remote reports as a failure: a test sees
    every command the stage sends.
    """
    run = {read_cmd(path): Result(stdout=text) if text is not None else Result(exited=66)
           for path, text in files.items()}
    run[WRITE] = Result()
    for change in ("telinit q", "update-grub", "update-initramfs -u -k all", "debconf-set-selections",
                   f"{APT} grub-pc", f"{APT} linux-image-2.6-amd64", f"{APT} linux-image-amd64",
                   "systemctl enable serial-getty@hvc0.service", "systemctl enable serial-getty@ttyS0.service",
                   f"{APT} acpid acpi-support-base"):
        run[change] = Result()
    for install in ("grub-install --force --target=i386-pc /dev/xvda2", "grub-install --force /dev/xvda2"):
        run[shlex.join(["sh", "-c", stage.WITH_WHOLE_DISK_NAME, "sh", stage.DEVICE_MAP, "/dev/xvda2",
                        *install.split()])] = Result()
    run.update(probes)   # last: a test may make any command answer otherwise
    return HostMock(run=run)


def lenny(after_first_run: dict[str, str] | None = None, kernel_candidates=(None, "2.6.26+17+lenny1"),
          grub_candidate="1.96+20080724-16", probes: dict[str, Result] | None = None) -> MockContext:
    """The lenny guest; given the files a first run wrote, the guest as that run left it."""
    done = after_first_run is not None
    files = {
        "/etc/inittab": LENNY_INITTAB,
        "/etc/securetty": LENNY_SECURETTY,
        "/etc/fstab": LENNY_FSTAB,
        "/boot/config-2.6.26-2-xen-amd64": LENNY_XEN_CONFIG,
        "/boot/grub/menu.lst": LENNY_MENU_LST,
        "/boot/grub/device.map": None,
        "/etc/default/grub": None,
        "/etc/initramfs-tools/modules": INITRAMFS_MODULES,
    }
    answers = {
        "test -d /run/systemd/system": Result(exited=1),
        "readlink -f /sbin/init": Result(stdout="/sbin/init\n"),
        "ls -1 /boot": Result(stdout="\n".join(LENNY_BOOT_AFTER if done else LENNY_BOOT) + "\n"),
        "dpkg --print-architecture": Result(stdout="amd64\n"),
        "dpkg-query -W -f '${Status}' grub-pc": Result(stdout="install ok installed") if done else
        Result(stderr="dpkg-query: no packages found matching grub-pc\n", exited=1),
        "test -e /boot/grub/grub.cfg": Result(exited=0 if done else 1),
        "test -d /etc/initramfs-tools": Result(),
        "test -b /dev/xvda2": Result(),
        "grub-install --version": Result(stdout="grub-install (GRUB) 1.96+20080724-16\n"),
        "apt-cache policy linux-image-amd64": policy("linux-image-amd64", kernel_candidates[0]),
        "apt-cache policy linux-image-2.6-amd64": policy("linux-image-2.6-amd64", kernel_candidates[1]),
        "apt-cache policy grub-pc": policy("grub-pc", grub_candidate),
        **power_button_probes(installed=done),
    }
    if done:
        files.update(after_first_run)
        files["/boot/config-2.6.26-2-amd64"] = LENNY_KVM_CONFIG
    else:
        # grub-pc's postinst creates /etc/default/grub: the check reads it absent, the edit finds it.
        files.pop("/etc/default/grub")
        answers[read_cmd("/etc/default/grub")] = [Result(exited=66), Result(stdout=LENNY_DEFAULT_GRUB)]
    return guest_ctx(files, answers | (probes or {}))


def power_button_probes(installed: bool) -> dict[str, Result]:
    """Neither acpid nor dbus in the guest (as xen-tools leaves it), or acpid after a first run."""
    absent = {p: Result(stderr=f"dpkg-query: no packages found matching {p}\n", exited=1) for p in ("acpid", "dbus")}
    return {
        "dpkg-query -W -f '${Status}' acpid": Result(stdout="install ok installed") if installed else absent["acpid"],
        "dpkg-query -W -f '${Status}' dbus": absent["dbus"],
        "apt-cache policy acpid": policy("acpid", "1:2.0.31-1"),
        "apt-cache policy acpi-support-base": policy("acpi-support-base", "0.143-5.1"),
    }


def bookworm(enabled=("getty@tty1.service",), files: dict[str, str] | None = None,
             probes: dict[str, Result] | None = None) -> MockContext:
    states = {unit: "disabled" for unit in GETTY_UNITS}
    states.update({"getty.target": "static", "getty@.service": "enabled"})
    states.update({unit: "enabled" for unit in enabled})
    answers = {f"systemctl is-enabled {shlex.quote(unit)}": Result(stdout=state + "\n",
                                                                   exited=0 if state == "enabled" else 1)
               for unit, state in states.items()}
    answers.update({
        "test -d /run/systemd/system": Result(),
        "cat /proc/cmdline": Result(stdout="root=/dev/xvda2 ro quiet\n"),
        "ls -1 /boot": Result(stdout="\n".join(BOOKWORM_BOOT) + "\n"),
        "dpkg --print-architecture": Result(stdout="amd64\n"),
        "dpkg-query -W -f '${Status}' grub-pc": Result(stdout="install ok installed"),
        "test -e /boot/grub/grub.cfg": Result(),
        "test -d /etc/initramfs-tools": Result(),
        "test -b /dev/xvda2": Result(),
        "grub-install --version": Result(stdout="grub-install (GRUB) 2.06-13+deb12u1\n"),
        **power_button_probes(installed=False),
    })
    guest_files = {
        "/etc/inittab": None,
        "/etc/securetty": None,
        "/etc/fstab": BOOKWORM_FSTAB,
        "/boot/config-6.1.0-13-amd64": BOOKWORM_CONFIG,
        "/boot/grub/menu.lst": None,
        "/boot/grub/device.map": None,
        "/etc/default/grub": BOOKWORM_DEFAULT_GRUB,
        "/etc/initramfs-tools/modules": INITRAMFS_MODULES,
    }
    guest_files.update(files or {})
    return guest_ctx(guest_files, answers | (probes or {}))


def remote(ctx: MockContext, dry_run: bool = False) -> Remote:
    return Remote("guest:logger", ctx, dry_run=dry_run)


def disk_map(cfg_text: str) -> list[MappedDisk]:
    return plan_disk_map(parse_xen_cfg(cfg_text))


def sent(ctx: MockContext) -> list[str]:
    return [bare(call.args[0]) for call in ctx.run.call_args_list]


def read_only(command: str) -> bool:
    """Judged here from the argv alone, not from how the stage labelled the command."""
    argv = shlex.split(command)
    return (argv[:3] == ["sh", "-c", READ]
            or argv[0] in ("test", "readlink", "ls", "cat", "dpkg-query", "blkid")
            or argv[:2] in (["dpkg", "--print-architecture"], ["systemctl", "is-enabled"])
            or argv[:2] == ["apt-cache", "policy"]
            or argv == ["grub-install", "--version"])


def changes(ctx: MockContext) -> list[str]:
    """The changing commands in order; a file write shows as `write PATH`, grub-install as itself."""
    return [f"write {written_path(c)}" if WRITE.match(c) else grub_install_shown(c)
            for c in sent(ctx) if not read_only(c)]


def grub_install_shown(command: str) -> str:
    """grub-install run with the Xen device in device.map (stage.WITH_WHOLE_DISK_NAME) shows as
    the grub-install command alone, once the test has checked the map names the same device."""
    argv = shlex.split(command)
    if argv[:3] != ["sh", "-c", stage.WITH_WHOLE_DISK_NAME]:
        return command
    assert argv[4:6] == [stage.DEVICE_MAP, argv[-1]], "device.map maps (hd0) to the device installed to"
    return shlex.join(argv[6:])


def written_path(command: str) -> str:
    """The target of Remote.write_file's script: sh -c SCRIPT sh PATH SUFFIX STAGED."""
    return shlex.split(command)[4]


def written(ctx: MockContext) -> dict[str, str]:
    return {written_path(bare(call.args[0])): call.kwargs["in_stream"].getvalue()
            for call in ctx.run.call_args_list if WRITE.match(bare(call.args[0]))}


def stdin_of(ctx: MockContext, command: str) -> str:
    return next(call.kwargs["in_stream"].getvalue() for call in ctx.run.call_args_list
                if bare(call.args[0]) == command)


# -- facts ------------------------------------------------------------------------------------

def test_facts_of_a_lenny_guest():
    ctx = lenny()
    facts = stage.gather_facts(remote(ctx))
    assert facts.init == "sysvinit"
    assert facts.console.init == "sysvinit" and facts.console.has_securetty
    assert facts.kernels == (stage.Kernel("2.6.26-2-xen-amd64", xen_only=True),)
    assert facts.bootable_kernels == []
    assert facts.fstab_devices == ["xvda1", "xvda2"]
    assert (facts.architecture, facts.grub_pc, facts.grub_cfg) == ("amd64", False, False)
    assert facts.menu_lst == LENNY_MENU_LST and facts.default_grub is None
    assert all(read_only(c) for c in sent(ctx))
    assert "dpkg-query -W -f '${Status}' grub-pc" in sent(ctx)
    assert read_cmd("/boot/config-2.6.26-2-xen-amd64") in sent(ctx)


def test_facts_of_a_bookworm_guest():
    ctx = bookworm()
    facts = stage.gather_facts(remote(ctx))
    assert facts.init == "systemd"
    assert facts.console.enabled_units == {"getty@tty1.service"}
    assert facts.console.masked_units == frozenset()
    assert facts.console.kernel_consoles == ()
    assert not facts.console.has_securetty
    assert facts.kernels == (stage.Kernel("6.1.0-13-amd64", xen_only=False),)
    assert (facts.grub_pc, facts.grub_cfg, facts.menu_lst) == (True, True, None)
    assert [c for c in sent(ctx) if c.startswith("systemctl")] == \
        [f"systemctl is-enabled {shlex.quote(u)}" for u in GETTY_UNITS]


def test_init_from_sbin_init_link_and_refusal_without_any():
    guest = remote(HostMock(run={"test -d /run/systemd/system": Result(exited=1),
                                    "readlink -f /sbin/init": Result(stdout="/lib/systemd/systemd\n")}))
    assert stage.probe_init(guest, None) == "systemd"
    guest = remote(HostMock(run={"test -d /run/systemd/system": Result(exited=1),
                                    "readlink -f /sbin/init": Result(stdout="/sbin/init\n")}))
    with pytest.raises(GuardError, match="cannot tell the init system"):
        stage.probe_init(guest, None)


def test_summary_is_readable(capsys):
    facts = stage.gather_facts(remote(lenny()))
    lines = stage.summary("guest:logger", facts)
    assert lines[0] == "* guest:logger: sysvinit, amd64"
    assert lines[1] == "  consoles: inittab gettys 1:hvc0; securetty present"
    after = stage.summary("guest:logger", stage.gather_facts(remote(lenny({"/etc/inittab": convert_inittab(LENNY_INITTAB)}))))
    assert after[1] == "  consoles: inittab gettys 1:tty1, co:hvc0, T0:ttyS0; securetty present"
    assert lines[3] == "  kernels: 2.6.26-2-xen-amd64 (Xen only)"
    assert lines[4] == "  boot loader: grub-pc not installed, grub.cfg absent, menu.lst present (pygrub)"
    assert lines[5] == "  initramfs modules: missing ata_piix, ahci, virtio_blk, virtio_pci, virtio_net, sd_mod"


# -- prepare: lenny ----------------------------------------------------------------------------

def run_prepare(ctx, cfg=LENNY_CFG, vm: VM | None = None, **flags):
    plan = vmplan.plan(cfg, "logger.cfg", vm)
    stage.prepare_guest(remote(ctx, flags.pop("dry_run", False)), plan.disk_map, plan.disk_drivers(), **flags)


def test_prepare_lenny_sends_exactly_these_changes():
    ctx = lenny()
    run_prepare(ctx)
    assert changes(ctx) == [
        "write /etc/inittab",
        "telinit q",
        "write /etc/securetty",
        "write /etc/fstab",
        f"{APT} linux-image-2.6-amd64",
        "debconf-set-selections",
        f"{APT} grub-pc",
        "write /boot/grub/device.map",
        "write /etc/default/grub",
        "update-grub",
        "write /boot/grub/menu.lst",
        f"{APT} acpid acpi-support-base",
        "write /etc/initramfs-tools/modules",
        "update-initramfs -u -k all",
    ]
    files = written(ctx)
    renames = {"xvda2": "sda", "xvda1": "sdb"}
    assert files["/etc/inittab"] == convert_inittab(LENNY_INITTAB)
    assert "1:2345:respawn:/sbin/getty 38400 tty1\n" in files["/etc/inittab"]
    assert files["/etc/securetty"] == convert_securetty(LENNY_SECURETTY)
    assert files["/etc/fstab"] == convert_fstab(LENNY_FSTAB, renames)
    assert "/dev/sda / ext3" in files["/etc/fstab"] and "/dev/sdb none swap" in files["/etc/fstab"]
    assert files["/boot/grub/device.map"] == "(hd0) /dev/sda\n(hd1) /dev/sdb\n"
    assert files["/etc/default/grub"] == convert_default_grub(LENNY_DEFAULT_GRUB, renames, "/dev/sda")
    assert files["/boot/grub/menu.lst"] == convert_menu_lst(LENNY_MENU_LST, renames)
    assert "# kopt=root=/dev/sda ro" in files["/boot/grub/menu.lst"]
    assert files["/etc/initramfs-tools/modules"].endswith("ata_piix\nahci\nvirtio_blk\nvirtio_pci\nvirtio_net\nsd_mod\n")
    assert stdin_of(ctx, "debconf-set-selections") == (
        "grub-pc grub-pc/install_devices multiselect \n"
        "grub-pc grub-pc/install_devices_empty boolean true\n")


def test_prepare_lists_the_drivers_of_the_scsi_controller_the_domain_gives_its_disks():
    """An inventory `bus: scsi` puts the disks behind virtio-scsi: without virtio_scsi in the
    initramfs the guest would not find its root disk on KVM."""
    vm = VM("logger", "xen1", "kvm1", "/etc/xen/logger.cfg", (
        ReplicatedDisk("r0", {"xen1": "/dev/drbd5", "kvm1": "/dev/drbd5"}),
        LocalDisk({"xen1": "/dev/vg_main/logger-swap", "kvm1": "/dev/vg_main/logger-swap"})), bus="scsi")
    ctx = lenny()
    run_prepare(ctx, vm=vm)
    assert written(ctx)["/etc/initramfs-tools/modules"].endswith(
        "ata_piix\nahci\nvirtio_blk\nvirtio_pci\nvirtio_net\nsd_mod\nvirtio_scsi\n")


def test_prepare_lenny_second_run_changes_nothing(capsys):
    first = lenny()
    run_prepare(first)
    capsys.readouterr()
    second = lenny(after_first_run=written(first))
    run_prepare(second)
    assert changes(second) == []
    out = capsys.readouterr().out
    for what in ("/etc/inittab", "/etc/securetty", "/etc/fstab", "/boot/grub/device.map", "/etc/default/grub",
                 "/boot/grub/menu.lst", "/etc/initramfs-tools/modules", "update-grub", "update-initramfs"):
        assert f"* guest:logger: {what} ... unchanged" in out
    assert "kernel 2.6.26-2-amd64 boots under KVM ... unchanged" in out


def test_force_rebuilds_the_initramfs_even_when_the_list_is_unchanged():
    first = lenny()
    run_prepare(first)
    second = lenny(after_first_run=written(first))
    run_prepare(second, force=True)
    assert changes(second) == ["update-initramfs -u -k all"]


def test_dry_run_sends_no_changing_command(capsys):
    ctx = lenny()
    run_prepare(ctx, dry_run=True)
    assert changes(ctx) == []
    out = capsys.readouterr().out
    assert "would run on guest:logger: env LC_ALL=C DEBIAN_FRONTEND=noninteractive apt-get install -y linux-image-2.6-amd64" in out
    assert "would run on guest:logger: env LC_ALL=C update-grub" in out
    assert "would edit guest:logger:/etc/default/grub once grub-pc has installed it" in out
    assert "+co:23:respawn:/sbin/getty -L hvc0 9600 vt102" in out   # the diff is shown


def test_xen_only_kernel_without_apt_candidate_is_refused_before_any_change():
    ctx = lenny(kernel_candidates=(None, None))
    with pytest.raises(GuardError) as info:
        run_prepare(ctx)
    message = str(info.value)
    assert "\n" not in message
    assert "only Xen kernels installed (2.6.26-2-xen-amd64)" in message
    assert "linux-image-amd64 or linux-image-2.6-amd64" in message
    assert changes(ctx) == []


def test_missing_grub_pc_candidate_is_refused():
    ctx = lenny(grub_candidate=None)
    with pytest.raises(GuardError, match="grub-pc is not installed and apt has no candidate"):
        run_prepare(ctx)
    assert changes(ctx) == []


def test_missing_initramfs_tools_is_refused_before_any_change_unless_a_kernel_brings_it(capsys):
    ctx = bookworm(probes={"test -d /etc/initramfs-tools": Result(exited=1)})
    with pytest.raises(GuardError, match="initramfs-tools is not installed"):
        run_prepare(ctx, cfg=WEB_CFG)
    assert changes(ctx) == []

    ctx = lenny(probes={"test -d /etc/initramfs-tools": Result(exited=1)})
    run_prepare(ctx, dry_run=True)
    assert changes(ctx) == []
    assert "would edit guest:logger:/etc/initramfs-tools/modules once the kernel has installed" in capsys.readouterr().out


def test_direct_kernel_vm_leaves_grub_2_alone(capsys):
    ctx = lenny()
    run_prepare(ctx, boot="direct-kernel")
    assert not any("grub-pc" in c or "update-grub" in c or "device.map" in c for c in changes(ctx))
    assert "write /boot/grub/menu.lst" in changes(ctx)
    assert "grub 2 ... skipped (boot: direct-kernel)" in capsys.readouterr().out


def test_grub_install_only_with_the_flag_and_after_a_warning(capsys):
    ctx = lenny()
    run_prepare(ctx)
    assert not any(c.startswith("grub-install") for c in sent(ctx))

    ctx = bookworm()
    run_prepare(ctx, cfg=WEB_CFG, grub_install=True)
    out = capsys.readouterr().out
    assert "blocklists are fragile: a file move by the filesystem can break boot; rehearse first" in out
    assert out.index("blocklists are fragile") < out.index("grub-install --force --target=i386-pc /dev/xvda2 ... ok")
    assert changes(ctx)[-5:-3] == ["update-grub", "grub-install --force --target=i386-pc /dev/xvda2"]


def test_a_failed_telinit_q_is_a_warning_the_inittab_is_read_at_next_boot(capsys):
    ctx = lenny(probes={"telinit q": Result(stderr="telinit: /run/initctl: No such file or directory\n", exited=1)})
    run_prepare(ctx)
    assert changes(ctx)[-1] == "update-initramfs -u -k all", "prepare went on"
    assert ("! guest:logger: telinit q failed (telinit: /run/initctl: No such file or directory): init reads "
            "the new /etc/inittab at the next boot") in capsys.readouterr().out


def test_a_guest_nothing_can_power_off_is_refused_before_any_change():
    ctx = bookworm(probes={"apt-cache policy acpid": policy("acpid", None)})
    with pytest.raises(GuardError, match="nothing in the guest acts on KVM's ACPI power button .* no candidate "
                                         "for acpid: install acpid by hand"):
        run_prepare(ctx, cfg=WEB_CFG)
    assert changes(ctx) == []


def test_logind_with_dbus_handles_the_button_without_acpid(capsys):
    ctx = bookworm(probes={"dpkg-query -W -f '${Status}' dbus": Result(stdout="install ok installed")})
    run_prepare(ctx, cfg=WEB_CFG)
    assert not any("acpid" in c for c in changes(ctx))
    assert "power button handled by systemd-logind (dbus installed) ... unchanged" in capsys.readouterr().out


def test_grub_install_on_grub_1_96_has_no_target_option():
    ctx = lenny()
    run_prepare(ctx, grub_install=True)
    assert "grub-install --force /dev/xvda2" in changes(ctx)


def test_grub_install_refuses_a_root_device_the_guest_does_not_have():
    ctx = bookworm(probes={"test -b /dev/xvda2": Result(exited=1)})
    with pytest.raises(GuardError, match=r"/dev/xvda2 \(the Xen name of the root disk sda\) is not a block device"):
        run_prepare(ctx, cfg=WEB_CFG, grub_install=True)
    assert changes(ctx) == []


# -- prepare: bookworm -------------------------------------------------------------------------

def test_prepare_bookworm_sends_exactly_these_changes():
    ctx = bookworm()
    run_prepare(ctx, cfg=WEB_CFG)
    assert changes(ctx) == [
        "systemctl enable serial-getty@hvc0.service",
        "systemctl enable serial-getty@ttyS0.service",
        "write /etc/fstab",
        "write /boot/grub/device.map",
        "write /etc/default/grub",
        "update-grub",
        f"{APT} acpid acpi-support-base",
        "write /etc/initramfs-tools/modules",
        "update-initramfs -u -k all",
    ]
    files = written(ctx)
    assert files["/etc/default/grub"] == convert_default_grub(
        BOOKWORM_DEFAULT_GRUB, {"xvda2": "sda", "xvda1": "sdb"}, "/dev/sda")
    assert 'GRUB_CMDLINE_LINUX="root=/dev/sda net.ifnames=0 console=ttyS0,115200n8 console=hvc0"' in files["/etc/default/grub"]


def test_prepare_bookworm_second_run_changes_nothing(capsys):
    first = bookworm()
    run_prepare(first, cfg=WEB_CFG)
    second = bookworm(enabled=("getty@tty1.service", "serial-getty@hvc0.service", "serial-getty@ttyS0.service"),
                      files=written(first), probes=power_button_probes(installed=True))
    capsys.readouterr()
    run_prepare(second, cfg=WEB_CFG)
    assert changes(second) == []
    out = capsys.readouterr().out
    assert "* guest:logger: getty units ... unchanged" in out
    assert "* guest:logger: power button handled by acpid ... unchanged" in out


def test_uuid_flag_writes_uuids_from_blkid_on_the_current_names():
    root_uuid, swap_uuid = "0f3c6d2a-9a43-4e4b-8b1e-2f5e0d6c9a10", "5b7a1c2e-3d4f-4a5b-9c6d-7e8f9a0b1c2d"
    ctx = bookworm(probes={"blkid -o value -s UUID /dev/xvda2": Result(stdout=root_uuid + "\n"),
                           "blkid -o value -s UUID /dev/xvda1": Result(stdout=swap_uuid + "\n")})
    run_prepare(ctx, cfg=WEB_CFG, uuid=True)
    files = written(ctx)
    assert f"UUID={root_uuid} / ext4" in files["/etc/fstab"]
    assert f"UUID={swap_uuid} none swap" in files["/etc/fstab"]
    assert f'root=UUID={root_uuid} net.ifnames=0 console=ttyS0' in files["/etc/default/grub"]


# -- refusals ----------------------------------------------------------------------------------

def test_fstab_device_outside_the_disk_map_is_refused():
    fstab = LENNY_FSTAB + "/dev/xvdc1 /srv ext3 defaults 0 2\n"
    ctx = lenny(after_first_run={"/etc/fstab": fstab})
    with pytest.raises(GuardError) as info:
        run_prepare(ctx)
    assert str(info.value) == ("guest:logger: /etc/fstab: /dev/xvdc1 is not in the disk map (xvda2, xvda1): "
                               "fix the line or the cfg")
    assert changes(ctx) == []


def test_root_off_the_root_disk_is_refused():
    cfg = LENNY_CFG.replace("root        = '/dev/xvda2 ro'", "root        = '/dev/xvda1 ro'")
    with pytest.raises(GuardError, match=r"/ is on /dev/xvda2, which becomes /dev/sdb, not the root disk sda"):
        run_prepare(lenny(), cfg=cfg)


def test_partitions_of_a_whole_disk_follow_it():
    cfg_map = [MappedDisk("xvda", "sda", "/dev/drbd5", "block", "r0")]
    fstab = "/dev/xvda1 / ext4 defaults 0 1\n/dev/xvda5 none swap sw 0 0\n"
    assert stage.plan_renames(fstab, cfg_map) == ({"xvda": "sda", "xvda1": "sda1", "xvda5": "sda5"}, "/dev/sda1")


def test_lvm_and_uuid_roots_are_taken_as_they_are():
    cfg_map = disk_map(LENNY_CFG)
    assert stage.plan_renames("/dev/mapper/vg-root / ext4 defaults 0 1\n", cfg_map)[1] == "/dev/mapper/vg-root"
    assert stage.plan_renames("UUID=0f3c6d2a / ext4 defaults 0 1\n", cfg_map)[1] == "UUID=0f3c6d2a"


# -- the task layer: inventory, the Xen host's cfg, the guest ----------------------------------

INVENTORY = """\
hosts:
  xen1: {address: 192.0.2.11, role: xen}
  kvm1: {address: 192.0.2.12, role: kvm}
vms:
  logger:
    xen_host: xen1
    kvm_host: kvm1
    cfg: /etc/xen/auto/logger.cfg
    guest_address: 192.0.2.50
    disks:
      - {resource: logger-system, device: /dev/drbd5, backing: /dev/vg_main/logger-system}
      - local: /dev/vg_main/logger-swap
"""


@pytest.fixture
def site_of(mocker):
    """The tasks see the inventory above and these MockContexts as their connections."""
    contexts = {}
    inv = parse_inventory(INVENTORY)
    mocker.patch.object(stage.inventory, "from_context", lambda c: inv)
    mocker.patch.object(stage, "site_from_context", lambda c, i, dry_run=False: Site(
        i, dry_run=dry_run, connect=lambda label, *a, **k: contexts[label]))
    return contexts


def test_prepare_task_reads_the_cfg_on_the_xen_host(site_of):
    xen = site_of["xen1"] = HostMock(run={read_cmd("/etc/xen/auto/logger.cfg"): Result(stdout=LENNY_CFG)})
    guest = site_of["logger (guest)"] = lenny()
    stage.prepare(Context(), vm="logger", uuid=False)
    assert sent(xen) == [read_cmd("/etc/xen/auto/logger.cfg")]
    assert written(guest)["/etc/fstab"] == convert_fstab(LENNY_FSTAB, {"xvda2": "sda", "xvda1": "sdb"})


@pytest.mark.parametrize("boot", ["grub", "direct-kernel"])
def test_prepare_of_a_direct_kernel_vm_ends_by_naming_fetch_kernel(mocker, capsys, boot):
    """prepare reaches the guest only (kvm1 has no connection here): it names the next step."""
    inv = parse_inventory(INVENTORY.replace("    guest_address:", f"    boot: {boot}\n    guest_address:"))
    contexts = {"xen1": HostMock(run={read_cmd("/etc/xen/auto/logger.cfg"): Result(stdout=LENNY_CFG)}),
                "logger (guest)": lenny()}
    mocker.patch.object(stage.inventory, "from_context", lambda c: inv)
    mocker.patch.object(stage, "site_from_context", lambda c, i, dry_run=False: Site(
        i, dry_run=dry_run, connect=lambda label, *a, **k: contexts[label]))
    stage.prepare(Context(), vm="logger", uuid=False)
    last = capsys.readouterr().out.splitlines()[-1]
    if boot == "grub":
        assert "fetch-kernel" not in last
    else:
        assert last == ("! logger boots direct-kernel: copy its kernel and initrd to kvm1 with "
                        "`fab kvmhost.fetch-kernel --vm logger` (after every kernel or initramfs change)")


def test_facts_task_prints_and_returns_the_facts(site_of, capsys):
    site_of["xen1"] = HostMock(run={read_cmd("/etc/xen/auto/logger.cfg"): Result(stdout=LENNY_CFG)})
    site_of["logger (guest)"] = bookworm()
    found = stage.facts(Context(), vm="logger")
    assert found.init == "systemd" and found.bootable_kernels == ["6.1.0-13-amd64"]
    out = capsys.readouterr().out
    assert out.startswith("* guest:logger: systemd, amd64\n")
    assert "HVM" not in out


def test_dry_run_task_changes_nothing(site_of):
    site_of["xen1"] = HostMock(run={read_cmd("/etc/xen/auto/logger.cfg"): Result(stdout=LENNY_CFG)})
    guest = site_of["logger (guest)"] = lenny()
    stage.bootloader(Context(), vm="logger", uuid=False, dry_run=True)
    assert changes(guest) == []


def test_cfg_syntax_error_on_the_xen_host_is_one_line(mocker):
    inv = parse_inventory(INVENTORY)
    xen = HostMock(run={read_cmd("/etc/xen/auto/logger.cfg"): Result(stdout="memory = [\n")})
    site = Site(inv, connect=lambda label, *a, **k: xen)
    with pytest.raises(InputError) as info:
        vmplan.of_vm(site, inv.vm("logger"))
    assert str(info.value).startswith("xen1:/etc/xen/auto/logger.cfg:")
    assert "\n" not in str(info.value)


# -- hostile names arrive quoted -----------------------------------------------------------------

HOSTILE = st.text(alphabet=st.sampled_from(list("ab1 '\";$()`\\|&<>*?~#!{}")), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(version=HOSTILE, path=HOSTILE, vdev=HOSTILE)
def test_property_hostile_names_arrive_quoted(version, path, vdev):
    # A kernel name from `ls /boot`, read back through its config file.
    kernel = {"ls -1 /boot": Result(stdout=f"vmlinuz-{version}\nconfig-{version}\n"),
              read_cmd(f"/boot/config-{version}"): Result(stdout=BOOKWORM_CONFIG)}
    ctx = HostMock(run=kernel)
    assert stage.probe_kernels(remote(ctx)) == (stage.Kernel(version, False),)
    assert [shlex.split(c) for c in sent(ctx)] == [["ls", "-1", "/boot"],
                                                   ["sh", "-c", READ, "sh", f"/boot/config-{version}"]]

    # A cfg path from the inventory, read on the Xen host.
    cfg = f"/etc/xen/{path}"
    inv = Inventory("hosts.yml", {"xen1": Host("xen1", "192.0.2.11", "xen"), "kvm1": Host("kvm1", "192.0.2.12", "kvm")},
                    {})
    vm = VM("logger", "xen1", "kvm1", cfg, (ReplicatedDisk("r0", {"xen1": "/dev/drbd5", "kvm1": "/dev/drbd5"}),
                                           LocalDisk({"xen1": "/dev/vg/swap", "kvm1": "/dev/vg/swap"})))
    xen = HostMock(run={read_cmd(cfg): Result(stdout=LENNY_CFG.replace("/dev/vg_main/logger-swap", "/dev/vg/swap"))})
    plan = vmplan.of_vm(Site(inv, connect=lambda *a, **k: xen), vm)
    assert [d.target for d in plan.disk_map] == ["sda", "sdb"] and not plan.cfg.hvm
    assert [shlex.split(c) for c in sent(xen)] == [["sh", "-c", READ, "sh", cfg]]

    # Device names from a disk map, probed in the guest.
    ctx = HostMock(run={shlex.join(["blkid", "-o", "value", "-s", "UUID", f"/dev/{vdev}"]): Result(exited=2),
                           shlex.join(["test", "-b", f"/dev/{vdev}"]): Result(exited=1)})
    guest = remote(ctx)
    assert stage.device_uuids(guest, {vdev: "sda"}) == {}
    with pytest.raises(GuardError):
        stage.check_boot(guest, FACTS_WITH_KVM_KERNEL,
                         [MappedDisk(vdev, "sda", "x", "block", None)], boot="grub", grub_install=True)
    assert [shlex.split(c) for c in sent(ctx)] == [["blkid", "-o", "value", "-s", "UUID", f"/dev/{vdev}"],
                                                   ["test", "-b", f"/dev/{vdev}"]]


FACTS_WITH_KVM_KERNEL = stage.GuestFacts(
    init="systemd", console=GuestConsoleFacts("systemd"), inittab=None, securetty=None,
    fstab=BOOKWORM_FSTAB, kernels=(stage.Kernel("6.1.0-13-amd64", False),), architecture="amd64",
    grub_pc=True, grub_cfg=True, menu_lst=None, default_grub=BOOKWORM_DEFAULT_GRUB,
    initramfs_modules=INITRAMFS_MODULES, power_button="logind")


# -- offline tasks, as the operator runs them ------------------------------------------------------

def fab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / ".venv/bin/fab"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_convert_inittab_prints_exactly_the_converted_file(tmp_path):
    path = tmp_path / "inittab"
    path.write_text(LENNY_INITTAB)
    result = fab("guest.convert-inittab", "--inittab", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == convert_inittab(LENNY_INITTAB)
    assert result.stderr == ""


def test_convert_fstab_prints_exactly_the_converted_file(tmp_path):
    (tmp_path / "fstab").write_text(LENNY_FSTAB)
    (tmp_path / "logger.cfg").write_text(LENNY_CFG)
    result = fab("guest.convert-fstab", "--fstab", str(tmp_path / "fstab"), "--cfg", str(tmp_path / "logger.cfg"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == convert_fstab(LENNY_FSTAB, {"xvda2": "sda", "xvda1": "sdb"})


def test_offline_tasks_bad_input_is_one_line_naming_the_file(tmp_path):
    missing = tmp_path / "no such inittab"
    result = fab("guest.convert-inittab", "--inittab", str(missing))
    assert_one_line_error(result)
    assert result.stderr == f"error: {missing}: cannot read inittab: No such file or directory\n"

    taken = tmp_path / "inittab"
    taken.write_text(LENNY_INITTAB + "co:2345:respawn:/sbin/getty 38400 tty2\n")
    assert_one_line_error(fab("guest.convert-inittab", "--inittab", str(taken)), f"{taken}: id 'co' is taken")

    fstab, cfg = tmp_path / "fstab", tmp_path / "logger.cfg"
    fstab.write_text(LENNY_FSTAB)
    cfg.write_text(LENNY_CFG.replace("memory      = '256'", "memory      = [ '256'"))
    result = fab("guest.convert-fstab", "--fstab", str(fstab), "--cfg", str(cfg))
    assert_one_line_error(result)
    assert re.match(rf"error: {re.escape(str(cfg))}:\d+: ", result.stderr)

    cfg.write_text(LENNY_CFG)
    fstab.write_text(LENNY_FSTAB + "/dev/xvdc1 /srv ext3 defaults 0 2\n")
    assert_one_line_error(fab("guest.convert-fstab", "--fstab", str(fstab), "--cfg", str(cfg)),
                          f"{fstab}: /dev/xvdc1 is not in the disk map")

    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00id:2:initdefault:\n")
    assert_one_line_error(fab("guest.convert-inittab", "--inittab", str(binary)), f"{binary}: ")


def test_every_task_has_a_docstring_and_help_for_every_argument():
    for name in stage.ns.task_names:
        task = stage.ns[name]
        assert task.__doc__, name
        assert all(arg.help for arg in task.get_arguments()), name
    for name in ("facts", "console", "fstab", "bootloader", "initramfs", "prepare"):
        assert {"vm", "dry_run"} <= {arg.name for arg in stage.ns[name].get_arguments()}, name


# -- HVM guests: only the steps a KVM boot needs beyond what they have -------------------------------

HVM_CFG = """\
type = 'hvm'
name = 'logger'
memory = 1024
disk = [ '/dev/drbd5,raw,hda,rw', '/dev/vg_main/logger-swap,raw,hdb,rw' ]
vif = [ 'mac=00:16:3e:37:d0:70,model=e1000' ]
"""
HVM_SKIPPED = ("* guest:logger: console, disk names, kernel and boot loader ... skipped (HVM guest: it boots "
               "from emulated disks with its own boot loader under Xen and KVM alike)")


def test_prepare_hvm_guest_changes_only_the_power_button_and_the_initramfs(capsys):
    ctx = bookworm()
    run_prepare(ctx, cfg=HVM_CFG, hvm=True)
    assert changes(ctx) == [f"{APT} acpid acpi-support-base", "write /etc/initramfs-tools/modules",
                            "update-initramfs -u -k all"]
    out = capsys.readouterr().out
    assert HVM_SKIPPED in out
    assert ("  HVM guest: it boots from emulated disks with its own boot loader under Xen and KVM alike: "
            "guest.prepare leaves its console, disk names, kernel and boot loader as they are") in out


def test_prepare_task_learns_hvm_from_the_cfg_on_the_xen_host(site_of):
    site_of["xen1"] = HostMock(run={read_cmd("/etc/xen/auto/logger.cfg"): Result(stdout=HVM_CFG)})
    guest = site_of["logger (guest)"] = bookworm()
    stage.prepare(Context(), vm="logger")
    assert "write /etc/fstab" not in changes(guest) and "update-grub" not in changes(guest)
    assert changes(guest)[-1] == "update-initramfs -u -k all"


def test_facts_task_says_what_an_hvm_guest_skips(site_of, capsys):
    site_of["xen1"] = HostMock(run={read_cmd("/etc/xen/auto/logger.cfg"): Result(stdout=HVM_CFG)})
    site_of["logger (guest)"] = bookworm()
    stage.facts(Context(), vm="logger")
    assert capsys.readouterr().out.rstrip("\n").endswith(
        "guest.prepare leaves its console, disk names, kernel and boot loader as they are")


@pytest.mark.parametrize("task, steps", [(stage.console, "console"), (stage.fstab, "disk names"),
                                         (stage.bootloader, "kernel and boot loader")])
def test_pv_only_tasks_leave_an_hvm_guest_alone(site_of, capsys, task, steps):
    site_of["xen1"] = HostMock(run={read_cmd("/etc/xen/auto/logger.cfg"): Result(stdout=HVM_CFG)})
    guest = site_of["logger (guest)"] = HostMock(run={})   # any command would fail
    task(Context(), vm="logger")
    assert sent(guest) == []
    assert f"* guest:logger: {steps} ... skipped (HVM guest:" in capsys.readouterr().out
