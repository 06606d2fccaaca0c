"""The lab's drbdadm simulator (sim/, DRBD 8.4 style) held to Debian 12's own drbd.ko 8.4.11.

Each sequence below is a series of drbdadm calls the tool sends (tasks/drbd.py), with the
harness steps that bring a pair where the tool meets it (a device held open, a peer
disconnected). `record` runs them on the real DRBD pair (drbdpair.py) and writes each
transcript to tests/data/conformance/drbd-8.4.11/NAME.txt; `check` runs them against the
simulator and compares, step by step, exit codes and output:

    python -m tests.lab.conformance record     # boots the pair (about a minute and a half)
    python -m tests.lab.conformance check      # conformance: drbd N/M sequences match the kernel (8.4.11)
                                               # conformance: xl N/M commands match xl 4.17 (xlconformance.py)

A transcript is plain text: `$ HOST: COMMAND`, then `> ` stdout lines, `! ` stderr lines and
`= EXIT`. What differs between two honest runs is normalised in both: a resync's progress
(`done:NN.NN`), and generation UUIDs, which become U1, U2, ... in order of appearance, with
a `+` for bit 0 (the "was Primary" flag), so only which generations are equal counts.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import REPO

KERNEL = "8.4.11"
FIXTURES = REPO / "tests" / "data" / "conformance" / f"drbd-{KERNEL}"
XEN, KVM = "rxen", "rkvm"
HOSTS = (XEN, KVM)
RESOURCES = ("web-root", "web-data")
BOTH = " ".join(RESOURCES)


@dataclass(frozen=True)
class Sequence:
    name: str
    start: str              # "fresh": defined, no metadata, down; "synced": connected, UpToDate, rxen Primary
    steps: tuple[str, ...]  # "HOST: drbdadm ..." (compared), or a harness step: "HOST: hold DEVICE",
                            # "HOST: release", "wait synced", "wait HOST WORD" (until HOST's status shows WORD)


def _seq(name: str, start: str, *steps: str) -> Sequence:
    return Sequence(name, start, steps)


SEQUENCES = (
    _seq("version", "fresh", f"{XEN}: drbdadm --version"),
    _seq("unknown-resource", "fresh", f"{XEN}: drbdadm status nosuch", f"{XEN}: drbdadm primary nosuch"),
    _seq("setup", "fresh",
         f"{XEN}: drbdadm dump-md web-root", f"{XEN}: drbdadm status {BOTH}",
         f"{XEN}: drbdadm create-md --force web-root", f"{XEN}: drbdadm create-md --force web-data",
         f"{KVM}: drbdadm create-md --force web-root", f"{KVM}: drbdadm create-md --force web-data",
         f"{XEN}: drbdadm up web-root", f"{XEN}: drbdadm up web-data",
         f"{XEN}: drbdadm status {BOTH}",
         f"{KVM}: drbdadm up web-root", f"{KVM}: drbdadm up web-data", f"wait {XEN} peer-disk:Inconsistent",
         f"{XEN}: drbdadm status {BOTH}", f"{XEN}: drbdadm primary {BOTH}",
         f"{XEN}: drbdadm primary --force {BOTH}", "wait synced",
         f"{XEN}: drbdadm status {BOTH}", f"{KVM}: drbdadm status {BOTH}",
         f"{XEN}: drbdadm adjust web-root", f"{XEN}: drbdadm up web-root"),
    _seq("switch", "synced",
         f"{KVM}: drbdadm primary {BOTH}", f"{XEN}: drbdadm secondary {BOTH}",
         f"{XEN}: drbdadm status {BOTH}", f"{KVM}: drbdadm primary {BOTH}",
         f"{KVM}: drbdadm status {BOTH}", f"{KVM}: drbdadm primary {BOTH}", f"{XEN}: drbdadm secondary {BOTH}"),
    _seq("held-open", "synced",
         f"{XEN}: hold /dev/drbd1", f"{XEN}: drbdadm secondary {BOTH}", f"{XEN}: drbdadm status {BOTH}",
         f"{XEN}: release", f"{XEN}: drbdadm secondary web-root"),
    _seq("disconnect-outdate", "synced",
         f"{XEN}: drbdadm outdate web-root", f"{KVM}: drbdadm outdate web-root",
         f"{KVM}: drbdadm disconnect {BOTH}", f"wait {XEN} connection:",
         f"{KVM}: drbdadm status {BOTH}", f"{XEN}: drbdadm status {BOTH}",
         f"{XEN}: drbdadm outdate web-root", f"{KVM}: drbdadm outdate {BOTH}", f"{KVM}: drbdadm status {BOTH}",
         f"{KVM}: drbdadm primary web-root", f"{KVM}: drbdadm connect {BOTH}", "wait synced",
         f"{KVM}: drbdadm status {BOTH}"),
    _seq("down", "synced",
         f"{KVM}: drbdadm down web-data", f"{KVM}: drbdadm status {BOTH}", f"{KVM}: drbdadm status web-root",
         f"wait {XEN} connection:", f"{XEN}: drbdadm status {BOTH}", f"{KVM}: drbdadm secondary web-data",
         f"{KVM}: drbdadm dump-md web-root", f"{KVM}: drbdadm up web-data", "wait synced",
         f"{XEN}: drbdadm status {BOTH}"),
)


# --- transcripts ------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    exit: int
    stdout: str
    stderr: str


def transcript(steps: list[tuple[str, Answer]]) -> str:
    lines = []
    for step, answer in steps:
        lines.append(f"$ {step}")
        lines += [f"> {line}" for line in answer.stdout.splitlines()]
        lines += [f"! {line}" for line in answer.stderr.splitlines()]
        lines.append(f"= {answer.exit}")
    return "\n".join(lines) + "\n"


def parse_transcript(text: str) -> list[tuple[str, Answer]]:
    steps, out, err = [], [], []
    step = None
    for line in text.splitlines():
        mark, _, rest = line.partition(" ")
        if mark == "$":
            step, out, err = rest, [], []
        elif mark in (">", "!"):
            (out if mark == ">" else err).append(rest)
        elif mark == "=" and step is not None:
            steps.append((step, Answer(int(rest), "".join(f"{o}\n" for o in out), "".join(f"{e}\n" for e in err))))
            step = None
        elif line.strip():
            raise ValueError(f"not a transcript line: {line!r}")
    return steps


_UUID = re.compile(r"\b[0-9A-F]{16}\b")


def normalise(text: str) -> str:
    """A transcript without what differs between two honest runs (see the module's doc)."""
    text = re.sub(r"done:\d+\.\d+", "done:*", text)
    names: dict[int, str] = {}

    def name(match: re.Match) -> str:
        value = int(match.group(), 16)
        if value == 0 or value == 4:      # no generation; UUID_JUST_CREATED
            return match.group()
        token = names.setdefault(value & ~1, f"U{len(names) + 1}")
        return token + ("+" if value & 1 else "")
    return _UUID.sub(name, text)


# --- running a sequence -----------------------------------------------------------------

class Pair:
    """Where a sequence runs: run(host, argv) -> Answer, plus the harness steps."""

    def run(self, host: str, argv: list[str]) -> Answer:
        raise NotImplementedError

    def hold(self, host: str, device: str) -> None:
        raise NotImplementedError

    def release(self, host: str) -> None:
        raise NotImplementedError

    def reset(self, start: str) -> None:
        raise NotImplementedError

    def wait(self, what: str, timeout: float = 120) -> None:
        """Until the status shows `what` ("synced", or "HOST WORD")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what == "synced":
                texts = [self.run(h, ["drbdadm", "status", *RESOURCES]).stdout for h in HOSTS]
                if all(t.count("peer-disk:UpToDate") == len(RESOURCES) and t.count("disk:UpToDate") == 2 * len(RESOURCES)
                       for t in texts):
                    return
            else:
                host, word = what.split(" ", 1)
                if word in self.run(host, ["drbdadm", "status", *RESOURCES]).stdout:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}")


def run_sequence(pair: Pair, sequence: Sequence) -> list[tuple[str, Answer]]:
    pair.reset(sequence.start)
    done = []
    try:
        for step in sequence.steps:
            if step.startswith("wait "):
                pair.wait(step.removeprefix("wait "))
                continue
            host, _, command = step.partition(": ")
            argv = shlex.split(command)
            if argv[0] == "hold":
                pair.hold(host, argv[1])
            elif argv[0] == "release":
                pair.release(host)
            else:
                done.append((step, pair.run(host, argv)))
    finally:
        pair.release(XEN)
        pair.release(KVM)
    return done


class RealPair(Pair):
    """The real DRBD pair (drbdpair.py): commands over SSH, as the tool sends them."""

    HOLDER = "/run/conformance-holder.pid"

    def __init__(self, vms: dict):
        self.vms = vms

    def run(self, host: str, argv: list[str]) -> Answer:
        done = self.vms[host].ssh(argv)
        return Answer(done.returncode, done.stdout, done.stderr)

    def _sh(self, host: str, script: str) -> None:
        self.vms[host].ssh(["sh", "-c", script], check=True)

    def hold(self, host: str, device: str) -> None:
        self._sh(host, f"setsid sh -c 'exec 3<{shlex.quote(device)}; exec sleep 600' </dev/null >/dev/null 2>&1 & "
                       f"echo $! >{self.HOLDER}; sleep 0.5")

    def release(self, host: str) -> None:
        self._sh(host, f"[ -f {self.HOLDER} ] && kill $(cat {self.HOLDER}) && rm {self.HOLDER}; sleep 0.3; true")

    def reset(self, start: str) -> None:
        """Both hosts down, metadata wiped; for "synced", set up and synced again from rxen."""
        for host in HOSTS:
            self._sh(host, f"drbdadm down all; for r in {BOTH}; do drbdadm wipe-md --force $r </dev/null; done; "
                           "dd if=/dev/zero of=/dev/vdd bs=1M count=8 2>/dev/null; true")
        if start == "synced":
            for host in HOSTS:
                self._sh(host, f"drbdadm create-md --force {BOTH} && drbdadm up {BOTH}")
            self.wait(f"{XEN} peer-disk:Inconsistent")
            self._sh(XEN, f"drbdadm primary --force {BOTH}")
            self.wait("synced")


class SimPair(Pair):
    """The lab's drbdadm simulator in its 8.4 style, each host told who it is by its host.json."""

    def __init__(self, work: Path):
        self.work = work
        self.state = work / "state"
        self.holder: subprocess.Popen | None = None
        self.conf = work / "drbd.conf"
        self.conf.write_text('global { usage-count no; }\ninclude "drbd.d/*.res";\n')
        (work / "drbd.d").mkdir()
        for name, text in _resource_files(work).items():
            (work / "drbd.d" / f"{name}.res").write_text(text)
        for host, role in zip(HOSTS, ("xen", "kvm"), strict=True):
            (work / f"{host}.json").write_text(json.dumps({
                "host": host, "role": role, "state_dir": str(self.state), "drbd_style": "8.4",
                "drbd_sync_delay": 0.5, "peers": {h: {} for h in HOSTS if h != host}}))

    def run(self, host: str, argv: list[str]) -> Answer:
        from .sim import store
        bin_dir = Path(__file__).resolve().parent / "sim" / "bin"
        done = subprocess.run([str(bin_dir / "drbdadm"), "-c", str(self.conf), *argv[1:]],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", store.HOST_FILE_ENV:
                                   str(self.work / f"{host}.json"), "XENKVM_LAB_SIM_SOCKET": "/nonexistent"})
        return Answer(done.returncode, done.stdout, done.stderr)

    def hold(self, host: str, device: str) -> None:
        """One holder at a time (the sequences need no more)."""
        path = self.work / f"{host}-{Path(device).name}"
        self.holder = subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1]); "
                                        "print(flush=True); time.sleep(600)", str(path)], stdout=subprocess.PIPE)
        self.holder.stdout.readline()

    def release(self, host: str) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
            self.holder = None

    def reset(self, start: str) -> None:
        from . import sim
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir()
        if start == "synced":
            for minor, name in enumerate(RESOURCES, 1):
                devices = {h: str(self.work / f"{h}-drbd{minor}") for h in HOSTS}
                sim.seed_resource(str(self.state), name, minor, devices, primary=XEN)


def _resource_files(work: Path) -> dict[str, str]:
    """The pair's resource files as the tool renders them (for 8.4), with device paths the
    simulator can hold open on this machine."""
    from . import drbdpair
    files = drbdpair.resource_files()
    for host in HOSTS:
        for minor in (1, 2):
            (work / f"{host}-drbd{minor}").write_bytes(b"")
    return {name: re.sub(r'on "(\w+)" \{\n    device "/dev/drbd(\d)";',
                         lambda m: f'on "{m[1]}" {{\n    device "{work}/{m[1]}-drbd{m[2]}" minor {m[2]};', text)
            for name, text in files.items()}


# --- record and check -------------------------------------------------------------------

def record(log=print) -> None:
    from . import drbdpair
    pair = RealPair(drbdpair.start(log=log).vms)
    for name, text in drbdpair.resource_files().items():
        for host in HOSTS:
            pair.vms[host].ssh(["sh", "-c", 'cat >"$1"', "sh", f"/etc/drbd.d/{name}.res"], input=text, check=True)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for sequence in SEQUENCES:
        started = time.monotonic()
        text = transcript(run_sequence(pair, sequence))
        (FIXTURES / f"{sequence.name}.txt").write_text(text)
        log(f"recorded {sequence.name} ({time.monotonic() - started:.0f} s)")


def check(log=print) -> tuple[int, int, list[str]]:
    """(matching, total, one line per difference)."""
    differences = []
    matching = 0
    with tempfile.TemporaryDirectory(prefix="xenkvm-conformance-") as work:
        pair = SimPair(Path(work))
        for sequence in SEQUENCES:
            real = normalise((FIXTURES / f"{sequence.name}.txt").read_text())
            simulated = normalise(transcript(run_sequence(pair, sequence)))
            if real == simulated:
                matching += 1
                continue
            differences.append(f"{sequence.name}: {first_difference(real, simulated)}")
    return matching, len(SEQUENCES), differences


def first_difference(real: str, simulated: str, source: str = "kernel") -> str:
    for want, got in zip(real.splitlines(), simulated.splitlines(), strict=False):
        if want != got:
            return f"{source} {want!r}, simulator {got!r}"
    return "the simulator's transcript is " + ("shorter" if len(simulated) < len(real) else "longer")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.conformance", description=__doc__.splitlines()[0])
    parser.add_argument("verb", choices=("record", "check"))
    parser.add_argument("--verbose", action="store_true", help="check: name every difference")
    args = parser.parse_args(argv)
    if args.verb == "record":
        record()
        return 0
    from . import xlconformance

    matching, total, differences = check()
    for line in differences if args.verbose else ():
        print(f"  {line}")
    print(f"conformance: drbd {matching}/{total} sequences match the kernel ({KERNEL})")
    xl_matching, xl_total, xl_differences = xlconformance.check()
    for line in xl_differences if args.verbose else ():
        print(f"  {line}")
    print(f"conformance: xl {xl_matching}/{xl_total} commands match xl {xlconformance.VERSION}")
    return 0 if (matching, xl_matching) == (total, xl_total) else 1


if __name__ == "__main__":
    sys.exit(main())
