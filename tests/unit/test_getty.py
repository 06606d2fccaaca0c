"""plan_getty_units / commands for systemd guests.

The facts mirror what a bookworm xen-tools guest shows (Debian's systemd postinst enables
getty@tty1; xen-tools enables nothing for hvc0, the generator adds it at boot) and variants an
operator may have made by hand.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.formats import FormatError
from tasks.formats.getty import CONSOLE_UNITS, GettyPlan, GuestConsoleFacts, commands, plan_getty_units

BOOKWORM = GuestConsoleFacts(
    init="systemd",
    enabled_units=frozenset({"getty@tty1.service"}),
    kernel_consoles=("hvc0",),
)


def test_bookworm_xen_tools_guest():
    plan = plan_getty_units(BOOKWORM)
    assert plan.enable == ("serial-getty@hvc0.service", "serial-getty@ttyS0.service")
    assert plan.unmask == ()
    assert not plan.edit_securetty
    assert "kernel consoles now: hvc0" in plan.why["serial-getty@ttyS0.service"]
    assert commands(plan) == [
        ["systemctl", "enable", "serial-getty@hvc0.service"],
        ["systemctl", "enable", "serial-getty@ttyS0.service"],
    ]


def test_masked_units_are_unmasked_first_once_each():
    facts = GuestConsoleFacts(
        init="systemd",
        enabled_units=frozenset({"serial-getty@hvc0.service"}),
        masked_units=frozenset({"getty.target", "serial-getty@.service", "getty@tty1.service"}),
        kernel_consoles=(),
        has_securetty=True,
    )
    plan = plan_getty_units(facts)
    assert plan.unmask == ("getty.target", "serial-getty@.service", "getty@tty1.service")
    assert plan.enable == ("getty@tty1.service", "serial-getty@ttyS0.service")
    assert plan.edit_securetty
    assert commands(plan) == [
        ["systemctl", "unmask", "getty.target"],
        ["systemctl", "unmask", "serial-getty@.service"],
        ["systemctl", "unmask", "getty@tty1.service"],
        ["systemctl", "enable", "getty@tty1.service"],
        ["systemctl", "enable", "serial-getty@ttyS0.service"],
    ]


def test_either_getty_flavour_serves_a_tty():
    """getty@hvc0 already runs on hvc0: a serial-getty@hvc0 beside it would fight over the tty."""
    facts = GuestConsoleFacts("systemd", frozenset({"getty@tty1.service", "getty@hvc0.service",
                                                    "serial-getty@ttyS0.service"}))
    assert plan_getty_units(facts) == GettyPlan()
    assert commands(plan_getty_units(facts)) == []


def test_sysvinit_has_no_units():
    plan = plan_getty_units(GuestConsoleFacts("sysvinit", has_securetty=True))
    assert plan == GettyPlan(edit_securetty=True)
    assert commands(plan) == []


def test_unknown_init_is_refused():
    with pytest.raises(FormatError, match="unknown init system 'upstart'"):
        plan_getty_units(GuestConsoleFacts("upstart"))


UNITS = [unit for unit, _ in CONSOLE_UNITS.values()] + [
    "getty@hvc0.service", "serial-getty@tty1.service", "getty.target", "getty@.service",
    "serial-getty@.service", "getty@tty2.service", "serial-getty@ttyS1.service"]


@given(st.frozensets(st.sampled_from(UNITS)), st.frozensets(st.sampled_from(UNITS)),
       st.lists(st.sampled_from(["hvc0", "ttyS0", "tty0", "tty1"]), max_size=3))
def test_property_applying_the_plan_leaves_nothing_to_do(enabled, masked, consoles):
    facts = GuestConsoleFacts("systemd", enabled, masked, tuple(consoles))
    plan = plan_getty_units(facts)
    assert len(set(plan.unmask)) == len(plan.unmask)
    assert set(plan.enable) | set(plan.unmask) == set(plan.why)
    after = GuestConsoleFacts("systemd", enabled | set(plan.enable), masked - set(plan.unmask), tuple(consoles))
    assert commands(plan_getty_units(after)) == []
    for tty in CONSOLE_UNITS:
        assert {f"getty@{tty}.service", f"serial-getty@{tty}.service"} & after.enabled_units
