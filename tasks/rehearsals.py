"""The last rehearsal of each VM, kept on the control machine: when it ran, on which host, which
kernel booted, whether it passed, and which domain XML it proved.

`kvmhost.rehearse` (and `fab prepare --rehearse`) write it; `fab readiness` reads it, since a
rehearsal proves a guest boots only as long as neither its kernel nor its domain changed.
One JSON file per VM in STATE_DIR/rehearsals, replaced at each rehearsal.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ToolError, quoted
from .remote import make_private_dir, read_record, state_dir

MAX_RECORD_BYTES = 1 << 16   # a record is a few hundred bytes; a bigger file is not ours


@dataclass(frozen=True)
class Rehearsal:
    vm: str
    time: str               # when it ended, ISO-8601 UTC
    host: str               # the KVM host it booted on
    passed: bool
    kernel: str | None      # the kernel that booted (its console's banner, or the direct-kernel copy)
    login: bool             # passed on a login prompt, not only on a domain that kept running
    xml_sha256: str         # the sha256 of the VM's domain XML as rendered when it ran
    message: str            # why it failed ("" when it passed)


_FIELDS: dict[str, type | tuple[type, ...]] = {"vm": str, "time": str, "host": str, "passed": bool, "kernel": (str, type(None)), "login": bool,
           "xml_sha256": str, "message": str}


def parse_rehearsal(raw: bytes, vm_name: str) -> Rehearsal:
    """A record file's content; ValueError (one line) for anything this tool did not write."""
    if len(raw) > MAX_RECORD_BYTES:
        raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {str(exc).split(';')[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    for key, kind in _FIELDS.items():
        if not isinstance(data.get(key), kind):
            raise ValueError(f"{key}: {quoted(data.get(key))} is not what a rehearsal records")
    if data["vm"] != vm_name:
        raise ValueError(f"it is the record of VM {quoted(data['vm'])}")
    return Rehearsal(**{key: data[key] for key in _FIELDS})


def rehearsal_dir(c) -> Path:
    return state_dir(c) / "rehearsals"


def save(directory: Path, rehearsal: Rehearsal) -> None:
    """Replace the VM's record (temp file, then rename: a reader never sees half of one)."""
    path = make_private_dir(directory) / f"{rehearsal.vm}.json"
    tmp = path.with_suffix(".tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(json.dumps(asdict(rehearsal), indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ToolError(f"the rehearsal record {path} cannot be written ({exc.strerror})") from None


def load(directory: Path, vm_name: str) -> Rehearsal | None:
    """The VM's last rehearsal, None when it never had one; a record of a wrong shape is refused
    in one line naming it."""
    path = directory / f"{vm_name}.json"
    raw = read_record(path, MAX_RECORD_BYTES, "rehearsal record")
    if raw is None:
        return None
    try:
        return parse_rehearsal(raw, vm_name)
    except ValueError as exc:
        raise ToolError(f"{path}: not a rehearsal record this tool can use ({exc}); rehearse again, "
                        f"or move it away") from None
