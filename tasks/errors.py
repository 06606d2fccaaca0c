"""Errors a person reads: one line, no traceback, a non-zero exit.

invoke prints an Exit's message to stderr and exits with its code, so every
error meant for the operator derives from it.
"""

from invoke.exceptions import Exit


class ToolError(Exit):
    """A refusal or failure the operator can act on (exit 1)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message=f"error: {message}", code=code)
        self.text = message

    def __str__(self) -> str:
        return self.text


class InputError(ToolError):
    """Bad input (inventory, file, argument): nothing was contacted or changed (exit 2)."""

    def __init__(self, message: str):
        super().__init__(message, code=2)


class GuardError(ToolError):
    """A safety check refused a change (exit 3)."""

    def __init__(self, message: str):
        super().__init__(message, code=3)


def shown(value: str, limit: int = 60) -> str:
    """A value read from a file, fit for a one-line error: control characters escaped (a newline
    in it must not split the line) and a long one cut, since the file may hold anything."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
