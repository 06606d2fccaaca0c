"""Pure text in, text or data out: the formats the tool reads and writes, no I/O.

Everything here raises FormatError for what it cannot read or map; the task boundary
(errors.reading) names the file and chooses the exit code.
"""

import re

# A partition named after its whole disk: xvda1 -> (xvda, 1); the cfg rewrite, the disk map and
# the guest's fstab and grub let a partition follow its disk's new name.
PARTITION = re.compile(r"(.*[^0-9])([0-9]+)")


class FormatError(ValueError):
    """Text that cannot be read, or a plan that cannot be made from it: what is wrong, and the
    line when one is to blame; not which file, which only the caller knows."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        return self.message if self.line is None else f"line {self.line}: {self.message}"
