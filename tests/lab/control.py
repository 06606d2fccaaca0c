"""Bring the lab up, reset it between test cases, take it down without leaving anything behind.

The state file (.work/lab.json) is written after every step of `up`, but `down` does
not depend on it: it also finds the lab's processes by marker and namespace, its
network namespaces by name prefix and its loop devices by backing file, so it cleans
up after a crash as well.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from . import (
    APT_PROXY_PORT,
    CLIENT_KEY,
    FLEET_DISK_SIZE,
    GUEST,
    HOST_PYTHON,
    HOSTS,
    INVENTORY,
    KEYS,
    KNOWN_HOSTS,
    NETMASK,
    RESOURCES,
    STATE_DIR,
    SWITCH_ADDRESS,
    SWITCH_BRIDGE,
    SWITCH_NS,
    WORK,
    config,
    fleet_vms,
    guest,
    host_dir,
    hosts,
    image,
    mirror,
    netns,
    realguest,
    realxen,
    spaces,
)
from .spaces import LabError, alive, enter, run

STATE = WORK / "lab.json"
REQUIRED = ("ip", "unshare", "nsenter", "setsid", "nc", "losetup", "blockdev", "mkfs.ext4", "debugfs", "mkswap",
            "debootstrap", "ssh-keygen", "/usr/sbin/sshd", "/usr/sbin/libvirtd", "/usr/sbin/virtlogd",
            "/usr/bin/virsh", "qemu-system-x86_64", "xt-create-xen-config", "drbdadm", HOST_PYTHON)


def say(line: str) -> None:
    print(f"* lab: {line}", flush=True)


def preflight() -> None:
    """Fail at once, with what is missing, instead of half-way through `up`."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (namespaces, loop devices, sshd, libvirtd); run as root")
    missing = [name for name in REQUIRED if not shutil.which(name)]
    if missing:
        raise LabError(f"missing on this machine: {', '.join(missing)} (`make deps` installs them)")
    sims = [hosts.SIM_BIN / n for n in ("xl", "xm", "drbdadm", "virsh")]
    absent = [str(p) for p in sims if not os.access(p, os.X_OK)]
    if absent:
        raise LabError(f"simulators missing or not executable: {', '.join(absent)}")


def _load() -> dict:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return {}


def _save(state: dict) -> None:
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, STATE)


def is_up() -> bool:
    """Every host runs and its sshd listens (a host that lost a daemon makes `up` start over)."""
    state = _load()
    hosts_ = state.get("hosts", {}).values()
    return bool(state.get("up")) and all(alive(h["pid"]) and spaces.listening(h["pid"], 22) for h in hosts_)


def host_pid(host: str) -> int:
    """PID 1 of a running lab host, as seen from the machine."""
    state = _load()
    if not state.get("up"):
        raise LabError("the lab is not up (python -m tests.lab up)")
    if host not in state["hosts"]:
        raise LabError(f"no lab host {host!r} (hosts: {', '.join(state['hosts'])})")
    return state["hosts"][host]["pid"]


def loops(host: str) -> dict[str, str]:
    """A running host's loop devices by resource name (and "swap")."""
    return _load()["loops"][host]


def settings() -> config.Settings:
    return config.Settings(**_load().get("settings", {}))


def ensure_keys() -> None:
    """The control side's key and one host key per host, kept across up/down (known_hosts stays valid)."""
    KEYS.mkdir(parents=True, exist_ok=True)
    wanted = {CLIENT_KEY: "xenkvm-lab-control", **{KEYS / f"{h}_host_ed25519_key": h for h in HOSTS}}
    for path, comment in wanted.items():
        if not (path.exists() and path.with_suffix(".pub").exists()):
            path.unlink(missing_ok=True)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path])


def write_known_hosts(settings_: config.Settings) -> None:
    lines = []
    for host, spec in HOSTS.items():
        key = (KEYS / f"{host}_host_ed25519_key.pub").read_text().split()[:2]
        lines.append(f"{host},{spec['address']} {' '.join(key)}\n")
    key = image.guest_host_key(settings_.image).split()[:2]
    lines.append(f"{GUEST['name']},{GUEST['address']} {' '.join(key)}\n")
    KNOWN_HOSTS.write_text("".join(lines))


def _attach_loops(state: dict, disks: dict[str, Path], fleet: int) -> None:
    """One loop device per host per disk: both hosts' /dev/drbd5 are loops over the same file.

    A fleet VM's disk is one loop that both hosts' nodes share (nothing reads it but SeaBIOS).
    """
    for host in HOSTS:
        files = {r["resource"]: disks[r["resource"]] for r in RESOURCES}
        files["swap"] = disks[f"swap@{host}"]
        loops = state["loops"].setdefault(host, {})
        for name, path in files.items():
            loops[name] = run(["losetup", "--find", "--show", path]).stdout.strip()
            _save(state)
    for vm in fleet_vms(fleet):
        path = image.DISKS / f"{vm['resource']}.img"
        run(["truncate", "-s", FLEET_DISK_SIZE, path])
        _write_idle_boot_sector(path)
        loop = run(["losetup", "--find", "--show", path]).stdout.strip()
        for host in HOSTS:
            state["loops"][host][vm["resource"]] = loop
        _save(state)


def _write_idle_boot_sector(path: Path) -> None:
    """A boot sector that halts: SeaBIOS boots it at once, instead of trying the NIC's iPXE and
    retrying every minute, which would keep 32 TCG qemus busy and measure the lab, not the tool."""
    with path.open("r+b") as disk:
        disk.write(bytes([0xFA, 0xF4, 0xEB, 0xFD]))   # cli; hlt; jmp back to hlt
        disk.seek(510)
        disk.write(b"\x55\xaa")


def _seed_simulators(fleet: int) -> None:
    """The simulators' initial state: every resource up, connected, UpToDate, Primary on xen1."""
    from . import sim

    shutil.rmtree(STATE_DIR, ignore_errors=True)
    STATE_DIR.mkdir(parents=True)
    xen, kvm = _host_of("xen"), _host_of("kvm")
    vms = {GUEST["name"]: {"xen_host": xen, "kvm_host": kvm, "resources": [r["resource"] for r in RESOURCES]}}
    vms.update({vm["name"]: {"xen_host": xen, "kvm_host": kvm, "resources": [vm["resource"]]}
                for vm in fleet_vms(fleet)})
    for r in RESOURCES + fleet_vms(fleet):
        device = f"/dev/drbd{r['minor']}"
        sim.seed_resource(str(STATE_DIR), r["resource"], r["minor"], {xen: device, kvm: device}, primary=xen)
    sim.write_vms(str(STATE_DIR), vms)


def _host_of(role: str) -> str:
    return next(name for name, spec in HOSTS.items() if spec["role"] == role)


def _boot_guests(settings_: config.Settings) -> None:
    """Start the guests as their operator would: `xl create` (or xm) on xen1 for each cfg."""
    host = _host_of("xen")
    cfgs = [config.XEN_CFG, *(f"/etc/xen/auto/{vm['name']}.cfg" for vm in fleet_vms(settings_.fleet))]
    script = 'for cfg; do "$0" create "$cfg" >/dev/null || { echo "$0 create $cfg failed" >&2; exit 1; }; done'
    done = exec_(host, ["sh", "-c", script, settings_.toolstack, *cfgs], capture_output=True, text=True,
                 timeout=60 + len(cfgs))
    if done.returncode:
        raise LabError(f"{host}: {(done.stderr or done.stdout).strip()}")


def _publish(settings_: config.Settings) -> None:
    write_known_hosts(settings_)
    INVENTORY.write_text(config.inventory(settings_))


def up(settings_: config.Settings | None = None) -> None:
    """Bring the lab up; when it is up already, only apply settings that differ (by a reset)."""
    preflight()
    settings_ = settings_ or config.Settings()
    if is_up():
        if settings() != settings_:
            reset(settings_)
        return
    if _load() or spaces.netns_names() or spaces.lab_pids():
        down()
    started = time.monotonic()
    image.ensure(say, settings_.image)
    ensure_keys()
    WORK.mkdir(parents=True, exist_ok=True)
    state = {"settings": settings_.as_dict(), "hosts": {}, "loops": {}, "up": False}
    _save(state)
    disks = image.restore(HOSTS, CLIENT_KEY.with_suffix(".pub"), settings_.image)
    _attach_loops(state, disks, settings_.fleet)
    run(["ip", "netns", "add", SWITCH_NS])
    for argv in (["link", "set", "lo", "up"], ["link", "add", SWITCH_BRIDGE, "type", "bridge"],
                 ["addr", "add", f"{SWITCH_ADDRESS}/{NETMASK}", "dev", SWITCH_BRIDGE],
                 ["link", "set", SWITCH_BRIDGE, "up"]):
        run(["ip", "-n", SWITCH_NS, *argv])
    if settings_.real_guest:
        # The real guest's apt (its xen-tools apt_proxy) reaches the Debian mirror only here.
        mirror.spawn(SWITCH_NS, SWITCH_ADDRESS, APT_PROXY_PORT, realguest.PROXY_CACHE,
                     logfile=WORK / "apt-proxy.log", env=spaces.marked_env())
    for host in HOSTS:
        hosts.prepare(host, settings_)
        run(["ip", "netns", "add", netns(host)])
        outer, pid = spaces.start_host(netns(host), host_dir(host) / "holder.log")
        state["hosts"][host] = {"outer": outer, "pid": pid}
        _save(state)
        hosts.network(host)
        hosts.build_view(host, pid, state["loops"][host], settings_.fleet)
        hosts.start_sim_server(pid)
        hosts.start_sshd(pid)
        if HOSTS[host]["role"] == "kvm":
            hosts.start_libvirt(pid)
            hosts.start_acpi_agent(host, pid)
    for host, h in state["hosts"].items():
        spaces.wait_for(f"sshd on {host}", lambda h=h: spaces.listening(h["pid"], 22), 10)
    state["up"] = True
    _save(state)
    try:
        _seed_simulators(settings_.fleet)
        if settings_.xen == "real":
            realxen.boot_guest(settings_.image, say)
        else:
            _boot_guests(settings_)
    except BaseException:
        down()   # a lab whose guests did not boot is not up
        raise
    _publish(settings_)
    say(f"up in {time.monotonic() - started:.1f}s; inventory {INVENTORY}")


def reset(settings_: config.Settings | None = None) -> None:
    """Back to the initial state: guest on xen1 (Primary), kvm1 Secondary, no KVM domain, no faults.

    The hosts are started afresh (about a second) rather than repaired, so nothing an
    earlier test did survives: no file it wrote on a host, no command left hanging, no
    domain, no simulator state.  Works whether the lab is up or not.
    """
    settings_ = settings_ or settings()
    down()
    up(settings_)


def down() -> None:
    """Stop everything the lab started; idempotent, and thorough even after a crash."""
    state = _load()
    if realxen.running():
        realxen.release()   # the real Xen VM outlives the lab: its domains and disks do not
    pids = spaces.lab_pids() | {h[k] for h in state.get("hosts", {}).values() for k in ("outer", "pid")}
    spaces.kill(pids)
    for name in spaces.netns_names():
        run(["ip", "netns", "delete", name])
    _release_netns_dir()
    for loop in lab_loops():
        run(["losetup", "--detach", loop], check=False)
    try:
        spaces.wait_for("the lab's loop devices to detach", lambda: not lab_loops(), 5)
    except spaces.LabError:
        _thaw_orphans(lab_loops())
        spaces.wait_for("the lab's loop devices to detach", lambda: not lab_loops(), 10)
    for mount in lab_mounts():
        run(["umount", "--lazy", mount], check=False)
    for sub in ("hosts", "guests", "disks", "state"):
        shutil.rmtree(WORK / sub, ignore_errors=True)
    STATE.unlink(missing_ok=True)


def _release_netns_dir() -> None:
    """`ip netns add` bind-mounts /run/netns on itself; undo that when no namespace is left in it."""
    netns_dir = Path("/run/netns")
    mounted = any(line.split()[4] == str(netns_dir) for line in Path("/proc/self/mountinfo").read_text().splitlines())
    if netns_dir.is_dir() and not any(netns_dir.iterdir()):
        if mounted:
            run(["umount", netns_dir])
        netns_dir.rmdir()


def _thaw_orphans(loops: list[str]) -> None:
    """Thaw the file systems a killed run left frozen (fsfreeze in a guest that then died).

    Their mount namespace is gone, but a frozen superblock cannot be released, so the loop
    device stays open; mounting it again reaches the same superblock, which can then be thawed.
    """
    for loop in loops:
        with tempfile.TemporaryDirectory(prefix="xenkvm-thaw-") as point:
            if run(["mount", loop, point], check=False, timeout=20).returncode == 0:
                run(["fsfreeze", "--unfreeze", point], check=False, timeout=10)
                run(["umount", point], check=False, timeout=30)


def lab_loops() -> list[str]:
    """Loop devices whose backing file is one of the lab's (also a deleted one)."""
    out = run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE"]).stdout
    devices = json.loads(out).get("loopdevices", []) if out.strip() else []
    return [d["name"] for d in devices if (d.get("back-file") or "").startswith(str(WORK) + "/")]


def lab_mounts() -> list[str]:
    """Mount points under the lab's directories in the machine's own mount namespace."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith((str(WORK) + "/", str(image.CACHE) + "/")):
            found.append(point)
    return sorted(found, reverse=True)


def leftovers() -> dict[str, list]:
    """What of the lab still exists on the machine; all empty once `down` is done."""
    return {"processes": sorted(spaces.lab_pids()), "netns": spaces.netns_names(),
            "loops": lab_loops(), "mounts": lab_mounts()}


def lab_state() -> dict:
    """The simulators' view (roles, domains, calls), with KVM domains' state from the real libvirt."""
    from . import sim

    def kvm_running(host: str, name: str) -> bool:
        out = run(enter(host_pid(host), [hosts.VIRSH, "-c", "qemu:///system", "domstate", name]),
                  check=False).stdout
        return out.strip() == "running"

    if not is_up():
        raise LabError("the lab is not up (python -m tests.lab up)")
    return sim.lab_state(str(STATE_DIR), kvm_running=kvm_running)


def exec_argv(host: str, argv: list[str]) -> list[str]:
    """argv run on a lab host (or inside the running guest) as an SSH session there would run it."""
    env = ["env", "-i", f"PATH={spaces.HOST_PATH}", "HOME=/root", "LANG=C.UTF-8", "USER=root", "LOGNAME=root"]
    if host == GUEST["name"]:
        return ["nsenter", "-t", str(_guest_pid()), "-a", "-r", "-w", "--", *env, *argv]
    return ["nsenter", "-t", str(host_pid(host)), "-m", "-u", "-i", "-n", "-p", "--wd=/root", "--", *env, *argv]


def _guest_pid() -> int:
    """The guest's PID 1 as the machine sees it, found by the network namespace its record names.

    (Its record holds the pid inside its host; sshd overwrites its own environment, so
    the marker cannot be read from it.)
    """
    record = guest.running(GUEST["name"])
    if not record or "netns" not in record:
        raise LabError(f"guest {GUEST['name']} is not running")
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}/ns/net").st_ino == record["netns"]:
                status = Path(f"/proc/{entry}/status").read_text()
                if next(line for line in status.splitlines() if line.startswith("NSpid:")).split()[-1] == "1":
                    return int(entry)
        except OSError:
            continue
    raise LabError(f"guest {GUEST['name']} is not running")


def exec_(host: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(exec_argv(host, argv), **kwargs)
