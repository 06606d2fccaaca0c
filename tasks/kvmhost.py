"""Stage: the KVM host. Render and define the libvirt domain, rehearse it on snapshots, keep the
copy of the guest's kernel that a direct-kernel domain boots; the domain's state, start and
shutdown by hand (through hypervisors.KvmHost).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from invoke import Collection

from . import drbd, hypervisors, inventory, rehearsals, vmplan
from .cli import task
from .errors import GuardError, InputError, ToolError, shown
from .formats.readiness import parse_kernel_banner
from .hypervisors import DEFAULT_SHUTDOWN_TIMEOUT, KvmHost
from .inventory import VM, Inventory, ReplicatedDisk
from .localdisk import plan_swap_matches
from .output import log
from .rehearsals import Rehearsal
from .remote import Remote, RemoteError, replaced_by, site_from_context
from .ssh import describe_ssh_error

XML_DIR = "/var/lib/xenkvm"
REHEARSAL_SUFFIX = "-rehearsal"
LOGIN_PROMPT = r"login: *$"     # getty's prompt on the serial console: the guest has booted
COPY_CHUNK = 1 << 20

# The sha256 of "$1" (exit 66: no such file; 69: no sha256sum, as on Debian 4).
_SHA256 = '[ -e "$1" ] || exit 66; command -v sha256sum >/dev/null || exit 69; sha256sum < "$1"'
# Kernel "$1" and initrd "$2" both there and not empty (else exit 66); the version record "$3" if any.
_FETCHED = '[ -s "$1" ] && [ -s "$2" ] || exit 66; cat -- "$3" 2>/dev/null || :'
# Into directory "$1", pairs NAME STAGED: every staged file copied beside its target first, then
# all renamed back to back, so the kernel and its initrd change together.
_INSTALL = ('set -e; dir=$1; shift; mkdir -p -- "$dir"; names=; '
            'while [ $# -gt 0 ]; do cat -- "$2" > "$dir/.$1.new"; rm -f -- "$2"; chmod 644 -- "$dir/.$1.new"; '
            'names="$names $1"; shift 2; done; '
            'for name in $names; do mv -f -- "$dir/.$name.new" "$dir/$name"; done')


def render_checked(spec) -> str:
    """Render and validate against libvirt's schema where this machine has it."""
    from .formats.domainxml import DomainXmlError, default_schema_dir, render_domain_xml, validate_domain_xml

    try:
        xml = render_domain_xml(spec)
        schemas = default_schema_dir()
        if schemas is not None:
            validate_domain_xml(xml, schemas)
    except DomainXmlError as exc:
        raise ToolError(f"domain XML for {spec.name} is not valid: {exc}") from None
    return xml


def rendered_domain(site, vm: VM) -> str:
    """The VM's domain XML as its cfg and the inventory give it now, validated."""
    return render_checked(vmplan.of_vm(site, vm, kvm_devices=True).domain_spec())


def xml_path(name: str) -> str:
    return f"{XML_DIR}/{name}.xml"


def define_domain(kvm: KvmHost, name: str, xml: str, *, was_new: bool | None = None) -> bool:
    """The domain's XML in XML_DIR, defined (KvmHost.define)."""
    return kvm.define(name, xml, xml_path(name), was_new=was_new)


# -- rehearsal on snapshots -------------------------------------------------------------------

# A VG or LV name as LVM allows it (lvm(8), VALID NAMES).
LVM_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,127}")


def parse_lvs_names(text: str) -> tuple[str, str]:
    """`lvs --noheadings -o vg_name,lv_name PATH` -> (VG, LV); ValueError for anything else."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if len(rows) != 1 or len(rows[0]) != 2 or not all(LVM_NAME.fullmatch(name) for name in rows[0]):
        raise ValueError("not one VG and LV name")
    return rows[0][0], rows[0][1]


def logical_volume(remote: Remote, path: str) -> tuple[str, str]:
    """The VG and LV of the volume at `path`, as LVM itself names them: a /dev/mapper/VG-LV name
    doubles every dash inside VG and LV, so the path alone does not tell them apart."""
    outcome = remote.probe(["lvs", "--noheadings", "-o", "vg_name,lv_name", path])
    try:
        if not outcome.ok:
            raise ValueError(f"lvs exit {outcome.exit_code}")
        return parse_lvs_names(outcome.stdout)
    except ValueError as exc:
        raise ToolError(f"{remote.name}: {path} is not a logical volume LVM can name ({exc}): "
                        f"rehearse with --method qcow2") from None


class LvmSnapshot:
    """An LVM snapshot of the backing LV: writes land in the snapshot, the LV stays as it was."""

    kind, format = "block", "raw"

    def __init__(self, size: str = "1G"):
        self.size = size

    def create(self, remote: Remote, source: str, name: str) -> str:
        vg, lv = logical_volume(remote, source)
        remote.change(["lvcreate", "--snapshot", "--name", name, "--size", self.size, f"{vg}/{lv}"])
        return f"/dev/{vg}/{name}"

    def remove(self, remote: Remote, path: str) -> None:
        remote.change(["lvremove", "-f", path])


class Qcow2Overlay:
    """A qcow2 overlay backed by the volume: qemu opens the backing read-only."""

    kind, format = "file", "qcow2"

    def create(self, remote: Remote, source: str, name: str) -> str:
        path = f"{XML_DIR}/rehearsal/{name}.qcow2"
        remote.change(["mkdir", "-p", f"{XML_DIR}/rehearsal"], quiet=True)
        remote.change(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", source, path])
        return path

    def remove(self, remote: Remote, path: str) -> None:
        remote.change(["rm", "-f", "--", path])


SNAPSHOT_METHODS = {"lvm": LvmSnapshot, "qcow2": Qcow2Overlay}


def rehearsal_sources(vm: VM, spec) -> list[str]:
    """The volumes to snapshot on the KVM host, in the spec's disk order.

    A DRBD device cannot be opened while Secondary, so replicated disks are
    snapshotted through their backing volume.
    """
    by_device = {}
    for i, disk in enumerate(vm.disks):
        if isinstance(disk, ReplicatedDisk):
            backing = disk.backing.get(vm.kvm_host)
            if backing is None:
                raise InputError(f"vms.{vm.name}.disks[{i}].backing is needed to rehearse on snapshots")
            by_device[disk.device[vm.kvm_host]] = backing
    return [by_device.get(d.source, d.source) for d in spec.disks]


def booted_kernel(remote: Remote, name: str) -> str | None:
    """The kernel version the domain's serial console announced at boot (`Linux version ...`), if any."""
    from .formats.domainxml import console_log
    banner = remote.probe(["grep", "-m", "1", "-o", "-E", "Linux version [^ ]+", console_log(name)])
    return parse_kernel_banner(banner.stdout) if banner.ok else None


def console_shows_login(remote: Remote, name: str) -> bool:
    """Whether the domain's serial console has printed a login prompt (getty is up: it booted)."""
    from .formats.domainxml import console_log
    return remote.probe(["grep", "-q", "-E", LOGIN_PROMPT, console_log(name)]).ok


def rehearse_vm(site, inv: Inventory, vm: VM, *, seconds: float = 20.0, method: str | None = None,
                snapshot_size: str = "1G", login: bool = False) -> str | None:
    """Boot a throwaway copy of the VM on snapshots and discard it; cleanup always runs.

    It passes when the domain keeps running for `seconds`, or with `login` as soon as its
    serial console shows a login prompt (within `seconds`). Returns the kernel that booted, as
    its console announced it, else the direct-kernel copy's version; None when unknown.
    """
    from .formats.domainxml import console_log
    kvm = hypervisors.kvm(site, vm.kvm_host)
    host, remote = kvm.host, kvm.remote
    spec = vmplan.of_vm(site, vm, kvm_devices=True).domain_spec()
    sources = rehearsal_sources(vm, spec)
    snapper: LvmSnapshot | Qcow2Overlay = (LvmSnapshot(snapshot_size) if (method or vm.snapshot) == "lvm"
                                           else Qcow2Overlay())
    fetched = require_fetched_kernel(remote, vm) if vm.boot == "direct-kernel" else None
    if fetched:
        log.info(f"* {host.name}: {vm.name} boots kernel {fetched} ... ok")
    try:
        for swap in plan_swap_matches(site, vm, vm.xen_host, host.name):
            log.info(f"  note: {host.name}:{swap.path} lacks the UUID of {vm.name}'s swap, so the trial may wait for "
                f"it at boot (systemd: 90 s); `fab match-swap --vm {vm.name} --to kvm` gives it that UUID")
    except GuardError as exc:   # the trial writes only a snapshot of it: a note, not a refusal
        log.info(f"  note: {exc}")
    name = f"{vm.name}{REHEARSAL_SUFFIX}"
    if kvm.state(name) != "not found":
        raise ToolError(f"{host.name}: a domain {name} exists from an earlier rehearsal; "
                        f"remove it (virsh destroy/undefine) and its snapshots first")
    snapshots: list[str] = []
    domain_attempted = False
    try:
        disks = []
        for disk, source in zip(spec.disks, sources, strict=True):
            path = snapper.create(remote, source, f"{vm.name}-{disk.target}{REHEARSAL_SUFFIX}")
            snapshots.append(path)
            disks.append(dataclasses.replace(disk, source=path, kind=snapper.kind, format=snapper.format))
        # No network: the real guest still runs on Xen with the same MAC and address.
        trial = dataclasses.replace(spec, name=name, uuid=None, disks=tuple(disks), interfaces=())
        domain_attempted = True
        define_domain(kvm, name, render_checked(trial))
        remote.change(["rm", "-f", "--", console_log(name)], quiet=True)   # an earlier trial's prompt
        kvm.start_named(name)
        if remote.dry_run:
            return None
        started = time.monotonic()
        next_report = started + 30
        while time.monotonic() - started < seconds:
            state = kvm.state(name)
            if state != "running":
                raise ToolError(f"{host.name}: rehearsal domain {name} is {state} after "
                                f"{time.monotonic() - started:.0f}s; its console: {console_log(name)}")
            if login and console_shows_login(remote, name):
                log.info(f"* {host.name}: {name} booted to a login prompt on snapshots in "
                    f"{time.monotonic() - started:.0f}s ... ok")
                return booted_kernel(remote, name) or fetched
            if time.monotonic() >= next_report:
                log.info(f"  {host.name}: {name} {'booting' if login else 'running'} ... "
                    f"{time.monotonic() - started:.0f}s of {seconds:.0f}s")
                next_report += 30
            remote.interruption.sleep(1.0)   # a stop request (a fleet's Ctrl-C) ends the trial, cleaned up
        if login:
            raise ToolError(f"{host.name}: no login prompt on {name}'s console in {seconds:.0f}s; "
                            f"read {console_log(name)} on {host.name}")
        log.info(f"* {host.name}: {name} ran for {seconds:.0f}s on snapshots ... ok")
        return booted_kernel(remote, name) or fetched
    finally:
        cleanup_errors = []
        steps = [(lambda: kvm.destroy(name)), (lambda: kvm.undefine(name))] \
            if domain_attempted else []
        steps += [functools.partial(snapper.remove, remote, p) for p in reversed(snapshots)]
        for step in steps:
            try:
                step()
            except ToolError as exc:
                cleanup_errors.append(str(exc))
        if cleanup_errors:
            log.warning("! rehearsal cleanup left something behind: " + "; ".join(cleanup_errors))


def rehearse_and_record(site, inv: Inventory, vm: VM, records: Path, **trial) -> Rehearsal | None:
    """rehearse_vm, its outcome recorded in `records` for `fab readiness` (a dry run records nothing).

    A failure is recorded too (the last rehearsal failed), then raised; an interruption is not."""
    xml_sha256 = hashlib.sha256(rendered_domain(site, vm).encode()).hexdigest()

    def outcome(passed: bool, kernel: str | None, message: str) -> Rehearsal:
        return Rehearsal(vm.name, datetime.now(timezone.utc).isoformat(timespec="seconds"), vm.kvm_host, passed,
                         kernel, bool(trial.get("login")), xml_sha256, message)

    try:
        kernel = rehearse_vm(site, inv, vm, **trial)
    except ToolError as exc:
        if not site.dry_run:
            rehearsals.save(records, outcome(False, None, str(exc)))
        raise
    if site.dry_run:
        return None
    passed = outcome(True, kernel, "")
    rehearsals.save(records, passed)
    return passed


# -- the kernel a direct-kernel domain boots --------------------------------------------------

@dataclass(frozen=True)
class BootFile:
    name: str       # vmlinuz or initrd.img: its name in boot_dir(), where the domain XML points
    source: str     # its path in the guest
    sha256: str     # as the guest reported it


def boot_dir(vm_name: str) -> str:
    from .formats.domainxml import BOOT_DIR
    return f"{BOOT_DIR}/{vm_name}"


def file_sha256(remote: Remote, path: str) -> str | None:
    """The file's sha256, None when it does not exist; hashed over SFTP where the host has no
    sha256sum (Debian 4's coreutils predates it)."""
    outcome = remote.probe(["sh", "-c", _SHA256, "sh", path])
    if outcome.exit_code == 66:
        return None
    if outcome.exit_code == 69:
        return _sftp_sha256(remote, path)
    if not outcome.ok:
        raise RemoteError(remote.name, f"sha256sum {path}", outcome.exit_code, outcome.stderr)
    return outcome.stdout.split()[0]


def _sftp_sha256(remote: Remote, path: str) -> str:
    started = time.monotonic()
    digest = hashlib.sha256()
    try:
        with remote.sftp() as sftp, sftp.open(path, "r") as fh:
            fh.prefetch()
            for chunk in iter(lambda: fh.read(COPY_CHUNK), b""):
                digest.update(chunk)
    except Exception as exc:  # permission, connection loss: this host's failure, in one line
        raise ToolError(f"{remote.name}: cannot read {path} over SFTP: {describe_ssh_error(exc)}") from None
    remote.audit.record(remote.name, f"sftp sha256 {path}", 0, time.monotonic() - started, "probe")
    return digest.hexdigest()


def _stream(source: Remote, path: str, dest: Remote, staged: str) -> tuple[int, str]:
    """One file from source to a private temp file on dest, through this machine over both SFTP
    connections (the two hosts need not reach each other); its size and sha256."""
    started = time.monotonic()
    digest, size = hashlib.sha256(), 0
    try:
        with source.sftp() as src_sftp, dest.sftp() as dst_sftp, \
                src_sftp.open(path, "r") as src, dst_sftp.open(staged, "wx") as dst:
            dst.chmod(0o600)
            dst.set_pipelined(True)
            src.prefetch()
            for chunk in iter(lambda: src.read(COPY_CHUNK), b""):
                digest.update(chunk)
                dst.write(chunk)
                size += len(chunk)
    except Exception as exc:
        raise ToolError(f"copying {source.name}:{path} to {dest.name} failed: {describe_ssh_error(exc)}") from None
    dest.audit.record(dest.name, f"sftp copy {source.name}:{path} -> {staged}", 0,
                      time.monotonic() - started, "upload")
    return size, digest.hexdigest()


def copy_boot_files(guest: Remote, kvm: Remote, directory: str, files: list[BootFile]) -> None:
    """Copy the files into directory on the KVM host: all staged and checked against the sha256
    the guest reported first, then installed in one command, so a failed copy installs nothing."""
    import uuid
    if kvm.dry_run:
        for f in files:
            log.info(f"  would copy {guest.name}:{f.source} to {kvm.name}:{directory}/{f.name}")
        return
    staged = {f.name: f"/tmp/.xenkvm-{uuid.uuid4().hex}" for f in files}
    try:
        for f in files:
            started = time.monotonic()
            size, digest = _stream(guest, f.source, kvm, staged[f.name])
            if digest != f.sha256:
                raise ToolError(f"{guest.name}:{f.source} changed while it was copied (a kernel "
                                f"upgrade running?): run this again when it is done")
            log.info(f"* {kvm.name}: copy {guest.name}:{f.source} ({size / 1e6:.1f} MB) ... ok "
                f"{time.monotonic() - started:.1f}s")
    except (Exception, KeyboardInterrupt):
        kvm.change(["rm", "-f", "--", *staged.values()], quiet=True)
        raise
    started = time.monotonic()
    kvm.change(["sh", "-c", _INSTALL, "sh", directory, *(a for f in files for a in (f.name, staged[f.name]))],
               quiet=True)
    log.info(f"* {kvm.name}: install {', '.join(f.name for f in files)} in {directory} ... ok "
        f"{time.monotonic() - started:.1f}s")


def fetch_guest_kernel(site, vm: VM) -> str:
    """Copy the guest's newest kernel that boots under KVM, and its initrd, to the KVM host, where
    the direct-kernel domain boots them; files whose sha256 matches stay. Returns the version."""
    from .guest import newest_bootable_kernel
    if vm.boot != "direct-kernel":
        raise InputError(f"vms.{vm.name}.boot is {vm.boot}: only a direct-kernel VM boots a kernel "
                         f"copied to its KVM host")
    guest, kvm = site.guest(vm), site.host(vm.kvm_host)
    version = newest_bootable_kernel(guest, vm.name)
    log.info(f"* {guest.name}: newest kernel that boots under KVM: {version}")
    wanted = []
    for name, source in (("vmlinuz", f"/boot/vmlinuz-{version}"), ("initrd.img", f"/boot/initrd.img-{version}")):
        digest = file_sha256(guest, source)
        if digest is None:
            fix = f": make it in the guest with `update-initramfs -c -k {version}`" if name == "initrd.img" else ""
            raise GuardError(f"{guest.name}: {source} is missing{fix}")
        wanted.append(BootFile(name, source, digest))
    directory = boot_dir(vm.name)
    stale = []
    for f in wanted:
        if file_sha256(kvm, f"{directory}/{f.name}") == f.sha256:
            log.info(f"* {kvm.name}: {directory}/{f.name} ... unchanged")
        else:
            stale.append(f)
    if stale:
        copy_boot_files(guest, kvm, directory, stale)
    kvm.edit_file(f"{directory}/version", replaced_by(f"{version}\n"), create=True)
    return version


def fetched_kernel(remote: Remote, vm_name: str) -> str | None:
    """The version of the kernel a direct-kernel VM boots on this KVM host ("unknown" without
    its record), None when the kernel or initrd is missing; one probe."""
    directory = boot_dir(vm_name)
    outcome = remote.probe(["sh", "-c", _FETCHED, "sh", f"{directory}/vmlinuz", f"{directory}/initrd.img",
                            f"{directory}/version"])
    if outcome.exit_code == 66:
        return None
    if not outcome.ok:
        raise RemoteError(remote.name, f"test -s {directory}/vmlinuz", outcome.exit_code, outcome.stderr)
    return outcome.stdout.strip() or "unknown"


def require_fetched_kernel(remote: Remote, vm: VM) -> str:
    """The fetched kernel's version; GuardError when a direct-kernel domain would find none."""
    version = fetched_kernel(remote, vm.name)
    if version is None:
        raise GuardError(f"{remote.name}: {boot_dir(vm.name)} lacks vmlinuz or initrd.img, which {vm.name} "
                         f"boots (boot: direct-kernel): run `fab kvmhost.fetch-kernel --vm {vm.name}`")
    return version


# -- tasks -------------------------------------------------------------------------------------

def _context(c, vm_name: str, dry_run: bool = False):
    inv = inventory.from_context(c)
    vm = inv.vm(vm_name)
    return inv, vm, site_from_context(c, inv, dry_run), inv.host(vm.kvm_host)


@task(help={"cfg": "path of a Xen guest cfg on this machine",
            "vm": "VM name from the inventory: take disks, MACs, bus and type from it",
            "drbd_version": "DRBD version on the KVM host, for drbd:RES disks without --vm "
                            "(default 8.4 or later: /dev/drbd/by-res/RES/0; 8.3: /dev/drbd/by-res/RES)"})
def render_xml(c, cfg, vm=None, drbd_version=None):
    """Print the libvirt domain XML for a Xen cfg (offline preview; contacts nothing)."""
    if drbd_version is not None and not re.fullmatch(r"\d+(\.\d+)*", drbd_version):
        raise InputError(f"--drbd-version must be a version such as 8.3, 8.4 or 9, got {shown(drbd_version)}")
    model = inventory.from_context(c).vm(vm) if vm else None
    sys.stdout.write(render_checked(vmplan.of_file(cfg, model, drbd_version=drbd_version).domain_spec()))


@task(help={"vm": "VM name from the inventory", "dry_run": "show the XML diff, change nothing"})
def define(c, vm, dry_run=False):
    """Render the VM's domain from its Xen cfg, upload it and define it with libvirt."""
    inv, model, site, host = _context(c, vm, dry_run)
    define_domain(hypervisors.kvm(site, host.name), model.name, rendered_domain(site, model))


@task(help={"vm": "VM name from the inventory"})
def state(c, vm):
    """Print the VM's domain state on its KVM host (virsh list --all), and for a
    direct-kernel VM the kernel it boots there."""
    _, model, site, host = _context(c, vm)
    remote = site.host(host.name)
    print(f"{host.name}: {model.name} {hypervisors.on(site, host.name).state(model.name)}")
    if model.boot == "direct-kernel":
        version = fetched_kernel(remote, model.name)
        print(f"{host.name}: {model.name} boots kernel {version} from {boot_dir(model.name)}" if version else
              f"{host.name}: {model.name} has no kernel in {boot_dir(model.name)}: "
              f"run `fab kvmhost.fetch-kernel --vm {model.name}`")


@task(help={"vm": "VM name from the inventory (one with boot: direct-kernel)",
            "dry_run": "probe both sides and say what would be copied; change nothing"})
def fetch_kernel(c, vm, dry_run=False):
    """Copy the guest's newest KVM-bootable kernel and its initrd to the KVM host, for a
    direct-kernel VM; run it again after every kernel or initramfs change in the guest."""
    inv = inventory.from_context(c)
    fetch_guest_kernel(site_from_context(c, inv, dry_run), inv.vm(vm))


@task(help=drbd.start_help("Xen"))
def start(c, vm, allow_disconnected=False, dry_run=False):
    """Start the VM's (defined) domain on its KVM host, once its DRBD resources are Primary there
    and the domain is not running on the Xen host."""
    _, model, site, host = _context(c, vm, dry_run)
    drbd.start_guarded(site, model, host.name, lambda: hypervisors.on(site, host.name).start(model),
                       allow_disconnected=allow_disconnected)


@task(help={"vm": "VM name from the inventory",
            "timeout": f"seconds to wait for a graceful shutdown (default {DEFAULT_SHUTDOWN_TIMEOUT:.0f})",
            "force": "destroy the domain if it has not shut down after the wait",
            "dry_run": "show the commands, change nothing"})
def shutdown(c, vm, timeout=DEFAULT_SHUTDOWN_TIMEOUT, force=False, dry_run=False):
    """Shut the VM's domain down on its KVM host and wait until it is off."""
    _, model, site, host = _context(c, vm, dry_run)
    hypervisors.on(site, host.name).shutdown(model.name, timeout=float(timeout), force=force)


@task(help={"vm": "VM name from the inventory",
            "seconds": "how long the trial domain must keep running (default 20)",
            "method": "snapshot method: lvm (default from the inventory) or qcow2",
            "size": "LVM snapshot size (default 1G)",
            "login": "pass once the serial console shows a login prompt (within --seconds)",
            "dry_run": "show the commands, change nothing"})
def rehearse(c, vm, seconds=20.0, method=None, size="1G", login=False, dry_run=False):
    """Boot a throwaway copy of the VM on snapshots of its disks, then discard it; the outcome
    (when, which kernel, passed) is kept in STATE_DIR/rehearsals for `fab readiness`."""
    if method is not None and method not in SNAPSHOT_METHODS:
        raise InputError(f"--method must be one of {', '.join(SNAPSHOT_METHODS)}, got {method!r}")
    inv, model, site, _ = _context(c, vm, dry_run)
    rehearse_and_record(site, inv, model, rehearsals.rehearsal_dir(c), seconds=float(seconds), method=method,
                        snapshot_size=size, login=login)


ns = Collection("kvmhost", render_xml, define, state, start, shutdown, rehearse, fetch_kernel)
