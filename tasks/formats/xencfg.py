"""Xen guest configs in xm (xend) and xl syntax: parse them, and rewrite one for dual boot.

The cfg is read by a tokenizer of its own, never by Python's eval: xl configs are not
Python, an xm config must not be executed on the control machine, and the rewrite needs
the exact character span of every value so that it can change a vdev while every other
byte (comments, order, spacing, quote style, escapes) stays as it was.

Disk specs follow xl's own disk parser (libxlu_disk_l.l), which also reads the old xm
forms (`phy:/dev/vg/x,xvda2,w`, `tap:aio:...`, `drbd:res,...`, `,hdc:cdrom,r`); the few
xm-only mode spellings (`w!`) are accepted as well.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from ..errors import quoted, shown
from . import PARTITION, FormatError
from .fstab import UUID

# Lists inside lists: xl's deepest setting (vnuma) nests two; deeper is refused before Python's
# recursion limit turns a hostile cfg into a traceback.
MAX_LIST_DEPTH = 16


class CfgSyntaxError(FormatError):
    """A cfg the tool cannot read, with the line to fix."""


@dataclass(frozen=True)
class XenDisk:
    spec: str
    backend: str
    path: str
    vdev: str
    mode: str
    format: str | None
    devtype: str | None
    # Mode w!: other guests write to it at the same time (a cluster file system's disk).
    shared: bool = False


@dataclass(frozen=True)
class XenVif:
    mac: str | None
    bridge: str | None
    model: str | None


@dataclass(frozen=True)
class XenConfig:
    name: str | None
    uuid: str | None
    memory: int | None
    maxmem: int | None
    vcpus: int | None
    kernel: str | None
    bootloader: str | None
    root: str | None
    extra: str | None
    builder: str | None
    disks: tuple[XenDisk, ...]
    vifs: tuple[XenVif, ...]
    on_poweroff: str | None
    on_reboot: str | None
    on_crash: str | None
    values: dict = field(hash=False)
    # The kernel command line the guest gets: xl's cmdline= wins over root= and extra=.
    cmdline: str | None = None
    hdtype: str | None = None    # HVM: "ahci" puts hd* and xvd* disks on SATA instead of IDE

    @property
    def hvm(self) -> bool:
        """Fully virtualised: xl's type= (or the builder= both toolstacks know), or xm's hvmloader."""
        return self.builder == "hvm" or _hvmloader(self.kernel)

    @property
    def hvm_kernel(self) -> str | None:
        """The kernel an HVM guest boots straight from the Xen host (xl), where xm named its firmware."""
        return self.kernel if self.hvm and self.kernel and not _hvmloader(self.kernel) else None


def _hvmloader(path: str | None) -> bool:
    """xm's HVM firmware, which its cfgs give as kernel=: /usr/lib/xen/boot/hvmloader."""
    return (path or "").rsplit("/", 1)[-1].startswith("hvmloader")


# ---------------------------------------------------------------------------
# Tokens and values, with their spans in the text

@dataclass
class _Str:
    """A string literal; starts/ends give, per decoded character, the raw span that wrote it."""

    value: str
    start: int
    end: int
    body_end: int
    quote: str
    raw: bool
    starts: list[int]
    ends: list[int]

    def replace(self, span: tuple[int, int], new: str) -> tuple[int, int, str]:
        """An edit that puts `new` where the decoded characters span[0]:span[1] were written."""
        a, b = span
        return self.starts[a], self.ends[b - 1], _encode(new, self.quote, self.raw)

    def append(self, new: str) -> tuple[int, int, str]:
        return self.body_end, self.body_end, _encode(new, self.quote, self.raw)


@dataclass
class _Atom:
    value: object
    start: int
    end: int


@dataclass
class _List:
    items: list
    start: int
    end: int


@dataclass
class _Assign:
    key: str
    op: str
    node: _Str | _Atom | _List
    key_end: int
    op_start: int
    op_end: int


class _Tok(NamedTuple):
    kind: str          # nl, string, number, name, op, eof
    text: str
    start: int
    end: int
    node: _Str | None = None


_LEX = re.compile(r"""
    (?P<nl>\r?\n)
  | (?P<skip>[ \t\f\r]+|\#[^\r\n]*|\\\r?\n)
  | (?P<string>(?P<prefix>[rR]|[uU][rR]?)?(?P<quote>'''|\"\"\"|'|"))
  | (?P<number>[0-9][0-9A-Za-z_.]*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<op>\+=|[-=\[\],;])
""", re.X)

_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f",
            "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_OCTAL = re.compile(r"[0-7]{1,3}")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")


def _encode(text: str, quote: str, raw: bool) -> str:
    """Write `text` inside a literal of this quote style, escaped the way both xm and xl read it."""
    if raw:
        if any(c in text for c in ("\\", quote[0], "\n", "\r")):
            raise FormatError(f"cannot write {quoted(text)} into a raw string literal")
        return text
    out = []
    for c in text:
        if c in ("\\", quote[0]):
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif (ord(c) < 32 and c != "\t") or ord(c) == 127:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return "".join(out)


class _Parser:
    """Recursive descent over `key = value` / `key += value` statements (xm's Python subset, xl's grammar)."""

    def __init__(self, text: str):
        self.text = text
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.tokens = self._lex()  # lazily, so that the first error in the file is the one reported
        self.ahead = next(self.tokens)

    def error(self, pos: int, message: str) -> CfgSyntaxError:
        return CfgSyntaxError(message, bisect.bisect_right(self.line_starts, pos))

    # -- lexer

    def _lex(self):
        text, pos, depth = self.text, 0, 0
        while pos < len(text):
            m = _LEX.match(text, pos)
            if m is None:
                raise self.error(pos, f"unexpected character {text[pos]!r}")
            kind = m.lastgroup or ""
            if kind == "string":
                node = self._string(m)
                yield _Tok("string", text[node.start:node.end], node.start, node.end, node)
                pos = node.end
                continue
            pos = m.end()
            if kind == "skip" or (kind == "nl" and depth):
                continue  # a newline inside brackets continues the statement
            if kind == "op":
                depth += {"[": 1, "]": -1}.get(m.group(), 0)
                depth = max(depth, 0)
            yield _Tok(kind, m.group(), m.start(), m.end())
        yield _Tok("eof", "", len(text), len(text))

    def _string(self, m: re.Match) -> _Str:
        text, quote = self.text, m.group("quote")
        raw = "r" in (m.group("prefix") or "").lower()
        i = m.end()
        while True:
            if i >= len(text) or (len(quote) == 1 and text[i] == "\n"):
                raise self.error(m.start(), "unterminated string")
            if text[i] == "\\":
                i += 3 if text.startswith("\r\n", i + 1) else 2
            elif text.startswith(quote, i):
                break
            else:
                i += 1
        value, starts, ends = self._decode(m.end(), i, raw)
        return _Str(value, m.start(), i + len(quote), i, quote, raw, starts, ends)

    def _decode(self, pos: int, stop: int, raw: bool) -> tuple[str, list[int], list[int]]:
        """Escapes as Python 2 (xend) and xl both read them; an unknown escape keeps its backslash."""
        text = self.text
        chars: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        while pos < stop:
            c, nxt = text[pos], text[pos + 1] if pos + 1 < stop else ""
            end = pos + 1
            if c == "\\" and not raw:
                if nxt == "\n" or text.startswith("\r\n", pos + 1):
                    pos += 2 if nxt == "\n" else 3  # a continued line writes nothing
                    continue
                if nxt in _ESCAPES:
                    c, end = _ESCAPES[nxt], pos + 2
                elif nxt == "x":
                    digits = _HEX2.match(text, pos + 2, stop)
                    if digits is None:
                        raise self.error(pos, "invalid \\x escape in string")
                    c, end = chr(int(digits.group(), 16)), digits.end()
                elif nxt and nxt in "01234567":
                    digits = _OCTAL.match(text, pos + 1, stop)
                    assert digits is not None   # nxt is an octal digit
                    c, end = chr(int(digits.group(), 8)), digits.end()
            chars.append(c)
            starts.append(pos)
            ends.append(end)
            pos = end
        return "".join(chars), starts, ends

    # -- parser

    def _next(self) -> _Tok:
        tok = self.ahead
        if tok.kind != "eof":
            self.ahead = next(self.tokens)
        return tok

    def _peek(self) -> _Tok:
        return self.ahead

    @staticmethod
    def _describe(tok: _Tok) -> str:
        return {"nl": "end of line", "eof": "end of file"}.get(tok.kind) or quoted(tok.text)

    def statements(self) -> list[_Assign]:
        out: list[_Assign] = []
        while True:
            tok = self._next()
            if tok.kind == "eof":
                return out
            if tok.kind == "nl" or tok.text == ";":
                continue
            if tok.kind != "name":
                raise self.error(tok.start, f"expected a setting name, found {self._describe(tok)}")
            op = self._next()
            if op.text not in ("=", "+="):
                raise self.error(op.start, f"expected '=' after {quoted(tok.text)}, found {self._describe(op)}")
            node = self._value()
            end = self._next()
            if end.kind not in ("nl", "eof") and end.text != ";":
                raise self.error(end.start, f"expected end of line after the value of {quoted(tok.text)}, "
                                            f"found {self._describe(end)}")
            out.append(_Assign(tok.text, op.text, node, tok.end, op.start, op.end))

    def _value(self, depth: int = 0):
        tok = self._next()
        if tok.kind == "string":
            return tok.node
        if tok.kind == "number":
            return _Atom(self._number(tok), tok.start, tok.end)
        if tok.text == "-" and self._peek().kind == "number":
            num = self._next()
            return _Atom(-self._number(num), tok.start, num.end)
        if tok.kind == "name" and tok.text in ("True", "False", "None"):
            return _Atom({"True": True, "False": False, "None": None}[tok.text], tok.start, tok.end)
        if tok.text == "[":
            if depth == MAX_LIST_DEPTH:
                raise self.error(tok.start, f"lists nested deeper than {MAX_LIST_DEPTH}")
            items = []
            while self._peek().text != "]":
                if self._peek().kind == "eof":
                    raise self.error(tok.start, "'[' is never closed")
                items.append(self._value(depth + 1))
                sep = self._peek()
                if sep.text == ",":
                    self._next()
                elif sep.text != "]":
                    if sep.kind == "eof":
                        raise self.error(tok.start, "'[' is never closed")
                    raise self.error(sep.start, f"expected ',' or ']' in a list, found {self._describe(sep)}")
            return _List(items, tok.start, self._next().end)
        raise self.error(tok.start, f"expected a value, found {self._describe(tok)}")

    def _number(self, tok: _Tok) -> int | float:
        text = tok.text.replace("_", "")
        try:
            if re.fullmatch(r"0[0-7]+", text):
                return int(text, 8)  # 0755: octal for Python 2 and for xl's strtol alike
            return int(text, 0) if re.fullmatch(r"[0-9]+|0[xX][0-9a-fA-F]+", text) else float(text)
        except ValueError:
            raise self.error(tok.start, f"bad number {quoted(tok.text)}") from None


def _python(node):
    if isinstance(node, _List):
        return [_python(item) for item in node.items]
    return node.value


# ---------------------------------------------------------------------------
# Disk and vif specs

_DISK_FLAGS = {"cdrom", "direct-io-safe", "discard", "no-discard", "colo", "no-colo", "trusted", "untrusted"}
_DISK_KEYS = {"format", "devtype", "access", "backend", "backendtype", "specification", "vdev", "script",
              "colo-host", "colo-port", "colo-export", "active-disk", "hidden-disk", "grant_usage"}
_FORMATS = {"raw", "qcow", "qcow2", "vhd", "qed", "vmdk", "empty"}
# First prefix of an xm-style target (xend's block script, or an xl deprecated prefix) ...
_PREFIXES = {"phy", "file", "tap", "tap2", "tapdisk", "aio", "ioemu", "drbd", "iscsi", "nbd", "enbd",
             "raw", "qcow", "qcow2", "vhd", "qed"}
# ... and what may follow tap:/tap2: (tap:aio:, tap:qcow2:, tap2:tapdisk:aio:).
_TAP_SUBTYPES = {"tapdisk", "ioemu", "aio", "sync", "vmdk", "ram", "qcow", "qcow2", "vhd", "qed", "raw", "remus"}
_ACCESS = {"r": "r", "ro": "r", "w": "w", "rw": "w", "w!": "w", "rw!": "w"}
_SHARED_ACCESS = ("w!", "rw!")
# Xen names of the disks qemu-xen emulates for an HVM guest: hd* and xvd* (IDE, or SATA with
# hdtype='ahci'), sd* (SCSI); the letters give the place on the controller, digits a partition.
HVM_DISK = re.compile(r"(xvd|hd|sd)([a-z]+)[0-9]*")


class _DiskParse(NamedTuple):
    disk: XenDisk
    vdev_span: tuple[int, int]   # where the vdev name sits in the spec string


def _parse_disk(spec: str) -> _DiskParse:
    given: dict[str, tuple[str, int]] = {}
    positional: list[tuple[str, int]] = []
    devtype = None

    def put(key: str, value: str, at: int) -> None:
        if key in given:
            raise FormatError(f"{key} given twice")
        given[key] = (value, at)

    pos = 0
    while pos < len(spec):
        while pos < len(spec) and spec[pos] in " \t\n":
            pos += 1
        if pos == len(spec):
            break
        if spec.startswith("target=", pos):  # eats the rest: the one place a path may hold commas
            target = spec[pos + 7:]
            put("target", target[:-1] if target.endswith(",") else target, pos + 7)
            break
        end = spec.find(",", pos)
        end = len(spec) if end < 0 else end
        item = spec[pos:end]
        if item in _DISK_FLAGS:
            devtype = "cdrom" if item == "cdrom" else devtype
        elif "=" in item:
            key, _, value = item.partition("=")
            if key not in _DISK_KEYS:
                raise FormatError(f"unknown parameter {quoted(item)}")
            put(key, value, pos + len(key) + 1)
        else:
            positional.append((item.rstrip(" \t\n"), pos))
        pos = end + 1

    prefixes: list[str] = []
    format_taken = "format" in given
    for n, (item, at) in enumerate(positional):
        if n == 0:
            while (m := re.match(r"([a-z][a-z0-9]*):", item)) is not None:
                allowed = _TAP_SUBTYPES if prefixes[:1] in (["tap"], ["tap2"], ["tapdisk"]) else (
                    set() if prefixes else _PREFIXES)
                if m.group(1) not in allowed:
                    if not prefixes and not item[m.end():m.end() + 1].isalnum():
                        raise FormatError(f"unknown disk prefix {quoted(m.group())}")
                    break  # rbd:pool/image and the like: the colon belongs to the target
                prefixes.append(m.group(1))
                item, at = item[m.end():], at + m.end()
            put("target", item, at)
            continue
        if not prefixes and not format_taken:
            format_taken = True
            if not (given["target"][0] == "" and ":" in item):  # ,hdc:cdrom,r has no format slot
                put("format", item, at)
                continue
        if "vdev" not in given:
            if item.startswith("ioemu:"):
                item, at = item[6:], at + 6
            vdev, colon, kind = item.rpartition(":")
            if colon:
                if kind not in ("cdrom", "disk"):
                    raise FormatError(f"unknown device type {quoted(kind)}")
                devtype = "cdrom" if kind == "cdrom" else devtype
                item = vdev
            put("vdev", item, at)
        elif "access" not in given:
            put("access", item, at)
        else:
            raise FormatError(f"too many positional parameters at {quoted(item)}")

    if "devtype" in given:
        value = given["devtype"][0]
        if value not in ("cdrom", "disk"):
            raise FormatError(f"unknown devtype {quoted(value)}")
        devtype = "cdrom" if value == "cdrom" else devtype
    vdev, vdev_at = given.get("vdev", ("", 0))
    if not vdev:
        raise FormatError("no vdev (the guest's name for the disk)")
    path = given.get("target", ("", 0))[0]
    if not path and devtype != "cdrom":
        raise FormatError("no target (only an empty CD-ROM may have none)")
    access = given.get("access", ("", 0))[0]
    if access and access not in _ACCESS:
        raise FormatError(f"unknown access mode {quoted(access)}")
    fmt = given.get("format", ("", 0))[0] or next((p for p in prefixes if p in _FORMATS), None)
    if fmt and fmt not in _FORMATS:
        raise FormatError(f"unknown format {quoted(fmt)}")
    backend = given["backendtype"][0] if "backendtype" in given else ":".join(prefixes)
    if not backend and given.get("script", ("", 0))[0].rsplit("/", 1)[-1] == "block-drbd":
        backend = "drbd"    # xl's spelling of drbd:RES: the target is a resource, not a path
    disk = XenDisk(spec=spec, backend=backend, path=path, vdev=vdev,
                   mode=_ACCESS.get(access) or ("r" if devtype == "cdrom" else "w"),
                   format=fmt or None, devtype=devtype, shared=access in _SHARED_ACCESS)
    return _DiskParse(disk, (vdev_at, vdev_at + len(vdev)))


def _parse_vif(spec: str) -> XenVif:
    fields = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        if eq:
            fields[key.strip()] = value.strip()
    return XenVif(mac=fields.get("mac"), bridge=fields.get("bridge"), model=fields.get("model"))


# ---------------------------------------------------------------------------
# The whole cfg

class _Cfg:
    """A parsed cfg: every assignment with its spans, and for each key the ones that make its value."""

    def __init__(self, text: str):
        self.text = text
        self.parser = _Parser(text)
        self.assigns = self.parser.statements()
        self.effective: dict[str, list[_Assign]] = {}
        for a in self.assigns:
            if a.op == "+=" and a.key in self.effective:
                self.effective[a.key].append(a)
            else:
                self.effective[a.key] = [a]
        self.values = {key: self._fold(assigns) for key, assigns in self.effective.items()}
        self.disks = self._disks()

    def error(self, pos: int, message: str) -> CfgSyntaxError:
        return self.parser.error(pos, message)

    def _fold(self, assigns: list[_Assign]):
        value = _python(assigns[0].node)
        for a in assigns[1:]:
            more = _python(a.node)
            if not (isinstance(value, str) and isinstance(more, str)
                    or isinstance(value, list) and isinstance(more, list)):
                raise self.error(a.op_start, f"{a.key} += only adds a string to a string or a list to a list")
            value = value + more   # type: ignore[operator]   # both str or both list, checked above
        return value

    def string_nodes(self, key: str) -> list[_Str]:
        """The literals that make a string setting (root = 5 has nothing to rename in it)."""
        return [a.node for a in self.effective.get(key, []) if isinstance(a.node, _Str)]

    def list_items(self, key: str) -> list[_Str]:
        items = []
        for a in self.effective.get(key, []):
            if not isinstance(a.node, _List):
                raise self.error(a.node.start, f"{key} must be a list of strings")
            for item in a.node.items:
                if not isinstance(item, _Str):
                    raise self.error(item.start, f"{key} must be a list of strings")
                items.append(item)
        return items

    def _disks(self) -> list[tuple[_Str, _DiskParse]]:
        out = []
        for item in self.list_items("disk"):
            try:
                out.append((item, _parse_disk(item.value)))
            except ValueError as exc:
                raise self.error(item.start, f"disk {quoted(item.value)}: {exc}") from None
        return out

    def string(self, key: str) -> str | None:
        value = self.values.get(key)
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # xl keeps every atom as text: name = 123 is a name
        raise self.error(self.effective[key][-1].node.start, f"{key} must be a string")

    def integer(self, key: str) -> int | None:
        value = self.values.get(key)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
            return int(value)  # xen-tools writes memory = '256'
        raise self.error(self.effective[key][-1].node.start, f"{key} must be a whole number, not {quoted(value)}")

    def config(self) -> XenConfig:
        disks = self.disks
        string = self.string
        root, extra, cmdline = string("root"), string("extra"), string("cmdline")
        if cmdline is None and (root or extra):
            cmdline = " ".join(part for part in (root and f"root={root}", extra) if part)
        return XenConfig(
            name=string("name"), uuid=string("uuid"),
            memory=self.integer("memory"), maxmem=self.integer("maxmem"), vcpus=self.integer("vcpus"),
            kernel=string("kernel"), bootloader=string("bootloader"),
            root=root, extra=extra,
            builder=string("type") or string("builder"),
            disks=tuple(p.disk for _, p in disks),
            vifs=tuple(_parse_vif(item.value) for item in self.list_items("vif")),
            on_poweroff=string("on_poweroff"), on_reboot=string("on_reboot"), on_crash=string("on_crash"),
            values=self.values,
            cmdline=cmdline,
            hdtype=string("hdtype"),
        )


def parse_xen_cfg(text: str) -> XenConfig:
    """Read an xm or xl cfg without executing it; CfgSyntaxError names the line."""
    return _Cfg(text).config()


# Settings only an ARM guest, or one handed host hardware, has: no x86_64 KVM domain carries them.
_NOT_FOR_KVM = {
    "device_tree": "an ARM guest's device tree",
    "dtdev": "ARM device-tree nodes passed through",
    "iomem": "host I/O memory passed through",
    "irqs": "host interrupts passed through",
}
# ARM's kernel image names (arch/arm*/boot), or a path that names a foreign architecture.
_FOREIGN_KERNEL = re.compile(r"(?:^|/)[zu]?Image(?:\.gz)?$|(?i:arm64|aarch64|armhf|armel|riscv)")


def check_movable(cfg: XenConfig) -> None:
    """Refuse, in one line (ValueError), a cfg that no x86_64 KVM domain can be made from.

    A fragment (no name=: xl and xm refuse it too), a guest of another architecture or one
    holding host hardware, and a guest with no disk (NFS root, unikernels): converting or
    rendering any of them would give something that looks right and cannot boot.
    """
    if not cfg.name:
        raise FormatError("no name=: a fragment of a guest cfg, not a whole guest")
    for key, what in _NOT_FOR_KVM.items():
        if key in cfg.values:
            raise FormatError(f"{key}= ({what}): not a guest an x86_64 KVM host can run")
    if cfg.values.get("pci"):
        raise FormatError("pci= (host PCI devices passed through): the KVM domain would lack them; "
                          "give it <hostdev> by hand and move it by hand")
    if cfg.kernel and _FOREIGN_KERNEL.search(cfg.kernel):
        raise FormatError(f"kernel {shown(cfg.kernel)} is an ARM or RISC-V image: "
                         f"not a guest an x86_64 KVM host can run")
    if all(d.devtype == "cdrom" for d in cfg.disks):
        raise FormatError("no disk to boot from (NFS root, or a unikernel): only guests with a disk move")


# ---------------------------------------------------------------------------
# Rewrite for dual boot

_CONSOLE = ("console=hvc0", "xencons=tty")
_ROOT_DEV = re.compile(r"(?<!\S)/dev/(?P<dev>[^\s/]+)(?!\S)")
_ROOT_ARG = re.compile(r"(?<!\S)root=/dev/(?P<dev>[^\s/]+)(?!\S)")


def _renamed(dev: str, renames: dict[str, str], vdevs: list[str]) -> str | None:
    """The new name of a device: xvda2 -> sda; a partition of a whole disk follows it (xvda1 -> sda1)."""
    if dev in renames or dev in vdevs:
        return renames.get(dev)
    m = PARTITION.fullmatch(dev)
    return renames[m.group(1)] + m.group(2) if m and m.group(1) in renames else None


def _device_edits(node: _Str, pattern: re.Pattern, renames: dict[str, str],
                  vdevs: list[str]) -> list[tuple[int, int, str]]:
    edits = []
    for m in pattern.finditer(node.value):
        new = _renamed(m.group("dev"), renames, vdevs)
        if new is not None:
            edits.append(node.replace(m.span("dev"), new))
    return edits


def _console_edits(cfg: _Cfg) -> list[tuple[int, int, str]]:
    """Append the console arguments to the command line the kernel gets, or create extra=.

    xm's `extra = None` (or `cmdline = None`) means no such setting: `None` is replaced by the
    arguments, and a `cmdline = None` leaves the command line to root= and extra=.
    """
    key = "cmdline" if cfg.values.get("cmdline") is not None else "extra"
    literals = cfg.string_nodes("root") + [a.node for a in cfg.assigns if isinstance(a.node, _Str)]
    quote = literals[0].quote[0] if literals else "'"
    if key in cfg.effective:
        node = cfg.effective[key][-1].node
        value = cfg.string(key)
        if value is None:
            return [(node.start, node.end, f"{quote}{' '.join(_CONSOLE)}{quote}")]
        missing = [arg for arg in _CONSOLE if arg not in value.split()]
        if not missing:
            return []
        if not isinstance(node, _Str):
            raise cfg.error(node.start, f"{key} must be a string to take {' '.join(missing)}")
        return [node.append((" " if value and not value[-1].isspace() else "") + " ".join(missing))]
    text = cfg.text
    newline = "\r\n" if "\r\n" in text else "\n"
    if "root" in cfg.effective:  # right after root=, lined up with it
        a = cfg.effective["root"][-1]
        gap, after = text[a.key_end:a.op_start], text[a.op_end:a.node.start]
        pad = gap if "\t" in gap else " " * max(len(a.key) + len(gap) - len("extra"), 1 if gap else 0)
        eol = text.find("\n", a.node.end)
        pos = len(text) if eol < 0 else eol + 1
    else:
        pad = after = " "
        pos = len(text)
    line = f"extra{pad}={after}{quote}{' '.join(_CONSOLE)}{quote}{newline}"
    if pos == len(text) and text and not text.endswith("\n"):
        line = newline + line
    return [(pos, pos, line)]


def rewrite_xen_cfg(text: str, renames: dict[str, str], add_console: bool = False,
                    root_uuid: str | None = None) -> str:
    """The same cfg with disks renamed, root= following them, and optionally a console for KVM too.

    With `root_uuid` (the root file system's), root= names it (root = 'UUID=... ro'): a pvops
    kernel under Xen names every disk xvd* whatever the cfg calls it, so only the UUID holds
    under both hypervisors. Without it, root= takes the disk's new name.
    Only the bytes of each renamed vdev, of the root device in root=, and of root=/dev/...
    in extra= and cmdline= change; everything else is kept byte for byte.  Renames apply all at
    once (a permutation such as sda <-> sdb is fine), so a second run with the same renames changes
    nothing as long as no new name is also an old one.  Raises FormatError if two disks would end up
    with the same name.
    """
    if root_uuid is not None and not UUID.fullmatch(root_uuid):
        raise FormatError(f"root file system UUID {quoted(root_uuid)} is not a UUID")
    cfg = _Cfg(text)
    vdevs = [d.vdev for d in cfg.config().disks]  # refuses what parse_xen_cfg refuses
    active = {old: new for old, new in renames.items() if old in vdevs and old != new}
    after = [active.get(v, v) for v in vdevs]
    clashes = sorted({v for v in after if after.count(v) > max(1, vdevs.count(v))})
    if clashes:
        raise FormatError(f"the renames would give two disks the name {clashes[0]}")

    edits = [node.replace(p.vdev_span, active[p.disk.vdev]) for node, p in cfg.disks if p.disk.vdev in active]
    arguments = cfg.string_nodes("extra") + cfg.string_nodes("cmdline")
    if root_uuid is None:
        for node in cfg.string_nodes("root"):
            edits += _device_edits(node, _ROOT_DEV, active, vdevs)
        for node in arguments:
            edits += _device_edits(node, _ROOT_ARG, active, vdevs)
    else:
        for node in cfg.string_nodes("root"):
            edits += [node.replace(m.span(), f"UUID={root_uuid}") for m in _ROOT_DEV.finditer(node.value)]
        for node in arguments:
            edits += [node.replace(m.span(), f"root=UUID={root_uuid}") for m in _ROOT_ARG.finditer(node.value)]
    if add_console:
        edits += _console_edits(cfg)

    out, pos = [], 0
    for start, end, new in sorted(edits):
        out += [text[pos:start], new]
        pos = end
    out.append(text[pos:])
    return "".join(out)
