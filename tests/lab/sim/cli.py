"""The common life of one simulator call: know the host, honour faults, work, log the call."""

import importlib
import os
import sys

from . import faults, store

# The command names bin/sim answers to, and the module whose main() each one runs.
COMMANDS = {"xl": "xl", "xm": "xl", "drbdadm": "drbdadm", "virsh": "faultwrap"}


def run(argv, body):
    """Run `body(host, argv) -> exit code` as the command named by argv[0]."""
    try:
        host = store.load_host()
    except (OSError, ValueError, KeyError) as e:
        print(f"{os.path.basename(argv[0])}: lab host file unusable: {e}", file=sys.stderr)
        return 2
    faults.check_fault(host.state_dir, host.name, argv)
    rc = body(host, argv)
    sys.stdout.flush()
    store.record_call(host.state_dir, host.name, argv, rc)
    return rc


def out(text=""):
    print(text)


def err(text):
    print(text, file=sys.stderr)


def module_for(name):
    return importlib.import_module(f"{__package__}.{name}")


def call(argv):
    """The simulator argv[0] names, run on argv: its exit code."""
    return module_for(COMMANDS[os.path.basename(argv[0])]).main(argv)


def hand_off(path, argv):
    """Become the real command; the simulator server replaces this (the caller's shell execs it)."""
    os.execv(path, argv)
