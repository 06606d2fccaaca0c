"""Shared state of the simulated lab: which host am I, one lock, JSON documents, events, hooks.

Every simulator (on any lab host) and the control side read and write the same state_dir, the
way both nodes of a DRBD resource see one resource. A single flock serialises them, so a role
change on kvm1 can never interleave with an `xl create` on xen1.
"""

import contextlib
import fcntl
import json
import os
import time
from collections import namedtuple

HOST_FILE_ENV = "XENKVM_LAB_HOST_FILE"
DEFAULT_HOST_FILE = "/etc/xenkvm-lab/host.json"
EVENTS_FILE = "events.jsonl"
HOOKS_LOG = "hooks.log"
STYLES = ("9", "8.4", "8.3")
HOOK_TIMEOUT = 600


# One lab host as its own /etc view describes it (host.json).  A namedtuple, not a dataclass:
# a simulated command with no server to fork from (unit tests, a terminal) starts a Python,
# and dataclasses' imports would double its start-up.
Host = namedtuple("Host", "name role state_dir drbd_style xen_shutdown_delay drbd_sync_delay guest_start guest_stop "
                         "guests")


def load_host(path=None):
    """Read host.json (XENKVM_LAB_HOST_FILE, else the default path in this host's /etc)."""
    path = path or os.environ.get(HOST_FILE_ENV) or DEFAULT_HOST_FILE
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    style = str(data.get("drbd_style", "9"))
    if style not in STYLES:
        raise ValueError(f"drbd_style must be one of {', '.join(STYLES)}, not {style!r}")
    if data.get("role") not in ("xen", "kvm"):
        raise ValueError(f"role must be 'xen' or 'kvm', not {data.get('role')!r}")
    return Host(
        name=data["host"],
        role=data["role"],
        state_dir=data["state_dir"],
        drbd_style=style,
        xen_shutdown_delay=float(data.get("xen_shutdown_delay", 1.0)),
        drbd_sync_delay=float(data.get("drbd_sync_delay", 1.0)),
        guest_start=tuple(data.get("guest_start") or ()),
        guest_stop=tuple(data.get("guest_stop") or ()),
        guests=tuple(data.get("guests") or ()),
    )


class Store:
    """The documents of one locked transaction; written back only if it ends normally.

    A document is `<name>.json` in state_dir; a missing file reads as {}. `hooks` are commands
    to run once the lock is released (a hook may itself call a simulator).
    """

    def __init__(self, state_dir, actor):
        self.state_dir = state_dir
        self.actor = actor
        self.hooks = []
        self.failed_hooks = []   # events of this transaction's hooks that exited non-zero
        self._docs = {}
        self._dirty = set()
        self._events = []

    def doc(self, name):
        if name not in self._docs:
            try:
                with open(self._path(name), encoding="utf-8") as f:
                    self._docs[name] = json.load(f)
            except FileNotFoundError:
                self._docs[name] = {}
        return self._docs[name]

    def replace(self, name, value):
        self._docs[name] = value
        self._dirty.add(name)

    def changed(self, name):
        self._dirty.add(name)

    def changed_all(self):
        self._dirty.update(self._docs)

    def event(self, kind, where, ts=None, **detail):
        """Log a state change: `where` is the host it happened on, `by` who made it happen."""
        self._events.append({"ts": ts or time.time(), "event": kind, "host": where, "by": self.actor, **detail})

    def after(self, argv):
        self.hooks.append(list(argv))

    def save(self):
        for name in self._dirty:
            tmp = self._path(name) + f".{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self._docs[name], f, indent=1)  # keep order: it is config order
            os.replace(tmp, self._path(name))
        _append(self.state_dir, self._events)

    def _path(self, name):
        return os.path.join(self.state_dir, f"{name}.json")


@contextlib.contextmanager
def locked(state_dir, actor):
    """Hold the lab-wide lock for one transaction; run its hooks after releasing it."""
    os.makedirs(state_dir, exist_ok=True)
    st = Store(state_dir, actor)
    with _lock(state_dir):
        yield st
        st.save()
    if st.hooks:
        ran = [{"ts": time.time(), "event": "hook", "host": actor, "by": actor, "argv": argv,
                "rc": run_hook(state_dir, argv)} for argv in st.hooks]
        append_events(state_dir, ran)
        st.failed_hooks = [e for e in ran if e["rc"] != 0]


def run_hook(state_dir, argv):
    """Run a lab hook (guest_start/guest_stop) with its output in hooks.log, never on our pipes:
    a guest it leaves running must not hold the caller's stdout (an SSH channel) open."""
    import subprocess  # here: the commonest simulated commands never run a hook

    with open(os.path.join(state_dir, HOOKS_LOG), "a", encoding="utf-8") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {argv}\n")
        log.flush()
        try:
            return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=HOOK_TIMEOUT, check=False).returncode
        except (OSError, subprocess.TimeoutExpired) as e:
            log.write(f"hook failed: {e}\n")
            return 127


def append_events(state_dir, events):
    with _lock(state_dir):
        _append(state_dir, events)


def record_call(state_dir, host, argv, rc):
    """Every simulator call lands in the events log with its exit code (None: handed to exec)."""
    append_events(state_dir, [{"ts": time.time(), "event": "call", "host": host, "by": host,
                               "argv": list(argv), "rc": rc}])


def read_events(state_dir):
    try:
        with open(os.path.join(state_dir, EVENTS_FILE), encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def _lock(state_dir):
    # open() gives a close-on-exec descriptor, so no child (a guest) can inherit the lock.
    with open(os.path.join(state_dir, ".lock"), "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _append(state_dir, events):
    if events:
        with open(os.path.join(state_dir, EVENTS_FILE), "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in events))
