"""The `lab` fixture: the local lab (tests/lab) up for the whole session, with helpers.

A missing prerequisite fails the tests with the reason; it never skips them, since CI
runs as root with everything `make deps` installs.  A lab that was already up is
reused (reset to the defaults) and left up; one this session brought up is taken
down at its end.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.runner import Runner
from tests.lab import GUEST, INVENTORY, REPO, STATE_DIR, control, drbdpair, vms
from tests.lab.config import Settings
from tests.lab.spaces import LabError


@dataclass
class Lab:
    """What tests do with the lab; every call goes to the same code as `python -m tests.lab`."""

    inventory: Path = INVENTORY
    guest: str = GUEST["name"]

    def exec(self, host: str, argv: list[str], *, input: str | None = None, check: bool = False,
             timeout: float = 120) -> subprocess.CompletedProcess:
        """Run argv on a lab host (or in the guest) inside its namespaces; output captured as text."""
        done = control.exec_(host, argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            raise AssertionError(f"{host}: {argv} exited {done.returncode}: {done.stderr or done.stdout}")
        return done

    def state(self) -> dict:
        return control.lab_state()

    def fault_add(self, host: str, prefix: str, exit_code: int = 1, hang: float = 0.0, once: bool = False) -> None:
        from tests.lab import sim

        sim.add_fault(str(STATE_DIR), host, prefix, exit_code=exit_code, hang=hang, once=once)

    def fault_clear(self) -> None:
        from tests.lab import sim

        sim.clear_faults(str(STATE_DIR))

    def reset(self, drbd_style: str = "9", toolstack: str = "xl", shutdown_delay: float = 1.0, fleet: int = 0,
              image: str = "minbase", xen: str = "sim") -> None:
        control.reset(Settings(drbd_style=drbd_style, toolstack=toolstack, shutdown_delay=shutdown_delay,
                               fleet=fleet, image=image, xen=xen))

    def up(self, **settings) -> None:
        control.up(Settings(**settings))

    def down(self) -> None:
        control.down()

    def is_up(self) -> bool:
        return control.is_up()

    def leftovers(self) -> dict[str, list]:
        return control.leftovers()

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`python -m tests.lab ARGS` as a person would type it, from the repository root."""
        return subprocess.run([sys.executable, "-m", "tests.lab", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)


@pytest.fixture(scope="session")
def lab():
    try:
        control.preflight()
        was_up = control.is_up()
        if was_up:
            control.reset(Settings())
        else:
            control.up()
    except LabError as exc:
        pytest.fail(f"the lab cannot start: {exc}", pytrace=False)
    yield Lab()
    if not was_up:
        control.down()


@pytest.fixture
def fab(lab, tmp_path):
    """The lab reset to its initial state, and `fab` with the lab inventory and a fresh state dir."""
    lab.reset()
    yield Runner(lab, tmp_path / "state")
    lab.fault_clear()


@pytest.fixture(scope="session")
def drbd_pair():
    """Two VMs running Debian 12's own drbd.ko 8.4.11 (tests/lab/drbdpair.py), booted once and at
    once for the session; independent of the namespace lab above."""
    try:
        pair = drbdpair.start(log=print)
    except LabError as exc:
        pytest.fail(f"the real DRBD pair cannot start: {exc}", pytrace=False)
    yield pair
    vms.down()
