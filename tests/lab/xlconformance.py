"""The lab's xl simulator (sim/xl.py) held to the real xl of Xen 4.17 (realxen.py's dom0).

Each case is a series of the xl commands the tool sends (tasks/hypervisors.py: list, create,
shutdown, destroy; shutdown -w too, as an operator types it), with harness steps between them.
`record` runs them in the real Xen VM's dom0 and writes one transcript per case to
tests/data/conformance/xl-4.17/ (the transcript format of conformance.py); `check` runs them
against the simulator and compares, command by command, the exit code and the output:

    python -m tests.lab.xlconformance record   # boots the Xen VM (about a minute), then ~3 minutes
    python -m tests.lab.conformance check      # ... conformance: xl N/M commands match xl 4.17

The domain is a small PV guest with dom0's own kernel and initrd (no disk, `rdinit=/bin/sh`),
so nothing but xl and the hypervisor takes part; its kernel powers off at once on a shutdown
request (the kernel hands it to klibc's poweroff, which powers off without an init to ask).
What differs between two honest runs is normalised in both: domain ids, memory and CPU time in `xl list` rows (each row must still have
xl's exact column layout), and the running state (`r-----` or `-b----`, whichever the
scheduler shows at that instant).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import REPO
from .conformance import Answer, first_difference, parse_transcript, transcript

VERSION = "4.17"
FIXTURES = REPO / "tests" / "data" / "conformance" / f"xl-{VERSION}"
WORK = "/tmp/xenkvm-xl-conformance"     # the cfgs' directory, the same path in dom0 and here
NAME = "conf"
CFG = f"{WORK}/{NAME}.cfg"
MISSING_DISK_CFG = f"{WORK}/missing-disk.cfg"


def cfgs(kernel: str, ramdisk: str) -> dict[str, str]:
    """The cfgs the cases create, by path."""
    base = (f"name = '{NAME}'\nkernel = '{kernel}'\nramdisk = '{ramdisk}'\nmemory = 256\nvcpus = 1\n"
            "extra = 'console=hvc0 rdinit=/bin/sh sysctl.kernel.poweroff_cmd=/bin/poweroff'\n"
            "on_poweroff = 'destroy'\n")
    return {CFG: base, MISSING_DISK_CFG: base.replace(NAME, "nodisk", 1) + "disk = [ 'phy:/dev/nosuch,xvda2,w' ]\n"}


@dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[str, ...]   # "xl ..." (compared), or a harness step: "ready" (the domain's PV
                             # drivers answer a shutdown), "gone" (until `xl list NAME` fails)


CASES = (
    Case("list", ("xl list", f"xl list {NAME}", "xl list 99")),
    Case("create", (f"xl create {CFG}", "ready", "xl list", f"xl list {NAME}", f"xl create {CFG}",
                    f"xl create {MISSING_DISK_CFG}", f"xl create {WORK}/nosuch.cfg", f"xl destroy {NAME}")),
    Case("shutdown", (f"xl create {CFG}", "ready", f"xl shutdown {NAME}", "gone", f"xl list {NAME}",
                      f"xl shutdown {NAME}")),
    Case("shutdown-wait", (f"xl create {CFG}", "ready", f"xl shutdown -w {NAME}", f"xl list {NAME}")),
    Case("dying", (f"xl create {CFG}", "ready", f"xl shutdown {NAME}", "dying")),
    Case("destroy", (f"xl create {CFG}", "ready", f"xl destroy {NAME}", f"xl list {NAME}", f"xl destroy {NAME}")),
)
COMMANDS = sum(1 for case in CASES for step in case.steps if step.startswith("xl ") or step == "dying")


class Xen:
    """Where a case runs: run(argv) -> Answer, and the harness steps."""

    def run(self, argv: list[str]) -> Answer:
        raise NotImplementedError

    def ready(self) -> None:
        raise NotImplementedError

    def gone(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.run(["xl", "list", NAME]).exit == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"domain {NAME} still listed {timeout:.0f} s after its shutdown")
            time.sleep(0.2)

    def dying(self, timeout: float = 120) -> Answer:
        """The first `xl list NAME` after a shutdown that no longer shows the domain running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.run(["xl", "list", NAME])
            if answer.exit or not re.search(r"\s(r-----|-b----)\s", answer.stdout):
                return answer
        raise RuntimeError(f"domain {NAME} still running {timeout:.0f} s after its shutdown")


def run_case(xen: Xen, case: Case) -> list[tuple[str, Answer]]:
    done = []
    try:
        for step in case.steps:
            if step == "ready":
                xen.ready()
            elif step == "gone":
                xen.gone()
            elif step == "dying":
                done.append((f"xl list {NAME} (after the shutdown, until not running)", xen.dying()))
            else:
                done.append((step, xen.run(shlex.split(step))))
    finally:
        xen.run(["xl", "destroy", NAME])
    return done


class RealXen(Xen):
    def __init__(self, vm):
        self.vm = vm

    def run(self, argv: list[str]) -> Answer:
        done = self.vm.ssh(argv)
        return Answer(done.returncode, done.stdout, done.stderr)

    def ready(self, timeout: float = 180) -> None:
        """Until the guest kernel's xenbus answers shutdowns (earlier, xl refuses a PV shutdown)."""
        script = ('id=$(xl domid "$1") && [ "$(xenstore-read /local/domain/$id/control/feature-poweroff '
                  '2>/dev/null)" = 1 ]')
        deadline = time.monotonic() + timeout
        while self.vm.ssh(["sh", "-c", script, "sh", NAME]).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError(f"domain {NAME}'s kernel did not start its xenbus in {timeout:.0f} s")
            time.sleep(1)


class SimXen(Xen):
    """The lab's xl simulator as host xen1, with the same cfg paths on this machine."""

    def __init__(self, work: Path):
        from .sim import store
        work.mkdir()
        self.host_file = work / "xen1.json"
        self.host_file.write_text(json.dumps({"host": "xen1", "role": "xen", "state_dir": str(work / "state"),
                                              "drbd_style": "9", "xen_shutdown_delay": 0.5, "peers": {}}))
        (work / "state").mkdir()
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", store.HOST_FILE_ENV: str(self.host_file),
                    "XENKVM_LAB_SIM_SOCKET": "/nonexistent"}

    def run(self, argv: list[str]) -> Answer:
        xl = Path(__file__).resolve().parent / "sim" / "bin" / "xl"
        done = subprocess.run([str(xl), *argv[1:]], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, env=self.env)
        return Answer(done.returncode, done.stdout, done.stderr)

    def ready(self) -> None:
        """The simulated domain answers a shutdown at once."""


_ROW = re.compile(r"^(\S+) +(\d+) +(\d+) +(\d+) +([-a-z]{6}) +(\d+\.\d)$")


def normalise(text: str) -> str:
    """A transcript without what differs between two honest runs (see the module's doc)."""
    lines = []
    for line in text.splitlines():
        row = _ROW.match(line[2:]) if line.startswith("> ") else None
        if row:
            name, domid, memory, vcpus, state, cpu = row.groups()
            exact = "%-40s %5d %5d %5d     %s  %8.1f" % (name, int(domid), int(memory), int(vcpus), state,
                                                         float(cpu))
            state = "running" if state in ("r-----", "-b----") else state
            line = f"> {name} ID MEM VCPUS {state} TIME" + ("" if exact == line[2:] else " (layout differs)")
        line = re.sub(r"\b([Dd]omain) \d+\b", r"\1 N", line)
        line = re.sub(r"/vbd/\d+/", "/vbd/N/", line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def record(log=print) -> None:
    from . import realxen
    xen = RealXen(realxen.vm() if realxen.running() else realxen.start(log=log))
    kernel = xen.vm.ssh(["sh", "-c", "ls /boot/vmlinuz-* | tail -1; ls /boot/initrd.img-* | tail -1"],
                        check=True).stdout.split()
    for path, text in cfgs(*kernel).items():
        xen.vm.ssh(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat >"$1"', "sh", path], input=text, check=True)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        started = time.monotonic()
        (FIXTURES / f"{case.name}.txt").write_text(transcript(run_case(xen, case)))
        log(f"recorded xl {case.name} ({time.monotonic() - started:.0f} s)")


def check() -> tuple[int, int, list[str]]:
    """(commands matching, commands, one line per case that differs)."""
    differences = []
    matching = 0
    with tempfile.TemporaryDirectory(prefix="xenkvm-xl-conformance-") as work:
        files = Path(WORK)
        files.mkdir(exist_ok=True)
        try:
            for path in ("vmlinuz", "initrd.img"):
                (files / path).touch()
            for path, text in cfgs(f"{WORK}/vmlinuz", f"{WORK}/initrd.img").items():
                Path(path).write_text(text)
            for case in CASES:
                real = parse_transcript(normalise((FIXTURES / f"{case.name}.txt").read_text()))
                simulated = parse_transcript(normalise(transcript(run_case(SimXen(Path(work) / case.name), case))))
                same = sum(1 for want, got in zip(real, simulated, strict=False) if want == got)
                matching += same
                if same < len(real):
                    differences.append(f"{case.name}: {first_difference(transcript(real), transcript(simulated), 'xl')}")
        finally:
            for path in files.iterdir():
                path.unlink()
            files.rmdir()
    return matching, COMMANDS, differences
