"""Benchmarks of one migration on the lab with instant simulators (shutdown delay 0).

overhead-ratio: `fab migrate` wall time over a minimal reference that sends the same
remote commands (taken from the tool's own audit log) with plain OpenSSH, one
ControlMaster connection per host.
ssh-connections-per-host: proxy commands started per host during one migration.
downtime-gap-s: from "source domain seen gone" to "start issued on the target".
"""

from __future__ import annotations

import shlex
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

from tests.lab import INVENTORY, control
from tests.lab.config import Settings
from tests.wire import bare

from .common import fab, report

RUNS = 5


def _audit(state: Path) -> list[dict]:
    import json

    records = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    return [record for record in records if "command" in record]   # not the moves' downtime records


def _ssh_argv(host: dict, control_path: Path) -> list[str]:
    return ["ssh", "-q", "-o", "BatchMode=yes", "-o", f"ProxyCommand={host['proxy_command']}",
            "-o", f"UserKnownHostsFile={host['known_hosts']}", "-o", "StrictHostKeyChecking=yes",
            "-i", host["identity_file"], "-o", "ControlMaster=auto", "-o", f"ControlPath={control_path}",
            "-o", "ControlPersist=60", f"root@{host['address']}"]


def _replay(entries: list[dict], hosts: dict, uploads: dict[str, str], workdir: Path) -> float:
    """The same commands, in the same order, through plain ssh; returns the wall time."""
    started = time.perf_counter()
    for entry in entries:
        argv = _ssh_argv(hosts[entry["host"]], workdir / f"cm-{entry['host']}")
        if entry["kind"] == "upload":
            staged = entry["command"].split()[-1]
            subprocess.run([*argv, f"cat > {shlex.quote(staged)}"], input=uploads[staged], text=True,
                           check=True, capture_output=True)
        else:
            subprocess.run([*argv, entry["command"]], capture_output=True)
    elapsed = time.perf_counter() - started
    for host in hosts:
        subprocess.run([*_ssh_argv(hosts[host], workdir / f"cm-{host}"), "-O", "exit"], capture_output=True)
    return elapsed


def _at(entry: dict, end: bool) -> float:
    finished = datetime.fromisoformat(entry["time"]).timestamp()
    return finished if end else finished - entry["duration"]


def downtime_gap(entries: list[dict]) -> float:
    """Seconds from the probe that saw the source domain gone to the start command on the target."""
    demote = next(i for i, e in enumerate(entries) if bare(e["command"]).startswith("drbdadm secondary"))
    gone = max(i for i, e in enumerate(entries[:demote])
               if e["kind"] == "probe" and ("list" in e["command"] or "domstate" in e["command"]))
    start = next(e for e in entries[demote:] if e["kind"] == "change"
                 and (" start " in f" {e['command']} " or " create " in f" {e['command']} "))
    return _at(start, end=False) - _at(entries[gone], end=True)


def run() -> None:
    settings = Settings(shutdown_delay=0.0)
    was_up = control.is_up()
    control.up(settings)
    try:
        _measure(settings)
    finally:
        control.reset(Settings()) if was_up else control.down()


def _measure(settings: Settings) -> None:
    hosts = yaml.safe_load(INVENTORY.read_text())["hosts"]
    tool_times, ref_times, gaps, connections = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        counted = _counting_inventory(INVENTORY, tmp)
        for n in range(RUNS):
            control.reset(settings)
            there, back = tmp / f"there{n}", tmp / f"back{n}"
            tool_times.append(fab(counted, there, "migrate", "--vm", "logger"))
            connections.append(_count(tmp))
            xml = control.exec_("kvm1", ["cat", "/var/lib/xenkvm/logger.xml"], capture_output=True,
                                text=True).stdout
            fab(counted, back, "migrate", "--vm", "logger")
            connections.append(_count(tmp))
            gaps += [downtime_gap(_audit(there)), downtime_gap(_audit(back))]
            entries = _audit(there)
            uploads = {e["command"].split()[-1]: xml for e in entries if e["kind"] == "upload"}
            control.reset(settings)
            ref_times.append(_replay(entries, hosts, uploads, tmp))
    tool, ref = statistics.median(tool_times), statistics.median(ref_times)
    report("overhead-ratio", tool / ref, "", "<= 1.5",
           f"median of {RUNS} `fab migrate --vm logger` to KVM on the lab with instant simulators "
           f"({tool:.2f}s) over replaying its audited commands with plain ssh, one ControlMaster per host "
           f"({ref:.2f}s)")
    report("ssh-connections-per-host", max(connections), "", "1",
           f"most proxy commands started for one host in one migration, over {2 * RUNS} migrations "
           f"(each SSH connection starts one)")
    report("downtime-gap-s", statistics.median(gaps), "s", "<= 0.5",
           f"median over {len(gaps)} migrations (both directions) of audit-log time from the probe that "
           f"saw the source domain gone to the start command on the target")


def _counting_inventory(inventory: Path, tmp: Path) -> Path:
    """The lab inventory with each proxy command logging its start to a file per host."""
    data = yaml.safe_load(inventory.read_text())
    for name, host in data["hosts"].items():
        log = tmp / f"connections-{name}"
        host["proxy_command"] = f"sh -c 'echo >> {log}; exec {host['proxy_command']}'"
    path = tmp / "hosts.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def _count(tmp: Path) -> int:
    """Connections per host since the last count (the most of any host), then start again."""
    counts = []
    for log in tmp.glob("connections-*"):
        counts.append(len(log.read_text().splitlines()))
        log.unlink()
    return max(counts, default=0)
