"""python -m tests.lab up|down|reset|state|fault|exec (and guest|acpi): drive the local lab.

`guest` and `acpi` are what the lab hosts themselves run (the simulators'
guest_start/guest_stop, kvm1's libvirt hook and its ACPI stand-in); people and tests
use the other verbs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import GUEST, HOSTS, IMAGES
from .spaces import LabError


def _hang(text: str) -> float:
    """Seconds, or `forever` (a command that never returns, as on a wedged host)."""
    return float("inf") if text == "forever" else float(text)

def _settings_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--drbd-style", choices=("9", "8.4"), help="DRBD userland the hosts show (default 9)")
    parser.add_argument("--toolstack", choices=("xl", "xm"), help="Xen toolstack on xen1 (default xl)")
    parser.add_argument("--shutdown-delay", type=float, metavar="S",
                        help="seconds a Xen guest takes to shut down (default 1.0)")
    parser.add_argument("--fleet", type=int, metavar="N", help="light VMs fleet01..N beside the guest (default 0)")
    parser.add_argument("--image", choices=IMAGES,
                        help="the guest: minbase (default), or a real xen-create-image guest (systemd, "
                             "sysvinit) that kvm1 boots under qemu")
    parser.add_argument("--xen", choices=("sim", "real"),
                        help="xen1: the xl simulator (default), or real Xen 4.17 in a qemu VM (a real guest)")


def _settings(args, base):
    from .config import Settings

    given = {k: v for k, v in (("drbd_style", args.drbd_style), ("toolstack", args.toolstack),
                               ("shutdown_delay", args.shutdown_delay), ("fleet", args.fleet),
                               ("image", args.image), ("xen", args.xen)) if v is not None}
    return Settings(**{**base.as_dict(), **given})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    _settings_args(verbs.add_parser("up", help="bring the lab up (idempotent)"))
    verbs.add_parser("down", help="take the lab down, its VMs too, leaving nothing behind (idempotent)")
    _settings_args(verbs.add_parser("reset", help="back to the initial state (tests run it between cases)"))
    verbs.add_parser("state", help="print the simulators' lab state as JSON")
    fault = verbs.add_parser("fault", help="make a command on a host fail or hang")
    fault_verbs = fault.add_subparsers(dest="fault_verb", required=True)
    add = fault_verbs.add_parser("add")
    add.add_argument("host", choices=sorted(HOSTS))
    add.add_argument("prefix", help="command prefix, e.g. 'drbdadm primary'")
    add.add_argument("--exit", type=int, default=1, dest="exit_code")
    add.add_argument("--hang", type=_hang, default=0.0, metavar="SECONDS|forever",
                     help="hold the command this long first; `forever`: it never returns")
    add.add_argument("--once", action="store_true")
    fault_verbs.add_parser("clear")
    exec_ = verbs.add_parser("exec", help="run a command on a lab host (or in the guest), inside its namespaces")
    exec_.add_argument("host", choices=[*sorted(HOSTS), GUEST["name"]])
    exec_.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    guest = verbs.add_parser("guest", help="boot or halt the lab guest (run on a lab host)")
    guest.add_argument("action", choices=("start", "stop"))
    guest.add_argument("--host", required=True, choices=sorted(HOSTS))
    guest.add_argument("--if-lab", action="store_true", help="do nothing for a domain that is not a lab guest")
    guest.add_argument("name")
    acpi = verbs.add_parser("acpi", help="power guests off on `virsh shutdown` (runs on the KVM host)")
    acpi.add_argument("--host", required=True, choices=sorted(HOSTS))
    args = parser.parse_args(argv)
    try:
        if args.verb == "guest":
            return _guest(args)
        if args.verb == "acpi":
            from . import acpi as lab_acpi

            lab_acpi.serve(args.host)   # until the host goes down
            return 0
        from . import control

        if args.verb == "up":
            control.up(_settings(args, control.settings()))
        elif args.verb == "down":
            from . import vms

            started = time.monotonic()
            control.down()
            vms.down()
            control.say(f"down in {time.monotonic() - started:.1f}s")
        elif args.verb == "reset":
            control.reset(_settings(args, control.settings()))
        elif args.verb == "state":
            print(json.dumps(control.lab_state(), indent=2, sort_keys=True))
        elif args.verb == "fault":
            from . import STATE_DIR, sim

            if args.fault_verb == "add":
                sim.add_fault(str(STATE_DIR), args.host, args.prefix, exit_code=args.exit_code,
                              hang=args.hang, once=args.once)
            else:
                sim.clear_faults(str(STATE_DIR))
        elif args.verb == "exec":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("exec needs a command after --")
            return control.exec_(args.host, command).returncode
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 0


def _guest(args) -> int:
    """Runs on a lab host under its python3: imports only what needs no venv."""
    from . import guest

    if args.name != GUEST["name"]:
        if args.if_lab:
            return 0
        print(f"lab: {args.name} is not a lab guest (the lab's guest is {GUEST['name']})", file=sys.stderr)
        return 1
    try:
        (guest.start if args.action == "start" else guest.stop)(args.host, args.name)
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
