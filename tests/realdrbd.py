"""The real drbdadm of this machine (drbd-utils 9, with its 8.4 and 8.3 compat binaries), run
on a configuration text as if on a named host.

There is no DRBD kernel module here: `dump` parses and normalises a file, `-d up` prints the
drbdsetup calls it would make. drbdadm only reads a resource on the host its `on NAME`
section names, so each call runs in its own UTS namespace with that host name.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DRBDADM = {"9": "drbdadm", "8.4": "/usr/lib/drbd/drbdadm-84", "8.3": "/usr/lib/drbd/drbdadm-83"}
needs_drbdadm = pytest.mark.skipif(shutil.which("drbdadm") is None,
                                   reason="drbdadm (drbd-utils) is not installed")


def drbdadm(tmp_path: Path, reader: str, hostname: str, text: str, *args: str) -> subprocess.CompletedProcess:
    """Run a drbdadm on `text` as if on `hostname`; root sets it directly, others via a user namespace."""
    conf = tmp_path / "resource.res"
    conf.write_text(text)
    unshare = ["unshare", "-u"] if os.geteuid() == 0 else ["unshare", "-r", "-u"]
    return subprocess.run(
        [*unshare, "sh", "-c", 'hostname "$1" && shift && exec "$@"', "sh", hostname,
         DRBDADM[reader], "-c", str(conf), *args],
        capture_output=True, text=True, timeout=30)
