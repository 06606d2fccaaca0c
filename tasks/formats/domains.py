"""Domain listings of the two hypervisors, parsed: `xl list` / `xm list` and `virsh list --all`.

A guard reads a domain missing from a listing as stopped, so a listing these parsers do not
recognise (no header, a line that is no domain) is a ValueError, never a guess.
"""

from __future__ import annotations

from . import FormatError

# What `virsh list` prints in a domain's State column (C locale), longest first.
VIRSH_STATES = ("in shutdown", "pmsuspended", "shut off", "crashed", "running", "blocked", "paused", "idle",
                "dying", "no state")


def parse_xl_list(text: str) -> dict[str, str]:
    """`xl list` / `xm list` -> {name: state flags}; Domain-0 left out."""
    lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines or lines[0][1][:2] != ["Name", "ID"]:
        raise FormatError("no `Name ID ...` header")
    domains = {}
    for number, fields in lines[1:]:
        if len(fields) < 5 or not all(field.isdigit() for field in fields[1:4]):
            raise FormatError(f"line {number} is no domain")
        domains[fields[0]] = fields[4] if len(fields) > 5 else ""
    if domains.pop("Domain-0", None) is None:
        raise FormatError("no Domain-0")
    return domains


def parse_virsh_list(text: str) -> dict[str, str]:
    """`virsh list --all` -> {name: state} (a name may hold spaces; the state ends the line)."""
    lines = [(number, line.rstrip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(lines) < 2 or lines[0][1].split() != ["Id", "Name", "State"] or set(lines[1][1].strip()) != {"-"}:
        raise FormatError("no `Id Name State` header")
    states = {}
    for number, line in lines[2:]:
        fields = line.split(None, 1)
        state = next((st for st in VIRSH_STATES if line.endswith(" " + st)), None)
        name = fields[1][:-len(state)].strip() if state and len(fields) == 2 else ""
        if state is None or not name or not (fields[0] == "-" or fields[0].isdigit()):
            raise FormatError(f"line {number} is no domain in a state virsh prints")
        states[name] = state
    return states
