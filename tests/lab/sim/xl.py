"""`xl` (Xen 4.x) and `xm` (Xen 3.x) stand-in, chosen by the name it is run as.

It reads the real domain config (xm/xl assignment syntax), refuses what libxl/xend refuse
(missing config, name already running, missing disk, a DRBD disk whose resource is not
Primary here and that DRBD 9's auto-promote does not promote on open) with their messages
and exit codes, records running domains in the shared state, holds their DRBD devices
open, and starts/stops the lab's guest through the host.json hooks. Shutdown completes
xen_shutdown_delay seconds later, lazily (model.settle).

Messages come from the xl/libxl and xm/xend sources; the file:line prefixes of a create
refused for its name or a missing disk are xl 4.17's own (tests/data/conformance/xl-4.17,
recorded by tests/lab/xlconformance.py), the others plausible values, not taken from one
exact release.
"""

import ast
import json
import os
import re
import sys
import time

from . import cli, model, store
from .cli import err, out

XEN_CONFIG_DIR = "/etc/xen"
XL_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
DOM0_MEMORY = 1024
TOTAL_MEMORY = 16384  # MiB the lab's Xen hosts have; free_memory is what dom0 and the domains leave
XENCOMMONS = "/etc/default/xencommons"
XEN_CONSOLE_DIR = "/var/log/xen/console"
CREATE_FAILED = 3  # xl exits with -ERROR_FAIL when libxl cannot create a domain
DISK_KEYS = ("target", "vdev", "format", "access", "devtype", "script", "backendtype", "backend")
RUNNING_FLAGS = "-b----"
DYING_FLAGS = "---s-d"  # shut down, its devices still being torn down
FILE_PREFIXES = ("file", "tap", "aio", "qcow", "vhd", "raw")
IDE_MAJORS = (3, 22, 33, 34, 56, 57, 88, 89, 90, 91)  # hda/hdb, hdc/hdd, ...
_VDEV = re.compile(r"(?:ioemu:)?((?:xvd|hd|sd)[a-z]+\d*)(:cdrom)?")

_STRING = "|".join([r'"{3}[\s\S]*?"{3}', r"'{3}[\s\S]*?'{3}", r'"(?:[^"\\\n]|\\.)*"', r"'(?:[^'\\\n]|\\.)*'"])
_TOKEN = re.compile(rf"""
    (?P<space>[ \t\r\f]+|\\\n) | (?P<comment>\#[^\n]*) | (?P<nl>\n) | (?P<str>{_STRING})
  | (?P<num>0[xX][0-9a-fA-F]+|\d+(?:\.\d+)?) | (?P<word>[A-Za-z_][A-Za-z0-9_]*) | (?P<op>[\[\],=;])
""", re.X)


def main(argv=None):
    return cli.run(list(sys.argv if argv is None else argv), _xl)


class CfgError(Exception):
    def __init__(self, line, near):
        super().__init__(f"{line}: config parsing error near `{near.strip() or 'end of line'}': syntax error")


def parse_cfg(text):
    """`name = value` statements (value: string, number, or [list]) -> dict."""
    tokens, pos, line = [], 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise CfgError(line, text[pos:pos + 10].split()[0])
        if m.lastgroup not in ("space", "comment"):
            tokens.append((m.lastgroup, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    tokens.append(("end", "", line))
    cfg, i = {}, 0

    def value(i):
        kind, tok, ln = tokens[i]
        if kind == "str":
            return ast.literal_eval(tok), i + 1
        if kind == "num":
            return (float(tok) if "." in tok else int(tok, 0)), i + 1
        if kind == "word":
            return tok, i + 1
        if tok != "[":
            raise CfgError(ln, tok)
        items, i = [], i + 1
        while True:
            while tokens[i][0] == "nl":
                i += 1
            if tokens[i][1] == "]":
                return items, i + 1
            item, i = value(i)
            items.append(item)
            while tokens[i][0] == "nl":
                i += 1
            if tokens[i][1] == ",":
                i += 1
            elif tokens[i][1] != "]":
                raise CfgError(tokens[i][2], tokens[i][1])

    while tokens[i][0] != "end":
        kind, tok, ln = tokens[i]
        if kind == "nl" or tok == ";":
            i += 1
            continue
        if kind != "word" or tokens[i + 1][1] != "=":
            raise CfgError(ln, tok)
        cfg[tok], i = value(i + 2)
        if tokens[i][0] not in ("nl", "end") and tokens[i][1] != ";":
            raise CfgError(tokens[i][2], tokens[i][1])
    return cfg


def parse_disk(spec):
    """One disk spec -> {"kind": "phy"|"file"|"drbd"|"script", "target", "vdev", "cdrom"}.

    Accepts xm's 'prefix:target,vdev,mode', xl's positional 'target,format,vdev,access' (its
    words are told apart by what they look like, as xl's lexer does) and xl's key=value form.
    """
    keyed, positional = {}, []
    for part in (p.strip() for p in spec.split(",")):
        key, eq, val = part.partition("=")
        if eq and key.strip() in DISK_KEYS:
            keyed[key.strip()] = val.strip()
        else:
            positional.append(part)
    target = keyed.get("target", positional[0] if positional else "")
    vdev = keyed.get("vdev", "")
    for word in positional[1:]:
        m = _VDEV.fullmatch(word)
        if m and not vdev:
            vdev = m.group(1) + (m.group(2) or "")
    m = re.match(r"^((?:tap2?:)?\w+):(.*)$", target)
    if m:
        prefix, target = m.groups()
        kind = {"phy": "phy", "drbd": "drbd"}.get(prefix, "file" if prefix.startswith(FILE_PREFIXES) else "script")
    else:
        kind = "phy" if target.startswith("/dev/") else "file"
    if kind == "phy" and target and not target.startswith("/"):
        target = "/dev/" + target  # xm's block script expands 'phy:hda1'
    if keyed.get("script", "").endswith("block-drbd"):
        kind = "drbd"
    elif keyed.get("script"):
        kind = "script"
    cdrom = vdev.endswith(":cdrom") or keyed.get("devtype") == "cdrom"
    return {"kind": kind, "target": target, "vdev": vdev.split(":")[0], "cdrom": cdrom}


def devno(vdev):
    """The virtual device number libxl/xend print (xvda2 -> 51714)."""
    m = re.fullmatch(r"(xvd|sd|hd)([a-z]+)(\d*)", vdev)
    if not m:
        return vdev
    prefix, letters, part = m.groups()
    disk = 0
    for ch in letters:
        disk = disk * 26 + ord(ch) - ord("a") + 1
    disk, part = disk - 1, int(part or 0)
    if prefix == "xvd":
        return 202 * 256 + disk * 16 + part if disk < 16 else (1 << 28) + (disk << 8) + part
    if prefix == "sd":
        return 8 * 256 + disk * 16 + part
    return IDE_MAJORS[disk // 2] * 256 + (disk % 2) * 64 + part


def _libxl(where, domid, message):
    return f"libxl: error: {where}: Domain {domid}:{message}"


def _destroy_failed(domid):
    """libxl cleans up a create that failed before the domain existed, and says it could not."""
    err(_libxl("libxl_domain.c:1183:libxl__destroy_domid", domid, "Non-existant domain"))
    err(_libxl("libxl_domain.c:1137:domain_destroy_callback", domid, "Unable to destroy guest"))
    err(_libxl("libxl_domain.c:1064:domain_destroy_cb", domid, "Destruction of domain failed"))


class Toolstack:
    """The xl or xm personality of one call: its messages and exit codes."""

    def __init__(self, host, prog):
        self.host, self.xm = host, prog == "xm"

    def no_such_domain(self, name):
        if self.xm:
            err(f"Error: Domain '{name}' does not exist.")
        else:
            err(f"{name} is an invalid domain identifier (rc=-6)")
        return 1

    def find(self, st, name):
        domains = model.xen_domains(st, self.host.name)
        if name in domains:
            return name
        return next((n for n, d in domains.items() if str(d["id"]) == name), None)

    # -- list

    def list(self, args):
        names = [a for a in args if not a.startswith("-")]
        with model.transaction(self.host.state_dir, self.host.name) as st:
            domains = dict(model.xen_domains(st, self.host.name))
        now = time.time()
        rows = [("Domain-0", 0, DOM0_MEMORY, os.cpu_count() or 1, "r-----", _uptime() / 10)]
        rows += [(n, d["id"], d["memory"], d["vcpus"], DYING_FLAGS if d.get("teardown") else RUNNING_FLAGS,
                  (now - d["started"]) / 50)
                 for n, d in sorted(domains.items(), key=lambda kv: kv[1]["id"])]
        if names:
            wanted = names[0]
            rows = [r for r in rows if wanted in (r[0], str(r[1]))]
            if not rows:
                if not self.xm and wanted.isdigit():
                    err(f"Error: Domain '{wanted}' does not exist.")
                    return 1
                return self.no_such_domain(wanted)
        if self.xm:
            out("%-40s %5s %5s %5s %10s %9s" % ("Name", "ID", "Mem", "VCPUs", "State", "Time(s)"))
            for name, domid, mem, vcpus, state, cpu in rows:
                out("%-40s %5s %5d %5d %10s %8.1f" % (name, domid, mem, vcpus, state, cpu))
        else:
            out(XL_HEADER)
            for name, domid, mem, vcpus, state, cpu in rows:
                out("%-40s %5d %5lu %5d     %s  %8.1f" % (name, domid, mem, vcpus, state, cpu))
        return 0

    # -- create

    def create(self, args):
        quiet = dry = False
        path, extra = None, []
        rest = list(args)
        while rest:
            a = rest.pop(0)
            if a in ("-q", "--quiet"):
                quiet = True
            elif a in ("-n", "--dryrun"):
                dry = True
            elif a in ("-f", "--defconfig"):
                path = rest.pop(0) if rest else None
            elif a.startswith("-"):
                continue  # -p -c -d -F -e -V -A: no effect in the lab
            elif "=" in a:
                extra.append(a)
            elif path is None:
                path = a
        if path is None and self.xm:
            path = "xmdefconfig"  # xm's default config name
        if path is None:
            err("Config file not specified and none in save file")
            return 6  # -ERROR_INVAL
        if self.xm and not os.path.exists(path) and os.path.exists(os.path.join(XEN_CONFIG_DIR, path)):
            path = os.path.join(XEN_CONFIG_DIR, path)  # xm searches its config directory
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            if self.xm:
                err(f'Error: Cannot open config file "{path}"')
                return 1
            err(f"Failed to read config file: {path}: {e.strerror}")
            return CREATE_FAILED
        if self.xm:
            out(f'Using config file "{path}".')
        elif not quiet:
            err(f"Parsing config from {path}")
        try:
            cfg = parse_cfg(text + "\n" + "\n".join(extra) + "\n")
        except CfgError as e:
            err(f"{path}:{e}")
            err("Failed to parse config: Invalid argument")
            return 1
        name = cfg.get("name")
        if not name:
            err("Error: Domain name must be specified." if self.xm else "Domain name must be specified.")
            return 1
        specs = cfg.get("disk", [])
        disks = [parse_disk(s) for s in ([specs] if isinstance(specs, str) else specs) if isinstance(s, str)]
        if dry:
            out(json.dumps({"name": name, "memory": int(cfg.get("memory", 128)),
                            "vcpus": int(cfg.get("vcpus", 1)), "disks": disks}, indent=4))
            return 0
        with model.transaction(self.host.state_dir, self.host.name) as st:
            rc, domid = self._start(st, name, path, cfg, disks)
        if rc:
            return rc
        if self._has_hooks(name):
            started = store.run_hook(self.host.state_dir, list(self.host.guest_start) + [name])
            if started:
                with model.transaction(self.host.state_dir, self.host.name) as st:
                    model.finish_domain(st, self.host.name, name, time.time(), "guest_start failed", stop_guest=False)
                err(f"lab: guest_start for {name} exited {started}; see "
                    f"{os.path.join(self.host.state_dir, store.HOOKS_LOG)}")
                return 1 if self.xm else CREATE_FAILED
            self._console_log(name)
        if self.xm:
            out(f"Started domain {name} (id={domid})")
        return 0

    def _console_log(self, name):
        """xenconsoled with --log=guest (XENCONSOLED_TRACE in xencommons) appends what the guest's
        console prints to guest-NAME.log; a lab guest has booted to its getty once its hook returns."""
        try:
            with open(XENCOMMONS, encoding="utf-8") as f:
                trace = re.findall(r"^XENCONSOLED_TRACE=['\"]?(\w+)", f.read(), re.M)
        except OSError:
            return
        if trace[-1:] not in (["guest"], ["all"]):
            return
        os.makedirs(XEN_CONSOLE_DIR, exist_ok=True)
        with open(os.path.join(XEN_CONSOLE_DIR, f"guest-{name}.log"), "a", encoding="utf-8") as f:
            f.write(f"[    0.000000] Linux version 6.1.0-28-amd64 (Debian 6.1.119-1)\n"
                    f"[    1.204311] Run /init as init process\n\nDebian GNU/Linux 12 {name} hvc0\n\n{name} login: ")

    # -- info

    def info(self, _args):
        """`xl info` / `xm info`: `key : value`, the key padded to 23 columns, as both print it."""
        with model.transaction(self.host.state_dir, self.host.name) as st:
            used = sum(d["memory"] for d in model.xen_domains(st, self.host.name).values())
        cpus = os.cpu_count() or 1
        rows = [("host", self.host.name), ("release", "6.1.0-28-amd64"),
                ("version", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)"), ("machine", "x86_64"),
                ("nr_cpus", cpus), ("max_cpu_id", cpus - 1), ("nr_nodes", 1), ("cores_per_socket", cpus),
                ("threads_per_core", 1), ("cpu_mhz", "2999.998"), ("virt_caps", "pv hvm"),
                ("total_memory", TOTAL_MEMORY), ("free_memory", TOTAL_MEMORY - DOM0_MEMORY - used)]
        if not self.xm:
            rows += [("sharing_freed_memory", 0), ("sharing_used_memory", 0), ("outstanding_claims", 0),
                     ("free_cpus", 0)]
        rows += [("xen_major", 4), ("xen_minor", 17), ("xen_extra", ".5-pre"), ("xen_version", "4.17.5-pre"),
                 ("xen_caps", "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"),
                 ("xen_scheduler", "credit2"), ("xen_pagesize", 4096),
                 ("platform_params", "virt_start=0xffff800000000000"), ("xen_changeset", ""),
                 ("xen_commandline", "placeholder dom0_mem=1024M,max:1024M"),
                 ("cc_compiler", "x86_64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0"),
                 ("cc_compile_by", "pkg-xen-devel"), ("cc_compile_domain", "lists.alioth.debian.org"),
                 ("cc_compile_date", "Tue Nov 12 09:05:52 UTC 2024"), ("xend_config_format", 4)]
        for key, value in rows:
            out(f"{key:<23}: {value}")
        return 0

    def _start(self, st, name, path, cfg, disks):
        """Run libxl's checks in its order; on success record the domain as running here."""
        hx = model.xen_host(st, self.host.name)
        st.changed("xen")
        domid = hx["next_id"]
        hx["next_id"] += 1
        if name in hx["domains"]:
            if self.xm:
                err(f"Error: VM name '{name}' already exists as domain {hx['domains'][name]['id']}")
                return 1, None
            err(_libxl("libxl_domain.c:81:libxl__domain_rename", domid, f'Domain with name "{name}" already exists.'))
            err(_libxl("libxl_create.c:1296:initiate_domain_create", domid, "cannot make domain: -6"))
            _destroy_failed(domid)
            return CREATE_FAILED, None
        for i, disk in enumerate(disks):
            if disk["kind"] in ("phy", "file") and disk["target"] and not os.path.exists(disk["target"]):
                return self._disk_missing(domid, i, disk), None
        kernel = cfg.get("kernel")
        hvm = "hvm" in (cfg.get("builder"), cfg.get("type"))  # its kernel is Xen's own hvmloader
        if isinstance(kernel, str) and kernel.startswith("/") and not (hvm or cfg.get("bootloader")) \
                and not os.path.exists(kernel):
            return self._kernel_missing(domid, kernel), None
        held = []
        for i, disk in enumerate(disks):
            resource = disk["kind"] == "phy" and model.resource_for_device(st, self.host.name, disk["target"])
            if resource:
                # pygrub, then blkback, open the device for writing: DRBD 9 may auto-promote it
                if model.open_for_writing(st, resource, self.host.name, self.host.drbd_style, time.time(),
                                          self.host.drbd_sync_delay):
                    model.auto_demote(st, [h["resource"] for h in held], self.host.name)
                    if i == 0 and cfg.get("bootloader"):
                        return self._bootloader_failed(domid), None
                    return self._device_failed(domid, disk), None
                held.append({"resource": resource, "script": False})
        promoted = []
        for disk in disks:
            if disk["kind"] != "drbd":
                continue
            # block-drbd promotes the resource itself; if it cannot, blkback cannot open it
            resource = disk["target"]
            node = model.resources(st).get(resource, {}).get("hosts", {}).get(self.host.name)
            was = node and node["up"] and node["role"]
            if not node or model.promote(st, resource, self.host.name, False, time.time(),
                                         self.host.drbd_sync_delay):
                for r in promoted:  # teardown runs block-drbd remove for those already added
                    model.demote(st, r, self.host.name, None)
                model.auto_demote(st, [h["resource"] for h in held], self.host.name)
                return self._device_failed(domid, disk), None
            if was != model.PRIMARY:
                promoted.append(resource)
            held.append({"resource": resource, "script": True})
        hx["domains"][name] = {
            "id": domid, "memory": int(cfg.get("memory", 128)), "vcpus": int(cfg.get("vcpus", 1)),
            "cfg": os.path.abspath(path), "started": time.time(), "shutdown_at": None, "drbd": held,
            "guest_stop": list(self.host.guest_stop) if self._has_hooks(name) else None}
        st.event("xen.domain_created", self.host.name, domain=name, domid=domid, cfg=os.path.abspath(path),
                 drbd=[h["resource"] for h in held])
        return 0, domid

    def _has_hooks(self, name):
        """The guest hooks run for the lab's guests only (host.json "guests"; all when it names none):
        a fleet VM has no OS, and a hook is a Python start-up per create and shutdown."""
        return bool(self.host.guest_start or self.host.guest_stop) and (
            not self.host.guests or name in self.host.guests)

    def _disk_missing(self, domid, index, disk):
        if self.xm:
            err(f"Error: Device {devno(disk['vdev'])} (vbd) could not be connected. {disk['target']} does not exist.")
            return 1
        err(f"libxl: error: libxl_device.c:455:libxl__device_disk_set_backend: Disk vdev={disk['vdev']} "
            f"failed to stat: {disk['target']}: No such file or directory")
        err(_libxl("libxl_create.c:1318:initiate_domain_create", domid,
                   f"Unable to set disk defaults for disk {index}"))
        _destroy_failed(domid)
        return CREATE_FAILED

    def _kernel_missing(self, domid, kernel):
        if self.xm:
            err(f"Error: Kernel image does not exist: {kernel}")
            return 1
        err(f"xc: error: panic: xc_dom_core.c:208: failed to open file '{kernel}': No such file or directory: "
            "Internal error")
        err("libxl: error: libxl_dom.c:589:libxl__build_dom: xc_dom_kernel_file failed: No such file or directory")
        err(_libxl("libxl_create.c:1759:domcreate_rebuild_done", domid, "cannot (re-)build domain: -3"))
        return CREATE_FAILED

    def _bootloader_failed(self, domid):
        if self.xm:
            err("Error: Boot loader didn't return any data!")
            return 1
        err(_libxl("libxl_bootloader.c:652:bootloader_finished", domid,
                   f"bootloader failed - consult logfile /var/log/xen/bootloader.{domid}.log"))
        err("libxl: error: libxl_exec.c:117:libxl_report_child_exitstatus: "
            "bootloader [1729] exited with error status 1")
        err(_libxl("libxl_create.c:1759:domcreate_rebuild_done", domid, "cannot (re-)build domain: -3"))
        return CREATE_FAILED

    def _device_failed(self, domid, disk):
        """blkback cannot open a Secondary DRBD device: the vbd never connects."""
        vbd = devno(disk["vdev"])
        if self.xm:
            err(f"Error: Device {vbd} (vbd) could not be connected. Backend device not found.")
            return 1
        err(_libxl("libxl_device.c:1172:device_backend_callback", domid,
                   f"unable to add device with path /local/domain/0/backend/vbd/{domid}/{vbd}"))
        err(_libxl("libxl_create.c:1783:domcreate_launch_dm", domid, "unable to add disk devices"))
        err(_libxl("libxl_device.c:1172:device_backend_callback", domid,
                   f"unable to remove device with path /local/domain/0/backend/vbd/{domid}/{vbd}"))
        return CREATE_FAILED

    # -- shutdown / destroy

    def shutdown(self, args):
        wait = "-w" in args or "--wait" in args
        every = "-a" in args or "--all" in args
        names = [a for a in args if not a.startswith("-")][:1]
        if not names and not every:
            err("Error: No domain parameter given" if self.xm else "You must specify -a or a domain id.\n")
            return 1
        with model.transaction(self.host.state_dir, self.host.name) as st:
            domains = model.xen_domains(st, self.host.name)
            targets = sorted(domains, key=lambda n: domains[n]["id"]) if every else [self.find(st, names[0])]
            if targets == [None]:
                return self.no_such_domain(names[0])
            for name in targets:
                d = domains[name]
                if d["shutdown_at"] is None:
                    d["shutdown_at"] = time.time() + self.host.xen_shutdown_delay
                    st.changed("xen")
                    st.event("xen.shutdown_requested", self.host.name, domain=name, domid=d["id"], due=d["shutdown_at"])
            pending = {name: (domains[name]["id"], domains[name]["shutdown_at"]) for name in targets}
        if not self.xm:
            for domid, _ in pending.values():
                err(f"Shutting down domain {domid}")
        if not wait:
            return 0
        if not self.xm:
            err(f"Waiting for {len(pending)} domains")
        while pending:
            time.sleep(max(0.0, min(due for _, due in pending.values()) - time.time()) + 0.01)
            with model.transaction(self.host.state_dir, self.host.name) as st:
                domains = model.xen_domains(st, self.host.name)
            for name, (domid, _) in list(pending.items()):
                d = domains.get(name)
                if d is None or d["id"] != domid:
                    del pending[name]
                    if self.xm:
                        out(f"Domain {name} terminated")
                    else:
                        err(f"Domain {domid} has been shut down, reason code 0")
                else:
                    pending[name] = (domid, d["shutdown_at"] or time.time())
        if self.xm:
            out("All domains terminated")
        return 0

    def destroy(self, args):
        names = [a for a in args if not a.startswith("-")]
        if not names:
            err("Error: 'xm destroy' requires 1 argument.\n" if self.xm
                else "'xl destroy' requires at least 1 argument.\n")
            return 1 if self.xm else 2
        with model.transaction(self.host.state_dir, self.host.name) as st:
            name = self.find(st, names[0])
            if name is None:
                return self.no_such_domain(names[0])
            model.finish_domain(st, self.host.name, name, time.time(), "destroy")
        return 0


def _xl(host, argv):
    prog = os.path.basename(argv[0])
    args = argv[1:]
    if prog != "xm":
        while args and args[0].startswith("-"):
            args = args[1:]  # xl's global -v/-N/-f/-t/-T
    if host.role != "xen":
        if prog == "xm":
            err("Error: Unable to connect to xend: No such file or directory. Is xend running?")
        else:
            err("xencall: error: Could not obtain handle on privileged command interface: No such file or directory")
            err("libxl: error: libxl.c:102:libxl_ctx_alloc: cannot open libxc handle: No such file or directory")
            err("cannot init xl context")
        return 1
    if not args:
        err(f"Usage {prog} [-v] <subcommand> [args]")
        return 1
    ts = Toolstack(host, prog)
    handler = {"list": ts.list, "create": ts.create, "shutdown": ts.shutdown, "destroy": ts.destroy,
               "info": ts.info}.get(args[0])
    if handler is None:
        if prog == "xm":
            err(f"Error: Subcommand {args[0]} not found!")
        else:
            err("command not implemented")
        return 1
    return handler(args[1:])


def _uptime():
    with open("/proc/uptime", encoding="utf-8") as f:
        return float(f.read().split()[0])
