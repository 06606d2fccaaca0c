"""Task collection: stages as namespaces, flows at the root."""

from invoke import Collection

from . import inventory

ns = Collection(inventory.ns)
ns.configure({"inventory": "hosts.yml"})
