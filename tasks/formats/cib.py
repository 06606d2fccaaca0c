"""Pacemaker's CIB (`cibadmin --query --scope resources`): the primitives a cluster runs.

A VM whose DRBD resources or domain Pacemaker manages must not be moved behind its back:
the cluster would "recover" it, possibly to both sides. Only the facts needed to tell
that are read: each primitive's id, agent (class:provider:type) and instance attributes,
wherever it sits (in a group, a clone or a promotable clone).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Primitive:
    id: str
    agent: str                   # "ocf:linbit:drbd", "ocf:heartbeat:VirtualDomain", "stonith:fence_xvm"
    params: dict[str, str]       # instance attributes (name -> value)


def parse_cib_primitives(text: str) -> list[Primitive]:
    """Every primitive of a CIB (or of its resources section); ValueError when not such XML."""
    from lxml import etree
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(text.encode(), parser)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not XML: {exc}") from None
    if root.tag not in ("cib", "resources"):
        raise ValueError(f"not a Pacemaker CIB: its root element is <{root.tag}>")
    found = []
    for element in root.iter("primitive"):
        agent = ":".join(part for part in (element.get("class"), element.get("provider"), element.get("type")) if part)
        params = {pair.get("name"): pair.get("value", "") for attributes in element.findall("instance_attributes")
                  for pair in attributes.findall("nvpair") if pair.get("name")}
        found.append(Primitive(element.get("id", ""), agent, params))
    return found
