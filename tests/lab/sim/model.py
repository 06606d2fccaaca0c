"""The one world all lab hosts share, and the rules the real kernel and toolstacks enforce on it.

Documents (JSON files in state_dir, see store.py):
  drbd.json        {"resources": {NAME: {"minor": N, "sync": null|{...},
                     "hosts": {HOST: {"device", "disk", "md", "up", "connect", "role", "dstate",
                                      "options", "auto_promoted"}}}}}
                   (options: the DRBD 9 resource options `up`/`adjust` gave that host's
                   kernel, e.g. {"auto-promote": "no", "quorum": "majority"}; absent: defaults)
  xen.json         {"hosts": {HOST: {"next_id": N, "domains": {NAME: {"id", "memory", "vcpus", "cfg",
                     "started", "shutdown_at", "drbd": [{"resource", "script"}], "guest_stop",
                     "teardown": null|{"lock", "ts", "why"}}}}}}
  kvm.json         {"hosts": {HOST: {NAME: {"running": bool, "ts": float}}}}
  vms.json         written by the infra side: {VM: {"xen_host", "kvm_host", "resources": [...]}}
  violations.json  {"active": [text], "log": [{"ts", "text"}]}

Time-driven changes (a guest finishing its shutdown, a resync completing) happen lazily: every
transaction first settles whatever has fallen due, so no background process is needed and
results do not depend on scheduling.
"""

import contextlib
import fcntl
import os
import stat
import time

from . import store

PRIMARY, SECONDARY = "Primary", "Secondary"
UPTODATE, INCONSISTENT, OUTDATED = "UpToDate", "Inconsistent", "Outdated"
DOWN = "down"  # promote()/demote()/outdate() outcome: the resource is not up on that host
# Refusal codes (the kernel's enum drbd_state_rv) the model returns.
TWO_PRIMARIES, NO_UP_TO_DATE_DISK, CONNECTED_OUTDATES = -1, -2, -6
DEVICE_IN_USE, LOWER_THAN_OUTDATED, NO_QUORUM = -12, -16, -25


@contextlib.contextmanager
def transaction(state_dir, actor):
    """Lock the lab, catch up with time, yield the store, then check safety.

    If settling finished a guest's shutdown, its guest_stop hook runs (outside the lock)
    before the caller's work starts. Until that hook has run the domain stays listed as
    dying (see finish_domain), so no process sees a domain gone whose guest still holds
    its disks. A teardown the caller's own work began (xl destroy) is over on return.
    """
    caller_done = False
    failed_hooks = []
    while True:
        with store.locked(state_dir, actor) as st:
            record_failed_hooks(st, failed_hooks)
            settle(st, time.time())
            if not st.hooks and not caller_done:
                yield st
                check_violations(st)
                caller_done = True
        _end_teardowns()  # leaving the lock ran every hook queued above
        failed_hooks = st.failed_hooks
        if caller_done and not st.hooks:
            return


def record_failed_hooks(st, failed):
    """A guest_stop hook that failed may have left its guest holding the disks while the
    domain is gone: the lab logs it as a violation, so no test passes over it."""
    for hook in failed:
        text = (f"guest_stop hook for {hook['argv'][-1]} on {hook['host']} exited {hook['rc']}: "
                f"its guest may still hold its disks (see {store.HOOKS_LOG})")
        log_violation(st, text, hook["ts"])


def log_violation(st, text, ts):
    """One entry in the record of every unsafe condition (lab_state's violations) and in the events."""
    st.doc("violations").setdefault("log", []).append({"ts": ts, "text": text})
    st.changed("violations")
    st.event("violation", None, text=text)


def tamper(state_dir, change):
    """Test hook: apply `change(store)` to the raw documents, bypassing every guard, then check
    safety as after any real change. This is how tests force an unsafe state."""
    with transaction(state_dir, "tamper") as st:
        change(st)
        st.changed_all()
        st.event("tamper", None)


# ---------------------------------------------------------------- DRBD


def resources(st):
    return st.doc("drbd").setdefault("resources", {})


def new_node(device, disk=None):
    return {"device": device, "disk": disk, "md": False, "up": False, "connect": False,
            "role": SECONDARY, "dstate": INCONSISTENT}


def peers(res, host):
    return [h for h in res["hosts"] if h != host]


def connected(res, a, b):
    na, nb = res["hosts"][a], res["hosts"][b]
    return na["up"] and nb["up"] and na["connect"] and nb["connect"]


def conn_state(res, host, peer):
    """DRBD 9 names: StandAlone (we do not try), Connecting (peer absent), Connected."""
    me, other = res["hosts"][host], res["hosts"][peer]
    if not me["connect"]:
        return "StandAlone"
    if not (other["up"] and other["connect"]):
        return "Connecting"
    return "Connected"


def repl_state(res, host, peer):
    sync = res.get("sync")
    if not connected(res, host, peer):
        return "Off"
    if sync and (sync["source"], sync["target"]) == (host, peer):
        return "SyncSource"
    if sync and (sync["source"], sync["target"]) == (peer, host):
        return "SyncTarget"
    return "Established"


def sync_percent(res, now):
    sync = res["sync"]
    done = sync["done"]
    if sync["since"] is not None:
        done += (now - sync["since"]) / sync["duration"] if sync["duration"] > 0 else 1.0
    return 100.0 * min(done, 1.0)


def relink(st, name, now, duration):
    """Re-derive resync after any change of who is up/connected: bank progress, pause or
    resume it, or start the full resync DRBD runs when an UpToDate node meets an
    Inconsistent one."""
    res = resources(st)[name]
    sync = res.get("sync")
    if sync:
        sync["done"] = sync_percent(res, now) / 100.0
        sync["since"] = now if connected(res, sync["source"], sync["target"]) else None
        return
    for a in res["hosts"]:
        for b in peers(res, a):
            if (connected(res, a, b) and res["hosts"][a]["dstate"] == UPTODATE
                    and res["hosts"][b]["dstate"] != UPTODATE):
                res["sync"] = {"source": a, "target": b, "duration": duration, "done": 0.0, "since": now}
                st.event("drbd.sync_started", a, resource=name, target=b)
                return


def has_quorum(res, host):
    """DRBD 9's quorum as the lab models it, from the host's `quorum` option: off (the
    default) always has it; majority needs more than half of the resource's nodes, all
    needs every one, a number at least that many, counting the host and the peers up and
    connected to it. (DRBD's tie-breakers for diskless nodes are not modelled.)"""
    setting = res["hosts"][host].get("options", {}).get("quorum", "off")
    if setting == "off":
        return True
    seen = 1 + sum(1 for p in peers(res, host) if connected(res, host, p))
    total = len(res["hosts"])
    if setting == "majority":
        return seen * 2 > total
    return seen == total if setting == "all" else seen >= int(setting)


def auto_promotes(node):
    """DRBD 9 promotes a device opened for writing unless its resource says `auto-promote no`."""
    return node.get("options", {}).get("auto-promote", "yes") == "yes"


def promote(st, name, host, force, now, duration, auto=False):
    """`drbdadm primary`, or (auto) DRBD 9's auto-promote when a device is opened for
    writing: None on success (or already Primary), DOWN, or a refusal code: a connected
    peer is Primary, no UpToDate data (the lab does not model fencing: a disconnected node
    with UpToDate data may be promoted, as DRBD allows without a fence-peer handler), no
    quorum (only forcing passes that)."""
    res = resources(st)[name]
    me = res["hosts"][host]
    if not me["up"]:
        return DOWN
    if me["role"] == PRIMARY:
        return None
    linked = [p for p in peers(res, host) if connected(res, host, p)]
    refusal = None
    if any(res["hosts"][p]["role"] == PRIMARY for p in linked):
        refusal = TWO_PRIMARIES
    elif not force and me["dstate"] != UPTODATE:
        refusal = NO_UP_TO_DATE_DISK
    elif not force and not has_quorum(res, host):
        refusal = NO_QUORUM
    if refusal:
        st.event("drbd.refused", host, resource=name, action="auto-promote" if auto else "primary", code=refusal)
        return refusal
    me["role"] = PRIMARY
    me["auto_promoted"] = auto      # DRBD demotes on the last close only what it promoted itself
    if force:
        me["dstate"] = UPTODATE
    st.changed("drbd")
    st.event("drbd.role", host, resource=name, role=PRIMARY, force=force, auto=auto)
    relink(st, name, now, duration)
    return None


def outdate(st, name, host):
    """`drbdadm outdate`: the host's data marked Outdated, so that it cannot become Primary
    without force. None, DOWN (no meta data to mark), or a refusal: while connected to a
    peer (-6), on a Primary (-2: it would lose its UpToDate data), on data already below
    Outdated (-16). A resource that is down has its meta data marked (drbdmeta)."""
    res = resources(st)[name]
    me = res["hosts"][host]
    refusal = None
    if not me["up"]:
        if not me["md"]:
            return DOWN
    elif any(connected(res, host, p) for p in peers(res, host)):
        refusal = CONNECTED_OUTDATES
    elif me["role"] == PRIMARY:
        refusal = NO_UP_TO_DATE_DISK
    elif me["dstate"] not in (UPTODATE, "Consistent", OUTDATED):
        refusal = LOWER_THAN_OUTDATED
    if refusal:
        st.event("drbd.refused", host, resource=name, action="outdate", code=refusal)
        return refusal
    if me["dstate"] != OUTDATED:
        me["dstate"] = OUTDATED
        st.changed("drbd")
        st.event("drbd.outdated", host, resource=name)
    return None


def demote(st, name, host, here):
    """`drbdadm secondary`: None, DOWN, or -12 while anything holds the device open.
    `here` is the host this process runs on (None on the control side)."""
    me = resources(st)[name]["hosts"][host]
    if not me["up"]:
        return DOWN
    if me["role"] == SECONDARY:
        return None
    holder = held_open(st, name, host, here)
    if holder:
        st.event("drbd.refused", host, resource=name, action="secondary", code=DEVICE_IN_USE, holder=holder)
        return DEVICE_IN_USE
    me["role"] = SECONDARY
    me["auto_promoted"] = False
    st.changed("drbd")
    st.event("drbd.role", host, resource=name, role=SECONDARY)
    _infer_kvm_stopped(st, name, host)
    return None


def held_open(st, name, host, here):
    """Who keeps `name` open on `host`: a Xen domain using it, or (checked only when running on
    that host, since each host's device path means something else elsewhere) a process or a
    mount anywhere on the machine."""
    for dom, d in xen_domains(st, host).items():
        if any(disk["resource"] == name for disk in d["drbd"]):
            return f"Xen domain {dom}"
    if here == host:
        return opened_by(resources(st)[name]["hosts"][host]["device"])
    return None


def opened_by(path):
    """A process fd or a mount holding `path` open, in any namespace on this machine.

    stat() of /proc/PID/fd/N is the open file itself, so a process that opened the device by
    its path or by its resolved real path (qemu) matches; block devices match by device
    number, anything else by inode.
    """
    want = _identity(path)
    if want is None:
        return None
    pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            if _identity(f"/proc/{pid}/fd/{fd}") == want:
                return f"pid {pid} ({_comm(pid)})"
    if want[0] == "blk":
        return _mounted(pids, f"{os.major(want[1])}:{os.minor(want[1])}")
    return None


def _identity(path):
    try:
        s = os.stat(path)
    except OSError:
        return None
    return ("blk", s.st_rdev) if stat.S_ISBLK(s.st_mode) else ("ino", s.st_dev, s.st_ino)


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _mounted(pids, majmin):
    seen = set()
    for pid in pids:
        try:
            ns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            if ns in seen:
                continue
            seen.add(ns)
            with open(f"/proc/{pid}/mountinfo", encoding="utf-8") as f:
                for line in f:
                    fields = line.split()
                    if fields[2] == majmin:
                        return f"mount on {fields[4]} (mount namespace of pid {pid})"
        except OSError:
            continue
    return None


def resource_for_device(st, host, path):
    """The DRBD resource whose device on `host` is `path` (by name, minor, by-res or realpath)."""
    for name, res in resources(st).items():
        node = res["hosts"].get(host)
        if not node:
            continue
        aliases = (node["device"], f"/dev/drbd{res['minor']}", f"/dev/drbd/by-res/{name}",
                   f"/dev/drbd/by-res/{name}/0")
        if path in aliases or (os.path.exists(path) and os.path.realpath(path) == os.path.realpath(node["device"])):
            return name
    return None


# ---------------------------------------------------------------- Xen and KVM domains


def xen_host(st, host):
    return st.doc("xen").setdefault("hosts", {}).setdefault(host, {"next_id": 1, "domains": {}})


def xen_domains(st, host):
    """Read-only view: the domains running on `host` (no document is created for a KVM host)."""
    return st.doc("xen").get("hosts", {}).get(host, {}).get("domains", {})


def finish_domain(st, host, name, ts, why, stop_guest=True):
    """A Xen domain is gone, or, while its lab guest's namespaces are still being stopped,
    dying: a real domain too stays in `xl list` until its backends have closed its disks.
    The guest_stop hook runs in this process once the lock is released, holding the
    teardown's lock file; the domain is released when that lock is free (settle)."""
    d = xen_host(st, host)["domains"][name]
    if not (stop_guest and d.get("guest_stop")):
        release_domain(st, host, name, ts, why)
    elif d.get("teardown") is None:
        lock = os.path.join(st.state_dir, f"teardown-{host}-{name}-{d['id']}.lock")
        held = open(lock, "a", encoding="utf-8")  # close-on-exec: the hook does not inherit it
        fcntl.flock(held, fcntl.LOCK_EX)
        _TEARDOWN_LOCKS.append(held)
        d["teardown"] = {"lock": lock, "ts": ts, "why": why}
        st.changed("xen")
        st.event("xen.domain_dying", host, ts=ts, domain=name, domid=d["id"], why=why)
        st.after(d["guest_stop"] + [name])


_TEARDOWN_LOCKS = []  # lock files of teardowns this process began and whose hooks have not yet run


def _end_teardowns():
    while _TEARDOWN_LOCKS:
        _TEARDOWN_LOCKS.pop().close()


def teardown_over(teardown):
    """True once nobody holds the teardown's lock: its hook has run, or its runner died."""
    try:
        f = open(teardown["lock"], "a", encoding="utf-8")
    except OSError:
        return True
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True


def release_domain(st, host, name, ts, why):
    """The domain leaves the list: block-drbd's `remove` demotes its drbd: disks (ignoring a
    refusal, as the script does)."""
    d = xen_host(st, host)["domains"].pop(name)
    st.changed("xen")
    st.event("xen.domain_gone", host, ts=ts, domain=name, domid=d["id"], why=why)
    if d.get("teardown"):
        with contextlib.suppress(OSError):
            os.unlink(d["teardown"]["lock"])
    # Only other domains count as holders here: the real domain's blkback has closed it by now.
    for disk in d["drbd"]:
        if disk["script"] and resources(st)[disk["resource"]]["hosts"][host]["up"]:
            refused = demote(st, disk["resource"], host, None)
            if refused:
                st.event("xen.block_drbd_demote_failed", host, ts=ts, resource=disk["resource"])
    auto_demote(st, [disk["resource"] for disk in d["drbd"]], host)


def open_for_writing(st, name, host, drbd_style, now, duration):
    """A starting domain opens the device of `name` on `host` for writing: None when the
    resource is Primary there or DRBD 9's auto-promote makes it so, else the refusal code
    (a Secondary of DRBD 8, or with `auto-promote no`: -2) with which the open fails."""
    node = resources(st)[name]["hosts"][host]
    if node["up"] and node["role"] == PRIMARY:
        return None
    if drbd_style != "9" or not auto_promotes(node):
        st.event("drbd.refused", host, resource=name, action="open", code=NO_UP_TO_DATE_DISK)
        return NO_UP_TO_DATE_DISK
    return promote(st, name, host, False, now, duration, auto=True)


def auto_demote(st, names, host):
    """The last writer closed the devices: DRBD 9 demotes those it promoted itself."""
    for name in names:
        node = resources(st).get(name, {}).get("hosts", {}).get(host)
        if node and node.get("auto_promoted") and node["up"] and node["role"] == PRIMARY:
            demote(st, name, host, None)


def kvm_notes(st):
    return st.doc("kvm").setdefault("hosts", {})


def note_kvm(st, host, name, running, why):
    notes = kvm_notes(st).setdefault(host, {})
    if notes.get(name, {}).get("running") == running:
        return
    notes[name] = {"running": running, "ts": time.time()}
    st.changed("kvm")
    st.event("kvm.running" if running else "kvm.stopped", host, domain=name, why=why)
    if not running:     # its qemu closed the devices
        auto_demote(st, st.doc("vms").get(name, {}).get("resources", ()), host)


def _infer_kvm_stopped(st, name, host):
    """The device could be demoted, so no qemu on `host` holds it: a VM on it is not running."""
    notes = kvm_notes(st).get(host, {})
    for vm, spec in st.doc("vms").items():
        if name in spec.get("resources", ()) and notes.get(vm, {}).get("running"):
            note_kvm(st, host, vm, False, f"{name} demoted, so its device is closed")


def running_domains(st):
    """Domain name -> [(host, "xen"|"kvm")] for every domain the lab believes is running."""
    found = {}
    for host, hx in st.doc("xen").get("hosts", {}).items():
        for name in hx["domains"]:
            found.setdefault(name, []).append((host, "xen"))
    for host, notes in kvm_notes(st).items():
        for name, note in notes.items():
            if note["running"]:
                found.setdefault(name, []).append((host, "kvm"))
    return found


def local_role(st, name, host):
    node = resources(st).get(name, {}).get("hosts", {}).get(host)
    if node is None:
        return None
    return node["role"] if node["up"] else "Unconfigured"


# ---------------------------------------------------------------- time and safety


def settle(st, now):
    """Apply everything that has fallen due: finished guest shutdowns and teardowns, finished resyncs.

    A lab guest's shutdown is finished only by a process on its own host: the guest_stop
    hook can reach the guest's namespaces from there alone (run from kvm1 it failed, and
    the guest kept its disks open after its domain had gone). Until the host next looks,
    the domain is still listed, as a real domain is until its toolstack has torn it down.
    """
    for host, hx in list(st.doc("xen").get("hosts", {}).items()):
        for name, d in list(hx["domains"].items()):
            teardown = d.get("teardown")
            if teardown is not None:
                if teardown_over(teardown):
                    release_domain(st, host, name, teardown["ts"], teardown["why"])
            elif d["shutdown_at"] is not None and d["shutdown_at"] <= now \
                    and (not d.get("guest_stop") or st.actor == host):
                finish_domain(st, host, name, d["shutdown_at"], "shutdown")
    for name, res in resources(st).items():
        sync = res.get("sync")
        if sync and sync["since"] is not None:
            finished_at = sync["since"] + (1.0 - sync["done"]) * sync["duration"]
            if finished_at <= now:
                res["hosts"][sync["target"]]["dstate"] = UPTODATE
                res["sync"] = None
                st.changed("drbd")
                st.event("drbd.sync_done", sync["source"], ts=finished_at, resource=name, target=sync["target"])


def check_violations(st):
    """Record each unsafe condition when it begins: two Primaries on one resource, one domain
    running on two hosts, a domain running where its resource is not Primary."""
    found = []
    for name, res in resources(st).items():
        primaries = [h for h, n in res["hosts"].items() if n["up"] and n["role"] == PRIMARY]
        if len(primaries) > 1:
            found.append(f"two Primaries: resource {name} is Primary on {' and '.join(primaries)}")
    running = running_domains(st)
    for name, where in sorted(running.items()):
        if len(where) > 1:
            hosts = " and ".join(f"{h} ({kind})" for h, kind in where)
            found.append(f"domain {name} running on two hosts: {hosts}")
    for vm, spec in sorted(st.doc("vms").items()):
        for host, kind in running.get(vm, ()):
            for name in spec.get("resources", ()):
                role = local_role(st, name, host)
                if role != PRIMARY:
                    found.append(f"domain {vm} running on {host} ({kind}) while {name} is {role or 'unknown'} there")
    record = st.doc("violations")
    active = set(record.get("active", ()))
    now = time.time()
    for text in found:
        if text not in active:
            log_violation(st, text, now)
    if found != record.get("active", []):
        record["active"] = found
        st.changed("violations")
