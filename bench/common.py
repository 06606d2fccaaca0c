"""Shared by the benchmarks: medians of repeated wall times, and the one output format."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAB = REPO / ".venv" / "bin" / "fab"


def wall(argv: list[str], **kwargs) -> float:
    """Seconds one command takes; it must succeed."""
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, **kwargs)
    return time.perf_counter() - started


def fab(inventory: Path, state: Path, *args: str) -> float:
    """Seconds `fab ARGS` takes with that inventory and state dir, as an operator runs it."""
    env = {**os.environ, "FABRIC_INVENTORY": str(inventory), "FABRIC_STATE_DIR": str(state)}
    return wall([str(FAB), *args], cwd=REPO, env=env)


def report(name: str, value: float, unit: str, goal: str, method: str) -> str:
    """Prints the method in one line and the figure as `bench: NAME = VALUE UNIT`."""
    print(f"method: {name}: {method}")
    line = f"bench: {name} = {value:.3g} {unit}".rstrip()
    print(f"{line}    (goal {goal})", flush=True)
    return line
