"""systemd guests (no /etc/inittab): which getty units to enable so both hypervisors get a login.

systemd-getty-generator adds, at every boot, serial-getty@ for each active kernel console that
is not a VT (the console= arguments of the running kernel) and for hvc0/xvc0 when the device
exists; VTs get gettys only from configuration (Debian enables getty@tty1 at install). So what
a guest gets depends on the command line it was booted with, which under Xen comes from pygrub
reading the guest's grub files and under KVM from libvirt (or the guest's grub): a guest whose
command line lacks console=ttyS0 has no login on `virsh console`. Enabling the three units
makes the logins independent of the command line (and of systemd.getty_auto=0). Under each
hypervisor the unit of the other one's console has no working device (serial-getty@ BindsTo
dev-%i.device): it waits for it and fails ("Dependency failed", e.g. for hvc0 under KVM), or
agetty fails on a port with no UART behind it. Log lines, not a failed boot: getty.target only
wants the units.
"""

from dataclasses import dataclass, field

from . import FormatError

INIT_SYSTEMS = ("systemd", "sysvinit")

# tty -> (the unit that serves it, why the guest needs it)
CONSOLE_UNITS = {
    "hvc0": ("serial-getty@hvc0.service",
             "Xen's console (`xl console`); the generator adds it when /dev/hvc0 exists, but not "
             "with systemd.getty_auto=0"),
    "tty1": ("getty@tty1.service",
             "KVM's screen (VNC/SPICE); VTs get a getty only when enabled"),
    "ttyS0": ("serial-getty@ttyS0.service",
              "KVM's serial console (`virsh console`); the generator adds it only when ttyS0 is a "
              "console= of the running kernel"),
}


@dataclass(frozen=True)
class GuestConsoleFacts:
    """What a probe over SSH learns about the guest's consoles.

    enabled_units: units enabled in /etc (the instances in getty.target.wants, e.g.
    getty@tty1.service); masked_units: units masked in /etc (instances, templates such as
    serial-getty@.service, or getty.target); kernel_consoles: the console= devices of the grub
    default entry, e.g. ("hvc0",), used to explain the plan.
    """

    init: str
    enabled_units: frozenset[str] = frozenset()
    masked_units: frozenset[str] = frozenset()
    kernel_consoles: tuple[str, ...] = ()
    has_securetty: bool = False


@dataclass(frozen=True)
class GettyPlan:
    """Units to unmask, then enable; `why` says for each why the guest needs it.

    Nothing is disabled: a getty@ and a serial-getty@ on one tty would fight, so a tty that has
    either enabled counts as served and gets nothing new. edit_securetty: /etc/securetty exists
    and must list the consoles (convert_securetty), else pam_securetty refuses root there.
    """

    enable: tuple[str, ...] = ()
    unmask: tuple[str, ...] = ()
    why: dict[str, str] = field(default_factory=dict)
    edit_securetty: bool = False


def plan_getty_units(facts: GuestConsoleFacts) -> GettyPlan:
    """The plan for one guest; sysvinit guests get their gettys from inittab (convert_inittab)."""
    if facts.init not in INIT_SYSTEMS:
        raise FormatError(f"unknown init system {facts.init!r} (expected one of {', '.join(INIT_SYSTEMS)})")
    if facts.init != "systemd":
        return GettyPlan(edit_securetty=facts.has_securetty)
    on_cmdline = ", ".join(facts.kernel_consoles) or "none"
    enable, unmask, why = [], [], {}
    if "getty.target" in facts.masked_units:
        unmask.append("getty.target")
        why["getty.target"] = "masked: no getty at all would start"
    for tty, (unit, reason) in CONSOLE_UNITS.items():
        template = unit.split("@", 1)[0] + "@.service"
        for masked in (template, unit):
            if masked in facts.masked_units and masked not in unmask:
                unmask.append(masked)
                why[masked] = "masked, so it cannot start even when enabled"
        if not {unit, f"getty@{tty}.service", f"serial-getty@{tty}.service"} & facts.enabled_units:
            enable.append(unit)
            why[unit] = f"{reason} (kernel consoles now: {on_cmdline})"
    return GettyPlan(tuple(enable), tuple(unmask), why, facts.has_securetty)


def commands(plan: GettyPlan) -> list[list[str]]:
    """argv lists applying the plan, unmask first (enabling a masked unit fails); [] when done."""
    return ([["systemctl", "unmask", unit] for unit in plan.unmask]
            + [["systemctl", "enable", unit] for unit in plan.enable])
