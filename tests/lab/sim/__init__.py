"""Simulators for what cannot run on the lab machine: Xen's xl/xm and DRBD's drbdadm.

Each stands in for exactly one real command, with its real output formats and exit codes,
over one state shared by all lab hosts (a directory named in each host's host.json). The
control side uses the functions below; bin/ holds the entry scripts installed on the hosts.
"""

from .control import lab_state, note_kvm_domain, seed_resource, write_vms
from .faults import add_fault, check_fault, clear_faults
from .model import tamper

__all__ = ["add_fault", "check_fault", "clear_faults", "lab_state", "note_kvm_domain", "seed_resource",
           "tamper", "write_vms"]
