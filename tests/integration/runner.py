"""`fab` as an operator runs it against the lab, and how tests read where the guest is."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import REPO
from tests.wire import bare

FAB = REPO / ".venv" / "bin" / "fab"
RESOURCES = ("logger-system", "logger-var")


class Runner:
    """`fab` as an operator runs it, with the lab inventory and a state dir of its own."""

    def __init__(self, lab, state_dir: Path):
        self.lab = lab
        self.state_dir = state_dir
        self.env = {**os.environ, "FABRIC_INVENTORY": str(lab.inventory), "FABRIC_STATE_DIR": str(state_dir)}

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([str(FAB), *args], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([str(FAB), *args], cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def records(self) -> list[dict]:
        """Every record of the audit log: commands, and each move's downtime."""
        path = self.state_dir / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def audit(self) -> list[dict]:
        """The audit log's commands, each as the tests write it (tests.wire.bare)."""
        return [{**entry, "command": bare(entry["command"])} for entry in self.records() if "command" in entry]


def where(lab) -> tuple:
    state = lab.state()
    vm = state["vms"]["logger"]
    return vm["running_on"], {r: (vm["drbd"][r]["xen1"], vm["drbd"][r]["kvm1"]) for r in RESOURCES}, \
        state["violations"]


ON_XEN = ("xen1", {r: ("Primary", "Secondary") for r in RESOURCES}, [])
ON_KVM = ("kvm1", {r: ("Secondary", "Primary") for r in RESOURCES}, [])


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


