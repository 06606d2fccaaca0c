"""Task collection: stages as namespaces, flows at the root."""

from invoke import Collection

from . import guest, inventory, kvmhost, xenhost

ns = Collection(inventory.ns, guest.ns, xenhost.ns, kvmhost.ns)
ns.configure({"inventory": "hosts.yml", "state_dir": "", "audit_log": ""})
