"""Fault injection: make a chosen command on a chosen host hang and/or fail.

A rule is {"host", "prefix", "exit_code", "hang", "once"} in faults.json. Its prefix is a
command line such as "drbdadm primary" or "virsh start logger": the first word must be the
command's name (basename of argv[0]) and the remaining words must appear, in order and
adjacent, among its arguments, so "drbdadm primary" also catches
"drbdadm -c /etc/drbd.conf primary logger-system". host None or "*" matches every host.
"""

import os
import sys
import time

from . import store


def add_fault(state_dir, host, prefix, exit_code=1, hang=0.0, once=False):
    """Fail (exit_code != 0) and/or hang (seconds; inf: never return) the matching command;
    once: only the next call."""
    if not prefix.split():
        raise ValueError("a fault needs a command prefix")
    with store.locked(state_dir, "control") as st:
        st.doc("faults").setdefault("rules", []).append(
            {"host": host, "prefix": prefix, "exit_code": exit_code, "hang": -1 if hang == float("inf") else hang,
             "once": once})
        st.changed("faults")
        st.event("fault.added", host, prefix=prefix, exit_code=exit_code, hang=hang, once=once)


def clear_faults(state_dir):
    with store.locked(state_dir, "control") as st:
        st.replace("faults", {"rules": []})
        st.event("fault.cleared", None)


def check_fault(state_dir, host, argv):
    """Called first by every simulator and wrapper: apply the first matching rule, if any."""
    with store.locked(state_dir, host) as st:
        rules = st.doc("faults").get("rules", [])
        rule = next((r for r in rules if r["host"] in (None, "*", host) and matches(r["prefix"], argv)), None)
        if rule is None:
            return
        if rule["once"]:
            rules.remove(rule)
            st.changed("faults")
        st.event("fault.fired", host, prefix=rule["prefix"], argv=list(argv))
    if rule["hang"] < 0:
        while True:          # a wedged host: the command never returns
            time.sleep(3600)
    if rule["hang"]:
        time.sleep(rule["hang"])
    if rule["exit_code"]:
        print(f"lab fault: '{rule['prefix']}' on {host} exits {rule['exit_code']}", file=sys.stderr)
        sys.exit(rule["exit_code"])


def matches(prefix, argv):
    words = prefix.split()
    args = list(argv[1:])
    if words[0] != os.path.basename(argv[0]):
        return False
    rest = words[1:]
    return any(args[i:i + len(rest)] == rest for i in range(len(args) - len(rest) + 1))
