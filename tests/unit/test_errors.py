"""Operator errors: whatever reaches a message, each line stays one printable, bounded line."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.errors import CUT, MAX_LINE, MAX_QUOTED, GuardError, InputError, ToolError, one_line, quoted


@pytest.mark.parametrize("name, shown", [
    ("web\n", "web\\n"),                               # a YAML block scalar's final newline
    ("web\nerror: all VMs moved", "web\\nerror: all VMs moved"),   # a forged second line
    ("a\rb", "a\\rb"),
    ("\x1b[2Jweb", "\\x1b[2Jweb"),                    # a terminal escape
    ("web\u2028x", "web\\u2028x"),                    # a line separator str.splitlines splits at
    ("web\u202ex", "web\\u202ex"),                    # a bidi override
    ("bad\udcffbyte", "bad\\udcffbyte"),              # a surrogate escape: unprintable on UTF-8 stderr
    ("tab\there", "tab\\there"),
    ("plain name-1.example", "plain name-1.example"),
    ("äöü 名前", "äöü 名前"),
])
def test_a_control_character_in_a_value_is_escaped_not_printed(name, shown):
    error = ToolError(f"no VM named {name}")
    assert error.message == f"error: no VM named {shown}"
    assert str(error) == f"no VM named {shown}"


def test_each_argument_is_one_line_and_only_they_are_lines():
    error = InputError("inv.yml: vms.a: first\nsecond", "inv.yml: vms.b: third")
    assert str(error).splitlines() == ["inv.yml: vms.a: first\\nsecond", "inv.yml: vms.b: third"]
    assert error.code == 2 and GuardError("x").code == 3 and ToolError("x").code == 1
    assert ToolError("stopped\n", 130).message == "error: stopped\\n"


def test_a_huge_value_loses_its_middle_and_costs_no_more_than_a_short_one():
    error = ToolError("web: " + "x" * 10_000_000 + "; run `fab rollback --vm web`")
    half = MAX_LINE // 2
    assert error.message == "error: web: " + "x" * (half - 5) + CUT + "x" * (half - 29) + "; run `fab rollback --vm web`"


def test_escaping_cannot_make_a_line_longer_than_the_bound():
    assert one_line("\x00" * MAX_LINE) == "\\x00" * (MAX_LINE // 8) + CUT + "\\x00" * (MAX_LINE // 8)
    assert one_line("\x00" * MAX_LINE * 2) == one_line("\x00" * MAX_LINE)


@pytest.mark.parametrize("value, shown", [
    ("short", "'short'"),
    ("y" * 100, f"{'y' * MAX_QUOTED!r}... (100 characters)"),
    (b"\x00" * 61, repr(b"\x00" * MAX_QUOTED) + "... (61 bytes)"),
    ([1, 2, 3], "<list of 3>"),
    ({"a": 1}, "<dict of 1>"),
    (7, "7"),
    (None, "None"),
    (10 ** 100, repr(10 ** 100)[:MAX_QUOTED] + "..."),
])
def test_quoted_values_are_short(value, shown):
    assert quoted(value) == shown


def test_quoting_an_alias_bomb_does_not_walk_it():
    """An alias bomb's lists contain each other billions of times over: never repr them."""
    bomb: list = []
    for _ in range(30):
        bomb = [bomb] * 9
    assert quoted(bomb) == "<list of 9>"


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_every_line_of_any_error_is_printable_and_bounded(lines):
    error = InputError(*lines)
    printed = error.message.split("\n")
    assert len(printed) == len(lines)
    assert all(line.isprintable() and len(line) <= len("error: ") + MAX_LINE + len(CUT) for line in printed)


def test_a_hosts_output_cannot_split_or_colour_the_error_line():
    """What a host prints reaches the operator through the same mechanism."""
    from invoke import Result

    from tasks.hypervisors import XenHost
    from tasks.inventory import Host
    from tasks.remote import Remote, RemoteError
    from tests.wire import HostMock

    remote = Remote("xen1", HostMock(run={"xl list": Result(stderr="libxl: error\n\x1b[31mxenstored hung\n",
                                                                  exited=3)}))
    with pytest.raises(ToolError) as info:
        XenHost(remote, Host("xen1", "192.0.2.11", "xen", toolstack="xl")).states()
    assert info.value.message == "error: xen1: `xl list` failed (exit 3): libxl: error\\n\\x1b[31mxenstored hung"
    failed = RemoteError("kvm1", "virsh start web", 1, "error: \x1b]0;owned\x07 domain\r\n")
    assert str(failed) == "kvm1: `virsh start web` failed (exit 1): error: \\x1b]0;owned\\x07 domain"
