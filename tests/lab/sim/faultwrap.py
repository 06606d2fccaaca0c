"""Wrapper for a REAL command in the lab (virsh): installed under the command's own name earlier
in PATH, it applies injected faults, then runs the real binary found later in PATH.

For virsh it also keeps the lab's record of running KVM domains true: a successful start or
create is running; after any other change (destroy, shutdown, undefine, reboot) or a failure it
asks `virsh domstate` for the truth; and whenever the caller itself reads domstate, dominfo
or list, it notes what virsh answered. Before a start it stands in for what DRBD does when
qemu opens the domain's DRBD devices for writing: a Secondary fails the start, unless DRBD
9's auto-promote makes it Primary (control.open_domain_disks).
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from . import cli, control, faults, store

GLOBAL_VALUE_OPTIONS = {"-c", "--connect", "-d", "--debug", "-l", "--log", "-k", "--keepalive-interval",
                        "-K", "--keepalive-count", "-e", "--escape"}
CHANGES = {"start", "create", "destroy", "shutdown", "undefine", "reboot"}
STARTS = {"start", "create"}
READS = {"domstate", "dominfo", "list"}
STOPPED = {"shut off", "crashed"}


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    name = os.path.basename(argv[0])
    try:
        host = store.load_host()
    except (OSError, ValueError, KeyError):
        host = None  # not on a lab host: a plain pass-through
    if host:
        faults.check_fault(host.state_dir, host.name, argv)
    real = find_real(name, argv[0])
    if real is None:
        print(f"{name}: the lab wrapper found no real {name} later in PATH", file=sys.stderr)
        return 127
    glob_opts, cmd, domain = parse_virsh(argv[1:]) if name == "virsh" else ([], None, None)
    if host is None or (cmd not in READS and not (cmd in CHANGES and domain)):
        if host:
            store.record_call(host.state_dir, host.name, argv, None)
        cli.hand_off(real, [real] + argv[1:])
    if cmd in STARTS:
        refused = control.open_domain_disks(host.state_dir, host.name, domain, host.drbd_style,
                                            host.drbd_sync_delay)
        if refused:
            print(qemu_open_failed(domain, refused[0], host.drbd_style), file=sys.stderr)
            store.record_call(host.state_dir, host.name, argv, 1)
            return 1
    if cmd in CHANGES:
        rc = subprocess.call([real] + argv[1:])
        if rc and cmd in STARTS:
            control.close_domain_disks(host.state_dir, host.name, domain)
        # A start libvirt reports done is a running domain (a later listing notes any crash);
        # every other change, or a failure, is asked about.
        running = True if rc == 0 and cmd in STARTS else domstate(real, glob_opts, domain)
        control.note_kvm_domain(host.state_dir, host.name, domain, running)
    else:
        done = subprocess.run([real] + argv[1:], stdout=subprocess.PIPE, check=False)
        sys.stdout.buffer.write(done.stdout)
        sys.stdout.flush()
        rc = done.returncode
        if rc == 0:
            states = dict(parse_states(cmd, domain, done.stdout.decode(errors="replace")))
            if states:
                control.note_kvm_domains(host.state_dir, host.name, states)
    store.record_call(host.state_dir, host.name, argv, rc)
    return rc


def qemu_open_failed(domain, device, drbd_style):
    """virsh's report of a qemu that could not open a DRBD Secondary for writing: DRBD 9
    answers EMEDIUMTYPE, 8.x EROFS (as `mount` shows them; the libvirt wording is plausible,
    not measured)."""
    reason = "Wrong medium type" if drbd_style == "9" else "Read-only file system"
    return (f"error: Failed to start domain '{domain}'\n"
            f"error: internal error: qemu unexpectedly closed the monitor: qemu-system-x86_64: -blockdev "
            f'{{"driver":"host_device","filename":"{device}","node-name":"libvirt-1-storage"}}: '
            f"Could not open '{device}': {reason}")


def find_real(name, self_path):
    """The first `name` in PATH that is not this wrapper (skip its own directory and itself)."""
    me = os.path.realpath(self_path)
    own_dir = os.path.dirname(os.path.abspath(self_path))
    for d in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(d, name)
        if (os.path.abspath(d or ".") == own_dir or os.path.realpath(candidate) == me
                or not (os.path.isfile(candidate) and os.access(candidate, os.X_OK))):
            continue
        return candidate
    return None


def parse_virsh(args):
    """(global options to reuse, subcommand, domain it names) of a virsh command line."""
    glob_opts, i = [], 0
    while i < len(args) and args[i].startswith("-"):
        glob_opts.append(args[i])
        if args[i] in GLOBAL_VALUE_OPTIONS and i + 1 < len(args):
            glob_opts.append(args[i + 1])
            i += 1
        i += 1
    if i >= len(args):
        return glob_opts, None, None
    cmd, rest = args[i], args[i + 1:]
    domain = None
    if "--domain" in rest[:-1]:
        domain = rest[rest.index("--domain") + 1]
    else:
        domain = next((a for a in rest if not a.startswith("-")), None)
    if cmd == "create" and domain:
        try:
            domain = ET.parse(domain).getroot().findtext("name")
        except (OSError, ET.ParseError):
            domain = None
    return glob_opts, cmd, domain


def domstate(real, glob_opts, domain):
    """Is the domain running, by virsh's own account (no such domain: not running)?"""
    done = subprocess.run([real] + glob_opts + ["domstate", domain], capture_output=True, text=True,
                          env={**os.environ, "LANG": "C"}, check=False)
    return done.returncode == 0 and done.stdout.strip() not in STOPPED | {""}


def parse_states(cmd, domain, text):
    """(domain, running) pairs a domstate/dominfo/list answer states."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if cmd == "domstate" and domain and lines:
        return [(domain, lines[0] not in STOPPED)]
    if cmd == "dominfo":
        state = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("State:")), None)
        name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Name:")), domain)
        return [(name, state not in STOPPED)] if state and name else []
    if cmd == "list":
        rows = [line.split(None, 2) for line in lines[2:] if not line.startswith("-" * 3)]
        return [(row[1], row[2] not in STOPPED) for row in rows if len(row) == 3]
    return []
