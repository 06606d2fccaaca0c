"""switch-share: the tool's own part of a real guest's downtime.

A move's downtime runs from the guest's last answer on the source to its first answer on the
target: its shutdown and its boot are the guest's, the switch between them (demote, promote,
the start guard, the start command sent) is the tool's.  Real guests boot under TCG here in
minutes, so this benchmark boots none itself: it reads the downtime records of the real-guest
moves that `make e2e` made (`make bench REAL_GUESTS=1` runs the e2e first, about 15 minutes).
"""

from __future__ import annotations

import json
import time

from tests.lab import WORK

from .common import report

DOWNTIMES = WORK / "e2e-downtime.jsonl"


def run() -> None:
    if not DOWNTIMES.exists():
        print(f"bench: switch-share = not measured: no real-guest moves in {DOWNTIMES} "
              f"(run `make e2e` first, or `make bench REAL_GUESTS=1`)", flush=True)
        return
    records = [json.loads(line) for line in DOWNTIMES.read_text().splitlines() if line.strip()]
    switch, down = sum(r["switch"] for r in records), sum(r["down"] for r in records)
    guests = sorted({r["guest"] for r in records})
    age = (time.time() - DOWNTIMES.stat().st_mtime) / 3600
    report("switch-share", 100 * switch / down, "%", "<= 2",
           f"sum of the switch parts over the sum of the downtimes of {len(records)} real-guest moves "
           f"({', '.join(guests)}; both directions; {switch:.1f} s of {down:.1f} s) from the audit records "
           f"`make e2e` left in {DOWNTIMES.name} {age:.1f} h ago")
