"""Stage tests talk to doubles only: no guest address is ever knocked on for real."""

import pytest


@pytest.fixture(autouse=True)
def no_real_knock(mocker):
    """A proof of life a test forgot to give a double fails loudly instead of sending traffic
    to an inventory's guest address."""
    def refuse(target, **_kwargs):
        raise AssertionError(f"a stage test knocked on {target.hostname}:{target.port} for real")

    mocker.patch("tasks.ssh.knock", refuse)
