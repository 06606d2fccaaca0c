"""Lab virtual machines: Debian 12 under qemu TCG, for what this machine's own kernel lacks
(the DRBD module, device-mapper, a Xen hypervisor).

    from tests.lab import vms
    image = vms.ImageSpec("drbd", packages=("drbd-utils",), modules=("drbd",))
    pair = vms.start([vms.VmSpec("dx", image, "10.77.1.11", disks={"vdb": "64M"}), ...], log=print)
    pair["dx"].ssh(["drbdadm", "--version"])   # over the lab's ProxyCommand, as the tool reaches it
    vms.down()

An image is `debootstrap --variant=minbase bookworm` with the given packages plus a Debian 12
kernel (linux-image-amd64, with the initramfs holding only the modules the spec lists), built
once in a private network namespace whose only way out is the lab's apt proxy (mirror.py), and
cached in tests/lab/.cache/vm-NAME/ by a digest of its inputs. Its init is a short script
(lab-init below), not systemd: under TCG every second of boot counts, and it reads what makes
one VM different from another (host name, address, modules to load) from the kernel command
line, so one image serves any number of VMs.

Each VM boots a sparse copy of its image (-kernel/-initrd, virtio disks, no -netdev user): its
NIC is a tap on a bridge inside the lab's VM network namespace, which only the control side's
ProxyCommand enters. Its host key and root's authorized_keys are written into the copy with
debugfs before it boots, so known_hosts is right from the first connection.

The VMs have their own life cycle: a lab `reset` (hosts restarted between test cases) leaves
them running; `python -m tests.lab down` takes them down too.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import CACHE, CLIENT_KEY, KEYS, VM_PREFIX, WORK
from . import mirror as apt_proxy
from .image import _debugfs, apt_mirror
from .spaces import LabError, alive, kill, run, wait_for

IMAGE_VERSION = 1                  # bump when the build below changes
SUITE = "bookworm"
BUILD_NETNS = VM_PREFIX + "build"  # the build's private netns: only lo, with the apt proxy on it
SWITCH_ADDRESS = "10.77.1.1"      # the VM network's bridge, /24 (and the apt proxy's address in a build)
PROXY_PORT = 3142
PROXY_CACHE = CACHE / "apt-proxy"
NETNS = VM_PREFIX + "net"         # the VMs' switch; the control side's only way in
BRIDGE = "xkvmsw"
VM_WORK = WORK / "vms"
KNOWN_HOSTS = KEYS / "vm_known_hosts"
VM_MARKER = "XENKVM_LAB_VM"        # in every qemu's environment, so `down` finds them after a crash
BASE_PACKAGES = ("openssh-server", "iproute2", "kmod", "procps", "netcat-openbsd")

# PID 1 of a VM. The kernel command line says what differs between VMs: lab.hostname=,
# lab.address= (CIDR, on eth0), lab.modules= (comma separated, loaded before sshd starts);
# @VM_INIT@ becomes the VmSpec's own init lines (a Xen dom0's daemons), run before sshd.
LAB_INIT = r"""#!/bin/bash
# PID 1 of a lab VM (tests/lab/vms.py): mounts, network and sshd from the kernel command line.
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts -o ptmxmode=0666,mode=620,gid=5 devpts /dev/pts
mount -t tmpfs -o mode=755 run /run
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -o remount,rw /
for word in $(cat /proc/cmdline); do
    case "$word" in
        lab.hostname=*) hostname "${word#*=}" ;;
        lab.address=*) address="${word#*=}" ;;
        lab.modules=*) modules="${word#*=}" ;;
    esac
done
modprobe virtio_net    # no udev loads it: the lab's NIC
ip link set lo up
ip link set eth0 up
[ -n "$address" ] && ip addr add "$address" dev eth0
for module in ${modules//,/ }; do modprobe "$module" || echo "lab-init: modprobe $module failed" >/dev/console; done
mkdir -p /run/sshd /run/lock /var/run/drbd
@VM_INIT@
/usr/sbin/sshd -E /var/log/sshd.log
echo "lab-init: ready ($(hostname) $address)" >/dev/console
# Reap every orphan, as a PID 1 must.
while :; do sleep 3600 & wait; done
"""


@dataclass(frozen=True)
class ImageSpec:
    """What goes into an image: its packages beyond the base set, and the modules its initramfs
    holds (MODULES=list: enough to mount a virtio root; "most" for initramfs-tools' default)."""

    name: str
    packages: tuple[str, ...] = ()
    modules: tuple[str, ...] = ("virtio_pci", "virtio_blk", "ext4")
    size: str = "2G"
    hypervisor: bool = False   # Debian's Xen 4.17: its xen.gz, unpacked, is what qemu boots

    def key(self, mirror: str) -> dict:
        return {"version": IMAGE_VERSION, "suite": SUITE, "mirror": mirror, **asdict(self)}

    @property
    def dir(self) -> Path:
        return CACHE / f"vm-{self.name}"


@dataclass(frozen=True)
class Image:
    root: Path
    kernel: Path
    initrd: Path
    meta: dict
    hypervisor: Path | None = None   # xen.elf: a multiboot ELF that qemu's -kernel loads


@dataclass(frozen=True)
class VmSpec:
    """One VM: its image, its address on the VM network, extra disks (name -> size, sparse
    files; vdb, vdc ... in this order), and what its kernel command line adds."""

    name: str
    image: ImageSpec
    address: str
    disks: dict[str, str] = field(default_factory=dict)
    memory: int = 320          # MiB
    cpus: int = 1
    cpu: str = "max"           # qemu64,+svm for a Xen hypervisor (see LAB-NOTES)
    modules: tuple[str, ...] = ()
    cmdline: str = ""
    xen_cmdline: str = ""      # Xen's own command line (an image with a hypervisor)
    init: str = ""             # shell lines lab-init runs before sshd
    switch: tuple[str, str] | None = None   # (netns, bridge) of another lab switch; default the VM network
    devices: tuple[str, ...] = ()   # more qemu -device arguments (a controller to hot-plug disks on)

    @property
    def netns(self) -> str:
        return self.switch[0] if self.switch else NETNS

    def kernel_cmdline(self) -> str:
        words = ["console=ttyS0", "root=/dev/vda", "rw", "init=/usr/local/sbin/lab-init", "quiet",
                 f"lab.hostname={self.name}", f"lab.address={self.address}/24"]
        if self.modules:
            words.append(f"lab.modules={','.join(self.modules)}")
        return " ".join([*words, self.cmdline]).strip()


# --- images -------------------------------------------------------------------------------

def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cached_image(spec: ImageSpec) -> Image | None:
    """The spec's image when its cache matches the current inputs."""
    try:
        meta = json.loads((spec.dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    image = _image(spec, meta)
    if meta.get("digest") != _digest(spec.key(apt_mirror())):
        return None
    files = [image.root, image.kernel, image.initrd] + ([image.hypervisor] if image.hypervisor else [])
    return image if all(p.is_file() for p in files) else None


def _image(spec: ImageSpec, meta: dict) -> Image:
    return Image(spec.dir / "root.img", spec.dir / "vmlinuz", spec.dir / "initrd.img", meta,
                 spec.dir / "xen.elf" if spec.hypervisor else None)



def ensure_image(spec: ImageSpec, log=print) -> Image:
    return cached_image(spec) or build_image(spec, log)


def _build_script(spec: ImageSpec, rootfs: Path, mirror: str) -> str:
    """Shell run in a private mount namespace inside the build netns (the proxy is the only way out)."""
    q = shlex.quote
    proxy = f"http://{SWITCH_ADDRESS}:{PROXY_PORT}/"
    packages = ",".join(sorted({*BASE_PACKAGES, "initramfs-tools", *spec.packages}))
    initramfs = ("MODULES=most\n" if spec.modules == ("most",) else "MODULES=list\n")
    return "\n".join([
        "set -eu",
        f"root={q(str(rootfs))}",
        f"export http_proxy={q(proxy)} DEBIAN_FRONTEND=noninteractive",
        f"debootstrap --variant=minbase --include={q(packages)} {SUITE} \"$root\" {q(mirror)}",
        f"echo 'Acquire::http::Proxy \"{proxy}\";' >\"$root/etc/apt/apt.conf.d/01proxy\"",
        "mkdir -p \"$root/etc/initramfs-tools/conf.d\"",
        f"printf %s {q(initramfs)} >\"$root/etc/initramfs-tools/conf.d/lab-vm\"",
        f"printf '%s\\n' {' '.join(q(m) for m in spec.modules if m != 'most')} >>\"$root/etc/initramfs-tools/modules\"",
        "mount -t proc proc \"$root/proc\"",
        "chroot \"$root\" apt-get install -y --no-install-recommends linux-image-amd64",
        "chroot \"$root\" apt-get clean",
        "umount \"$root/proc\"",
    ]) + "\n"


def build_image(spec: ImageSpec, log=print) -> Image:
    """debootstrap + kernel, packed into an ext4 image with `mkfs.ext4 -d` (nothing stays mounted)."""
    mirror = apt_mirror()
    key = spec.key(mirror)
    work = CACHE / f".build-vm-{spec.name}"
    shutil.rmtree(work, ignore_errors=True)
    rootfs = work / "rootfs"
    rootfs.mkdir(parents=True)
    logfile = work / "build.log"
    log(f"building VM image {spec.name}: debootstrap {SUITE} + linux-image-amd64 + "
        f"{' '.join(spec.packages) or 'nothing else'} (once; cached in {spec.dir})")
    started = time.monotonic()
    _build_netns_up()
    proxy = None
    try:
        proxy = apt_proxy.start(BUILD_NETNS, SWITCH_ADDRESS, PROXY_PORT, PROXY_CACHE)
        with logfile.open("w") as out:
            done = subprocess.run(["ip", "netns", "exec", BUILD_NETNS, "unshare", "--mount", "--propagation",
                                   "private", "--", "sh", "-c", _build_script(spec, rootfs, mirror)],
                                  stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if done.returncode:
            raise LabError(f"building VM image {spec.name} failed (exit {done.returncode}); see {logfile}")
    finally:
        if proxy is not None:
            proxy.stop()
        run(["ip", "netns", "delete", BUILD_NETNS], check=False)
    _customise(rootfs)
    kernel, initrd = _newest(rootfs / "boot", "vmlinuz-*"), _newest(rootfs / "boot", "initrd.img-*")
    image = work / "root.img"
    run(["mkfs.ext4", "-q", "-F", "-L", f"vm-{spec.name}", "-d", rootfs, image, spec.size], timeout=600)
    final = spec.dir
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir(parents=True)
    shutil.copy(kernel, final / "vmlinuz")
    shutil.copy(initrd, final / "initrd.img")
    if spec.hypervisor:
        with gzip.open(_newest(rootfs / "boot", "xen-*.gz")) as packed, (final / "xen.elf").open("wb") as elf:
            shutil.copyfileobj(packed, elf)
    os.replace(image, final / "root.img")
    os.replace(logfile, final / "build.log")
    seconds = round(time.monotonic() - started, 1)
    meta = {**key, "digest": _digest(key), "kernel": kernel.name, "seconds": seconds,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (final / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(work)
    log(f"built VM image {spec.name} in {seconds:.0f} s ({kernel.name})")
    return _image(spec, meta)


def _build_netns_up() -> None:
    run(["ip", "netns", "delete", BUILD_NETNS], check=False)
    for argv in (["ip", "netns", "add", BUILD_NETNS], ["ip", "-n", BUILD_NETNS, "link", "set", "lo", "up"],
                 ["ip", "-n", BUILD_NETNS, "addr", "add", f"{SWITCH_ADDRESS}/32", "dev", "lo"]):
        run(argv)


def _customise(rootfs: Path) -> None:
    """No host keys of the build (each VM gets its own), and no phoning home: DRBD's
    usage-count would try to reach the internet on create-md."""
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    common = rootfs / "etc/drbd.d/global_common.conf"
    if common.is_file():
        common.write_text(common.read_text().replace("usage-count yes;", "usage-count no;"))
    (rootfs / "root/.ssh").mkdir(mode=0o700, exist_ok=True)


def _newest(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if not found:
        raise LabError(f"no {pattern} in {directory}: the kernel package did not install")
    return found[-1]


# --- running VMs --------------------------------------------------------------------------

def proxy_command(address: str, netns: str = NETNS) -> str:
    """How the control side reaches a VM: only from inside the namespace of its switch."""
    return f"{shutil.which('ip') or 'ip'} netns exec {netns} {shutil.which('nc') or 'nc'} {address} 22"



@dataclass(frozen=True)
class Vm:
    """A running VM, as tests use it."""

    spec: VmSpec
    dir: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def qmp_socket(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    def ssh_argv(self, argv: list[str]) -> list[str]:
        """argv run in the VM over SSH, by the same way in as the tool's (its ProxyCommand)."""
        return ["ssh", "-q", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={KNOWN_HOSTS}",
                "-o", "StrictHostKeyChecking=yes",
                "-o", f"ProxyCommand={proxy_command(self.spec.address, self.spec.netns)}",
                "-o", "ConnectTimeout=10", "-i", str(CLIENT_KEY), f"root@{self.name}", "--", shlex.join(argv)]

    def ssh(self, argv: list[str], *, check: bool = False, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run(self.ssh_argv(argv), capture_output=True, text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and done.returncode:
            raise LabError(f"{self.name}: `{shlex.join(argv)}` exited {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()}")
        return done

    def qmp(self, command: str, **arguments) -> dict:
        """One QMP command (`stop`, `cont`, `quit`, `query-status`, `device_del` id=...); its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.qmp_socket))
            reader = sock.makefile("r")
            json.loads(reader.readline())            # the greeting
            answers = []
            for execute, args in (("qmp_capabilities", {}), (command, arguments)):
                sock.sendall(json.dumps({"execute": execute, "arguments": args}).encode() + b"\n")
                while True:
                    reply = json.loads(reader.readline())
                    if "return" in reply or "error" in reply:
                        answers.append(reply)
                        break
            return answers[-1]

    def pid(self) -> int | None:
        try:
            pid = int((self.dir / "qemu.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None


def switch_up(netns: str, bridge: str, address: str) -> bool:
    """A namespace whose bridge has `address`/24: a switch for VMs' taps. False if it was there."""
    if Path("/run/netns", netns).exists():
        return False
    run(["ip", "netns", "add", netns])
    for argv in (["link", "set", "lo", "up"], ["link", "add", bridge, "type", "bridge", "forward_delay", "0"],
                 ["addr", "add", f"{address}/24", "dev", bridge], ["link", "set", bridge, "up"]):
        run(["ip", "-n", netns, *argv])
    return True


def _host_key(name: str) -> Path:
    KEYS.mkdir(parents=True, exist_ok=True)
    path = KEYS / f"vm-{name}_host_ed25519_key"
    if not (path.exists() and path.with_suffix(".pub").exists()):
        path.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path])
    if not CLIENT_KEY.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "xenkvm-lab-control", "-f", CLIENT_KEY])
    return path


def _write_known_hosts(specs: list[VmSpec]) -> None:
    lines = [f"{s.name},{s.address} {' '.join(_host_key(s.name).with_suffix('.pub').read_text().split()[:2])}\n"
             for s in specs]
    KNOWN_HOSTS.write_text("".join(lines))


def _prepare_disks(spec: VmSpec, image: Image, directory: Path) -> list[Path]:
    """A fresh sparse copy of the image with this VM's keys, and its empty extra disks."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    root = directory / "root.img"
    run(["cp", "--sparse=always", image.root, root], timeout=300)
    key = _host_key(spec.name)
    init = directory / "lab-init"
    init.write_text(LAB_INIT.replace("@VM_INIT@", spec.init))
    _debugfs(root, "\n".join([
        "cd /usr/local/sbin", "rm lab-init", f"write {init} lab-init", "sif lab-init mode 0100755",
        "cd /etc/ssh",
        f"write {key} ssh_host_ed25519_key", "sif ssh_host_ed25519_key mode 0100600",
        f"write {key.with_suffix('.pub')} ssh_host_ed25519_key.pub", "sif ssh_host_ed25519_key.pub mode 0100644",
        "cd /root/.ssh", "rm authorized_keys", f"write {CLIENT_KEY.with_suffix('.pub')} authorized_keys",
        "sif authorized_keys mode 0100600", ""]), write=True)
    disks = [root]
    for name, size in spec.disks.items():
        path = directory / f"{name}.img"
        run(["truncate", "-s", size, path])
        disks.append(path)
    return disks


def _qemu_argv(spec: VmSpec, image: Image, disks: list[Path], directory: Path, tap: str) -> list[str]:
    mac = "52:54:00:77:01:%02x" % int(spec.address.rsplit(".", 1)[1])
    if image.hypervisor:
        # Xen is the multiboot kernel; dom0's kernel (with its command line) and initrd its modules
        # (qemu splits -initrd at commas: a comma inside is written twice).
        modules = f"{image.kernel} {spec.kernel_cmdline()}".replace(",", ",,") + f",{image.initrd}"
        boot = ["-kernel", image.hypervisor, "-initrd", modules, "-append", spec.xen_cmdline]
    else:
        boot = ["-kernel", image.kernel, "-initrd", image.initrd, "-append", spec.kernel_cmdline()]
    argv = ["qemu-system-x86_64", "-name", spec.name, "-machine", "pc", "-accel", "tcg", "-cpu", spec.cpu,
            "-m", str(spec.memory), "-smp", str(spec.cpus), "-nodefaults", "-display", "none", "-no-user-config",
            *boot,
            "-serial", f"file:{directory / 'console.log'}",
            "-qmp", f"unix:{directory / 'qmp.sock'},server=on,wait=off",
            "-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=net0,mac={mac}",
            "-pidfile", directory / "qemu.pid", "-daemonize"]
    for disk in disks:
        argv += ["-drive", f"file={disk},format=raw,if=virtio,cache=unsafe"]
    for device in spec.devices:
        argv += ["-device", device]
    return [str(a) for a in argv]


def _boot(spec: VmSpec, image: Image, index: int) -> Vm:
    directory = VM_WORK / spec.name
    stop(Vm(spec, directory))     # one of that name left running: its disks are about to be replaced
    disks = _prepare_disks(spec, image, directory)
    tap = f"xkvmtap{index}"
    netns, bridge = spec.switch or (NETNS, BRIDGE)
    run(["ip", "-n", netns, "link", "del", tap], check=False)
    for argv in (["tuntap", "add", tap, "mode", "tap"], ["link", "set", tap, "master", bridge],
                 ["link", "set", tap, "up"]):
        run(["ip", "-n", netns, *argv])
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), VM_MARKER: str(WORK)}
    done = subprocess.run(["ip", "netns", "exec", netns, *_qemu_argv(spec, image, disks, directory, tap)],
                          capture_output=True, text=True, env=env, timeout=60)
    if done.returncode:
        raise LabError(f"qemu for VM {spec.name} did not start: {(done.stderr or done.stdout).strip()}")
    return Vm(spec, directory)


def _wait_ready(vm: Vm, timeout: float) -> None:
    """Until sshd answers a command (the console log shows why, if it never does)."""
    def answers() -> bool:
        if vm.pid() is None:
            raise LabError(f"VM {vm.name}'s qemu exited; see {vm.console_log}")
        return vm.ssh(["true"], timeout=30).returncode == 0
    try:
        wait_for(f"VM {vm.name} to answer SSH", answers, timeout, interval=0.5)
    except LabError as exc:
        raise LabError(f"{exc}; see {vm.console_log}") from None


def start(specs: list[VmSpec], log=print, timeout: float = 180) -> dict[str, Vm]:
    """Boot the VMs at once (images built first, once) and return when all answer SSH."""
    if os.geteuid() != 0:
        raise LabError("lab VMs need root (network namespaces, taps, debugfs on images)")
    images = {s.image: ensure_image(s.image, log) for s in specs}
    switch_up(NETNS, BRIDGE, SWITCH_ADDRESS)
    _write_known_hosts(specs)
    started = time.monotonic()
    running = {s.name: _boot(s, images[s.image], i) for i, s in enumerate(specs)}
    for vm in running.values():
        _wait_ready(vm, timeout)
    log(f"VMs {', '.join(running)} answer SSH {time.monotonic() - started:.1f} s after their qemu started")
    return running


def stop(vm: Vm) -> None:
    """Power the VM off at once (qemu quits; its disks are thrown away with it at `down`)."""
    pid = vm.pid()
    if pid is not None:
        kill({pid})


def vm_pids(namespaces: list[str] | None = None) -> set[int]:
    """Every qemu of the VMs: marked ones, and any inside a VM network namespace (or only those
    inside the given ones)."""
    inodes = set()
    for name in vm_netns_names() if namespaces is None else namespaces:
        try:
            inodes.add(os.stat(f"/run/netns/{name}").st_ino)
        except OSError:
            continue
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes or namespaces is None and \
                    f"{VM_MARKER}={WORK}".encode() in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                found.add(int(entry))
        except OSError:
            continue
    return {p for p in found if alive(p)}


def vm_netns_names() -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(VM_PREFIX))
    except FileNotFoundError:
        return []


def down() -> None:
    """Every VM gone, with its network and its disks; idempotent."""
    kill(vm_pids())
    for name in vm_netns_names():
        run(["ip", "netns", "delete", name], check=False)
    shutil.rmtree(VM_WORK, ignore_errors=True)
