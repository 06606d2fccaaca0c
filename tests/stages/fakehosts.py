"""A command-level double of a Xen host and a KVM host sharing DRBD resources, and of a guest.

It answers exactly the commands the stages send (parsed back with shlex, so an
unquoted value would show up as a wrong argv), keeps the state both hosts
share, refuses what the real commands refuse, and records every command.
Files are text (str) or binary (bytes, e.g. a kernel); SFTP reads and writes them.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import select
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field

from invoke import Result

from tests.wire import bare

XL_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
WIPEFS_OFFSETS = {"swap": "0xff6", "ext4": "0x438", "LVM2_member": "0x218"}
# `drbdadm get-gi` of a connected, synced 8.4 pair (measured; both sides alike but for the Primary flag)
IN_SYNC_GI = "3EDBF507CAF5AF50:0000000000000000:EA3B40C5598B02B4:0000000000000004:1:1:0:1:0:0:0\n"
DOM0 = "Domain-0                                     0  1024     2     r-----     100.0\n"


@dataclass
class Shared:
    """What both hosts see: DRBD roles per resource, and which host runs the domain."""

    roles: dict[str, dict[str, str]]           # resource -> host -> Primary|Secondary
    disk: dict[str, dict[str, str]]            # resource -> host -> UpToDate|...
    connection: str = "Connected"
    xen_running: set = field(default_factory=set)
    kvm_running: set = field(default_factory=set)
    kvm_defined: set = field(default_factory=set)
    files: dict[tuple[str, str], str | bytes] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)   # (host, command), SFTP as "sftp get|put PATH"
    without_sha256sum: set = field(default_factory=set)         # hosts whose coreutils predate it (Debian 4)
    faults: dict[str, int] = field(default_factory=dict)       # command prefix -> exit code
    violations: list[str] = field(default_factory=list)
    stubborn: bool = False                                     # the guest ignores shutdown
    disks_of: dict[str, list[str]] = field(default_factory=dict)  # domain -> its resources (default: all)
    snapshots: list[list[str]] = field(default_factory=list)   # lvcreate / qemu-img / removal argv
    console: dict[str, str] = field(default_factory=dict)   # domain -> what its serial console prints once started
    xen_console: dict[str, str] = field(default_factory=dict)   # domain -> what its console prints under Xen
    signatures: dict[tuple[str, str], dict] = field(default_factory=dict)   # (host, path) -> blkid's TYPE, UUID, PTTYPE
    partitions: dict[tuple[str, str], list[int]] = field(default_factory=dict)   # (host, disk) -> start sectors
    garbage: set = field(default_factory=set)   # (host, path): no signature, but not zeros in its first MiB
    mapper_lvs: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # (host, /dev/mapper/..) -> VG, LV
    fail_halfway: tuple | None = None    # (host, verb, resource): drbdadm fails there, once, after the ones before
    lock_root: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="xenkvm-locks-"))   # hosts' lock dirs
    generations: dict[tuple[str, str], str] = field(default_factory=dict)   # (resource, host) -> get-gi
    standalone_hides_peer: bool = False   # DRBD 8.4's status: no peer line at all when StandAlone
    cib: str | None = None       # Pacemaker's CIB (`cibadmin --query`), None: no Pacemaker installed
    auto_promote: bool = False   # DRBD 9's default: a domain opening a Secondary for writing promotes it
    free_memory: dict[str, int] = field(default_factory=lambda: {"xen1": 65536, "kvm1": 65536})  # MiB, no guest
    guest_memory: int = 2048     # MiB each running domain takes, as `xl list` shows
    unbootable: set = field(default_factory=set)   # hosts where the guest's domain runs but it never answers
    knocks: list[str] = field(default_factory=list)   # every knock on the guest: "HOST:PORT answered|silent"
    addresses: dict[str, str] = field(default_factory=lambda: {"192.0.2.50": "logger"})   # guest_address -> VM
    definitions: dict[str, str] = field(default_factory=dict)   # domain -> the XML libvirt was given

    def knock(self, target, expect: bytes) -> bool:
        """The guest's address (Site's knock): it answers, with sshd's banner, while its domain
        runs on a host where it boots."""
        vm = self.addresses[target.hostname]
        where = {"xen1"} if vm in self.xen_running else {"kvm1"} if vm in self.kvm_running else set()
        answered = bool(where - self.unbootable) and expect in (b"", b"SSH-")
        self.knocks.append(f"{target.hostname}:{target.port} {'answered' if answered else 'silent'}")
        return answered

    def resources_of(self, domain: str) -> list[str]:
        return self.disks_of.get(domain, list(self.roles))

    def open_for_writing(self, host: str, peer: str, domain: str) -> bool:
        """What DRBD does when a starting domain opens its disks: Primary ones open; with
        auto-promote a Secondary becomes Primary, unless a connected peer is Primary (a
        disconnected one is not seen); else the open fails and the domain does not start."""
        resources = self.resources_of(domain)
        secondary = [r for r in resources if self.roles[r][host] != "Primary"]
        if secondary and (not self.auto_promote or (self.connection == "Connected"
                                                    and any(self.roles[r][peer] == "Primary" for r in secondary))):
            return False
        for r in secondary:
            self.roles[r][host] = "Primary"
        return True

    def check(self) -> None:
        for res, roles in self.roles.items():
            if list(roles.values()).count("Primary") > 1:
                self.violations.append(f"two primaries on {res}")
        if self.xen_running & self.kvm_running:
            self.violations.append("domain runs on both hosts")
        for domain in self.xen_running | self.kvm_running:
            side = "xen1" if domain in self.xen_running else "kvm1"
            if any(self.roles[r][side] != "Primary" for r in self.resources_of(domain)):
                self.violations.append(f"{domain} runs on {side} without its disks Primary there")


def as_bytes(content: str | bytes) -> bytes:
    return content.encode() if isinstance(content, str) else content


class FakeSftp:
    """paramiko's SFTPClient.open over one host's files."""

    def __init__(self, host: "FakeHost"):
        self.host = host

    def open(self, path: str, mode: str = "r"):
        files, key = self.host.shared.files, (self.host.name, path)
        if "r" in mode:
            if key not in files:
                raise FileNotFoundError(errno.ENOENT, "No such file", path)
            self.host.shared.log.append((self.host.name, f"sftp get {path}"))
            return _SftpReader(as_bytes(files[key]))
        if "x" in mode and key in files:
            raise FileExistsError(errno.EEXIST, "Failure", path)
        self.host.shared.log.append((self.host.name, f"sftp put {path}"))
        return _SftpWriter(lambda data: files.__setitem__(key, data))


class _SftpReader(io.BytesIO):
    def prefetch(self, file_size=None):
        pass


class _SftpWriter(io.BytesIO):
    def __init__(self, store):
        super().__init__()
        self.store = store

    def chmod(self, mode):
        pass

    def set_pipelined(self, pipelined=True):
        pass

    def close(self):
        if not self.closed:
            self.store(self.getvalue())
        super().close()


class FakeHost:
    """One host: the `run` and `sftp` contract of a fabric Connection. Role xen, kvm or guest."""

    def __init__(self, name: str, role: str, peer: str | None, shared: Shared):
        self.name, self.role, self.peer, self.shared = name, role, peer, shared

    def sftp(self) -> FakeSftp:
        return FakeSftp(self)

    def create_session(self) -> "LocalSession":
        return LocalSession(self)

    def run(self, command: str, **kwargs) -> Result:
        self.shared.log.append((self.name, bare(command)))
        argv = shlex.split(command)
        if argv[:1] == ["env"]:
            argv = argv[1:]
            while argv and "=" in argv[0]:
                argv = argv[1:]
        for prefix, code in self.shared.faults.items():
            host, _, cmd = prefix.partition(":")
            if host == self.name and " ".join(argv).startswith(cmd):
                return Result(stderr=f"injected fault on {cmd}\n", exited=code)
        stdin = kwargs.get("in_stream")
        result = self.dispatch(argv, stdin.read() if hasattr(stdin, "read") else None)
        self.shared.check()
        return result

    # -- dispatch -----------------------------------------------------------------------------
    def dispatch(self, argv, stdin):
        tool = argv[0]
        if tool == "sh" and argv[1] == "-c":
            return self.shell(argv[2], argv[4:], stdin)
        if tool in ("xl", "xm"):
            return self.xl(argv[1:])
        if tool == "drbdadm":
            return self.drbdadm(argv[1:])
        if tool == "virsh":
            return self.virsh(argv[3:])
        if tool == "cibadmin":     # Pacemaker's tools, where a test installs them
            if self.shared.cib is None:
                return Result(stderr="sh: 1: cibadmin: not found\n", exited=127)
            return Result(stdout=self.shared.cib)
        if argv == ["ls", "-1", "--", "/var/lib/linstor.d"]:    # a LINSTOR satellite's resource files
            names = sorted(p.rpartition("/")[2] for h, p in self.shared.files
                           if h == self.name and p.startswith("/var/lib/linstor.d/"))
            return Result(stdout="".join(f"{n}\n" for n in names)) if names else \
                Result(stderr="ls: cannot access '/var/lib/linstor.d': No such file or directory\n", exited=2)
        if argv == ["ls", "-1", "/boot"]:
            return Result(stdout="".join(f"{p[6:]}\n" for h, p in sorted(self.shared.files)
                                         if h == self.name and re.fullmatch(r"/boot/[^/]+", p)))
        if argv[:5] == ["grep", "-m", "1", "-o", "-E"]:   # the first match alone, as GNU grep prints it
            text = self.shared.files.get((self.name, argv[6]))
            found = re.search(argv[5], text, re.M) if isinstance(text, str) else None
            return Result(stdout=found.group(0) + "\n") if found else Result(exited=1 if text is not None else 2)
        if argv[:3] == ["grep", "-q", "-E"]:
            text = self.shared.files.get((self.name, argv[4]))
            return Result(exited=0 if text is not None and re.search(argv[3], text, re.M) else 1)
        if argv == ["cat", "/proc/meminfo"]:
            free = self.shared.free_memory[self.name] - self.shared.guest_memory * len(self.shared.kvm_running)
            return Result(stdout=f"MemTotal:       98304000 kB\nMemFree:         1024000 kB\n"
                                 f"MemAvailable:   {free * 1024:>9} kB\nBuffers:          204800 kB\n")
        if argv[:4] == ["stat", "-c", "%s", "--"]:
            content = self.shared.files.get((self.name, argv[4]))
            return Result(stdout=f"{len(as_bytes(content))}\n") if content is not None else Result(exited=1)
        if argv[:4] == ["blkid", "-p", "-o", "export"]:   # -O OFFSET: a partition, keyed PATH@OFFSET
            path = argv[-1] + (f"@{argv[5]}" if argv[4] == "-O" else "")
            found = self.shared.signatures.get((self.name, path))
            return Result(stdout="".join(f"{k}={v}\n" for k, v in found.items())) if found else Result(exited=2)
        if argv[:5] == ["partx", "-g", "-o", "START", "-n"]:
            starts = self.shared.partitions.get((self.name, argv[6]), [])
            number = int(argv[5])
            # util-linux 2.38 prints nothing, and exits 0, for a partition the table lacks
            return Result(stdout=f"{starts[number - 1]:>5}\n" if 0 < number <= len(starts) else "")
        if argv[:2] == ["test", "-b"]:   # the hosts' devices live under /dev; a file there is a file
            block = argv[2].startswith("/dev/") and (self.name, argv[2]) not in self.shared.files
            return Result(exited=0 if block else 1)
        if argv[:2] == ["mkswap", "-U"]:
            self.shared.garbage.discard((self.name, argv[3]))
            self.shared.signatures[(self.name, argv[3])] = {"TYPE": "swap", "UUID": argv[2]}
            return Result()
        if argv[:4] == ["lvs", "--noheadings", "-o", "vg_name,lv_name"]:
            return self.lvs(argv[4])
        if tool == "rm":
            for path in argv[3:]:
                self.shared.files.pop((self.name, path), None)
        if tool in ("mkdir", "lvcreate", "lvremove", "qemu-img", "rm"):
            self.shared.snapshots.append(argv)
            return Result()
        raise AssertionError(f"{self.name}: unexpected command {argv}")

    def shell(self, script, args, stdin):
        files = self.shared.files
        if 'command -v "$1"' in script:
            return Result(exited=0 if args[0] == "xl" and self.role == "xen" else 1)
        if "sha256sum" in script:
            content = files.get((self.name, args[0]))
            if content is None:
                return Result(exited=66)
            if self.name in self.shared.without_sha256sum:
                return Result(exited=69)
            return Result(stdout=f"{hashlib.sha256(as_bytes(content)).hexdigest()}  -\n")
        if script.startswith('[ -s "$1" ] && [ -s "$2" ]'):
            if not all(files.get((self.name, path)) for path in args[:2]):
                return Result(exited=66)
            return Result(stdout=files.get((self.name, args[2]), ""))
        if "cat --" in script and "exit 66" in script:
            text = files.get((self.name, args[0]))
            return Result(stdout=text) if text is not None else Result(exited=66)
        if "tail -c +" in script:   # liveness: the console's size, then what it printed since $2
            content = files.get((self.name, args[0]))
            if content is None:
                return Result(exited=66)
            data, start = as_bytes(content), int(args[1])
            start = 0 if len(data) < start else start
            return Result(stdout=f"{len(data)}\n{data[start:].decode()}")
        if "wipefs -n -p" in script:
            return self.survey(args[0])
        if "mktemp" in script:
            staged = args[2] if len(args) > 2 else ""
            files[(self.name, args[0])] = files.pop((self.name, staged)).decode() if staged else stdin
            return Result()
        if 'names="$names $1"' in script:
            directory, pairs = args[0], args[1:]
            for name, staged in zip(pairs[::2], pairs[1::2], strict=False):
                files[(self.name, f"{directory}/{name}")] = files.pop((self.name, staged))
            return Result()
        raise AssertionError(f"unexpected script {script!r}")

    def append(self, path, text):
        self.shared.files[(self.name, path)] = self.shared.files.get((self.name, path), "") + text

    def lvs(self, path):
        """/dev/VG/LV names its VG and LV; a /dev/mapper name only through `mapper_lvs`."""
        names = self.shared.mapper_lvs.get((self.name, path))
        direct = re.fullmatch(r"/dev/(?!mapper/)([^/]+)/([^/]+)", path)
        if names is None and direct is None:
            return Result(stderr=f'  Failed to find logical volume "{path}"\n', exited=5)
        return Result(stdout="  {} {}\n".format(*(names or direct.groups())))

    def survey(self, path):
        """localdisk's survey: wipefs's lines as util-linux 2.38 prints them, then the first MiB's verdict."""
        found = self.shared.signatures.get((self.name, path), {})
        lines = [f"{WIPEFS_OFFSETS.get(found['TYPE'], '0x0')},{found.get('UUID', '')},,{found['TYPE']}"] \
            if "TYPE" in found else []
        lines += [f"0x1fe,,,{found['PTTYPE']}"] if "PTTYPE" in found else []
        blank = not found and (self.name, path) not in self.shared.garbage
        return Result(stdout="".join(line + "\n" for line in lines) + ("zeros\n" if blank else "data\n"))

    def xl(self, args):
        verb = args[0]
        running = self.shared.xen_running
        if verb == "list":
            body = "".join(f"{n:<40}{i:>5}  {self.shared.guest_memory}     1     -b----      1.0\n"
                           for i, n in enumerate(sorted(running), 1))
            return Result(stdout=XL_HEADER + DOM0 + body)
        if verb == "info":   # xl's layout: the key padded to 23 columns
            free = self.shared.free_memory[self.name] - self.shared.guest_memory * len(running)
            return Result(stdout="".join(f"{key:<23}: {value}\n" for key, value in (
                ("host", self.name), ("nr_cpus", 8), ("total_memory", 98304), ("free_memory", free),
                ("xen_version", "4.17.3"))))
        name = args[-1]
        if verb == "create":
            cfg = self.shared.files.get((self.name, name))
            domain = re.search(r"name\s*=\s*'([^']+)'", cfg or "")
            if not domain:
                return Result(stderr=f"Failed to parse config: {name}\n", exited=1)
            if not self.shared.open_for_writing(self.name, self.peer, domain.group(1)):
                return Result(stderr="libxl: error: hotplug: /etc/xen/scripts/block-drbd failed\n", exited=3)
            running.add(domain.group(1))
            if "XENCONSOLED_TRACE=guest" in self.shared.files.get((self.name, "/etc/default/xencommons"), ""):
                self.append(f"/var/log/xen/console/guest-{domain.group(1)}.log",
                            self.shared.xen_console.get(domain.group(1), ""))
            return Result(stdout=f'Parsing config from {name}\n')
        if name not in running:
            return Result(stderr=f"Domain '{name}' does not exist.\n", exited=1)
        if verb == "shutdown":
            if not self.shared.stubborn:
                running.discard(name)
            return Result(stdout=f"Shutting down domain {len(running)}\n")
        if verb == "destroy":
            running.discard(name)
            return Result()
        raise AssertionError(f"xl {args}")

    def drbdadm(self, args):
        verb, resources = args[0], args[1:]
        for res in resources:
            if res not in self.shared.roles:
                return Result(stderr=f"'{res}' not defined in your config (for this host).\n", exited=10)
        if verb == "status":
            return Result(stdout="".join(self.status9(r) for r in resources))
        if verb == "get-gi":
            return Result(stdout=self.shared.generations.get((resources[0], self.name), IN_SYNC_GI))
        for res in resources:
            if self.shared.fail_halfway == (self.name, verb, res):
                self.shared.fail_halfway = None
                return Result(stderr=f"{res}: State change failed: (-10) State change was refused\n", exited=11)
            roles = self.shared.roles[res]
            if verb == "primary":
                if roles[self.peer] == "Primary":
                    return Result(stderr=f"{res}: State change failed: (-1) Multiple primaries not allowed by config\n", exited=11)
                if self.shared.disk[res][self.name] != "UpToDate":
                    return Result(stderr=f"{res}: State change failed: (-2) Need access to UpToDate data\n", exited=17)
                roles[self.name] = "Primary"
            elif verb == "secondary":
                held = self.shared.xen_running if self.role == "xen" else self.shared.kvm_running
                if any(res in self.shared.resources_of(d) for d in held):
                    return Result(stderr=f"{res}: State change failed: (-12) Device is held open by someone\n", exited=11)
                roles[self.name] = "Secondary"
            else:
                raise AssertionError(f"drbdadm {args}")
        return Result()

    def status9(self, res):
        roles, disk = self.shared.roles[res], self.shared.disk[res]
        conn = self.shared.connection
        peer = (f"  {self.peer} role:{roles[self.peer]}\n    peer-disk:{disk[self.peer]}\n"
                if conn == "Connected" else f"  {self.peer} connection:{conn}\n")
        if conn == "StandAlone" and self.shared.standalone_hides_peer:
            peer = ""
        return f"{res} role:{roles[self.name]}\n  disk:{disk[self.name]}\n{peer}\n"

    def virsh(self, args):
        verb, name = args[0], args[-1]
        s = self.shared
        if verb == "list":
            rows = [f" {'1' if d in s.kvm_running else '-'}    {d}   {'running' if d in s.kvm_running else 'shut off'}"
                    for d in sorted(s.kvm_defined)]
            return Result(stdout=" Id   Name   State\n-------------------\n" + "".join(r + "\n" for r in rows) + "\n")
        if verb == "domstate":
            if name not in s.kvm_defined:
                return Result(stderr=f"error: failed to get domain '{name}'\n", exited=1)
            return Result(stdout=("running" if name in s.kvm_running else "shut off") + "\n\n")
        if verb == "define":
            text = s.files.get((self.name, name))
            domain = re.search(r"<name>([^<]+)</name>", text or "")
            s.kvm_defined.add(domain.group(1))
            s.definitions[domain.group(1)] = text
            return Result(stdout=f"Domain '{domain.group(1)}' defined from {name}\n")
        if name not in s.kvm_defined:
            return Result(stderr=f"error: failed to get domain '{name}'\n", exited=1)
        if verb == "dumpxml":
            return Result(stdout=s.definitions[name])
        if verb == "start":
            if name in s.kvm_running:
                return Result(stderr="error: Domain is already active\n", exited=1)
            if not s.open_for_writing(self.name, self.peer, name):
                return Result(stderr="error: Failed to start domain: Read-only file system\n", exited=1)
            s.kvm_running.add(name)
            if name in s.console:   # libvirt's <log append='on'>
                self.append(f"/var/log/libvirt/qemu/{name}-console.log", s.console[name])
            return Result(stdout=f"Domain '{name}' started\n")
        if verb in ("shutdown", "destroy"):
            if name not in s.kvm_running:
                return Result(stderr="error: Requested operation is not valid: domain is not running\n", exited=1)
            if verb == "destroy" or not s.stubborn:
                s.kvm_running.discard(name)
            return Result()
        if verb == "undefine":
            s.kvm_defined.discard(name)
            return Result()
        raise AssertionError(f"virsh {args}")


@dataclass
class GuestOs:
    """What a Debian 12 systemd guest's own tools know: packages, enabled units, block devices
    and their file system UUIDs, debconf answers, the modules each initrd was built with."""

    packages: set = field(default_factory=lambda: {"systemd", "initramfs-tools"})
    enabled: set = field(default_factory=lambda: {"getty@tty1.service"})
    devices: dict = field(default_factory=dict)       # /dev/NAME -> UUID (or "" for none)
    debconf: dict = field(default_factory=dict)       # question -> value
    initrd_modules: dict = field(default_factory=dict)   # kernel version -> modules in its initrd
    candidates: set = field(default_factory=lambda: {"acpid", "acpi-support-base", "grub-pc"})
    default_grub: str = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n'
    builds: int = 0


class FakeGuest(FakeHost):
    """The guest over SSH: its probes and package tools answer from GuestOs and its files (in the
    shared files under its own name), and change them as the real ones would."""

    XEN_MODULES = ("xen_blkfront", "xen_netfront")

    def __init__(self, name: str, shared: Shared, os_: GuestOs):
        super().__init__(name, "guest", None, shared)
        self.os = os_

    def file(self, path: str):
        return self.shared.files.get((self.name, path))

    def kernels(self) -> list[str]:
        return sorted(p[len("/boot/vmlinuz-"):] for h, p in self.shared.files
                      if h == self.name and p.startswith("/boot/vmlinuz-"))

    def build_initrds(self) -> None:
        """update-initramfs -u -k all: every initrd again, with the listed modules and Xen's."""
        listed = [line.split()[0] for line in (self.file("/etc/initramfs-tools/modules") or "").splitlines()
                  if line.strip() and not line.startswith("#")]
        for version in self.kernels():
            self.os.builds += 1
            self.os.initrd_modules[version] = [*self.XEN_MODULES, *listed]
            self.shared.files[(self.name, f"/boot/initrd.img-{version}")] = f"initrd {version} #{self.os.builds}".encode()

    def dispatch(self, argv, stdin):
        os_, verb = self.os, argv[:2]
        if argv in (["test", "-d", "/run/systemd/system"], ["test", "-d", "/etc/initramfs-tools"]):
            return Result(exited=0 if argv[2] == "/run/systemd/system" or "initramfs-tools" in os_.packages else 1)
        if argv[:2] == ["test", "-e"]:
            return Result(exited=0 if self.file(argv[2]) is not None else 1)
        if argv[:2] == ["test", "-b"]:
            return Result(exited=0 if argv[2] in os_.devices else 1)
        if argv == ["readlink", "-f", "/sbin/init"]:
            return Result(stdout="/usr/lib/systemd/systemd\n")
        if argv == ["cat", "/proc/cmdline"]:
            return Result(stdout="root=/dev/xvda2 ro quiet\n")
        if argv == ["dpkg", "--print-architecture"]:
            return Result(stdout="amd64\n")
        if argv[:4] == ["dpkg-query", "-W", "-f", "${Status}"]:
            installed = argv[4] in os_.packages
            return Result(stdout="install ok installed") if installed else Result(exited=1)
        if argv[:2] == ["apt-cache", "policy"]:
            candidate = "  Candidate: 1.0\n" if argv[2] in os_.candidates else "  Candidate: (none)\n"
            return Result(stdout=f"{argv[2]}:\n  Installed: (none)\n{candidate}")
        if verb == ["systemctl", "is-enabled"]:
            state = "enabled" if argv[2] in os_.enabled else "disabled"
            return Result(stdout=state + "\n", exited=0 if state == "enabled" else 1)
        if verb == ["systemctl", "enable"]:
            os_.enabled.add(argv[2])
            return Result()
        if argv[:4] == ["blkid", "-o", "value", "-s"]:
            uuid = os_.devices.get(argv[5])
            return Result(stdout=f"{uuid}\n") if uuid else Result(exited=2)
        if argv[:3] == ["apt-get", "install", "-y"]:
            os_.packages.update(argv[3:])
            if "grub-pc" in argv[3:] and self.file("/etc/default/grub") is None:
                self.shared.files[(self.name, "/etc/default/grub")] = os_.default_grub
            return Result()
        if argv == ["debconf-set-selections"]:
            for line in (stdin or "").splitlines():
                fields = line.split(None, 3)
                os_.debconf[fields[1]] = fields[3] if len(fields) > 3 else ""
            return Result()
        if argv == ["debconf-show", "grub-pc"]:
            return Result(stdout="".join(f"* {q}: {v}\n" for q, v in sorted(os_.debconf.items())))
        if argv == ["update-grub"]:
            entries = "".join(f"menuentry 'Debian, with Linux {v}' {{\n\tlinux /boot/vmlinuz-{v} root=UUID=x\n}}\n"
                              for v in self.kernels())
            self.shared.files[(self.name, "/boot/grub/grub.cfg")] = entries
            return Result()
        if argv == ["update-initramfs", "-u", "-k", "all"]:
            self.build_initrds()
            return Result()
        if argv[:1] == ["lsinitramfs"]:
            version = argv[1].split("initrd.img-", 1)[-1]
            if self.file(argv[1]) is None or version not in os_.initrd_modules:
                return Result(stderr=f"{argv[1]}: No such file or directory\n", exited=1)
            return Result(stdout="".join(f"usr/lib/modules/{version}/kernel/drivers/{m}.ko\n"
                                         for m in os_.initrd_modules[version]))
        return super().dispatch(argv, stdin)


class LocalSession:
    """A session channel whose command really runs here, with its paths under the host's own
    directory in `lock_root`: the hosts' VM-lock manager is a shell script, and flock, kill and
    wait are the real ones."""

    def __init__(self, host: FakeHost):
        self.host = host
        self.proc: subprocess.Popen | None = None
        self.timeout: float | None = None
        self.closed = False

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def exec_command(self, command: str) -> None:
        from tasks.hostlock import LOCK_DIR
        own = os.path.join(self.host.shared.lock_root, self.host.name)
        argv = [own if arg == LOCK_DIR else arg for arg in shlex.split(command)]
        self.host.shared.log.append((self.host.name, f"session {argv[0]}"))
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def sendall(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def recv(self, size: int) -> bytes:
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        if not ready:
            raise TimeoutError("timed out")
        return os.read(self.proc.stdout.fileno(), size)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
            self.proc.stdout.close()
