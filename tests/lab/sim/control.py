"""What the lab's control side (fixtures, the virsh wrapper, tests) calls: seed resources,
describe the VMs, note KVM domains, and read back one report of the whole lab."""

from . import model


def seed_resource(state_dir, name, minor, hosts, primary, uptodate=True):
    """Create (or reset) a resource that is up and connected on every host in `hosts`
    ({host: device path on that host}), with meta data, `primary` (or nobody) Primary and
    UpToDate data everywhere, or Inconsistent data everywhere if not `uptodate`."""
    if primary is not None and primary not in hosts:
        raise ValueError(f"primary {primary!r} is not one of the hosts {sorted(hosts)}")
    if primary is not None and not uptodate:
        raise ValueError("a Primary needs UpToDate data: seed uptodate, or no primary")
    dstate = model.UPTODATE if uptodate else model.INCONSISTENT
    with model.transaction(state_dir, "seed") as st:
        nodes = {}
        for host, device in hosts.items():
            nodes[host] = {**model.new_node(device), "md": True, "up": True, "connect": True, "dstate": dstate,
                           "role": model.PRIMARY if host == primary else model.SECONDARY}
        model.resources(st)[name] = {"minor": minor, "hosts": nodes, "sync": None}
        st.changed("drbd")
        st.event("drbd.seeded", None, resource=name, minor=minor, hosts=hosts, primary=primary, dstate=dstate)


def write_vms(state_dir, vms):
    """Which hosts and DRBD resources belong to each VM:
    {vm: {"xen_host": ..., "kvm_host": ..., "resources": [...]}}."""
    for vm, spec in vms.items():
        missing = {"xen_host", "kvm_host", "resources"} - set(spec)
        if missing:
            raise ValueError(f"vm {vm!r} lacks {sorted(missing)}")
    with model.transaction(state_dir, "control") as st:
        st.replace("vms", {vm: dict(spec) for vm, spec in vms.items()})
        st.event("vms.written", None, vms=sorted(vms))


def open_domain_disks(state_dir, host, name, drbd_style, sync_delay):
    """A KVM domain starting on `host` (qemu) opens its DRBD resources' devices for writing:
    (device, refusal code) of the first one DRBD refuses to open, or None. DRBD 9 promotes a
    Secondary then unless it says `auto-promote no` (model.open_for_writing)."""
    import time

    with model.transaction(state_dir, host) as st:
        opened = []
        for resource in st.doc("vms").get(name, {}).get("resources", ()):
            if host not in model.resources(st).get(resource, {}).get("hosts", {}):
                continue
            code = model.open_for_writing(st, resource, host, drbd_style, time.time(), sync_delay)
            if code:
                model.auto_demote(st, opened, host)
                return model.resources(st)[resource]["hosts"][host]["device"], code
            opened.append(resource)
    return None


def close_domain_disks(state_dir, host, name):
    """A KVM domain that opened its disks did not start after all: DRBD 9 demotes what it promoted."""
    with model.transaction(state_dir, host) as st:
        model.auto_demote(st, st.doc("vms").get(name, {}).get("resources", ()), host)


def note_kvm_domain(state_dir, host, name, running):
    """Record that KVM domain `name` is (not) running on `host` (after virsh changed it)."""
    note_kvm_domains(state_dir, host, {name: running})


def note_kvm_domains(state_dir, host, running):
    """note_kvm_domain for every {name: running} in one transaction (a `virsh list` of a fleet)."""
    with model.transaction(state_dir, host) as st:
        for name, up in running.items():
            model.note_kvm(st, host, name, bool(up), "noted")


def lab_state(state_dir, kvm_running=None):
    """The whole lab in one dict:
    {"hosts": {"xen": ..., "kvm": ...},
     "vms": {vm: {"running_on": host or None, "drbd": {resource: {host: role}}}},
     "violations": [every unsafe condition ever recorded]}.

    kvm_running(host, vm) -> bool, if given, is asked first (outside the lab lock, since it
    may run the virsh wrapper) and overrides the notes about KVM domains. A role is
    "Primary"/"Secondary", "Unconfigured" when the resource is down there, None if unknown.
    """
    with model.transaction(state_dir, "control") as st:
        vms = dict(st.doc("vms"))
    truth = {}
    if kvm_running is not None:
        truth = {(spec["kvm_host"], vm): bool(kvm_running(spec["kvm_host"], vm)) for vm, spec in vms.items()}
    with model.transaction(state_dir, "control") as st:
        for (host, vm), running in truth.items():
            model.note_kvm(st, host, vm, running, "lab_state asked virsh")
        model.check_violations(st)
        running = model.running_domains(st)
        report = {"hosts": _hosts(vms), "vms": {}}
        for vm, spec in sorted(vms.items()):
            where = [h for h, _ in running.get(vm, ()) if h in (spec["xen_host"], spec["kvm_host"])]
            report["vms"][vm] = {
                "running_on": spec["xen_host"] if spec["xen_host"] in where else (where[0] if where else None),
                "drbd": {r: {h: model.local_role(st, r, h) for h in (spec["xen_host"], spec["kvm_host"])}
                         for r in spec["resources"]}}
        report["violations"] = [v["text"] for v in st.doc("violations").get("log", [])]
    return report


def _hosts(vms):
    first = vms[min(vms)] if vms else {}
    return {"xen": first.get("xen_host"), "kvm": first.get("kvm_host")}
