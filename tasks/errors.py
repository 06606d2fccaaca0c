"""Errors a person reads: one line, no traceback, a non-zero exit.

invoke prints an Exit's message to stderr and exits with its code, so every
error meant for the operator derives from it.  Every line of it is made safe
here, whatever reached it (a VM name from the command line, a cfg value, a
host's output): a control character is escaped, so it can neither split the
line nor forge another, and a line longer than MAX_LINE loses its middle.
"""

import re
from contextlib import contextmanager
from typing import Sequence

from invoke.exceptions import Exit

from .formats import FormatError

MAX_LINE = 4000     # characters of one error line: a failed move and its undo can take 1000
CUT = " [...] "     # where a longer line lost its middle (its end says what to do)
MAX_QUOTED = 60     # characters of a value quoted in a message
_PLAIN = re.compile(rf"[A-Za-z0-9_./:+-]{{1,{MAX_QUOTED}}}")


def _printable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def one_line(text: str) -> str:
    """`text` as one printable line: control characters escaped (\\n, \\x1b, \\u2028), at most
    MAX_LINE characters kept, its beginning and its end (a 500 MB value costs no more than a
    short one)."""
    half = MAX_LINE // 2
    if len(text) > MAX_LINE:
        return _printable(text[:half])[:half] + CUT + _printable(text[-half:])[-half:]
    line = _printable(text)
    return line if len(line) <= MAX_LINE else line[:half] + CUT + line[-half:]


def quoted(value: object) -> str:
    """A value for a message, like repr() but at most about MAX_QUOTED characters, and
    without ever building the repr of a nested value (an alias bomb's is gigabytes)."""
    if isinstance(value, (str, bytes)):
        if len(value) <= MAX_QUOTED:
            return repr(value)
        return f"{value[:MAX_QUOTED]!r}... ({len(value)} {'bytes' if isinstance(value, bytes) else 'characters'})"
    if isinstance(value, (dict, list, tuple, set)):
        return f"<{type(value).__name__} of {len(value)}>"
    text = repr(value)
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED] + "..."


class ToolError(Exit):
    """A refusal or failure the operator can act on (exit 1).

    `message` is one line; `more` are further lines, each one line too (the inventory's
    errors list one problem a line).
    """

    def __init__(self, message: str, code: int = 1, more: Sequence[str] = ()):
        self.text = "\n".join(one_line(line) for line in (message, *more))
        super().__init__(message=f"error: {self.text}", code=code)

    def __str__(self) -> str:
        return self.text


class InputError(ToolError):
    """Bad input (inventory, file, argument): nothing was contacted or changed (exit 2)."""

    def __init__(self, message: str, *more: str):
        super().__init__(message, 2, more)


class GuardError(ToolError):
    """A safety check refused a change (exit 3)."""

    def __init__(self, message: str):
        super().__init__(message, code=3)


def shown(value: object) -> str:
    """A name or value for a message: as it is when plain and short (xvda2, /dev/drbd5), else
    quoted and cut as `quoted` does, since a file or an argument may hold anything."""
    return value if isinstance(value, str) and _PLAIN.fullmatch(value) else quoted(value)


@contextmanager
def reading(label: str, error: type[ToolError] = InputError):
    """Where pure code reads a file or plans from it, what it cannot read or map (FormatError)
    becomes one line naming the file, and its line where one is to blame: InputError (exit 2)
    for the operator's own input, GuardError for a file a host or guest holds."""
    try:
        yield
    except FormatError as exc:
        where = label if exc.line is None else f"{label}:{exc.line}"
        raise error(f"{where}: {exc.message}") from None
