"""list-startup-ratio: `fab --list` against a fabfile with one empty task."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from .common import FAB, REPO, report, wall

RUNS = 41


def list_startup_ratio() -> float:
    with tempfile.TemporaryDirectory() as empty:
        Path(empty, "fabfile.py").write_text("from invoke import task\n\n\n@task\ndef nothing(c):\n    pass\n")
        # Bytecode as Python caches it after any first run; done by hand because a machine with
        # PYTHONDONTWRITEBYTECODE (this one) would recompile our modules, not fabric's, every time.
        wall([str(FAB.parent / "python"), "-m", "compileall", "-q", "tasks", "fabfile.py"], cwd=REPO)
        wall([str(FAB), "--list"], cwd=empty)      # warm the file cache for both
        wall([str(FAB), "--list"], cwd=REPO)
        pairs = [(wall([str(FAB), "--list"], cwd=REPO), wall([str(FAB), "--list"], cwd=empty))
                 for _ in range(RUNS)]                # interleaved: machine noise hits both alike
    ours = statistics.median(p[0] for p in pairs)
    reference = statistics.median(p[1] for p in pairs)
    ratio = ours / reference
    report("list-startup-ratio", ratio, "", "<= 1.3",
           f"median of {RUNS} interleaved `fab --list` runs here ({ours:.3f}s) over the same for a fabfile with "
           f"one empty task ({reference:.3f}s), bytecode compiled")
    return ratio
