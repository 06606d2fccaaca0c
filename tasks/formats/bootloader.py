"""grub files and the kernel: what makes the guest boot, and show a console, under both hypervisors.

The kernel command line gets CONSOLE_ARGS, `console=ttyS0,115200n8 console=hvc0`, and no other
console=. The kernel prints to every listed console that exists. /dev/console - where init writes
and where an emergency shell (a failed fsck after a move) asks for the root password - is the
LAST listed console if its driver registers; if it never does, it is the first listed console
that registered (register_console puts the preferred one at the head of the list, any other
enabled one behind the head, and an empty list takes the first comer). So:
- Xen PV: hvc0 registers and is last, so /dev/console is hvc0, what `xl console` shows.
- KVM: no hvc0 (the libvirt domain has a serial console, not a virtio one: keep it so), ttyS0 is
  the only listed console that registers, so /dev/console is ttyS0, what `virsh console` shows.
console=tty0 is left out on purpose: the VT registers before hvc and serial consoles, so under
KVM it would take /dev/console (emergency shell on the VNC screen, not on `virsh console`). The
order often suggested, `console=tty0 console=hvc0 console=ttyS0,115200n8`, makes ttyS0 the
preferred console under Xen PV too, where it is either a legacy port no one can see or absent
(then tty0, a screen a PV guest usually lacks). A tty1 login needs no console= (its getty runs
anyway). The libvirt domain's direct-boot <cmdline> should carry the same CONSOLE_ARGS.

The command line also gets NIC_NAMES, `net.ifnames=0`: xen-tools configures eth0, which Xen's
netfront NIC is, but udev (Debian 9+) names KVM's PCI NIC ens3 unless told not to, and the guest
would come up without its network. Older udev ignores it; under Xen it changes nothing (netfront
has no PCI path, so it is eth0 either way). pygrub's menu.lst does not get it: it boots the Xen
side only.
"""

import re

from tasks.formats.fstab import DEVICE_NAME, UUID, check_device_name, check_renames, split_lines

from . import FormatError

CONSOLE_ARGS = ("console=ttyS0,115200n8", "console=hvc0")
NIC_NAMES = "net.ifnames=0"
# grub 2 writes its menu to the screen and to KVM's serial console (pygrub ignores both).
# "console serial" needs grub >= 1.99: squeeze's 1.98 grub-mkconfig rejects a list.
GRUB_TERMINAL = "console serial"
GRUB_SERIAL_COMMAND = "serial --unit=0 --speed=115200"

# Command line arguments that name a block device (/dev/OLD), remapped by the disk map.
_DEVICE_ARGS = ("root", "resume")
_ROOT = re.compile(rf"/dev/{DEVICE_NAME.pattern}|(?:UUID|PARTUUID)={UUID.pattern}|LABEL=[A-Za-z0-9_.-]+")
_ASSIGNMENT = re.compile(r"(?P<lead>[ \t]*(?:export[ \t]+)?)(?P<key>[A-Za-z_][A-Za-z0-9_]*)="
                         r"""(?P<value>"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^\s#'";\\()`]*)(?P<rest>(?:[ \t\r;].*)?\n?)""",
                         re.DOTALL)
_OWNED = ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT", "GRUB_TERMINAL", "GRUB_SERIAL_COMMAND")
_OWNED_START = re.compile(rf"[ \t]*(?:export[ \t]+)?(?:{'|'.join(_OWNED)})=")
_KOPT = re.compile(r"(?P<head>#[ \t]*kopt(?:_[A-Za-z0-9_]+)?=)(?P<args>[^\n]*?)(?P<rest>[ \t\r]*\n?)", re.DOTALL)
_KERNEL = re.compile(r"(?P<head>[ \t]*kernel[ \t]+\S+)(?P<args>[^\n]*?)(?P<rest>[ \t\r]*\n?)", re.DOTALL)


def render_device_map(disks: list[str]) -> str:
    """grub's BIOS drive order: the root disk is hd0, as the disk map put it first."""
    for disk in disks:
        check_device_name(disk, "disk")
    return "".join(f"(hd{i}) /dev/{disk}\n" for i, disk in enumerate(disks))


def _edit_args(words: list[str], renames: dict[str, str], drop: tuple[str, ...], add: tuple[str, ...]) -> list[str]:
    """Remap root=/resume= devices, drop the arguments we own, then append ours.

    Appending after dropping gives the same words on a second run, so edits are idempotent.
    """
    out = []
    for word in words:
        key, eq, value = word.partition("=")
        if eq and key in drop:
            continue
        if eq and key in _DEVICE_ARGS and value.startswith("/dev/") and value[5:] in renames:
            word = f"{key}=/dev/{renames[value[5:]]}"
        out.append(word)
    return out + list(add)


def _quote(value: str, like: str) -> str:
    """Keep the line's quote style; an unquoted value with a space needs quotes to stay one word."""
    quote = like[0] if like[:1] in ("'", '"') else ('"' if not value or " " in value else "")
    return f"{quote}{value}{quote}"


def _parse_assignment(number: int, line: str) -> re.Match | None:
    """A VAR=value line; one of ours that is computed or spans lines is refused, not guessed at:
    rewriting `$(...)` or half a quoted value would change what the shell makes of it."""
    m = _ASSIGNMENT.fullmatch(line)
    if _OWNED_START.match(line) and (m is None or "`" in m.group("value") or "$(" in m.group("value")):
        raise FormatError(f"/etc/default/grub line {number} is not a plain assignment; edit it by hand: "
                         f"{line.strip()!r}")
    return m


def convert_default_grub(text: str, renames: dict[str, str], root: str | None = None) -> str:
    """/etc/default/grub: consoles, eth0 names and remapped devices on the command line, menu on
    serial too.

    The console and NIC name arguments go on GRUB_CMDLINE_LINUX (the recovery entries use it
    too) and any console= or net.ifnames= is dropped from GRUB_CMDLINE_LINUX_DEFAULT, which grub
    appends later and so would win (for console=: decide /dev/console). `root` (e.g. "UUID=..."
    or "/dev/sda") is appended as root= so it beats the root= grub-mkconfig derives from the
    device / is mounted from when it runs - under Xen, that is /dev/xvda2 when
    GRUB_DISABLE_LINUX_UUID=true or no UUID is found.
    """
    check_renames(renames)
    if root is not None and not _ROOT.fullmatch(root):
        raise FormatError(f"root {root!r} is not /dev/NAME, UUID=, PARTUUID= or LABEL=")
    drop = ("console", "net.ifnames", "root") if root else ("console", "net.ifnames")
    add = ((f"root={root}",) if root else ()) + (NIC_NAMES, *CONSOLE_ARGS)
    wanted = {"GRUB_TERMINAL": GRUB_TERMINAL, "GRUB_SERIAL_COMMAND": GRUB_SERIAL_COMMAND}
    lines = split_lines(text)
    matches = [_parse_assignment(n, line) for n, line in enumerate(lines, 1)]
    keys = [m.group("key") if m else None for m in matches]
    last_linux = max((i for i, k in enumerate(keys) if k == "GRUB_CMDLINE_LINUX"), default=None)

    out = []
    for i, (line, m) in enumerate(zip(lines, matches, strict=True)):
        key = keys[i]
        if m is None:   # not an assignment: kept as it is
            pass
        elif key in ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"):
            raw = m.group("value")
            inner = raw[1:-1] if raw[:1] in ("'", '"') else raw
            words = _edit_args(inner.split(), renames, drop, add if i == last_linux else ())
            if words != inner.split():
                line = m.group("lead") + key + "=" + _quote(" ".join(words), raw) + m.group("rest")
        elif key in wanted:
            raw = m.group("value")
            if (raw[1:-1] if raw[:1] in ("'", '"') else raw) != wanted[key]:
                line = m.group("lead") + key + "=" + _quote(wanted[key], raw) + m.group("rest")
        out.append(line)

    missing = []
    if last_linux is None:
        missing.append(f'GRUB_CMDLINE_LINUX="{" ".join(add)}"')
    missing += [f'{key}="{value}"' for key, value in wanted.items() if key not in keys]
    if missing and out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    return "".join(out) + "".join(line + "\n" for line in missing)


def convert_menu_lst(text: str, renames: dict[str, str], console: bool = True) -> str:
    """grub-legacy menu.lst (what pygrub reads): remap root=/resume= and add the consoles.

    Both the kernel lines and the `# kopt=` magic comments are edited: update-grub rebuilds the
    kernel lines from kopt, so editing only the lines would be undone by the next kernel update.
    Grub's own (hd0,1) roots name the disk pygrub opens and stay as they are.
    """
    check_renames(renames)
    drop, add = (("console",), CONSOLE_ARGS) if console else ((), ())
    out = []
    for line in split_lines(text):
        m = _KOPT.fullmatch(line) or _KERNEL.fullmatch(line)
        if m:
            words = m.group("args").split()
            new = _edit_args(words, renames, drop, add)
            if new != words:
                sep = "" if m.re is _KOPT else " "
                line = m.group("head") + (sep + " ".join(new) if new else "") + m.group("rest").lstrip(" \t")
        out.append(line)
    return "".join(out)


def _config(config_text: str) -> dict[str, str]:
    """CONFIG_X -> y/m/value from a kernel .config (/boot/config-VERSION); unset ones absent."""
    found = {}
    for line in config_text.splitlines():
        key, eq, value = line.strip().partition("=")
        if eq and key.startswith("CONFIG_"):
            found[key] = value
    return found


def kernel_is_xen_only(version: str, config_text: str | None = None) -> bool:
    """Whether this kernel cannot boot under KVM, so the guest needs another one first.

    With the kernel's config (the reliable way), it is Xen-only if either
    - it is a XenLinux (forked, pre-pvops) kernel: CONFIG_X86_XEN / CONFIG_X86_64_XEN set, or
      CONFIG_XEN set without CONFIG_PARAVIRT; such a kernel replaces the x86 platform code with
      Xen's and cannot start on (virtual) hardware, or
    - it has no driver for any disk KVM can give it: neither CONFIG_BLK_DEV_SD with an
      IDE/SATA/SCSI controller (CONFIG_ATA_PIIX, CONFIG_SATA_AHCI, CONFIG_SCSI_VIRTIO), nor
      CONFIG_VIRTIO_BLK, each with CONFIG_VIRTIO_PCI where virtio is involved.
    A pvops kernel with those drivers (Debian's -amd64/-686/-cloud flavours) boots under both.
    Without the config the version string decides: a "xen" flavour (2.6.18-6-xen-686,
    2.6.32-5-xen-amd64, ...el5xen) is taken as Xen-only, which is safe (a needless kernel install)
    where the opposite guess would leave a guest that cannot boot.
    """
    if config_text is None:
        return re.search(r"(?:^|[-.0-9])xen(?:[-.]|$)", version) is not None
    config = _config(config_text)

    def has(*names: str) -> bool:
        return any(config.get(name) in ("y", "m") for name in names)

    if has("CONFIG_X86_XEN", "CONFIG_X86_64_XEN") or (has("CONFIG_XEN") and not has("CONFIG_PARAVIRT")):
        return True
    virtio = has("CONFIG_VIRTIO_PCI")
    scsi_disk = has("CONFIG_BLK_DEV_SD") and (has("CONFIG_ATA_PIIX", "CONFIG_SATA_AHCI")
                                               or (virtio and has("CONFIG_SCSI_VIRTIO")))
    return not (scsi_disk or (virtio and has("CONFIG_VIRTIO_BLK")))
