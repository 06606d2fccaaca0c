"""Task collection: stages as namespaces, flows at the root."""

from invoke import Collection

from . import drbd, flows, guest, inventory, kvmhost, prepare, readiness, report, xenhost

ns = Collection(*flows.tasks, prepare.prepare, readiness.readiness, report.report, inventory.ns, guest.ns, xenhost.ns, drbd.ns, kvmhost.ns)
ns.configure({"inventory": "hosts.yml", "state_dir": "", "audit_log": ""})
