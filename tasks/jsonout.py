"""The --json documents of `status`, `readiness` and the `migrate` summary.

Field names are part of the interface (README, "JSON output"; tests/unit/test_jsonout.py pins
them): add fields, never rename or drop one. The document is the only thing on stdout
(cli.OperatorTask sends every other line to stderr), so `fab status --json | jq` works.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .fleet import VmResult
    from .readiness import VmReadiness


def emit(document: dict) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def status_json(records: list[dict], unreachable: list[str], problems: list[str]) -> dict:
    """records: flows.vm_status's, one per VM."""
    return {"vms": records, "unreachable": unreachable, "problems": problems}


def readiness_json(results: list[VmReadiness]) -> dict:
    return {
        "ready": all(r.ready for r in results),
        "vms": [{"vm": r.vm, "ready": r.ready, "runs_on": r.runs_on,
                 "checks": [{"check": c.name, "ready": c.ready, "reason": c.reason, "fix": c.fix} for c in r.checks]}
                for r in results],
    }


def _downtime_json(result: VmResult) -> dict | None:
    """The move's measured downtime as {"down", "shutdown", "switch", "boot"} in seconds; None
    when the move did not get as far as the guest's first answer on the target."""
    return result.downtime.record() if result.downtime else None


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


def migrate_json(results: list[VmResult], dry_run: bool) -> dict:
    return {
        "dry_run": dry_run,
        "ok": all(r.ok for r in results),
        "vms": [{"vm": r.vm, "result": "ok" if r.ok else "failed", "runs_on": r.runs_on, "message": r.message,
                 "downtime": _downtime_json(r),
                 "steps": [{"step": s.name, "started": _when(s.started), "seconds": s.seconds} for s in r.steps]}
                for r in results],
    }
