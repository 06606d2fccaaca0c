"""Many VMs at once: which VMs a run takes, per-host slots, the worker pool and the live view.

The pool runs one job per VM (a move), `parallel` at a time over the run's shared connections;
each host's `max_parallel` caps its VMs at work at once and its `max_starts` the domains it
starts at once.  A job that fails touches no other VM.  A stop request (Ctrl-C, SIGTERM)
starts no further VM and ends every wait for a slot; each running job undoes its own work.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from . import output
from .errors import InputError, ToolError
from .interrupt import Interruption
from .inventory import VM, Inventory
from .liveness import Downtime
from .output import RESULT, log, set_vm
from .remote import Site


@dataclass(frozen=True)
class StepTime:
    """A step a job began (the live view's step column): when (time.time()) and for how long."""

    name: str
    started: float
    seconds: float


@dataclass
class VmResult:
    """How one VM's job ended; the run's summary and exit code come from these."""

    vm: str
    ok: bool
    runs_on: list[str]
    message: str
    code: int = 1      # the exit code a failure gives when it is the run's only VM (3: a guard refused)
    downtime: Downtime | None = None   # a move that got as far as the guest's first answer on the target
    steps: list[StepTime] = field(default_factory=list)   # filled by run_fleet


@dataclass
class Slot:
    """What a job gets from the fleet besides its VM."""

    on_step: Callable[[str], None]                        # the live view's step column
    start_gate: Callable[[str], AbstractContextManager]   # HostSlots.starting


def parallel_count(parallel) -> int:
    """--parallel as given on the command line: a whole number of at least 1."""
    if not str(parallel).isdigit() or int(parallel) < 1:
        raise InputError(f"--parallel must be a whole number of at least 1, got {parallel!r}")
    return int(parallel)


def select_vms(inv: Inventory, vm: str | None, all_vms: bool, from_host: str | None) -> list[VM]:
    """The VMs a fleet run takes: named, all, or every VM of one host."""
    if sum(map(bool, (vm, all_vms, from_host))) != 1:
        raise InputError("give exactly one of --vm NAME[,NAME...], --all or --from-host HOST")
    if from_host:
        if from_host not in inv.hosts:
            raise InputError(f"--from-host: no host named {from_host!r} in {inv.path}")
        return [v for v in inv.vms.values() if from_host in (v.xen_host, v.kvm_host)]
    return inv.select(None if all_vms else vm)


class HostSlots:
    """At most `max_parallel` VMs of each host at work at once, and at most `max_starts`
    domains starting on it at once (inventory, per host).

    A start is a burst of the host's CPU (qemu and libvirt's handshake with it); on a host
    with few cores, starts at once each take twice as long as one alone or more.  Queued,
    most guests are up sooner; waiting for a start slot is downtime, so it is opt-in.
    """

    def __init__(self, inv: Inventory, interruption: Interruption):
        self._slots = {name: threading.BoundedSemaphore(h.max_parallel) for name, h in inv.hosts.items()}
        self._starts = {name: (threading.BoundedSemaphore(h.max_starts), h.max_starts)
                        for name, h in inv.hosts.items() if h.max_starts}
        self._interruption = interruption   # a stop request ends every wait for a slot

    @contextmanager
    def starting(self, host: str):
        """Hold one of the host's start slots, saying so when a start has to wait for one."""
        if host not in self._starts:
            yield
            return
        gate, limit = self._starts[host]
        if not gate.acquire(blocking=False):
            log.info(f"* {host}: waiting for a start slot (max_starts {limit}) ...")
            self._interruption.acquire(gate)
        try:
            yield
        finally:
            gate.release()

    @contextmanager
    def hold(self, vm: VM):
        hosts = sorted({vm.xen_host, vm.kvm_host})   # one order everywhere: no deadlock
        held = []
        try:
            for host in hosts:
                self._interruption.acquire(self._slots[host])
                held.append(host)
            yield
        finally:
            for host in reversed(held):
                self._slots[host].release()


def run_fleet(site: Site, vms: list[VM], job: Callable[[VM, Slot], VmResult], *, parallel: int,
              fail_fast: bool, not_started: Callable[[VM, str], VmResult]) -> list[VmResult]:
    """`job` for every VM, `parallel` at a time; `not_started(vm, why)` for each VM a stop request
    or --fail-fast keeps from starting. Results in the VMs' order."""
    interruption = site.interruption
    slots = HostSlots(site.inventory, interruption)
    failed_once = threading.Event()
    tag = len(vms) > 1
    view = FleetView([vm.name for vm in vms], live=None if tag else False)

    def one(vm: VM) -> VmResult:
        if failed_once.is_set() or interruption.requested:
            result = not_started(vm, "--fail-fast after a failure" if failed_once.is_set() else interruption.reason)
            view.finish(vm.name, False, f"not started, on {', '.join(result.runs_on) or 'no host'}")
            return result
        set_vm(vm.name if tag else "")
        try:
            with slots.hold(vm):
                result = job(vm, Slot(lambda name: view.step(vm.name, name), slots.starting))
        except ToolError as exc:
            result = VmResult(vm.name, False, [], f"{vm.name}: {exc}", exc.code)
        finally:
            set_vm("")
        if not result.ok and fail_fast:
            failed_once.set()
        view.finish(vm.name, result.ok, ", ".join(result.runs_on) or "?", result.downtime)
        result.steps = view.timeline(vm.name)
        return result

    with interruption.on_signals(), view, ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(one, vms))


def report(results: list[VmResult], interruption: Interruption) -> None:
    """The run's end: one VM's failure as its own one-line error, several as a summary; the exit
    code is 130/143 after a signal, else the lone VM's own or 1."""
    failed = [r for r in results if not r.ok]
    code = interruption.code if interruption.requested else 1
    if len(results) == 1:
        if failed:
            raise ToolError(failed[0].message, code if interruption.requested else failed[0].code)
        if interruption.requested:
            raise ToolError(f"{interruption.reason} after the move was done: {results[0].message}", code)
        return
    log.log(RESULT, f"== {len(results) - len(failed)} of {len(results)} VMs done")
    for result in results:
        log.log(RESULT, f"  {'ok    ' if result.ok else 'FAILED'} {result.message}")
        if result.downtime is not None:
            log.log(RESULT, f"         {result.downtime.line(result.vm)}")
    if failed or interruption.requested:
        stopped = f"{interruption.reason}: " if interruption.requested else ""
        raise ToolError(f"{stopped}{len(failed)} of {len(results)} VMs failed: "
                        f"{', '.join(r.vm for r in failed) or 'none'}", code)


# -- the live view ---------------------------------------------------------------------------------

@dataclass
class _Row:
    step: str = "waiting"
    started: float | None = None
    ended: float | None = None
    result: str = ""
    down: str = ""      # the guest's downtime, once its move is done
    began: list[tuple[str, float]] = field(default_factory=list)   # each step and its time.time()
    ended_at: float | None = None

    def elapsed(self) -> str:
        if self.started is None:
            return ""
        return f"{(self.ended or time.monotonic()) - self.started:.1f}s"


class FleetView:
    """Tracks each VM's current step and elapsed time; draws them live when stdout is a terminal.

    Plain output (a pipe, a log file, CI) gets nothing extra: every step already
    prints its own line, tagged with the VM.
    """

    def __init__(self, names: list[str], live: bool | None = None):
        self.rows = {name: _Row() for name in names}
        self.live = output.lines_stream().isatty() if live is None else live
        self._lock = threading.Lock()
        self._display: Any = None           # rich's Live, on a terminal
        self._lines = ExitStack()

    def __enter__(self) -> "FleetView":
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._display = Live(self._table(), refresh_per_second=4, transient=False,
                                 console=Console(file=output.lines_stream()))
            self._display.__enter__()
            self._lines.enter_context(output.live(self._display.console.print))
        return self

    def __exit__(self, *exc) -> None:
        if self._display is not None:
            self._display.update(self._table())
            self._lines.close()
            self._display.__exit__(*exc)

    def step(self, vm: str, name: str) -> None:
        with self._lock:
            row = self.rows[vm]
            row.step = name
            row.started = row.started or time.monotonic()
            row.began.append((name, time.time()))
        self._refresh()

    def finish(self, vm: str, ok: bool, where: str, downtime: Downtime | None = None) -> None:
        with self._lock:
            row = self.rows[vm]
            row.step, row.result, row.ended = where, "ok" if ok else "FAILED", time.monotonic()
            row.down = f"{downtime.down:.1f}s" if downtime else ""
            row.ended_at = time.time()
        self._refresh()

    def timeline(self, vm: str) -> list[StepTime]:
        """The steps the VM's job began, each lasting until the next began (the last: until the job
        ended, its undo included)."""
        with self._lock:
            row = self.rows[vm]
            ends = [started for _, started in row.began[1:]] + [row.ended_at or time.time()]
            return [StepTime(name, started, round(end - started, 3))
                    for (name, started), end in zip(row.began, ends, strict=False)]

    def _refresh(self) -> None:
        if self._display is not None:
            self._display.update(self._table())

    def _table(self):
        with self._lock:
            return output.table(("VM", "step", "elapsed", "down", "result"),
                                [(name, row.step, row.elapsed(), row.down, row.result)
                                 for name, row in self.rows.items()])
