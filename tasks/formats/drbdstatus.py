"""DRBD state from what the DRBD tools print, for DRBD 8.0 to 9.

The guards (never two Primaries, promote only UpToDate data) must ask the same
questions whatever DRBD a host runs, so every format below reduces to one
DrbdState per resource: /proc/drbd (8.0-8.4), `drbdadm status` and
`drbdsetup status [--verbose] [--statistics]` (8.4 and 9), and the one-line
answers of `drbdadm role|cstate|dstate`.

Input contract, the same for every parser: output that says "no resources"
(empty, the version banner alone, `# No currently configured DRBD found.`)
gives an empty dict; anything that is not the expected format
raises ValueError with a one-line message naming the line. Nothing is guessed:
a guard that gets a ValueError refuses to act.

A resource with several volumes (DRBD 9) is reported by its worst volume: it
is UpToDate only if every volume is, and syncing if any volume syncs. Each
peer of a DRBD 9 resource is kept too (DrbdState.peers), since a guard must
hold for every peer, and so is DRBD 9's quorum (a device line's `quorum:no`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ..errors import quoted
from . import FormatError

ROLES = ("Primary", "Secondary", "Unknown")

# Disk states from worst to best (DRBD's own enum order); a state not listed
# (e.g. "Unconfigured") counts as worse than all of them.
DISK_ORDER = ("Diskless", "Attaching", "Detaching", "Failed", "Negotiating", "Inconsistent",
              "Outdated", "DUnknown", "Consistent", "UpToDate")

# States in which data flows to the peer: 8.x `cs:` values and DRBD 9
# replication states. The resync ones are those where one side's data is not
# yet complete.
RESYNC_STATES = frozenset({"StartingSyncS", "StartingSyncT", "WFBitMapS", "WFBitMapT",
                           "WFSyncUUID", "SyncSource", "SyncTarget", "PausedSyncS",
                           "PausedSyncT"})
REPLICATING_STATES = RESYNC_STATES | {"VerifyS", "VerifyT", "Ahead", "Behind"}
LIVE_STATES = REPLICATING_STATES | {"Connected"}

_ANSI = re.compile(r"\x1b\[[0-9;]*m")          # drbdadm colours its output on a tty (pty=True)
_WORD = re.compile(r"^[A-Za-z]+$")
_PROC_MINOR = re.compile(
    r"^\s*(\d+):\s+cs:(\w+)(?:\s+(?:st|ro):(\w+)/(\w+)\s+ds:(\w+)/(\w+))?(?:\s|$)")
_PROC_HEADER = re.compile(r"^(?:version:|GIT-hash:|srcversion:|Transports )")
_PROC_PERCENT = re.compile(r"(?:sync'ed|verified):\s*([\d.]+)%")


@dataclass(frozen=True)
class Peer:
    """One peer as the local node sees it: its name (the `on` host name DRBD 9 prints,
    "peer" on 8.x), role, connection (its replication state while that replicates) and disk."""

    name: str
    role: str
    connection: str
    disk: str

    @property
    def is_connected(self) -> bool:
        return self.connection in LIVE_STATES


@dataclass(frozen=True)
class DrbdState:
    """One resource as the guards see it, whatever DRBD version reported it.

    connection: 8.x's `cs:`; on 9 the worst peer's connection state, or its
    replication state while that replicates (SyncSource, ...), "StandAlone"
    with no peer at all. An 8.x minor without configuration has connection
    and disk "Unconfigured", as does the disk of a 9 resource without volumes.
    A peer whose state is not shown has role "Unknown" and disk "DUnknown".
    `peers` holds each peer apart (left empty by the 8.x parsers, whose one peer
    the fields above describe); `quorum` is False when DRBD 9 says a volume
    has lost quorum.
    """

    name: str
    minor: int | None
    role: str
    peer_roles: tuple[str, ...]
    connection: str
    disk: str
    peer_disks: tuple[str, ...]
    sync_percent: float | None
    peers: tuple[Peer, ...] = field(default=(), compare=False)   # detail of the fields above
    quorum: bool = True

    def peer_list(self) -> tuple[Peer, ...]:
        """Every peer, from `peers`, or from the one-peer fields where a parser gave no detail."""
        if self.peers:
            return self.peers
        names = ["peer"] if len(self.peer_roles) == 1 else [f"peer {i}" for i in range(1, len(self.peer_roles) + 1)]
        disks = (*self.peer_disks, *("DUnknown",) * len(self.peer_roles))
        return tuple(Peer(name, role, self.connection, disk) for name, role, disk in zip(names, self.peer_roles, disks, strict=False))

    @property
    def is_primary(self) -> bool:
        return self.role == "Primary"

    @property
    def is_connected(self) -> bool:
        """Every peer connected (plain, or replicating: a sync needs a live peer)."""
        return self.connection in LIVE_STATES

    @property
    def is_syncing(self) -> bool:
        return self.connection in RESYNC_STATES

    @property
    def is_uptodate_pair(self) -> bool:
        """Local data and every peer's data complete: the only state safe to move a guest in."""
        return (self.disk == "UpToDate" and bool(self.peer_disks)
                and all(d == "UpToDate" for d in self.peer_disks))


def _bad(what: str, lineno: int, line: str) -> FormatError:
    return FormatError(f"not {what} output, line {lineno}: {quoted(line.strip())}")


def _lines(text: str):
    """(number, line) without colours, NUL bytes (seen in 8.3's /proc/drbd) or trailing blanks."""
    for lineno, line in enumerate(_ANSI.sub("", text.replace("\x00", "")).splitlines(), 1):
        yield lineno, line.rstrip()


def _role(value: str, what: str, lineno: int, line: str) -> str:
    """Roles decide "never two Primaries": an unexpected spelling must stop, not read as Secondary."""
    if value not in ROLES:
        raise _bad(what, lineno, line)
    return value


def _disk_rank(state: str) -> int:
    return DISK_ORDER.index(state) if state in DISK_ORDER else -1


def _connection_rank(state: str) -> int:
    return 2 if state == "Connected" else 1 if state in REPLICATING_STATES else 0


def _worst_disk(states) -> str:
    return min(states, key=_disk_rank)


def _worst_connection(states) -> str:
    return min(states, key=_connection_rank)


# --- /proc/drbd (8.0-8.4) ---------------------------------------------------

def parse_proc_drbd(text: str) -> dict[int, DrbdState]:
    """DRBD 8.x /proc/drbd, keyed by minor; names are "drbd<minor>"."""
    what = "/proc/drbd"
    states: dict[int, DrbdState] = {}
    minor = None
    for lineno, line in _lines(text):
        match = _PROC_MINOR.match(line)
        if match:
            number, cs, role, peer_role, disk, peer_disk = match.groups()
            minor = int(number)
            if cs == "Unconfigured":
                states[minor] = DrbdState(f"drbd{minor}", minor, "Unknown", (), cs, cs, (), None)
            elif role is None:
                raise _bad(what, lineno, line)
            else:
                states[minor] = DrbdState(
                    f"drbd{minor}", minor, _role(role, what, lineno, line),
                    (_role(peer_role, what, lineno, line),), cs, disk, (peer_disk,), None)
        elif not line or _PROC_HEADER.match(line):
            continue
        elif line[0] in " \t" and minor is not None:
            # Detail lines of the minor above; 2.6.39 kernels glue "finish:" onto the
            # progress line, which the search below does not mind.
            percent = _PROC_PERCENT.search(line)
            if percent:
                states[minor] = replace(states[minor], sync_percent=float(percent.group(1)))
        else:
            raise _bad(what, lineno, line)
    return states


# --- DRBD 9 model shared by status text, --json and events2 ---------------------
# A resource while it is read: {"role", "devices": {volume: {"disk", "minor",
# "quorum"}}, "peers": {key: {"name", "connection", "role", "volumes": {volume:
# {"replication", "peer-disk", "done"}}}}}, with the key names events2 uses.

def _new_resource(role: str = "Unknown") -> dict:
    return {"role": role, "devices": {}, "peers": {}}


def _new_peer(name: str, connection: str = "Unknown") -> dict:
    return {"name": name, "connection": connection, "role": "Unknown", "volumes": {}}


def _summarise(name: str, res: dict) -> DrbdState:
    """Reduce volumes and peers to one state: the worst volume, the worst connection;
    each peer is kept apart as well, by its own worst volume."""
    devices = [res["devices"][v] for v in sorted(res["devices"])]
    minors = [int(d["minor"]) for d in devices if d.get("minor") is not None]
    disk = _worst_disk([d.get("disk", "DUnknown") for d in devices]) if devices else "Unconfigured"
    peers, done = [], []
    for peer in res["peers"].values():
        volumes = [peer["volumes"][v] for v in sorted(peer["volumes"])]
        replicating = [v for v in volumes if v.get("replication") in REPLICATING_STATES]
        connection = peer["connection"]
        if connection == "Connected" and replicating:
            connection = replicating[0]["replication"]
        peer_disk = _worst_disk([v.get("peer-disk", "DUnknown") for v in volumes]) if volumes else "DUnknown"
        peers.append(Peer(peer["name"], peer["role"], connection, peer_disk))
        done += [float(v["done"]) for v in replicating if v.get("done") is not None]
    return DrbdState(
        name=name,
        minor=minors[0] if minors else None,
        role=res["role"],
        peer_roles=tuple(p.role for p in peers),
        connection=_worst_connection([p.connection for p in peers]) if peers else "StandAlone",
        disk=disk,
        peer_disks=tuple(p.disk for p in peers),
        sync_percent=min(done) if done else None,
        peers=tuple(peers),
        quorum=all(d.get("quorum", "yes") == "yes" for d in devices),
    )


# Values a guard reads, checked as they are read: a number where one belongs, a state
# word (letters only) for states, yes or no for quorum.
_STATE_WORD = re.compile(r"[A-Za-z]+")
_VALUES = {"volume": re.compile(r"\d+"), "minor": re.compile(r"\d+"), "done": re.compile(r"\d+(?:\.\d+)?"),
           "connection": _STATE_WORD, "replication": _STATE_WORD, "disk": _STATE_WORD,
           "peer-disk": _STATE_WORD, "quorum": re.compile(r"yes|no")}


def _pairs(tokens: list[str], what: str, lineno: int, line: str) -> list[tuple[str, str]]:
    """key:value tokens; events2 --diff writes changes as key:old->new, the new value counts."""
    pairs = []
    for token in tokens:
        key, sep, value = token.partition(":")
        value = value.rpartition("->")[2]
        if not sep or not key or (key in _VALUES and not _VALUES[key].fullmatch(value)):
            raise _bad(what, lineno, line)
        pairs.append((key, value))
    return pairs


# --- drbdadm status / drbdsetup status (8.4 and 9) ----------------------------

def parse_drbdadm_status(text: str) -> dict[str, DrbdState]:
    """`drbdadm status` / `drbdsetup status` text of 8.4 and 9, plain or --verbose --statistics.

    Read by keys rather than by indentation, which differs between versions:
    a resource starts at column 0, a connection is an indented line whose
    first word is a peer name (or, unnamed, `node-id:`), and before the first
    connection `disk:` is the local disk, after it the peer's.
    """
    what = "drbdadm status"
    resources: dict[str, dict] = {}
    res = peer = None
    volume = 0
    for lineno, line in _lines(text):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = line.split()
        if line[0] not in " \t":
            if ":" in tokens[0]:
                raise _bad(what, lineno, line)
            res = resources[tokens[0]] = _new_resource()
            peer, volume = None, 0
            pairs = _pairs(tokens[1:], what, lineno, line)
        elif res is None:
            raise _bad(what, lineno, line)
        elif ":" not in tokens[0] or line.startswith("  node-id:"):
            peer = res["peers"][len(res["peers"])] = _new_peer(tokens[0], "Connected")
            volume = 0
            pairs = _pairs(tokens if ":" in tokens[0] else tokens[1:], what, lineno, line)
        else:
            pairs = _pairs(tokens, what, lineno, line)
        for key, value in pairs:
            if key == "volume":
                volume = int(value)
            elif key == "role":
                (res if peer is None else peer)["role"] = _role(value, what, lineno, line)
            elif peer is None and key in ("disk", "minor", "quorum"):
                res["devices"].setdefault(volume, {})[key] = value
            elif peer is not None and key == "connection":
                peer["connection"] = value
            elif peer is not None and key in ("replication", "peer-disk", "disk", "done"):
                key = "peer-disk" if key == "disk" else key   # early 9.0 wrote disk: for the peer
                peer["volumes"].setdefault(volume, {})[key] = value
    return {name: _summarise(name, res) for name, res in resources.items()}


# --- drbdadm role | cstate | dstate -------------------------------------------

def _answer_lines(text: str, what: str) -> list[str]:
    lines = [line.strip() for _, line in _lines(text) if line.strip()]
    if not lines:
        raise FormatError(f"empty {what} output")
    return lines


def parse_role(text: str) -> tuple[str, tuple[str, ...]]:
    """`drbdadm role RES`: 8.x "Primary/Secondary", 9 "Primary" (no peers), "Unconfigured" (8.x, down)."""
    what = "drbdadm role"
    lines = _answer_lines(text, what)
    if len(lines) != 1:
        raise _bad(what, 2, lines[1])
    if lines[0] == "Unconfigured":
        return "Unknown", ()
    role, *peers = [_role(part, what, 1, lines[0]) for part in lines[0].split("/")]
    return role, tuple(peers)


def parse_cstate(text: str) -> str:
    """`drbdadm cstate RES`: one line, or one per connection on 9 (the worst one counts)."""
    what = "drbdadm cstate"
    lines = _answer_lines(text, what)
    for lineno, line in enumerate(lines, 1):
        if not _WORD.match(line):
            raise _bad(what, lineno, line)
    return _worst_connection(lines)


def parse_dstate(text: str) -> tuple[str, tuple[str, ...]]:
    """`drbdadm dstate RES`: "local/peer[/peer...]", one line per volume on 9 (worst per position)."""
    what = "drbdadm dstate"
    rows: list[list[str]] = []
    for lineno, line in enumerate(_answer_lines(text, what), 1):
        parts = line.split("/")
        if not all(_WORD.match(p) for p in parts) or (rows and len(parts) != len(rows[0])):
            raise _bad(what, lineno, line)
        rows.append(parts)
    local, *peers = [_worst_disk(column) for column in zip(*rows, strict=True)]
    return local, tuple(peers)


@dataclass(frozen=True)
class GenerationIds:
    """A node's data generation UUIDs (`drbdadm get-gi RES`, DRBD 8.x): DRBD compares them on
    connect to tell which side's data is newer; bit 0 of each only flags "was Primary"."""

    current: int
    bitmap: int
    history: tuple[int, ...]

    def ancestors(self) -> set[int]:
        """The generations this node's data grew from (0 means none)."""
        return {uuid & ~1 for uuid in (self.bitmap, *self.history)} - {0}


_GI = re.compile(r"^([0-9A-F]{16}):([0-9A-F]{16}):([0-9A-F]{16}):([0-9A-F]{16})(?::[01])*$")


def parse_gi(text: str) -> GenerationIds:
    """`drbdadm get-gi RES`: CURRENT:BITMAP:HISTORY1:HISTORY2:flags... (16 hex digits each)."""
    what = "drbdadm get-gi"
    lines = _answer_lines(text, what)
    match = _GI.match(lines[0])
    if len(lines) != 1 or not match:
        raise _bad(what, 1 if not match else 2, lines[0] if not match else lines[1])
    current, bitmap, *history = (int(value, 16) for value in match.groups())
    return GenerationIds(current, bitmap, tuple(history))


def diverged(a: GenerationIds, b: GenerationIds) -> bool:
    """Split brain: each side's data has writes the other lacks. DRBD's own rule (uuid_compare):
    equal current generations are in sync, and one whose current generation is among the
    other's ancestors is merely behind it (a resync catches it up); anything else diverged."""
    here, there = a.current & ~1, b.current & ~1
    return here != there and here not in b.ancestors() and there not in a.ancestors()
