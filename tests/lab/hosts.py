"""One lab host: its files (prepared under .work), its view of the file system, its daemons.

The view is built inside the host's own mount namespace, so nothing of it is visible
from the machine: /etc and /var are overlays (writes land in the host's upper dir),
/etc/xen, /etc/drbd.d and /etc/xenkvm-lab are bind mounts of directories under .work,
/run, /tmp, /var/lib/libvirt and /var/log/libvirt are tmpfs,
/root is the host's own, the simulators shadow /usr/local/sbin, and /dev is a private
copy that adds /dev/drbdN and /dev/vg_main/* as nodes of this host's loop devices.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from pathlib import Path

from . import (
    CACHE,
    GUEST,
    HOST_PYTHON,
    HOSTS,
    KEYS,
    LAB,
    NETMASK,
    REPO,
    RESOURCES,
    SWAP,
    SWITCH_BRIDGE,
    SWITCH_NS,
    config,
    fleet_vms,
    host_dir,
    image,
    netns,
)
from .sim import server
from .spaces import daemon, enter, run, wait_for

SIM_BIN = LAB / "sim" / "bin"
LIBVIRT_CACHE = CACHE / "libvirt"
VIRSH = "/usr/bin/virsh"   # the real one: lab plumbing bypasses the fault wrapper
SIM_COMMANDS = {"xen": ("drbdadm",), "kvm": ("drbdadm", "virsh")}


def devices(loops: dict[str, str], fleet: int) -> dict[str, str]:
    """Block device nodes of this host -> its loop device behind each.

    /dev/drbdN and its backing "LV" /dev/vg_main/RESOURCE are the same loop device
    (there is no DRBD layer in between); the swap LV is the host's own.
    """
    nodes = {}
    for r in RESOURCES + fleet_vms(fleet):
        nodes[f"/dev/drbd{r['minor']}"] = loops[r["resource"]]
        nodes[f"/dev/vg_main/{r['resource']}"] = loops[r["resource"]]
    nodes[SWAP["path"]] = loops["swap"]
    return nodes


def link_sim_commands(host: str, toolstack: str) -> None:
    """The host's /usr/local/sbin: the simulators it has (only the configured Xen toolstack)."""
    bin_dir = host_dir(host) / "bin"
    bin_dir.mkdir()
    role = HOSTS[host]["role"]
    for name in SIM_COMMANDS[role] + ((toolstack,) if role == "xen" else ()):
        (bin_dir / name).symlink_to(SIM_BIN / name)


def prepare(host: str, settings: config.Settings) -> None:
    """Write the host's files under .work before its view is mounted (nothing survives from before)."""
    home = host_dir(host)
    shutil.rmtree(home, ignore_errors=True)
    for sub in ("etc.upper", "etc.work", "var.upper", "var.work", "root", "lab"):
        (home / sub).mkdir(parents=True)
    etc = home / "etc.upper"
    role = HOSTS[host]["role"]
    for sub in ("xenkvm-lab", "drbd.d", "ssh", *{"xen": ("xen",), "kvm": ("libvirt/hooks",)}[role]):
        (etc / sub).mkdir(parents=True)
    (etc / "hostname").write_text(host + "\n")
    (etc / "hosts").write_text(config.etc_hosts())
    (etc / "ssh/sshd_config").write_text(config.SSHD_CONFIG)
    for suffix in ("", ".pub"):
        shutil.copy(KEYS / f"{host}_host_ed25519_key{suffix}", etc / f"ssh/ssh_host_ed25519_key{suffix}")
    shutil.copy(KEYS / "id_ed25519.pub", etc / "ssh/lab_authorized_keys")
    (home / "lab/host.json").write_text(config.host_json(host, settings))
    shutil.copytree("/etc/drbd.d", home / "drbd.d")
    for r in RESOURCES + fleet_vms(settings.fleet):
        (home / "drbd.d" / f"{r['resource']}.res").write_text(config.drbd_res(r))
    if role == "xen":
        # The machine's /etc/xen holds drbd-utils' block-drbd script, as a Xen host's does.
        if Path("/etc/xen").is_dir():
            shutil.copytree("/etc/xen", home / "xen")
        (home / "xen/auto").mkdir(parents=True, exist_ok=True)
        cfg = config.real_xen_cfg(image.real_guest(settings.image).cfg.read_text()) if settings.real_guest \
            else config.xen_cfg()
        (home / "xen/auto" / Path(config.XEN_CFG).name).write_text(cfg)
        for vm in fleet_vms(settings.fleet):
            (home / "xen/auto" / f"{vm['name']}.cfg").write_text(config.fleet_cfg(vm))
        (etc / "default").mkdir(exist_ok=True)
        (etc / "default/xencommons").write_text(config.XENCOMMONS)
    else:
        (etc / "libvirt/qemu.conf").write_text(config.QEMU_CONF)
        if not settings.real_guest:   # a real guest boots in qemu itself
            hook = etc / "libvirt/hooks/qemu"
            hook.write_text(config.libvirt_hook(host))
            hook.chmod(0o755)
    link_sim_commands(host, settings.toolstack)


def view_script(host: str, loops: dict[str, str], fleet: int) -> str:
    """Shell run inside the new mount namespace to build the host's view of the file system."""
    home = host_dir(host)
    q = shlex.quote
    lines = [
        "set -eu",
        f"hostname {q(host)}",
        # /run first: the lab keeps a handle on the checkout there, in case a mount below
        # (/root, /tmp) covers the folder it lives in (a CI clone may sit under either).
        "umount --recursive --lazy /run/netns 2>/dev/null || true",
        "mount -t tmpfs -o mode=755 lab-run /run",
        "mkdir -p /run/sshd /run/lock /run/lab-repo && chmod 1777 /run/lock",
        f"mount --bind {q(str(REPO))} /run/lab-repo",
        f"mount -t overlay lab-etc -o lowerdir=/etc,upperdir={q(str(home / 'etc.upper'))},"
        f"workdir={q(str(home / 'etc.work'))} /etc",
        f"mount -t overlay lab-var -o lowerdir=/var,upperdir={q(str(home / 'var.upper'))},"
        f"workdir={q(str(home / 'var.work'))} /var",
        f"mount --bind {q(str(home / 'lab'))} /etc/xenkvm-lab",
        f"mount --bind {q(str(home / 'drbd.d'))} /etc/drbd.d",
        f"mount --bind {q(str(home / 'root'))} /root",
        f"mount --bind {q(str(home / 'bin'))} /usr/local/sbin",
        "mount -t tmpfs -o mode=1777 lab-tmp /tmp",
        # The checkout again where it was, if /root or /tmp covered it.
        f"if [ ! -d {q(str(LAB))} ]; then mkdir -p {q(str(REPO))} && mount --bind /run/lab-repo {q(str(REPO))}; fi",
    ]
    if HOSTS[host]["role"] == "xen":
        lines.append(f"mount --bind {q(str(home / 'xen'))} /etc/xen")
    else:
        lines += [f"mkdir -p {d} && mount -t tmpfs -o mode=755 lab-libvirt {d}"
                  for d in ("/var/lib/libvirt", "/var/log/libvirt")]
        lines.append("mkdir -p /var/log/libvirt/qemu")   # as the package ships it: console logs go there
        # libvirtd probes qemu for seconds unless its capabilities cache survives (it
        # revalidates the cache against the qemu and libvirtd binaries itself).
        LIBVIRT_CACHE.mkdir(parents=True, exist_ok=True)
        lines.append(f"mkdir -p /var/cache/libvirt && mount --bind {q(str(LIBVIRT_CACHE))} /var/cache/libvirt")
        lines.append("getent passwd libvirt-qemu >/dev/null || useradd --system --user-group --no-create-home "
                     "--home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu")
    # A private /dev: a copy of the machine's nodes plus this host's block devices.
    lines += [
        "d=/run/lab-dev; mkdir $d && mount -t tmpfs -o mode=755,nosuid lab-dev $d",
        "cp -a --one-file-system /dev/. $d/",
        "mkdir -p $d/pts $d/shm $d/mqueue",
        "mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts $d/pts",
        "rm -f $d/ptmx && ln -s pts/ptmx $d/ptmx",
        "mount -t tmpfs -o mode=1777,nosuid,nodev lab-shm $d/shm",
        "mount -t mqueue mqueue $d/mqueue",
        "mkdir -p $d/vg_main",
    ]
    for node, loop in devices(loops, fleet).items():
        rdev = os.stat(loop).st_rdev
        lines.append(f"mknod -m 660 $d{node[4:]} b {os.major(rdev)} {os.minor(rdev)}")
    lines += ["umount --recursive --lazy /dev", "mount --move $d /dev"]
    return "\n".join(lines) + "\n"


def network(host: str) -> None:
    """eth0 (a veth to the lab switch) enslaved to br0, the host's address on br0 (as on a Xen dom0).

    br0 gets eth0's MAC for good: left alone, a bridge takes the lowest MAC of its ports,
    so every guest start (a new vif) could change it and leave the switch's ARP entry
    pointing nowhere for seconds.
    """
    ns, addr = netns(host), HOSTS[host]["address"]
    mac = "02:77:00:00:00:%02x" % int(addr.rsplit(".", 1)[1])
    run(["ip", "-n", SWITCH_NS, "link", "add", host, "type", "veth", "peer", "name", "eth0", "address", mac,
         "netns", ns])
    run(["ip", "-n", SWITCH_NS, "link", "set", host, "master", SWITCH_BRIDGE, "up"])
    for argv in (["link", "set", "lo", "up"],
                 ["link", "add", GUEST["bridge"], "address", mac, "type", "bridge", "forward_delay", "0"],
                 ["link", "set", "eth0", "master", GUEST["bridge"], "up"],
                 ["addr", "add", f"{addr}/{NETMASK}", "dev", GUEST["bridge"]],
                 ["link", "set", GUEST["bridge"], "up"]):
        run(["ip", "-n", ns, *argv])


def build_view(host: str, pid: int, loops: dict[str, str], fleet: int) -> None:
    run(enter(pid, ["sh", "-c", view_script(host, loops, fleet)]))


def start_sim_server(pid: int) -> None:
    """The host's simulator server (sim/server.py), before anything can call a simulator."""
    daemon(pid, [HOST_PYTHON, "-I", "-S", str(SIM_BIN.parent), "--serve", server.SOCKET],
           "/var/log/xenkvm-lab-sim.log")
    wait_for("the simulator server's socket", lambda: _is_socket(Path(f"/proc/{pid}/root{server.SOCKET}")), 10)


def start_sshd(pid: int) -> None:
    daemon(pid, ["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/sshd_config"], "/var/log/sshd.log")


def start_libvirt(pid: int) -> None:
    """virtlogd first (libvirtd hands it qemu's output), then libvirtd; ready once virsh answers."""
    root = Path(f"/proc/{pid}/root")
    daemon(pid, ["/usr/sbin/virtlogd"], "/var/log/libvirt/virtlogd.out")
    wait_for("virtlogd's socket", lambda: (root / "run/libvirt/virtlogd-sock").exists(), 10)
    daemon(pid, ["/usr/sbin/libvirtd"], "/var/log/libvirt/libvirtd.out")
    wait_for("libvirtd's socket", lambda: _is_socket(root / "run/libvirt/libvirt-sock"), 20)
    wait_for("libvirtd to answer", lambda: run(enter(pid, [VIRSH, "-q", "-c", "qemu:///system", "version"]),
                                               check=False).returncode == 0, 20, interval=0.2)


def start_acpi_agent(host: str, pid: int) -> None:
    """Guests power off on `virsh shutdown` (see acpi.py); needs libvirtd running."""
    daemon(pid, config.lab_command("acpi", "--host", host), "/var/log/libvirt/acpi-agent.log")


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False
