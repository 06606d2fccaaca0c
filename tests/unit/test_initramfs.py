"""plan_initramfs_modules.

DEBIAN is /etc/initramfs-tools/modules as initramfs-tools ships it (wheezy to bookworm; the
lenny one differs only in its example lines), written by hand from that package.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.formats import FormatError
from tasks.formats.initramfs import KVM_MODULES, plan_initramfs_modules

DEBIAN = """\
# List of modules that you want to include in your initramfs.
# They will be loaded at boot time in the order below.
#
# Syntax:  module_name [args ...]
#
# You must run update-initramfs(8) to effect this change.
#
# Examples:
#
# raid1
# sd_mod
"""


def test_debian_default_gets_all_appended_in_order():
    out = plan_initramfs_modules(DEBIAN)
    assert out == DEBIAN + "ata_piix\nahci\nvirtio_blk\nvirtio_pci\nvirtio_net\nsd_mod\n"
    assert plan_initramfs_modules(out) is None


def test_listed_modules_with_args_and_dashes_count():
    text = "# xen guests\nxen-blkfront\nvirtio-blk\nahci  marvell_enable=1\nsd_mod"
    assert plan_initramfs_modules(text) == text + "\nata_piix\nvirtio_pci\nvirtio_net\n"


def test_nothing_missing_is_none():
    assert plan_initramfs_modules("\n".join(KVM_MODULES) + "\n") is None
    assert plan_initramfs_modules(DEBIAN, required=()) is None


@pytest.mark.parametrize("bad", ["virtio_blk\nrm", "", "-r", "sd mod"])
def test_bad_module_names_are_refused(bad):
    with pytest.raises(FormatError, match="module name"):
        plan_initramfs_modules(DEBIAN, required=(bad,))


@given(st.lists(st.one_of(st.sampled_from(DEBIAN.splitlines() + list(KVM_MODULES) + ["virtio-net", "  # ahci"]),
                          st.text(st.characters(exclude_characters="\n"), max_size=30)), max_size=15),
       st.booleans())
def test_property_idempotent_and_original_kept(body, final_newline):
    text = "\n".join(body) + ("\n" if final_newline and body else "")
    out = plan_initramfs_modules(text)
    if out is None:
        return
    assert plan_initramfs_modules(out) is None
    assert out.startswith(text)
    assert all(name in KVM_MODULES for name in out[len(text):].split())
