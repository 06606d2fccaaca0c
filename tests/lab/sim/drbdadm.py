"""`drbdadm` stand-in: the DRBD 9, 8.4 or 8.3 userland (host.json "drbd_style") over the
lab's shared resource state, so both hosts see one resource and its two roles.

Formats follow drbd-utils' own code (`drbdsetup status` of 9 and 8.4, the 8.3 XML status) and
the samples in ../shared/corpus/drbd-status; messages and exit codes were measured with
drbd-utils 9.22 and its 8.4/8.3 compatibility binaries, or come from the kernel's state-change
error strings. Commands: role, cstate, dstate, status, primary [--force], secondary, outdate,
create-md, up, down, adjust, connect, disconnect, sh-dev; global -d (dry run), -c FILE and
--version. `dump` only reads configuration, which the real drbdadm of this machine does
(drbd-utils 9.22, its 8.4 or 8.3 drbdadm for those styles): the call is handed to it.

DRBD 9 as modelled: any number of peers; the resource options `auto-promote` (on by
default: a device opened for writing is promoted, see model.open_for_writing) and
`quorum`, which `up` and `adjust` take from the configuration (a `common` section's,
then the resource's own); a lost quorum shows as `quorum:no` in status and refuses
promotion (-25, exit 11).
"""

import glob
import os
import re
import sys
import time

from . import cli, model, store
from .cli import err, out

DEFAULT_CONFIG = "/etc/drbd.conf"
COMMANDS = ("role", "cstate", "dstate", "status", "primary", "secondary", "outdate", "create-md", "up", "down",
            "adjust", "connect", "disconnect", "sh-dev", "dump", "dump-md")
# The kernel's state change error strings (drbd-utils' drbd_strings.c) and drbdsetup's exit
# code for each (print_config_error: 17 for -2, 5 for -16, 11 for the others).
REFUSAL_TEXT = {-1: "Multiple primaries not allowed by config", -2: "Need access to UpToDate data",
                -6: "Refusing to be Outdated while Connected", -12: "Device is held open by someone",
                -16: "Disk state is lower than outdated", -25: "No quorum"}
REFUSAL_TEXT_83 = {**REFUSAL_TEXT, -2: "Refusing to be Primary without at least one UpToDate disk"}
REFUSAL_EXIT = {-1: 11, -2: 17, -6: 11, -12: 11, -16: 5, -25: 11}
# drbdadm 8.4's outdate hides drbdsetup's refusal (measured over drbd.ko 8.4.11): on a Primary it
# exits 17 without a word; connected, drbdsetup's failure sends it to drbdmeta, which leaves the
# attached disk alone and exits 0. Below Outdated (-16, not measured) it exits with drbdsetup's 5.
OUTDATE_84 = {-2: 17, -6: 0, -16: 5}
# `drbdadm --version` as drbd-utils 9.22 prints it (measured here), over a DRBD 9.2.12 module;
# with Debian's 8.4.11 module drbd-utils runs its 8.4 drbdadm, which prints its own lines.
BUILDTAG = ("DRBDADM_BUILDTAG=GIT-hash:\\ 409097fe02187f83790b88ac3e0d94f3c167adab\\ reproducible\\ build\\,"
            "\\ 2023-01-09\\ 14:51:18")
VERSION = {"9": f"{BUILDTAG}\nDRBDADM_API_VERSION=2\nDRBD_KERNEL_VERSION_CODE=0x09020c\nDRBD_KERNEL_VERSION=9.2.12\n"
                "DRBDADM_VERSION_CODE=0x091600\nDRBDADM_VERSION=9.22.0",
           "8.4": f"{BUILDTAG}\nDRBDADM_API_VERSION=1\nDRBD_KERNEL_VERSION_CODE=0x08040b\n"
                  "DRBDADM_VERSION_CODE=0x091600\nDRBDADM_VERSION=9.22.0"}
MINOR_COMMANDS_9 = ("dstate", "outdate")   # drbdsetup 9 names these by minor (CTX_MINOR), the rest by resource
REAL_DRBDADM = {"9": "drbdadm", "8.4": "/usr/lib/drbd/drbdadm-84", "8.3": "/usr/lib/drbd/drbdadm-83"}
USAGE_83 = """
USAGE: drbdadm [OPTION...] [-- DRBDSETUP-OPTION...] COMMAND {all|RESOURCE...}

COMMANDS:
 attach                             detach
 connect                            disconnect
 up                                 down
 primary                            secondary
 invalidate                         invalidate-remote
 outdate                            resize
 syncer                             verify
 pause-sync                         resume-sync
 adjust                             wait-connect
 wait-con-int                       role
 cstate                             dstate
 dump                               dump-xml
 create-md                          show-gi
 get-gi                             dump-md
 wipe-md                            hidden-commands

Version: 8.3.13 (api:88)"""


def main(argv=None):
    return cli.run(list(sys.argv if argv is None else argv), _drbdadm)


class Options:
    """The parsed command line (a plain class: see store.Host on start-up time)."""

    def __init__(self):
        self.dry, self.config, self.cmd, self.flags, self.names = False, None, None, [], []


def parse_args(args):
    """drbdadm [-d] [-c FILE] [-- SETUP-OPTS] COMMAND [OPTS] RESOURCE..."""
    o = Options()
    i = 0
    while i < len(args) and o.cmd is None:
        a = args[i]
        i += 1
        if a in ("-d", "--dry-run"):
            o.dry = True
        elif a in ("-c", "--config-file"):
            o.config = args[i] if i < len(args) else ""
            i += 1
        elif a.startswith("--config-file="):
            o.config = a.split("=", 1)[1]
        elif a.startswith("-c") and not a.startswith("--"):
            o.config = a[2:]
        elif a.startswith("-"):
            o.flags.append(a)
        else:
            o.cmd = a
    for a in args[i:]:
        (o.flags if a.startswith("-") else o.names).append(a)
    return o


class ConfigError(Exception):
    pass


def parse_config(path):
    """Resources a drbd.conf defines (following includes):
    name -> {"minor": N, "hosts": {host: {"device", "disk"}}, "options": {key: value}}, the
    options being a `common` section's, then the resource's own."""
    found, common = {}, {}
    _read_config(path, found, common)
    for res in found.values():
        res["options"] = {**common, **res["options"]}
    return found


def _options(items):
    """`options { KEY VALUE; ... }` among a section's statements."""
    return {word: args[0] for name, _, children in items if name == "options" and children
            for word, args, _ in children if args}


def _read_config(path, found, common):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    tokens = []
    for m in re.finditer(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|[{};]|[^\s{};"#]+', text):
        if not (m.group().isspace() or m.group().startswith("#")):
            tokens.append((m.group().strip('"'), text.count("\n", 0, m.start()) + 1))
    items, _ = _block(tokens, 0, path, top=True)
    for word, args, children in items:
        if word == "include" and args:
            for inc in sorted(glob.glob(os.path.join(os.path.dirname(path), args[0]))):
                _read_config(inc, found, common)
        elif word == "common" and children is not None:
            common.update(_options(children))
        elif word == "resource" and args and children is not None:
            found[args[0]] = _resource(path, args[0], children)


def _block(tokens, i, path, top=False):
    """A list of (keyword, args, children-or-None) statements up to the closing brace."""
    items, words = [], []
    while i < len(tokens):
        tok, line = tokens[i]
        i += 1
        if tok == ";":
            if words:
                items.append((words[0], words[1:], None))
            words = []
        elif tok == "{":
            children, i = _block(tokens, i, path)
            items.append((words[0] if words else "", words[1:], children))
            words = []
        elif tok == "}":
            if top or words:
                raise ConfigError(f"{path}:{line}: unexpected '}}'" if top else f"{path}:{line}: missing ';'")
            return items, i
        else:
            words.append(tok)
    if words or not top:
        raise ConfigError(f"{path}: unexpected end of file")
    return items, i


def _resource(path, name, items):
    common = _device_and_disk(items)
    hosts = {}
    for word, args, children in items:
        if word == "on" and args and children is not None:
            own = _device_and_disk(children)
            hosts[args[0]] = {k: own[k] if own[k] is not None else common[k] for k in own}
    minors = [h["minor"] for h in hosts.values() if h["minor"] is not None]
    if not minors:
        raise ConfigError(f"{path}: resource {name}: no minor given nor device name contains a minor number")
    default = f"/dev/drbd{minors[0]}"
    return {"minor": minors[0], "options": _options(items),
            "hosts": {h: {"device": v["device"] or default, "disk": v["disk"]} for h, v in hosts.items()}}


def _device_and_disk(items):
    found = {"device": None, "disk": None, "minor": None}
    for word, args, children in items:
        if word == "volume" and children is not None:
            inner = _device_and_disk(children)
            found = {k: found[k] if found[k] is not None else inner[k] for k in found}
        elif word == "device" and args:
            path = next((a for a in args if a.startswith("/")), None)
            found["device"] = path
            if "minor" in args and args.index("minor") + 1 < len(args):
                found["minor"] = int(args[args.index("minor") + 1])
            elif path and re.search(r"drbd(\d+)$", path):
                found["minor"] = int(re.search(r"drbd(\d+)$", path).group(1))
        elif word == "disk" and args and children is None:
            found["disk"] = args[0]
    return found


def _drbdadm(host, argv):
    o = parse_args(argv[1:])
    style = host.drbd_style
    if o.cmd is None and {"--version", "-V"} & set(o.flags):
        if style == "8.3":      # 8.3's drbdadm has no --version
            err(f"drbdadm: unrecognized option '--version'\n{USAGE_83}")
            return 20
        out(VERSION[style])
        return 0
    if o.cmd == "dump":
        return _real_drbdadm(host, argv)
    if o.cmd is None:
        out("\nUSAGE: drbdadm COMMAND [OPTION...] {all|RESOURCE...}\n\nNo command specified")
        return 1
    if o.cmd not in COMMANDS:
        if style == "8.3":
            err(USAGE_83)
        else:
            err(f"drbdadm: Unknown command '{o.cmd}'")
        return 1
    config = o.config if o.config is not None else DEFAULT_CONFIG
    try:
        conf = parse_config(config) if (o.config is not None or os.path.exists(config)) else {}
    except OSError:
        err(f"Can not open '{config}'.")
        return 20
    except ConfigError as e:
        err(str(e))
        return 10
    with model.transaction(host.state_dir, host.name) as st:
        return Adm(host, st, o, conf, config).run()


def _real_drbdadm(host, argv):
    """Hand a call that only reads configuration to the real drbdadm of this machine (for
    8.4 and 8.3, the one drbd-utils runs over such a kernel); the call is logged first, as
    the real command's exit code never comes back here."""
    from .faultwrap import find_real

    real = REAL_DRBDADM[host.drbd_style]
    path = real if os.path.isabs(real) else find_real(real, argv[0])
    if path is None:
        err("drbdadm: the lab found no real drbdadm later in PATH")
        return 127
    store.record_call(host.state_dir, host.name, argv, None)
    cli.hand_off(path, [path] + list(argv[1:]))
    return 127   # not reached: hand_off execs, or the server's caller does


class Adm:
    """One drbdadm invocation inside a lab transaction."""

    def __init__(self, host, st, options, conf, config_path):
        self.host, self.me, self.style = host, host.name, host.drbd_style
        self.st, self.o, self.conf, self.config_path = st, options, conf, config_path
        self.now = time.time()

    # -- names and nodes

    def run(self):
        o = self.o
        known = [n for n, r in model.resources(self.st).items() if self.me in r["hosts"]]
        known += [n for n, r in self.conf.items() if self.me in r["hosts"] and n not in known]
        names = o.names
        if o.cmd == "status" and (self.style == "8.3" or not names):
            names = known if self.style != "9" else sorted(n for n in known if self.up(n))
        elif "all" in names:
            names = known
        elif not names:
            out(f"\nUSAGE: drbdadm {o.cmd} [OPTION...] {{all|RESOURCE...}}\n\nNo resource names specified")
            return 1
        for name in names:
            if name not in known:
                suffix = "" if self.style == "8.3" else " (for this host)"
                err(f"'{name}' not defined in your config{suffix}.")
                return 1
        return getattr(self, "c_" + o.cmd.replace("-", "_"))(names)

    def node(self, name):
        return model.resources(self.st).get(name, {}).get("hosts", {}).get(self.me)

    def up(self, name):
        node = self.node(name)
        return bool(node and node["up"])

    def minor(self, name):
        res = model.resources(self.st).get(name) or self.conf[name]
        return res["minor"]

    def adopt(self, name):
        """This host's node of `name`, taken from the config into the shared state if new."""
        resources = model.resources(self.st)
        if self.node(name) is None:
            cfg = self.conf[name]
            res = resources.setdefault(name, {"minor": cfg["minor"], "hosts": {}, "sync": None})
            for h, v in cfg["hosts"].items():
                res["hosts"].setdefault(h, model.new_node(v["device"], v["disk"]))
            self.st.changed("drbd")
        node = self.node(name)
        if node["disk"] is None and name in self.conf:
            node["disk"] = self.conf[name]["hosts"][self.me]["disk"]
        return node

    def force(self):
        """The force option as this drbd generation spells it (8.3: --overwrite-data-of-peer)."""
        for f in self.o.flags:
            if (f == "--force" and self.style != "8.3") or (f == "--overwrite-data-of-peer" and self.style != "9"):
                return f
        return None

    # -- what drbdadm would run, and how it reports failures

    def setup_line(self, cmd, name):
        minor = self.minor(name)
        if self.style == "8.3":
            line = f"drbdsetup {minor} {cmd}"
        elif self.style == "9":
            line = f"drbdsetup {cmd} {minor if cmd in MINOR_COMMANDS_9 else name}"
        else:   # drbd-utils 9 runs its 8.4 drbdsetup under this name
            by_minor = cmd in ("primary", "secondary", "role", "cstate", "dstate", "outdate")
            line = f"drbdsetup-84 {cmd} {minor if by_minor else name}"
        force = self.force()
        return f"{line} {force}" if cmd == "primary" and force else line

    def disk_of(self, name):
        node = self.node(name)
        disk = node and node["disk"]
        return disk or self.conf.get(name, {}).get("hosts", {}).get(self.me, {}).get("disk") or "none"

    def md_line(self, name):
        minor, disk = self.minor(name), self.disk_of(name)
        return (f"drbdmeta {minor} v09 {disk} internal create-md 1" if self.style == "9"
                else f"drbdmeta {minor} v08 {disk} internal create-md")

    def attach_line(self, name):
        minor, disk = self.minor(name), self.disk_of(name)
        if self.style == "8.3":
            return f"drbdsetup {minor} disk {disk} {disk} internal --set-defaults --create-device"
        return f"{'drbdsetup' if self.style == '9' else 'drbdsetup-84'} attach {minor} {disk} {disk} internal"

    def up_lines(self, name):
        minor, disk = self.minor(name), self.disk_of(name)
        if self.style == "8.3":
            return [self.attach_line(name), f"drbdsetup {minor} syncer --set-defaults --create-device",
                    f"drbdsetup {minor} net --set-defaults --create-device"]
        v = "v09" if self.style == "9" else "v08"
        setup = "drbdsetup" if self.style == "9" else "drbdsetup-84"
        return [f"{setup} new-resource {name}", f"{setup} new-minor {name} {minor} 0",
                f"drbdmeta {minor} {v} {disk} internal apply-al", self.attach_line(name),
                f"{setup} connect {name}"]

    def failed(self, name, line, message, rc):
        err(message)
        err(f"Command '{line}' terminated with exit code {rc}")
        if self.style == "8.3":
            err(f"drbdadm {self.o.cmd} {name}: exited with code {rc}")
        return rc

    def refused(self, name, cmd, code):
        text = (REFUSAL_TEXT_83 if self.style == "8.3" else REFUSAL_TEXT)[code]
        obj = name if self.style == "9" and cmd not in MINOR_COMMANDS_9 else self.minor(name)
        return self.failed(name, self.setup_line(cmd, name), f"{obj}: State change failed: ({code}) {text}",
                           REFUSAL_EXIT[code])

    def not_up(self, name, cmd):
        """The resource is not configured in this host's (simulated) kernel."""
        minor = self.minor(name)
        if self.style == "8.3" and cmd in ("role", "cstate", "dstate"):
            out("Unconfigured")
            return 0
        if cmd == "status":
            message = f"{name}: No such resource"
        elif self.style == "9":
            message = f"{name}: Failure: (158) Unknown resource"
        else:
            message = f"{minor}: Failure: (127) Device minor not allocated\nadditional info from kernel:\nunknown minor"
        return self.failed(name, self.setup_line(cmd, name), message, 10)

    # -- views

    def view(self, name):
        res = model.resources(self.st)[name]
        return res, res["hosts"][self.me], model.peers(res, self.me)

    def peer_role(self, res, peer):
        return res["hosts"][peer]["role"] if peer and model.connected(res, self.me, peer) else "Unknown"

    def peer_disk(self, res, peer):
        return res["hosts"][peer]["dstate"] if peer and model.connected(res, self.me, peer) else "DUnknown"

    def cstate8(self, res, peer):
        if peer is None or model.conn_state(res, self.me, peer) == "StandAlone":
            return "StandAlone"
        if model.conn_state(res, self.me, peer) == "Connecting":
            return "WFConnection"
        repl = model.repl_state(res, self.me, peer)
        return repl if repl.startswith("Sync") else "Connected"

    def peer_device(self, res, peer, show_established):
        repl = model.repl_state(res, self.me, peer)
        parts = [f"replication:{repl}"] if show_established or repl != "Established" else []
        parts.append(f"peer-disk:{res['hosts'][peer]['dstate']}")
        if repl.startswith("Sync"):
            parts.append(f"done:{model.sync_percent(res, self.now):.2f}")
        return "    " + " ".join(parts)

    # -- commands (each returns the exit code)

    def c_role(self, names):
        return self._show(names, "role")

    def c_cstate(self, names):
        return self._show(names, "cstate")

    def c_dstate(self, names):
        return self._show(names, "dstate")

    def _show(self, names, cmd):
        for name in names:
            if self.o.dry:
                out(self.setup_line(cmd, name))
                continue
            node = self.node(name)
            if self.style == "9" and cmd == "dstate" and node and node["md"] and not node["up"]:
                out(node["dstate"])  # drbdadm 9 asks drbdmeta for the on-disk state
                continue
            if not self.up(name):
                rc = self.not_up(name, cmd)
                if rc:
                    return rc
                continue
            res, me, peers = self.view(name)
            first = peers[0] if peers else None
            if cmd == "role":
                out(me["role"] if self.style == "9" else f"{me['role']}/{self.peer_role(res, first)}")
            elif cmd == "cstate" and self.style == "9":
                for p in peers:
                    out(model.conn_state(res, self.me, p))
            elif cmd == "cstate":
                out(self.cstate8(res, first))
            else:
                out("/".join([me["dstate"]] + [self.peer_disk(res, p) for p in peers or [None]]))
        return 0

    def c_status(self, names):
        if self.o.dry:
            out("drbdsetup status" if self.style == "9" and not self.o.names else
                "\n".join(self.setup_line("status", n) for n in names))
            return 0
        if self.style == "8.3":
            out(self.status83(names))
            return 0
        if self.style == "9" and not names:
            out("# No currently configured DRBD found.")
        def one(name):
            if not self.up(name):
                return self.not_up(name, "status")
            out(self.status9(name) if self.style == "9" else self.status84(name))
            return 0
        return self.each(names, one)

    def each(self, names, one):
        """one(name) -> exit code, for each name. drbdadm 8.4 goes on past a resource that failed
        and exits with the worst code (measured with status, primary and secondary over two
        resources); the 9 and 8.3 styles, as modelled, stop at the first failure."""
        worst = 0
        for name in names:
            rc = one(name)
            if rc and self.style != "8.4":
                return rc
            worst = max(worst, rc)
        return worst

    def status9(self, name):
        """drbd-utils' status: ` quorum:no` after the disk only without quorum, and a Primary
        that lost it suspends its I/O (on-no-quorum's default)."""
        res, me, peers = self.view(name)
        quorum = model.has_quorum(res, self.me)
        suspended = "" if quorum or me["role"] != model.PRIMARY else " suspended:quorum"
        lines = [f"{name} role:{me['role']}{suspended}", f"  disk:{me['dstate']}{'' if quorum else ' quorum:no'}"]
        for p in peers:
            state = model.conn_state(res, self.me, p)
            if state != "Connected":
                lines.append(f"  {p} connection:{state}")
                continue
            lines.append(f"  {p} role:{res['hosts'][p]['role']}")
            lines.append(self.peer_device(res, p, show_established=False))
        return "\n".join(lines) + "\n"

    def status84(self, name):
        res, me, peers = self.view(name)
        lines = [f"{name} role:{me['role']}", f"  disk:{me['dstate']}"]
        for p in peers[:1]:
            state = model.conn_state(res, self.me, p)
            if state == "StandAlone":     # drbdsetup 8.4 shows no peer then
                continue
            if state != "Connected":
                lines.append(f"  peer connection:{state}")
                continue
            lines.append(f"  peer role:{res['hosts'][p]['role']}")
            lines.append(self.peer_device(res, p, show_established=True))
        return "\n".join(lines) + "\n"

    def status83(self, names):
        lines = ['<drbd-status version="8.3.13" api="88">', f'<resources config_file="{self.config_path}">']
        for name in names:
            head = f'<resource minor="{self.minor(name)}" name="{name}"'
            if not self.up(name):
                lines.append(f'{head} cs="Unconfigured" />')
                continue
            res, me, peers = self.view(name)
            first = peers[0] if peers else None
            cs = self.cstate8(res, first)
            line = (f'{head} cs="{cs}" ro1="{me["role"]}" ro2="{self.peer_role(res, first)}"'
                    f' ds1="{me["dstate"]}" ds2="{self.peer_disk(res, first)}"')
            if cs.startswith("Sync"):
                permille = int(model.sync_percent(res, self.now) * 10)
                line += f' resynced_percent="{permille // 10}.{permille % 10}"'
            lines.append(line + " />")
        return "\n".join(lines + ["</resources>", "</drbd-status>"])

    def c_primary(self, names):
        return self._change(names, "primary", lambda name: model.promote(
            self.st, name, self.me, bool(self.force()), self.now, self.host.drbd_sync_delay))

    def c_outdate(self, names):
        return self._change(names, "outdate", lambda name: model.outdate(self.st, name, self.me))

    def c_secondary(self, names):
        return self._change(names, "secondary", lambda name: model.demote(self.st, name, self.me, self.me))

    def _change(self, names, cmd, change):
        """A state change on each resource: change(name) -> None, DOWN or a refusal code."""
        def one(name):
            if self.o.dry:
                out(self.setup_line(cmd, name))
                return 0
            code = change(name)
            if code == model.DOWN:
                return self.not_up(name, cmd)
            if code and cmd == "outdate" and self.style == "8.4":
                return OUTDATE_84.get(code, 0)
            return self.refused(name, cmd, code) if code else 0
        return self.each(names, one)

    def c_create_md(self, names):
        version = "v09" if self.style == "9" else "v08"
        for name in names:
            if self.o.dry:
                out(self.md_line(name))
                continue
            node = self.adopt(name)
            if node["up"]:
                err(f"Device '{self.minor(name)}' is configured!")
                err(f"Command '{self.md_line(name)}' terminated with exit code 20")
                return 20
            if node["md"]:
                err(f"You want me to create a {version} style flexible-size internal meta data block.\n"
                    f"There appears to be a {version} flexible-size internal meta data block\n"
                    f"already in place on {self.disk_of(name)} at byte offset 0\n\n"
                    "Do you really want to overwrite the existing meta-data?")
                if "--force" in self.o.flags:
                    err("*** confirmation forced via --force option ***")
                elif not _confirmed():
                    out("Operation cancelled.")
                    err(f"Command '{self.md_line(name)}' terminated with exit code 1")
                    return 1
            node.update(md=True, dstate=model.INCONSISTENT, role=model.SECONDARY)
            self.st.changed("drbd")
            self.st.event("drbd.create_md", self.me, resource=name)
            out("initializing activity log\nWriting meta data...\nNew drbd meta data block successfully created.")
            err("initializing bitmap (4 KB) to all zero")
        return 0

    def c_up(self, names):
        for name in names:
            if self.o.dry:
                out("\n".join(self.up_lines(name)))
                continue
            node = self.adopt(name)
            if name in self.conf:     # the kernel takes the resource options from the file
                node["options"] = self.conf[name]["options"]
                self.st.changed("drbd")
            if node["up"] and self.o.cmd == "adjust":
                self._set_connect(name, node, True)
                continue
            minor = self.minor(name)
            if node["up"]:
                if self.style == "8.4":   # drbdmeta's apply-al finds the device in use; drbdadm exits 1
                    err(f"Device '{minor}' is configured!")
                    err(f"Command 'drbdmeta {minor} v08 {self.disk_of(name)} internal apply-al' terminated with "
                        f"exit code 20")
                    return 1
                if self.style == "8.3":
                    return self.failed(name, self.attach_line(name),
                                       f"{minor}: Failure: (124) Device is attached to a disk (use detach first)", 10)
                return self.failed(name, f"drbdsetup new-minor {name} {minor} 0",
                                   f"{minor}: Failure: (161) Minor or volume exists already (delete it first)", 10)
            if not node["md"]:
                return self.failed(name, self.attach_line(name),
                                   f"{minor}: Failure: (119) No valid meta-data signature found.\n\n"
                                   f"\t==> Use 'drbdadm create-md res' to initialize meta-data area. <==\n", 10)
            node.update(up=True, connect=True)
            self.st.changed("drbd")
            self.st.event("drbd.up", self.me, resource=name)
            model.relink(self.st, name, self.now, self.host.drbd_sync_delay)
        return 0

    c_adjust = c_up

    def c_down(self, names):
        for name in names:
            if self.o.dry:
                out(self.setup_line("down", name))
                continue
            node = self.node(name)
            if not (node and node["up"]):
                continue
            code = model.demote(self.st, name, self.me, self.me)
            if code:
                return self.refused(name, "down", code)
            node.update(up=False, connect=False)
            self.st.changed("drbd")
            self.st.event("drbd.down", self.me, resource=name)
            model.relink(self.st, name, self.now, self.host.drbd_sync_delay)
        return 0

    def c_connect(self, names):
        return self._connection(names, True)

    def c_disconnect(self, names):
        return self._connection(names, False)

    def _connection(self, names, want):
        for name in names:
            if self.o.dry:
                out(self.setup_line(self.o.cmd, name))
                continue
            if not self.up(name):
                return self.not_up(name, self.o.cmd)
            self._set_connect(name, self.node(name), want)
        return 0

    def _set_connect(self, name, node, want):
        if node["connect"] != want:
            node["connect"] = want
            self.st.changed("drbd")
            self.st.event("drbd.connect" if want else "drbd.disconnect", self.me, resource=name)
            model.relink(self.st, name, self.now, self.host.drbd_sync_delay)

    def c_dump_md(self, names):
        """What the tool asks it for: is there meta data? (the dump of clean meta data is not modelled)."""
        for name in names:
            node = self.adopt(name)
            line = f"drbdmeta {self.minor(name)} {'v09' if self.style == '9' else 'v08'} {self.disk_of(name)} " \
                   "internal dump-md"
            if not node["md"]:
                err("No valid meta data found")
                return 1
            if node["up"]:      # drbdmeta wants the disk to itself
                out("Operation canceled.")
                err(f"open({self.disk_of(name)}) failed: Device or resource busy\n\nExclusive open failed. Do it "
                    f"anyways?\nstdin not a TTY, not waiting for confirmation\n"
                    f"Command '{line}' terminated with exit code 20")
                return 20
            err('Found meta data is "unclean", please apply-al first')   # as left by `drbdadm down`
            return 1
        return 0

    def c_sh_dev(self, names):
        for name in names:
            node = self.node(name)
            out(node["device"] if node else self.conf[name]["hosts"][self.me]["device"])
        return 0


def _confirmed():
    """drbdmeta asks only a terminal; on a pipe (an SSH command) it cancels at once."""
    if not sys.stdin.isatty():
        err("stdin not a TTY, not waiting for confirmation")
        return False
    sys.stdout.write("[need to type 'yes' to confirm] ")
    sys.stdout.flush()
    return sys.stdin.readline().strip() == "yes"
