"""Commands as the stage tests write them: without the locale every command runs in.

Remote.command sends every command as `env LC_ALL=C ...` (the parsers read English);
tests/unit/test_remote.py proves that once.  The doubles of hosts take it off, so each stage
test states the command itself.
"""

from invoke import MockContext

LOCALE = "env LC_ALL=C "


def bare(command: str) -> str:
    """`command` without the leading locale (after `sudo -n --` too); other variables stay."""
    sudo = "sudo -n -- "
    head, rest = (sudo, command[len(sudo):]) if command.startswith(sudo) else ("", command)
    if rest.startswith(LOCALE):
        words = rest[len(LOCALE):]
        first = words.split(" ", 1)[0]
        rest = f"env {words}" if "=" in first else words   # other variables keep their `env`
    return head + rest


class HostMock(MockContext):
    """invoke's MockContext answering commands as the tests write them (`bare`); `sent()` helpers
    read the commands from its `run` mock and take the locale off in the same way."""

    def run(self, command, *args, **kwargs):
        return super().run(bare(command), *args, **kwargs)
