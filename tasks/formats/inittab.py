"""sysvinit guests: a login on the console of whichever hypervisor runs the guest.

xen-tools' 30-disable-gettys hook turned Debian's `1:2345:respawn:/sbin/getty 38400 tty1` into
`... hvc0` and commented out ttys 2-6, so a converted guest had no login on KVM's screen (tty1)
nor on its serial console (ttyS0). This keeps a getty on hvc0 (Xen's console, as the `co` line
the operators asked for), puts tty1 back, and adds ttyS0 (what `virsh console` connects to).
Under each hypervisor the getty of the other one's console finds no device and init disables it
for five minutes at a time ("respawning too fast"): noise in the log, never a failed boot.
"""

import re
from dataclasses import dataclass

from tasks.formats.fstab import split_lines

from . import FormatError

MARK = "#xenkvm: "
CO_LINE = "co:23:respawn:/sbin/getty -L hvc0 9600 vt102"
T0_LINE = "T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100"
TTY1_LINE = "1:2345:respawn:/sbin/getty 38400 tty1"
# hvc0 is the Xen console of pvops kernels, xvc0 that of the old XenLinux (2.6.18-xen) ones.
XEN_CONSOLES = ("hvc0", "xvc0")
SECURETTY = ("hvc0", "tty1", "ttyS0", "xvc0")

_TTY = re.compile(r"(?:/dev/)?((?:tty[A-Za-z]*|hvc|xvc)[0-9]+|console)")


@dataclass(frozen=True)
class _Entry:
    index: int
    id: str
    runlevels: str
    action: str
    process: str

    @property
    def tty(self) -> str | None:
        """The terminal of a getty entry; None for anything else (rc scripts, sulogin ...)."""
        words = self.process.split()
        if self.action not in ("respawn", "ondemand") or not words or "getty" not in words[0].rsplit("/", 1)[-1]:
            return None
        for word in words[1:]:
            m = _TTY.fullmatch(word)
            if m:
                return m.group(1)
        return None


def _entries(lines: list[str]) -> list[_Entry]:
    """Active entries: init skips a line whose first non-blank is '#', so those are not ours."""
    found = []
    for index, line in enumerate(lines):
        body = line.rstrip("\r\n").lstrip(" \t")
        fields = body.split(":", 3)
        if body and not body.startswith("#") and len(fields) == 4:
            found.append(_Entry(index, *fields))
    return found


def _with_tty1(entry: _Entry, new_id: str) -> str:
    """The Xen console getty rewritten for tty1: same runlevels, getty, options and speed."""
    words = [("tty1" if (m := _TTY.fullmatch(w)) and m.group(1) in XEN_CONSOLES else w)
             for w in entry.process.split()]
    return f"{new_id}:{entry.runlevels}:{entry.action}:{' '.join(words)}"


def _free(entries: list[_Entry], wanted: str, line: str) -> None:
    """Two entries with one id make init ignore the second: refuse rather than add a dead line."""
    for e in entries:
        if e.id == wanted:
            raise FormatError(f"id {wanted!r} is taken by {e.id}:{e.runlevels}:{e.action}:"
                             f"{e.process.strip()}; cannot add {line!r}")


def convert_inittab(text: str) -> str:
    """Gettys for hvc0 (id co), tty1 and ttyS0; other lines are kept byte for byte.

    A Xen console getty on another id than `co` (xen-tools' `1:...hvc0`) is commented out with
    MARK, so it can be found and undone, and tty1 gets that id back, as Debian had it.
    """
    lines = split_lines(text)
    entries = _entries(lines)
    retired = [e for e in entries if e.tty in XEN_CONSOLES and not (e.id == "co" and e.tty == "hvc0")]
    active = [e for e in entries if e not in retired]
    inserts: dict[int, str] = {}
    appends: list[str] = []

    if not any(e.tty == "tty1" for e in active):
        template = retired[0] if retired else next((e for e in active if e.tty == "hvc0"), None)
        # The freed id, unless the co or T0 line added below needs it.
        new_id = retired[0].id if retired and retired[0].id not in ("co", "T0") else "1"
        line = _with_tty1(template, new_id) if template else TTY1_LINE
        _free(active, new_id, line)
        if retired:
            inserts[retired[0].index] = line
        else:
            appends.append(line)
    if not any(e.id == "co" and e.tty == "hvc0" for e in active):
        _free(active, "co", CO_LINE)
        appends.append(CO_LINE)
    if not any(e.tty == "ttyS0" for e in active):
        _free(active, "T0", T0_LINE)
        appends.append(T0_LINE)

    out = []
    retired_at = {e.index for e in retired}
    for index, line in enumerate(lines):
        if index in retired_at:
            line = MARK + line
        out.append(line)
        if index in inserts:
            out.append(("" if line.endswith("\n") else "\n") + inserts[index] + "\n")
    return _append(out, appends)


def _append(out: list[str], new_lines: list[str]) -> str:
    """Add whole lines at the end, closing a last line that had no newline."""
    if new_lines and out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    return "".join(out) + "".join(line + "\n" for line in new_lines)


def convert_securetty(text: str) -> str:
    """Let root log in on every console it may be given (Debian's login consults securetty).

    xvc0 stays for the old XenLinux kernels that name the Xen console so.
    """
    present = {line.strip() for line in split_lines(text)}
    return _append(split_lines(text), [tty for tty in SECURETTY if tty not in present])
