"""Stage: DRBD. Status, wait for sync, promote / demote with guards, resource files.

The guards here are the product's most important lines: never two Primaries,
never promote data that is not UpToDate, never demote under a running domain,
never start a domain on disks that are not Primary already (DRBD 9's
auto-promote would promote them past every other guard). Every resource of a
VM is checked before any of them changes, so a refusal for one resource leaves
all of them as they were.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Callable, Mapping, cast

from invoke import Collection

from . import inventory, output
from .cli import task
from .errors import GuardError, InputError, ToolError
from .inventory import VM, Host, ReplicatedDisk
from .output import log
from .remote import Remote, RemoteError, Site, concurrently, replaced_by, site_from_context
from .ssh import ConnectError

if TYPE_CHECKING:
    from .formats.cib import Primitive
    from .formats.drbdstatus import DrbdState, GenerationIds, Peer

DRBD_DIR = "/etc/drbd.d"
DOWN = "Unconfigured"                 # DRBD's word for a resource that is defined but not up
DEFAULT_SYNC_TIMEOUT = 6 * 3600.0     # an initial sync of a large disk takes hours
CONNECT_TIMEOUT = 60.0
PROGRESS_EVERY = 10.0
HELD_OPEN = "Device is held open by someone"   # the kernel's state-change refusal -12
HELD_OPEN_PAUSES = (0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0)   # about 10 s in all, then the refusal stands
# A peer's connection states that mean "not connected" (DRBD 8.4's cs: and DRBD 9's connection
# words) but not StandAlone; any word outside these and the connected ones refuses.
DISCONNECTED = frozenset({"Connecting", "WFConnection", "WFReportParams", "Unconnected", "Timeout", "BrokenPipe",
                          "NetworkFailure", "ProtocolError", "TearDown", "Disconnecting"})
SPLIT_BRAIN_GUIDE = 'DRBD\'s user guide, "Manual split brain recovery"'
# Cluster managers that can own a VM or its DRBD resources, and how their operators move one.
CLUSTER_TOOLS = {"Pacemaker": "crm_resource --move", "Ganeti": "gnt-instance failover or migrate",
                 "LINSTOR": "linstor, or the platform that drives it"}
CIB_FILE = "/var/lib/pacemaker/cib/cib.xml"                 # the CIB a stopped cluster node starts from
GANETI_INSTANCES = "/var/lib/ganeti/ssconf_instance_list"   # on every Ganeti node
LINSTOR_RESOURCES = "/var/lib/linstor.d"                    # the resource files a LINSTOR satellite writes
CIB_NOT_CONNECTED, CIB_NO_SUCH_FILE = 102, 105   # cibadmin's exits: no cluster running, no CIB file
CLUSTER_FACTS_AGE = 30.0    # seconds a host's cluster facts are shared by the VMs of one run


# --- pure: guards and plans -----------------------------------------------------

@dataclass(frozen=True)
class PeerAnswer:
    """What the VM's other host says about a resource when asked directly, because the host
    about to be promoted is not connected to it: its own state there, or why it could not
    be reached (then only the operator's --allow-disconnected speaks for it)."""

    host: str                       # inventory name
    drbd_name: str                  # its `on` name: what DRBD 9 calls that peer
    state: DrbdState | None = None
    unreachable: str = ""

    def speaks_for(self, peer: Peer, only_peer: bool) -> bool:
        """DRBD 9 names its peers; 8.x has one, "peer"."""
        return peer.name == self.drbd_name or (peer.name == "peer" and only_peer)


def _shown(word: str, limit: int = 40) -> str:
    """A word from a host's output, bounded for a one-line message."""
    return word if len(word) <= limit else word[:limit - 3] + "..."


def _peer_label(peer: Peer) -> str:
    return "the peer" if peer.name == "peer" else f"peer {_shown(peer.name)}"


def check_promote(state: DrbdState, host: str, allow_disconnected: bool = False,
                  answer: PeerAnswer | None = None) -> None:
    """Promote only UpToDate data with quorum, and only where every peer is known Secondary:
    connected and saying so, or (--allow-disconnected) disconnected and known not to be
    Primary: down, Outdated by `drbdadm outdate`, or unreachable on the operator's word.

    `answer` is what the VM's other host said about this resource when asked (promote asks
    it only for a disconnected peer and only with --allow-disconnected).
    """
    refuse = f"{host}: refusing to promote {state.name}:"
    peers = state.peer_list()
    for peer in peers:
        if peer.role == "Primary":
            raise GuardError(f"{refuse} {_peer_label(peer)} is Primary (never two Primaries); demote it there first")
    if state.is_primary:
        return
    if state.connection == DOWN:
        raise GuardError(f"{refuse} the resource is not up there (fab drbd.setup, or drbdadm up)")
    if state.disk != "UpToDate":
        raise GuardError(f"{refuse} the local disk is {_shown(state.disk)}, not UpToDate")
    if not state.quorum:
        raise GuardError(f"{refuse} it has lost quorum (DRBD 9): too few of its nodes are connected to it; "
                         f"reconnect them first (--allow-disconnected does not cover it)")
    if not peers:
        raise GuardError(f"{refuse} it is StandAlone, no peer shown (split brain, disconnected by hand, or no peer "
                         f"configured); resolve that and reconnect first (--allow-disconnected does not cover it)")
    for peer in peers:
        _check_peer(refuse, state.name, peer, allow_disconnected, answer, only_peer=len(peers) == 1)


def _check_peer(refuse: str, resource: str, peer: Peer, allow_disconnected: bool, answer: PeerAnswer | None,
                only_peer: bool) -> None:
    """The guard means "the peer is Secondary", not "the peer is not Primary"."""
    label = _peer_label(peer)
    if peer.is_connected:
        if peer.role != "Secondary":
            raise GuardError(f"{refuse} {label} is connected but its role is {_shown(peer.role)}, not Secondary")
        return
    if peer.connection == "StandAlone":
        raise GuardError(f"{refuse} it is StandAlone towards {label} (split brain, or disconnected by hand); "
                         f"resolve that and reconnect first (--allow-disconnected does not cover it)")
    if peer.connection not in DISCONNECTED:
        raise GuardError(f"{refuse} {label} is in connection state {_shown(peer.connection)!r}, which this tool "
                         f"does not know; refusing to guess")
    if not allow_disconnected:
        raise GuardError(f"{refuse} not connected to {label} ({peer.connection}), so its role is unknown; "
                         f"only if the peer host is known to be down, retry with --allow-disconnected")
    if answer is None or answer.state is None or not answer.speaks_for(peer, only_peer):
        return        # unreachable, or no host of the inventory: the operator's word stands
    there = answer.state
    if there.connection == DOWN:
        return
    if there.role == "Primary":
        raise GuardError(f"{refuse} {answer.host} answers that {resource} is Primary there (never two Primaries); "
                         f"demote it there first")
    if there.role != "Secondary" or there.disk != "Outdated":
        raise GuardError(f"{refuse} {answer.host} answers: {resource} is {_shown(there.role)} with "
                         f"{_shown(there.disk)} data there, so it could become Primary there too; run "
                         f"`drbdadm outdate {resource}` on {answer.host} (or take it down there), then retry")


def check_start(vm: VM, host: str, roles: Mapping[str, str], other: str, other_running: bool) -> None:
    """A start opens the VM's disks for writing. On a Secondary, DRBD 9's auto-promote (on
    unless the resource says `auto-promote no`) would promote them right there, past every
    guard of promote, even beside a disconnected peer: so every resource must be Primary
    already, and the domain must not run on the other host.

    `roles` maps resources to this host's roles; one missing counts as Unknown.
    """
    refuse = f"{host}: refusing to start {vm.name}:"
    not_primary = [f"{d.resource} is {_shown(roles.get(d.resource, 'Unknown'))}" for d in vm.resources
                   if roles.get(d.resource) != "Primary"]
    if not_primary:
        raise GuardError(f"{refuse} DRBD {', '.join(not_primary)} there, not Primary; promote it first "
                         f"(fab drbd.promote --vm {vm.name} --host {host})")
    if other_running:
        raise GuardError(f"{refuse} it runs on {other} (never one guest twice)")


def check_demote(state: DrbdState, host: str, domain_running: bool) -> None:
    """A running domain has the device open: demoting under it fails or cuts the guest's disk."""
    if domain_running:
        raise GuardError(f"{host}: refusing to demote {state.name}: the VM's domain still runs on {host}; "
                         f"shut it down first")


def check_split_brain(vm: VM, action: str, hosts: tuple[str, str],
                      ids: Mapping[str, tuple[GenerationIds, GenerationIds]]) -> None:
    """Refuse while any resource's data diverged between the two hosts (`ids`: resource ->
    the two hosts' generation ids): whichever side ran the guest next would have its writes
    thrown away or the other's, and which of them to keep is the operator's call, never ours."""
    from .formats.drbdstatus import diverged
    split = [name for name, (here, there) in ids.items() if diverged(here, there)]
    if split:
        raise GuardError(f"refusing to {action} {vm.name}: split brain on DRBD {', '.join(split)}: the data on "
                         f"{hosts[0]} and {hosts[1]} diverged (each side was Primary while they were apart); "
                         f"DRBD will not reconnect them and this tool resolves nothing: choose the side whose "
                         f"changes are lost and recover by hand ({SPLIT_BRAIN_GUIDE}), then retry")


def pacemaker_claims(primitives: list[Primitive], vm: VM) -> list[str]:
    """The primitives that manage the VM: one of its DRBD resources (ocf:linbit:drbd), its
    domain (VirtualDomain's config file, Xen's xmfile or domain name), or one named after it."""
    resources = {d.resource for d in vm.resources}
    claims = []
    for primitive in primitives:
        params, agent = primitive.params, primitive.agent
        domain_file = params.get("config" if agent.endswith(":VirtualDomain") else "xmfile", "")
        if agent == "ocf:linbit:drbd" and params.get("drbd_resource") in resources:
            claims.append(f"{primitive.id}, {agent} of {params['drbd_resource']}")
        elif agent.endswith((":VirtualDomain", ":Xen")) and (
                domain_file == vm.cfg or PurePosixPath(domain_file).stem == vm.name or params.get("name") == vm.name):
            claims.append(f"{primitive.id}, {agent} of {domain_file or params['name']}")
        elif primitive.id == vm.name:
            claims.append(f"{primitive.id}, {agent}")
    return [_shown(claim, 120) for claim in claims]


def check_unmanaged(vm: VM, host: str, action: str, claims: list[tuple[str, str]]) -> None:
    """A cluster manager that owns the VM (claims: (manager, evidence)) would fight a move made
    behind its back, up to starting the guest on both sides: it moves the VM, not this tool."""
    if claims:
        manager, evidence = claims[0]
        raise GuardError(f"{host}: refusing to {action} {vm.name}: {manager} manages it ({evidence}); move it "
                         f"with {manager} ({CLUSTER_TOOLS[manager]}), not behind its back")


def plan_initial_sync(state: DrbdState, host: str, force: bool) -> bool:
    """Whether `primary --force` must start the initial sync from `host`.

    Forcing declares this side's data the truth and overwrites the peer's, so it
    is only ever done on a fresh pair (Inconsistent on both sides) and only when
    the operator asked; where either side is UpToDate DRBD syncs without it.
    """
    disks = (state.disk, *state.peer_disks)
    if "UpToDate" in disks:
        return False
    if state.peer_disks and all(d == "Inconsistent" for d in disks):
        if force:
            return True
        raise GuardError(f"{host}: {state.name} is Inconsistent on both hosts: the initial sync makes {host}'s "
                         f"data the truth and overwrites the peer's; rerun with --force-initial-sync")
    raise GuardError(f"{host}: refusing the initial sync of {state.name}: disks are "
                     f"{state.disk}/{'/'.join(state.peer_disks) or 'DUnknown'}, only Inconsistent/Inconsistent "
                     f"may be forced")


def metadata_target(disk: ReplicatedDisk, host: str) -> tuple[str, bool]:
    """(device create-md writes to, internal?): the backing device itself, or the meta_disk."""
    if disk.internal_meta:
        return disk.backing[host], True
    return disk.meta_disk[host], False


def check_metadata_target(disk: ReplicatedDisk, host: str, fstype: str | None) -> str | None:
    """Refuse create-md over a filesystem; a warning line where the inventory vouches for room.

    External metadata needs an empty meta_disk (the backing disk holds the guest's
    data and is not touched). Internal metadata takes the end of the backing
    device; the inventory says `meta_disk: internal` only once room was made.
    """
    if fstype is None:
        return None
    device, internal = metadata_target(disk, host)
    if not internal:
        raise GuardError(f"{host}: refusing create-md for {disk.resource}: its meta_disk {device} holds {fstype}; "
                         f"external metadata needs an empty device")
    return (f"  WARNING {host}: {disk.resource}: internal metadata goes at the end of {device}, which holds "
            f"{fstype}; the inventory says room was made (meta_disk: internal): if the filesystem was not "
            f"shrunk first, create-md destroys its end")


def res_path(resource: str) -> str:
    """/etc/drbd.d/<resource>.res; a name that would leave the directory is refused."""
    if "/" in resource or "\x00" in resource or resource.startswith("."):
        raise InputError(f"DRBD resource {resource!r} cannot name a file in {DRBD_DIR}")
    return f"{DRBD_DIR}/{resource}.res"


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", version)[:2])


def oldest_version(versions: list[str]) -> str:
    """The userland version both hosts can read (resource file spelling differs before 8.4)."""
    return min(versions, key=_major_minor)


def forced(verb: str, version: str) -> list[str]:
    """`drbdadm` arguments for create-md or primary with force, as that userland spells it.

    Before 8.4 force is a backend option given after `--` ahead of the command, and
    primary's is called --overwrite-data-of-peer; 8.4 and 9 take --force after the verb.
    """
    if _major_minor(version) >= (8, 4):
        return [verb, "--force"]
    return ["--", "--force" if verb == "create-md" else "--overwrite-data-of-peer", verb]


def describe(state: DrbdState) -> str:
    """One resource in a few words, for progress and refusal lines."""
    if state.sync_percent is not None:
        return f"{state.name} {state.connection} {state.sync_percent:.1f}%"
    return f"{state.name} {state.connection} {state.disk}/{'/'.join(state.peer_disks) or 'DUnknown'}"


STATUS_HEADER = ("RESOURCE", "HOST", "ROLE", "PEER ROLE", "CONNECTION", "DISK", "PEER DISK", "SYNC")


def status_row(state: DrbdState, host: str) -> tuple[str, ...]:
    """One table row; "-" where DRBD reports no peer or no progress."""
    return (state.name, host, state.role, "/".join(state.peer_roles) or "-", state.connection, state.disk,
            "/".join(state.peer_disks) or "-",
            f"{state.sync_percent:.1f}%" if state.sync_percent is not None else "-")


# --- probes ---------------------------------------------------------------------

def _minor(vm: VM, resource: str, host_name: str) -> int | None:
    disk = next(d for d in vm.resources if d.resource == resource)
    digits = disk.device.get(host_name, "").removeprefix("/dev/drbd")
    return int(digits) if digits.isdigit() else None


def _undefined(remote: Remote, outcome, names: list[str]) -> set[str]:
    """Resources drbdadm says it has no definition for (8.x and 9 wording)."""
    text = outcome.stdout + outcome.stderr
    if "not defined in your config" not in text:
        return set()
    named = {n for n in names if f"'{n}' not defined in your config" in text}
    if not named:
        line = next(ln for ln in text.splitlines() if "not defined in your config" in ln)
        raise GuardError(f"{remote.name}: drbdadm: {line.strip()}")
    return named


def _unknown_resource(host_name: str, vm: VM, name: str) -> GuardError:
    return GuardError(f"{host_name}: DRBD resource {name} is not defined in drbdadm's config there "
                      f"(no {DRBD_DIR}/{name}.res, or its `on` names do not match that host's hostname); "
                      f"see fab drbd.setup --vm {vm.name}")


def _legacy_state(remote: Remote, vm: VM, host_name: str, name: str) -> DrbdState | None:
    """DRBD 8.0-8.3 userland: role, cstate and dstate one by one; None when undefined."""
    from .formats.drbdstatus import DrbdState, parse_cstate, parse_dstate, parse_role
    answers = {}
    for verb in ("role", "cstate", "dstate"):
        argv = ["drbdadm", verb, name]
        outcome = remote.probe(argv)
        if _undefined(remote, outcome, [name]):
            return None
        if not outcome.ok and outcome.stdout.strip() != DOWN:
            raise RemoteError(remote.name, remote.command(argv), outcome.exit_code, outcome.stderr or outcome.stdout)
        answers[verb] = outcome.stdout
    role, peer_roles = parse_role(answers["role"])
    disk, peer_disks = parse_dstate(answers["dstate"])
    return DrbdState(name=name, minor=_minor(vm, name, host_name), role=role, peer_roles=peer_roles,
                     connection=parse_cstate(answers["cstate"]), disk=disk, peer_disks=peer_disks,
                     sync_percent=None)


def _with_proc_percent(remote: Remote, states: dict[str, DrbdState | None]) -> dict[str, DrbdState | None]:
    """8.x role/cstate/dstate say nothing of progress; /proc/drbd does, by minor."""
    from .formats.drbdstatus import DrbdState, parse_proc_drbd
    syncing = {n: s for n, s in states.items() if s is not None and s.is_syncing and s.minor is not None}
    if not syncing:
        return states
    proc = parse_proc_drbd(remote.read_file("/proc/drbd") or "")
    for name, state in syncing.items():
        percent = proc[state.minor].sync_percent if state.minor in proc else None
        states[name] = DrbdState(state.name, state.minor, state.role, state.peer_roles, state.connection,
                                 state.disk, state.peer_disks, percent)
    return states


def _query(remote: Remote, vm: VM, host_name: str, *, undefined_ok: bool = False) -> dict[str, DrbdState | None]:
    """Every resource of the VM on one host, in the VM's order; None for one drbdadm does not
    know (only when `undefined_ok`, i.e. a dry run whose resource files are not written yet).
    Output the parsers do not recognise refuses: a guard never acts on a guess."""
    try:
        return _read_states(remote, vm, host_name, undefined_ok)
    except ValueError as exc:
        raise GuardError(f"{host_name}: cannot read the DRBD state ({exc}): refusing to act on it") from None


def _read_states(remote: Remote, vm: VM, host_name: str, undefined_ok: bool) -> dict[str, DrbdState | None]:
    from .formats.drbdstatus import parse_drbdadm_status
    names = [d.resource for d in vm.resources]
    states: dict[str, DrbdState | None] = {}
    while pending := [n for n in names if n not in states]:
        argv = ["drbdadm", "status", *pending]
        outcome = remote.probe(argv)
        newly = _undefined(remote, outcome, pending)
        if newly:
            if not undefined_ok:
                raise _unknown_resource(host_name, vm, sorted(newly)[0])
            states.update(dict.fromkeys(newly))    # drbdadm stops at the first unknown name: ask again without it
            continue
        text = outcome.stdout + outcome.stderr
        if "unknown command" in text.lower() or outcome.stdout.lstrip().startswith("<"):
            # 8.0-8.2 have no `status`; 8.3 (and early 8.4) print XML for every resource instead
            states.update({n: _legacy_state(remote, vm, host_name, n) for n in pending})
            if not undefined_ok and (missing := [n for n in names if states[n] is None]):
                raise _unknown_resource(host_name, vm, missing[0])
            return _with_proc_percent(remote, {n: states[n] for n in names})
        parsed = parse_drbdadm_status(outcome.stdout)
        down = [n for n in pending if n not in parsed and f"{n}: No such resource" in text]
        states.update({n: parsed[n] for n in pending if n in parsed})
        states.update({n: _down_state(vm, n, host_name) for n in down})
        missing = [n for n in pending if n not in states]
        if missing and not down:       # after a resource that is down, drbdadm may stop: ask again for the rest
            raise RemoteError(remote.name, remote.command(argv), outcome.exit_code,
                              outcome.stderr or outcome.stdout or f"no state for {missing[0]}")
    return {n: states[n] for n in names}


def _down_state(vm: VM, name: str, host_name: str) -> DrbdState:
    from .formats.drbdstatus import DrbdState
    return DrbdState(name=name, minor=_minor(vm, name, host_name), role="Unknown", peer_roles=(),
                     connection=DOWN, disk=DOWN, peer_disks=(), sync_percent=None)


def resource_states(remote: Remote, vm: VM, host_name: str) -> dict[str, DrbdState]:
    """Every DRBD resource of the VM as one host sees it; a resource drbdadm does not know refuses."""
    return cast("dict[str, DrbdState]", _query(remote, vm, host_name))   # None only when undefined_ok


def drbd_version(remote: Remote) -> str:
    """The DRBD a host runs: its kernel module's version where drbdadm reports one (read from
    /proc/drbd, else modinfo), else drbdadm's own; userland without --version (before 8.4)
    is taken as 8.3.

    The module decides, not the userland: drbd-utils 9 with Debian's 8.4 module hands
    every command to its 8.4 drbdadm, which reads only the 8.4 file syntax.
    """
    outcome = remote.probe(["drbdadm", "--version"])
    found = {}
    for line in outcome.stdout.splitlines():
        key, _, value = line.partition("=")
        found[key.strip()] = value.strip().strip("'\"")
    code = found.get("DRBD_KERNEL_VERSION_CODE", "0")
    kernel = int(code, 16) if re.fullmatch(r"0x[0-9a-fA-F]{1,8}", code) else 0
    if kernel:
        return f"{kernel >> 16}.{(kernel >> 8) & 0xFF}.{kernel & 0xFF}"
    if "DRBDADM_VERSION" in found:
        return found["DRBDADM_VERSION"]
    if outcome.exit_code == 127 or "command not found" in outcome.stderr:
        raise ToolError(f"{remote.name}: drbdadm is not installed (drbd-utils)")
    return "8.3"


def auto_promoting(remote: Remote, vm: VM) -> list[str]:
    """The VM's resources that this host's DRBD would promote when a domain opens them for
    writing: DRBD 9 with auto-promote on (its default); none before DRBD 9, which has none.

    Read from `drbdadm dump` (the resource files as drbdadm parsed them); a `common`
    section's setting is not in it, so only the resource's own `auto-promote no` counts.
    """
    from .formats.drbdconf import parse_dump_options
    if _major_minor(drbd_version(remote)) < (9,):
        return []
    names = [d.resource for d in vm.resources]
    argv = ["drbdadm", "dump", *names]
    outcome = remote.probe(argv)
    if not outcome.ok:
        raise RemoteError(remote.name, remote.command(argv), outcome.exit_code, outcome.stderr or outcome.stdout)
    try:
        options = parse_dump_options(outcome.stdout)
    except ValueError as exc:
        raise ToolError(f"{remote.name}: {exc}") from None
    return [n for n in names if options.get(n, {}).get("auto-promote", "yes") != "no"]


def has_metadata(remote: Remote, resource: str) -> bool:
    """Whether create-md already ran; anything unexpected is an error, never a licence to overwrite."""
    argv = ["drbdadm", "dump-md", resource]
    outcome = remote.probe(argv)
    text = outcome.stdout + outcome.stderr
    if outcome.ok or "unclean" in text:       # unclean metadata ("apply-al first") is still metadata
        return True
    if "No valid meta data found" in text:
        return False
    raise RemoteError(remote.name, remote.command(argv), outcome.exit_code, outcome.stderr or outcome.stdout)


def generation_ids(remote: Remote, resource: str) -> GenerationIds:
    """A resource's data generation ids on a host (DRBD 8.x; read from its metadata)."""
    from .formats.drbdstatus import parse_gi
    argv = ["drbdadm", "get-gi", resource]
    outcome = remote.probe(argv)
    if not outcome.ok:
        raise RemoteError(remote.name, remote.command(argv), outcome.exit_code, outcome.stderr or outcome.stdout)
    try:
        return parse_gi(outcome.stdout)
    except ValueError as exc:
        raise GuardError(f"{remote.name}: cannot read the DRBD generation ids of {resource} ({exc}): "
                         f"refusing to act on them") from None


def refuse_split_brain(vm: VM, action: str, remotes: Mapping[str, Remote],
                       states: Mapping[str, Mapping[str, DrbdState]]) -> None:
    """check_split_brain on live generation ids, asked only where a split brain can be: resources
    up on both hosts (`remotes`, `states`: host -> its view) but not connected, on DRBD 8.x
    (DRBD 9 keeps them per peer; there a split brain shows only as StandAlone)."""
    a, b = remotes
    apart = [d.resource for d in vm.resources
             if all(states[h][d.resource].connection != DOWN for h in (a, b))
             and not all(states[h][d.resource].is_connected for h in (a, b))]
    if not apart or any(_major_minor(drbd_version(remotes[h])) >= (9,) for h in (a, b)):
        return
    ids_a, ids_b = concurrently(*(lambda h=h: [generation_ids(remotes[h], name) for name in apart] for h in (a, b)))
    check_split_brain(vm, action, (a, b),
                      {name: (x, y) for name, x, y in zip(apart, ids_a, ids_b, strict=True)})


def cluster_claims(remote: Remote, vm: VM) -> list[tuple[str, str]]:
    """(manager, evidence) for each cluster manager on this host that owns the VM or one of its
    DRBD resources: Pacemaker's CIB (the live one, else the file a stopped node starts from),
    Ganeti's instance list, LINSTOR's resource files. Host-wide facts, shared by one run's VMs."""
    claims = [("Pacemaker", f"primitive {claim}") for claim in pacemaker_claims(_cib_primitives(remote), vm)]
    instances = remote.read_file(GANETI_INSTANCES, max_age=CLUSTER_FACTS_AGE) or ""
    if any(line.strip() == vm.name or line.strip().startswith(f"{vm.name}.") for line in instances.splitlines()):
        claims.append(("Ganeti", f"instance {vm.name} in {GANETI_INSTANCES}"))
    argv = ["ls", "-1", "--", LINSTOR_RESOURCES]
    listing = remote.shared_probe(argv, max_age=CLUSTER_FACTS_AGE)
    if not listing.ok and "No such file" not in listing.stderr:
        raise RemoteError(remote.name, remote.command(argv), listing.exit_code, listing.stderr or listing.stdout)
    files = set(listing.stdout.split()) if listing.ok else set()
    claims += [("LINSTOR", f"{LINSTOR_RESOURCES}/{d.resource}.res") for d in vm.resources if f"{d.resource}.res" in files]
    return claims


def _cib_primitives(remote: Remote) -> list[Primitive]:
    """Pacemaker's primitives on this host: none where its tools are not installed."""
    from .formats.cib import parse_cib_primitives
    argv = ["cibadmin", "--query", "--scope", "resources"]
    outcome = remote.shared_probe(argv, max_age=CLUSTER_FACTS_AGE)
    if outcome.exit_code == 127 or "command not found" in outcome.stderr:
        return []
    if outcome.exit_code == CIB_NOT_CONNECTED:      # the cluster is stopped here: what it would start with
        outcome = remote.shared_probe(argv, env={"CIB_file": CIB_FILE}, max_age=CLUSTER_FACTS_AGE)
        if outcome.exit_code == CIB_NO_SUCH_FILE:
            return []
    try:
        if not outcome.ok:
            raise ValueError(f"{remote.command(argv)} exited {outcome.exit_code}: "
                             f"{_shown((outcome.stderr or outcome.stdout).strip(), 200)}")
        return parse_cib_primitives(outcome.stdout)
    except ValueError as exc:
        raise GuardError(f"{remote.name}: cannot read Pacemaker's CIB ({exc}): refusing to act on a VM "
                         f"the cluster may own") from None


def fs_type(remote: Remote, device: str) -> str | None:
    """What signature a device holds (low-level probe, no cache), or None when blank."""
    argv = ["blkid", "-p", "-o", "value", "-s", "TYPE", device]
    outcome = remote.probe(argv)
    if outcome.exit_code == 2 and not outcome.stderr.strip():
        return None
    if outcome.ok:
        return outcome.stdout.strip() or "a signature blkid cannot name (a partition table?)"
    if outcome.exit_code == 8:
        return "several signatures (blkid: ambivalent)"
    raise RemoteError(remote.name, remote.command(argv), outcome.exit_code, outcome.stderr or outcome.stdout)


def _wait_for(remote: Remote, vm: VM, host_name: str, ready, *, what: str, timeout: float | None, poll: float,
              progress, on_poll=None) -> dict[str, DrbdState]:
    """Poll the states until `ready` holds for every resource; refuse on timeout (None: no limit)
    or a state that cannot change by itself.  on_poll(states), if given, sees every poll."""
    deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
    reported = None
    while True:
        states = resource_states(remote, vm, host_name)
        if on_poll is not None:
            on_poll(states)
        waiting = [s for s in states.values() if not ready(s)]
        if not waiting:
            return states
        stuck = [s for s in waiting if s.connection in ("StandAlone", DOWN)]
        if stuck:
            raise GuardError(f"{host_name}: {what}: {', '.join(describe(s) for s in stuck)} will not change "
                             f"by itself")
        now = time.monotonic()
        if now >= deadline:
            raise GuardError(f"{host_name}: still {what} after {timeout:.0f}s: "
                             f"{', '.join(describe(s) for s in waiting)}")
        if reported is None or now - reported >= PROGRESS_EVERY:
            progress(f"  {host_name}: {what}: {', '.join(describe(s) for s in waiting)}")
            reported = now
        remote.interruption.sleep(max(0.0, min(poll, deadline - now)))


def wait_sync(remote: Remote, vm: VM, host_name: str, *, timeout: float | None, poll: float = 2.0,
              progress=log.info, bars=None) -> dict[str, DrbdState]:
    """Until every resource is Connected and UpToDate on both sides: the only state to move a guest in.

    `bars` (progress.SyncBars) shows each resource's resync on a terminal.
    """
    states = _wait_for(remote, vm, host_name, lambda s: s.is_connected and s.is_uptodate_pair,
                       what="waiting for sync", timeout=timeout, poll=poll, progress=progress,
                       on_poll=bars.update if bars is not None else None)
    log.info(f"* {host_name}: {', '.join(states)} UpToDate/UpToDate ... ok")
    return states


def other_host(vm: VM, host_name: str) -> str:
    """The VM's host that is not `host_name`."""
    return vm.kvm_host if host_name == vm.xen_host else vm.xen_host


def domain_running_on(site: Site, host_name: str, vm_name: str) -> bool:
    """Whether the VM's domain runs on a host, asked of that host's hypervisor."""
    from .hypervisors import on
    return on(site, host_name).running(vm_name)


def check_movable(site: Site, vm: VM) -> dict[str, dict[str, DrbdState]]:
    """What a move checks before anything else, even before asking where the VM runs: no cluster
    manager owns it on either host, and its DRBD data did not split. Returns both hosts' DRBD
    states (host -> its view), for the rest of the checks."""
    hosts = (vm.xen_host, vm.kvm_host)
    remotes = {h: site.host(h) for h in hosts}
    for host, claims in zip(hosts, concurrently(*(lambda h=h: cluster_claims(remotes[h], vm) for h in hosts)),
                            strict=True):
        check_unmanaged(vm, host, "move", claims)
    states = dict(zip(hosts, concurrently(*(lambda h=h: resource_states(remotes[h], vm, h) for h in hosts)),
                      strict=True))
    refuse_split_brain(vm, "move", remotes, states)
    return states


def guard_start(site: Site, vm: VM, host_name: str, *, allow_disconnected: bool = False) -> None:
    """check_start on live facts, both hosts asked at once: this host's DRBD roles, and whether
    the domain runs on the other host. An other host that cannot be reached counts as not
    running it only on the operator's word (--allow-disconnected)."""
    other = other_host(vm, host_name)

    def other_running() -> bool:
        remote, why = _reach(other, lambda: site.host(other))
        if remote is None:
            if not allow_disconnected:
                raise GuardError(f"{host_name}: refusing to start {vm.name}: cannot ask {other} whether it runs "
                                 f"there ({why}); only if {other} is known to be down, retry with "
                                 f"--allow-disconnected")
            log.warning(f"  WARNING {host_name}: {other} cannot be reached ({why}); starting {vm.name} on the "
                f"operator's word that it is down (--allow-disconnected)")
            return False
        return domain_running_on(site, other, vm.name)

    states, running = concurrently(lambda: resource_states(site.host(host_name), vm, host_name), other_running)
    check_start(vm, host_name, {name: state.role for name, state in states.items()}, other, running)


# --- changes --------------------------------------------------------------------

def start_guarded(site: Site, vm: VM, host_name: str, start: Callable[[], None], *,
                  allow_disconnected: bool = False) -> None:
    """`start()` the VM's domain on a host, unless it runs there already, once guard_start passed."""
    if domain_running_on(site, host_name, vm.name):
        log.info(f"* {host_name}: {vm.name} already running ... ok")
        return
    guard_start(site, vm, host_name, allow_disconnected=allow_disconnected)
    start()


def drbdadm_argv(verb: list[str], names: list[str]) -> list[str]:
    """One `drbdadm VERB RES...` for all of them: one round trip inside the guest's downtime.

    drbdadm acts on each named resource in turn, so a failure may leave some changed;
    undo and rollback read live state and need not know which.
    """
    return ["drbdadm", *verb, *names]


def _apply(remote: Remote, verb: list[str], names: list[str]) -> None:
    if names:
        remote.change(drbdadm_argv(verb, names))


@dataclass(frozen=True)
class OtherHost:
    """The VM's other host, which promote asks when it cannot see it as a connected peer."""

    name: str
    drbd_name: str                      # its `on` name in the resource files
    remote: Callable[[], Remote]        # connects on first use

    @classmethod
    def of(cls, site: Site, vm: VM, host_name: str) -> "OtherHost":
        name = other_host(vm, host_name)
        host = site.inventory.host(name)
        return cls(name, host.hostname or host.name, lambda: site.host(name))


def _reach(other: str, connect: Callable[[], Remote]) -> tuple[Remote | None, str]:
    """The other host's connection, or None and why it cannot be reached.

    Only a failed connection counts as unreachable; a host that answers and then fails
    (a command's error, a lost link) raises, and nothing acts on it.
    """
    try:
        return connect(), ""
    except ConnectError as exc:
        return None, exc.reason


def ask_other_host(other: OtherHost, vm: VM) -> dict[str, PeerAnswer]:
    """Every resource of the VM as the other host itself sees it (or why it cannot be asked)."""
    remote, why = _reach(other.name, other.remote)
    if remote is None:
        return {d.resource: PeerAnswer(other.name, other.drbd_name, unreachable=why) for d in vm.resources}
    return {name: PeerAnswer(other.name, other.drbd_name, state)
            for name, state in resource_states(remote, vm, other.name).items()}


def _is_blind(state: DrbdState) -> bool:
    """Not yet Primary, with a peer it cannot see."""
    return not state.is_primary and not all(p.is_connected for p in state.peer_list())


def promote(remote: Remote, vm: VM, host_name: str, *, allow_disconnected: bool = False,
            other: OtherHost | None = None) -> list[str]:
    """Check every resource, then make the ones not yet Primary Primary: all or nothing.

    With --allow-disconnected and a peer this host cannot see, `other` (the VM's other
    host) is asked directly first: reachable, it must say down or Outdated. A resource
    StandAlone here (DRBD refused the peer, or was told to leave it) makes it ask too, so
    that a split brain is refused as one.
    Returns the resources it promoted (or would, in a dry run), for the undo journal.
    """
    states = resource_states(remote, vm, host_name)
    blind = [n for n, s in states.items() if _is_blind(s)]
    standalone = [n for n, s in states.items()
                  if not s.is_primary and (s.connection == "StandAlone" or not s.peer_list())]
    answers: dict[str, PeerAnswer] = {}
    if other is not None and (allow_disconnected and blind or standalone):
        answers = ask_other_host(other, vm)
        seen = {n: a.state for n, a in answers.items() if a.state is not None}
        if standalone and len(seen) == len(states):   # DRBD refused to connect: a split brain is named as such
            refuse_split_brain(vm, "promote", {host_name: remote, other.name: other.remote()},
                               {host_name: states, other.name: seen})
    if not allow_disconnected:
        answers = {}
    for state in states.values():
        check_promote(state, host_name, allow_disconnected, answers.get(state.name))
    todo = [n for n, s in states.items() if not s.is_primary]
    for name in states:
        if name not in todo:
            log.info(f"* {host_name}: {name} already Primary ... ok")
    if blind:
        log.warning(f"  WARNING {host_name}: promoting {', '.join(blind)} without every peer connected "
            f"(--allow-disconnected): {_blind_basis(blind, answers)}")
    _apply(remote, ["primary"], todo)
    return todo


def _blind_basis(blind: list[str], answers: dict[str, PeerAnswer]) -> str:
    """What a promotion beside a disconnected peer rests on, in words."""
    asked = [answers[n] for n in blind if n in answers]
    if not asked:
        return "the operator states the peer hosts are down"
    if asked[0].state is None:
        return f"{asked[0].host} cannot be reached ({asked[0].unreachable}); the operator states it is down"
    seen = ", ".join(f"{a.state.name} {'down' if a.state.connection == DOWN else a.state.disk}"
                     for a in asked if a.state is not None)
    return f"{asked[0].host} says: {seen}"


def demote(remote: Remote, vm: VM, host_name: str, *, domain_running: bool) -> list[str]:
    """Check every resource, then make the Primary ones Secondary; returns those it demoted."""
    states = resource_states(remote, vm, host_name)
    for state in states.values():
        check_demote(state, host_name, domain_running)
    todo = [n for n, s in states.items() if s.is_primary]
    for name, state in states.items():
        if name not in todo:
            log.info(f"* {host_name}: {name} already {'down' if state.connection == DOWN else state.role} ... ok")
    _secondary(remote, todo)
    return todo


def demote_stopped(remote: Remote, vm: VM) -> None:
    """Every resource of the VM Secondary, on a host where its domain was just seen gone."""
    _secondary(remote, [disk.resource for disk in vm.resources])


def _secondary(remote: Remote, names: list[str]) -> None:
    """`drbdadm secondary`, tried again for a while as long as the kernel says "held open".

    A device just closed by its domain can be held for a moment by something else: udev
    probing it on the change event that close sends, or a backend still letting go. LINSTOR
    and other DRBD managers retry for the same reason. The guard that the domain is gone
    ran before; a holder that stays (a mount, a process) still fails after about 10 s.
    """
    for pause in (*HELD_OPEN_PAUSES, None):
        try:
            _apply(remote, ["secondary"], names)
            return
        except RemoteError as exc:
            if HELD_OPEN not in exc.output:
                raise
            if pause is None:   # name the refusal, not drbdadm's closing "terminated with exit code 11"
                refusal = next(line for line in exc.output.splitlines() if HELD_OPEN in line).strip()
                raise RemoteError(exc.host, exc.command, exc.exit_code,
                                  f"{exc.output}\n{refusal} (still after {sum(HELD_OPEN_PAUSES):g}s)") from None
            log.info(f"  {remote.name}: {', '.join(names)} held open by someone, trying again in {pause:g}s")
            remote.interruption.sleep(pause)


@dataclass
class _HostWork:
    """What setup must do on one host, found by probes before anything is created."""

    create_md: list[str] = field(default_factory=list)
    up: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _survey(remote: Remote, vm: VM, host_name: str) -> _HostWork:
    """Probes only: which resources are down, which lack metadata, and whether create-md is safe."""
    work = _HostWork()
    states = _query(remote, vm, host_name, undefined_ok=remote.dry_run)
    for disk in vm.resources:
        state = states[disk.resource]
        if state is not None and state.connection != DOWN:
            log.info(f"* {host_name}: {disk.resource} is up ... ok")
            continue
        work.up.append(disk.resource)
        if state is None:
            log.info(f"  {host_name}: {disk.resource} is unknown to drbdadm until its file is written: "
                f"its metadata is not probed in a dry run")
        elif has_metadata(remote, disk.resource):
            continue
        warning = check_metadata_target(disk, host_name, fs_type(remote, metadata_target(disk, host_name)[0]))
        if warning:
            work.warnings.append(warning)
        work.create_md.append(disk.resource)
    return work


def setup(site: Site, vm: VM, hosts: dict[str, Host], *, force_initial_sync: bool,
          sync_timeout: float | None = None) -> None:
    """The seed's first step: resource files on both hosts, metadata, up, the initial sync, wait.

    The wait for the initial sync has no time limit unless given one: a large disk takes
    hours, and stopping the wait (Ctrl-C) stops nothing on the hosts.

    Every check (metadata present? a filesystem where create-md would write?) runs
    on both hosts before any metadata is created; a resource already up whose file
    changed is adjusted to it; a second run changes nothing.
    """
    from .formats.drbdconf import render_drbd_resource
    pair = (vm.xen_host, vm.kvm_host)
    remotes = {h: site.host(h) for h in pair}
    versions = {h: drbd_version(remotes[h]) for h in pair}
    try:
        files = render_drbd_resource(vm, hosts, oldest_version(list(versions.values())))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    paths = {name: res_path(name) for name in files}
    rewritten = {h: [name for name, text in files.items()
                     if remotes[h].edit_file(paths[name], replaced_by(text), create=True)] for h in pair}
    work = {h: _survey(remotes[h], vm, h) for h in pair}
    for h in pair:
        for line in work[h].warnings:
            log.info(line)
    for h in pair:
        for name in work[h].create_md:
            remotes[h].change(["drbdadm", *forced("create-md", versions[h]), name])
    for h in pair:
        for name in work[h].up:
            remotes[h].change(["drbdadm", "up", name])
    for h in pair:      # a resource already up takes a changed file (auto-promote no) only from adjust
        for name in rewritten[h]:
            if name not in work[h].up:
                remotes[h].change(["drbdadm", "adjust", name])
    xen = remotes[vm.xen_host]
    if xen.dry_run and any(work[h].up for h in pair):
        log.info(f"  would then wait for the connection, start the initial sync from {vm.xen_host} where both sides "
            f"are Inconsistent (with --force-initial-sync), and wait for the sync")
        return
    states = _wait_for(xen, vm, vm.xen_host, lambda s: s.is_connected, what="waiting for the peer to connect",
                       timeout=CONNECT_TIMEOUT, poll=1.0, progress=log.info)
    sync_from_xen = [n for n, s in states.items() if plan_initial_sync(s, vm.xen_host, force_initial_sync)]
    _apply(xen, forced("primary", versions[vm.xen_host]), sync_from_xen)
    if xen.dry_run:
        log.info(f"  would then wait for the sync on {vm.xen_host}")
        return
    if sync_timeout is None:
        log.info(f"  {vm.xen_host}: waiting for the initial sync without a time limit "
            f"(Ctrl-C ends the wait; the sync goes on, and `fab drbd.wait-sync` waits again)")
    wait_sync(xen, vm, vm.xen_host, timeout=sync_timeout)


# --- tasks ----------------------------------------------------------------------

def start_help(other: str) -> dict[str, str]:
    """The help of xenhost.start and kvmhost.start; `other` names the other hypervisor."""
    return {"vm": "VM name from the inventory",
            "allow_disconnected": f"start even though the {other} host cannot be reached to ask whether the "
                                  f"domain runs there: only when it is known to be down",
            "dry_run": "run the checks and show the command, change nothing"}


def _context(c, vm_name: str, dry_run: bool = False):
    inv = inventory.from_context(c)
    vm = inv.vm(vm_name)
    return inv, vm, site_from_context(c, inv, dry_run)


def _vm_host(vm: VM, host: str) -> str:
    """Promote and demote name their host: a default here could promote the wrong side."""
    if host not in (vm.xen_host, vm.kvm_host):
        raise InputError(f"--host {host!r} is not one of {vm.name}'s hosts ({vm.xen_host}, {vm.kvm_host})")
    return host


@task(help={"vm": "VM name from the inventory"})
def status(c, vm):
    """Show every DRBD resource of the VM on both its hosts, and warn where DRBD 9 would
    promote a resource on its own (auto-promote) (read-only)."""
    _, model, site = _context(c, vm)
    rows, failures, warnings = [], [], []
    for host in (model.xen_host, model.kvm_host):
        try:      # a dead host must not hide the other's view, nor an unreadable configuration the states
            remote = site.host(host)
            rows += [status_row(state, host) for state in resource_states(remote, model, host).values()]
            warnings += [auto_promote_warning(host, name) for name in auto_promoting(remote, model)]
        except ToolError as exc:
            failures.append(str(exc))
    print(output.table_text(STATUS_HEADER, rows))
    for line in failures + warnings:
        print(f"  {line}")
    if failures:
        raise ToolError(f"could not read the DRBD state on {len(failures)} host(s)")


def auto_promote_warning(host: str, resource: str) -> str:
    return (f"WARNING {host}: {resource} has auto-promote on (DRBD 9's default): a domain that opens it for "
            f"writing makes it Primary there without the checks of drbd.promote; fab drbd.setup writes "
            f"`auto-promote no` into its resource file")


# No short flags on promote and demote: `-h` would read as help, and these deserve spelled-out words.
@task(auto_shortflags=False,
      help={"vm": "VM name from the inventory",
            "host": "the host to promote on: the VM's Xen or KVM host (required)",
            "allow_disconnected": "promote without a connected peer: only when the peer host is known to be down; "
                                  "the peer host is asked when it can be reached, and must say the resource is "
                                  "down or Outdated (drbdadm outdate) there",
            "dry_run": "run the checks and show the commands, change nothing"})
def promote_task(c, vm, host, allow_disconnected=False, dry_run=False):
    """Make the VM's DRBD resources Primary on one host, after the guards pass for all of them."""
    _, model, site = _context(c, vm, dry_run)
    name = _vm_host(model, host)
    remote = site.host(name)
    check_unmanaged(model, name, "promote", cluster_claims(remote, model))
    promote(remote, model, name, allow_disconnected=allow_disconnected, other=OtherHost.of(site, model, name))


@task(auto_shortflags=False,
      help={"vm": "VM name from the inventory",
            "host": "the host to demote on: the VM's Xen or KVM host (required)",
            "dry_run": "run the checks and show the commands, change nothing"})
def demote_task(c, vm, host, dry_run=False):
    """Make the VM's DRBD resources Secondary on one host, unless its domain still runs there."""
    inv, model, site = _context(c, vm, dry_run)
    name = _vm_host(model, host)
    remote = site.host(name)
    check_unmanaged(model, name, "demote", cluster_claims(remote, model))
    demote(remote, model, name, domain_running=domain_running_on(site, name, model.name))


@task(help={"vm": "VM name from the inventory",
            "timeout": f"seconds to wait (default {DEFAULT_SYNC_TIMEOUT:.0f})"})
def wait_sync_task(c, vm, timeout=DEFAULT_SYNC_TIMEOUT):
    """Wait until every DRBD resource of the VM is Connected and UpToDate on both sides."""
    _, model, site = _context(c, vm)
    remote = site.host(model.xen_host)
    if not sys.stdout.isatty():
        wait_sync(remote, model, model.xen_host, timeout=float(timeout))
        return
    from .progress import SyncBars
    with SyncBars([d.resource for d in model.resources]) as bars:
        wait_sync(remote, model, model.xen_host, timeout=float(timeout), progress=lambda _line: None, bars=bars)


@task(help={"vm": "VM name from the inventory",
            "force_initial_sync": "where both sides are Inconsistent, make the Xen host's data the truth "
                                  "(primary --force there) and overwrite the KVM side",
            "timeout": "seconds to wait for the initial sync (default: no limit)",
            "dry_run": "run the checks, show the file diffs and commands, change nothing"})
def setup_task(c, vm, force_initial_sync=False, timeout=None, dry_run=False):
    """Create the VM's DRBD resources on both hosts: files, metadata, up, initial sync."""
    inv, model, site = _context(c, vm, dry_run)
    setup(site, model, inv.hosts, force_initial_sync=force_initial_sync,
          sync_timeout=None if timeout is None else float(timeout))


ns = Collection("drbd")
ns.add_task(status)
ns.add_task(promote_task, name="promote")
ns.add_task(demote_task, name="demote")
ns.add_task(wait_sync_task, name="wait-sync")
ns.add_task(setup_task, name="setup")
