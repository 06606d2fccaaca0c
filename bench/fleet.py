"""fleet-efficiency: 32 lab VMs moved 8 at a time should take the time of 4 single moves.

Each fleet VM takes 2 s to shut down (as a small guest would); the ideal wall time of the
fleet move is 32/8 x one VM's move, measured alone just before.  Both directions count.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from tests.lab import INVENTORY, control, fleet_vms
from tests.lab.config import KVM_MAX_STARTS, Settings

from .common import fab, report

VMS, PARALLEL, SHUTDOWN_S, RUNS = 32, 8, 2.0, 3


def run() -> None:
    settings = Settings(shutdown_delay=SHUTDOWN_S, fleet=VMS)
    was_up = control.is_up()
    control.reset(settings)
    try:
        _measure()
    finally:
        control.reset(Settings()) if was_up else control.down()


def _measure() -> None:
    names = ",".join(vm["name"] for vm in fleet_vms(VMS))
    one = fleet_vms(1)[0]["name"]
    ratios, singles, fleets = [], [], []
    by_direction: dict[str, list[float]] = {"kvm": [], "xen": []}
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        for _ in range(RUNS):
            for to, back in (("kvm", "xen"), ("xen", "kvm")):
                legs = []
                for _ in range(3):   # one VM there (timed) and back, the fleet staying where it is
                    legs.append(fab(INVENTORY, state, "migrate", "--vm", one, "--to", to))
                    fab(INVENTORY, state, "migrate", "--vm", one, "--to", back)
                single = statistics.median(legs)
                fleet = fab(INVENTORY, state, "migrate", "--vm", names, "--to", to, "--parallel", str(PARALLEL))
                singles.append(single)
                fleets.append(fleet)
                ratios.append(VMS / PARALLEL * single / fleet)
                by_direction[to].append(ratios[-1])
    report("fleet-efficiency", statistics.median(ratios), "", ">= 0.75",
           f"median over {len(ratios)} fleet moves (both directions) of ideal ({VMS}/{PARALLEL} x one VM's "
           f"`fab migrate`, median {statistics.median(singles):.2f}s) over the wall time of `fab migrate` of "
           f"{VMS} lab VMs with --parallel {PARALLEL} (median {statistics.median(fleets):.2f}s), "
           f"{SHUTDOWN_S:g}s guest shutdown each, kvm1's max_starts {KVM_MAX_STARTS}; "
           f"to KVM {statistics.median(by_direction['kvm']):.2f}, to Xen {statistics.median(by_direction['xen']):.2f}")
