"""convert_inittab / convert_securetty.

The inittab and securetty texts below were written by hand from Debian's shipped files (sysvinit
2.86 in etch/lenny, 2.88 in squeeze and later, which adds --noclear to tty1 from stretch on) with
the edits of xen-tools' hooks/common/30-disable-gettys applied as its sed does them
(`s/^\\([2-6].*:respawn*\\)/#\\1/`, `s/tty1$/hvc0/`) and 75-fixup-securetty (appends xvc0, hvc0).
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.formats import FormatError
from tasks.formats.inittab import CO_LINE, MARK, T0_LINE, convert_inittab, convert_securetty

HEAD = """\
# /etc/inittab: init(8) configuration.
# $Id: inittab,v 1.91 2002/01/25 13:35:21 miquels Exp $

# The default runlevel.
id:2:initdefault:

# Boot-time system configuration/initialization script.
# This is run first except when booting in emergency (-b) mode.
si::sysinit:/etc/init.d/rcS

# What to do in single-user mode.
~~:S:wait:/sbin/sulogin

# /etc/init.d executes the S and K scripts upon change
# of runlevel.
#
# Runlevel 0 is halt.
# Runlevel 1 is single-user.
# Runlevels 2-5 are multi-user.
# Runlevel 6 is reboot.

l0:0:wait:/etc/init.d/rc 0
l1:1:wait:/etc/init.d/rc 1
l2:2:wait:/etc/init.d/rc 2
l3:3:wait:/etc/init.d/rc 3
l4:4:wait:/etc/init.d/rc 4
l5:5:wait:/etc/init.d/rc 5
l6:6:wait:/etc/init.d/rc 6
# Normally not reached, but fallthrough in case of emergency.
z6:6:respawn:/sbin/sulogin

# What to do when CTRL-ALT-DEL is pressed.
ca:12345:ctrlaltdel:/sbin/shutdown -t1 -a -r now

# Action on special keypress (ALT-UpArrow).
#kb::kbrequest:/bin/echo "Keyboard Request--edit /etc/inittab to let this work."

# What to do when the power fails/returns.
pf::powerwait:/etc/init.d/powerfail start
pn::powerfailnow:/etc/init.d/powerfail now
po::powerokwait:/etc/init.d/powerfail stop

# /sbin/getty invocations for the runlevels.
#
# The "id" field MUST be the same as the last
# characters of the device (after "tty").
#
# Format:
#  <id>:<runlevels>:<action>:<process>
#
# Note that on most Debian systems tty7 is used by the X Window System,
# so if you want to add more getty's go ahead but skip tty7 if you run X.
#
"""

TAIL = """\

# Example how to put a getty on a serial line (for a terminal)
#
#T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100
#T1:23:respawn:/sbin/getty -L ttyS1 9600 vt100

# Example how to put a getty on a modem line.
#
#T3:23:respawn:/sbin/mgetty -x0 -s 57600 ttyS3

"""

# Debian 5 (lenny) / 6 (squeeze) after xen-tools.
LENNY_GETTYS = """\
1:2345:respawn:/sbin/getty 38400 hvc0
#2:23:respawn:/sbin/getty 38400 tty2
#3:23:respawn:/sbin/getty 38400 tty3
#4:23:respawn:/sbin/getty 38400 tty4
#5:23:respawn:/sbin/getty 38400 tty5
#6:23:respawn:/sbin/getty 38400 tty6
"""
LENNY = HEAD + LENNY_GETTYS + TAIL

LENNY_CONVERTED = HEAD + """\
#xenkvm: 1:2345:respawn:/sbin/getty 38400 hvc0
1:2345:respawn:/sbin/getty 38400 tty1
#2:23:respawn:/sbin/getty 38400 tty2
#3:23:respawn:/sbin/getty 38400 tty3
#4:23:respawn:/sbin/getty 38400 tty4
#5:23:respawn:/sbin/getty 38400 tty5
#6:23:respawn:/sbin/getty 38400 tty6
""" + TAIL + """\
co:23:respawn:/sbin/getty -L hvc0 9600 vt102
T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100
"""

# Debian 9 (stretch) with sysvinit-core: tty1 has --noclear.
STRETCH = HEAD + """\
1:2345:respawn:/sbin/getty --noclear 38400 hvc0
#2:23:respawn:/sbin/getty 38400 tty2
""" + TAIL

# Debian 4 (etch): its 2.6.18-xen kernel put the Xen console on tty1, so xen-tools left tty1
# alone and only commented out ttys 2-6; some operators then added a co line by hand.
ETCH = HEAD + """\
1:2345:respawn:/sbin/getty 38400 tty1
#2:23:respawn:/sbin/getty 38400 tty2
co:2345:respawn:/sbin/getty hvc0 9600 linux
""" + TAIL


def test_lenny_exact():
    assert convert_inittab(LENNY) == LENNY_CONVERTED


def test_lenny_second_run_changes_nothing():
    assert convert_inittab(LENNY_CONVERTED) == LENNY_CONVERTED


def test_stretch_keeps_noclear_on_tty1():
    assert convert_inittab(STRETCH) == HEAD + """\
#xenkvm: 1:2345:respawn:/sbin/getty --noclear 38400 hvc0
1:2345:respawn:/sbin/getty --noclear 38400 tty1
#2:23:respawn:/sbin/getty 38400 tty2
""" + TAIL + CO_LINE + "\n" + T0_LINE + "\n"


def test_active_tty1_and_co_hvc0_are_kept():
    """tty1 already there: no second one; an active co on hvc0 is what we want already."""
    assert convert_inittab(ETCH) == ETCH + T0_LINE + "\n"


def test_co_on_xvc0_is_retired_and_replaced():
    text = "id:2:initdefault:\nco:2345:respawn:/sbin/getty 38400 xvc0\n"
    assert convert_inittab(text) == (
        "id:2:initdefault:\n"
        "#xenkvm: co:2345:respawn:/sbin/getty 38400 xvc0\n"
        "1:2345:respawn:/sbin/getty 38400 tty1\n"
        "co:23:respawn:/sbin/getty -L hvc0 9600 vt102\n"
        "T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100\n")


def test_kept_co_hvc0_gives_tty1_its_settings():
    text = "co:2345:respawn:/sbin/getty hvc0 9600 linux\n"
    assert convert_inittab(text) == (
        "co:2345:respawn:/sbin/getty hvc0 9600 linux\n"
        "1:2345:respawn:/sbin/getty tty1 9600 linux\n"
        "T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100\n")


def test_active_serial_getty_is_kept():
    text = "1:2345:respawn:/sbin/getty 38400 tty1\nS0:2345:respawn:/sbin/agetty -L 115200 ttyS0 vt102\n"
    assert convert_inittab(text) == text + CO_LINE + "\n"


def test_missing_final_newline_is_closed():
    text = "1:2345:respawn:/sbin/getty 38400 hvc0"
    assert convert_inittab(text) == (
        "#xenkvm: 1:2345:respawn:/sbin/getty 38400 hvc0\n"
        "1:2345:respawn:/sbin/getty 38400 tty1\n" + CO_LINE + "\n" + T0_LINE + "\n")


def test_id_co_taken_by_another_entry_is_refused():
    text = "1:2345:respawn:/sbin/getty 38400 tty1\nco:2345:respawn:/usr/local/bin/console-logger\n"
    with pytest.raises(FormatError, match="id 'co' is taken"):
        convert_inittab(text)


def test_no_getty_at_all_gets_debian_tty1():
    assert convert_inittab("id:2:initdefault:\n") == (
        "id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\n" + CO_LINE + "\n" + T0_LINE + "\n")


# lenny's /etc/securetty (login 1:4.1.1), shortened in the middle, after 75-fixup-securetty.
SECURETTY = """\
# /etc/securetty: list of terminals on which root is allowed to login.
# See securetty(5) and login(1).
console

# for people with serial port consoles
ttyS0

# for devfs
tts/0

# Standard consoles
tty1
tty2
tty3

# Embedded platforms
ttyFB0

# Serial Console for MIPS Swarm
duart0
xvc0
hvc0
"""


def test_securetty_lenny_has_all():
    assert convert_securetty(SECURETTY) == SECURETTY


def test_securetty_appends_missing_in_order():
    text = "# /etc/securetty\nconsole\n#hvc0\n tty1\n"
    assert convert_securetty(text) == text + "hvc0\nttyS0\nxvc0\n"
    assert convert_securetty("console") == "console\nhvc0\ntty1\nttyS0\nxvc0\n"


# ---- properties -----------------------------------------------------------------------------

POOL = (LENNY + STRETCH + ETCH).splitlines() + [
    "co:2345:respawn:/sbin/getty hvc0 9600 linux",
    "hvc0:2345:respawn:/sbin/getty 38400 hvc0",
    "  2:23:respawn:/sbin/getty 38400 /dev/hvc0",
    "T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100",
    "x:2345:respawn:/sbin/mingetty xvc0",
    "T0:2345:respawn:/sbin/getty 38400 hvc0",
    "co:2345:respawn:/sbin/getty 38400 xvc0",
    "1:2345:respawn:/usr/local/sbin/monitor",
]
lines = st.lists(st.one_of(st.sampled_from(POOL), st.text(st.characters(exclude_characters="\n"), max_size=40)),
                 max_size=30)
OURS = {CO_LINE, T0_LINE}


def _ids(text):
    """ids of the active entries, as init reads them."""
    return [body.split(":", 1)[0] for line in text.split("\n")
            if (body := line.lstrip(" \t")) and not body.startswith("#") and body.count(":") >= 3]


def _convert_or_refuse(text):
    try:
        return convert_inittab(text)
    except FormatError:
        return None


@given(lines, st.booleans())
def test_property_idempotent_and_other_lines_kept(body, final_newline):
    """Every original line is still there, in order, byte for byte (a retired getty behind MARK);
    the only new lines are a tty1 getty, the co line and the T0 line."""
    text = "\n".join(body) + ("\n" if final_newline and body else "")
    out = _convert_or_refuse(text)
    if out is None:
        return
    assert convert_inittab(out) == out
    if len(set(_ids(text))) == len(_ids(text)):
        assert len(set(_ids(out))) == len(_ids(out)), "an id used twice: init would ignore a line"
    original = [line for line in text.split("\n") if line]
    extra, at = [], 0
    for line in (x for x in out.split("\n") if x):
        if at < len(original) and original[at] in (line, line.removeprefix(MARK)):
            at += 1
        else:
            extra.append(line)
    assert at == len(original)
    retired = [x for x in out.split("\n") if x.startswith(MARK) and x not in original]
    assert all("hvc0" in x or "xvc0" in x for x in retired)
    assert len(extra) <= 3
    assert all(line in OURS or line.endswith(("tty1", "tty1 9600 linux")) for line in extra)


@given(st.lists(st.text(st.characters(exclude_characters="\n"), max_size=12), max_size=15))
def test_property_securetty_idempotent_and_prefix_kept(body):
    text = "\n".join(body)
    out = convert_securetty(text)
    assert convert_securetty(out) == out
    assert out.startswith(text)
    assert {"hvc0", "tty1", "ttyS0", "xvc0"} <= {line.strip() for line in out.split("\n")}
