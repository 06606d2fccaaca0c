"""The rehearsal's LVM names: what the real `lvs` says about a /dev/mapper path.

This machine's kernel has no device-mapper, so no LV can be activated; LVM's metadata works
without it: a volume group on a loop device gets an LV through `vgcfgrestore`, and `lvs`
names it from a /dev/mapper path as it does on a host.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid

import pytest
from invoke import Context

from tasks.errors import ToolError
from tasks.kvmhost import logical_volume, parse_lvs_names
from tasks.remote import Remote

LV_SECTION = """
	logical_volumes {
		logger-system {
			id = "xenkvm-test-lv00-0000-0000-0000-000000"
			status = ["READ", "WRITE", "VISIBLE"]
			flags = []
			segment_count = 1
			segment1 {
				start_extent = 0
				extent_count = 1
				type = "striped"
				stripe_count = 1
				stripes = ["pv0", 0]
			}
		}
	}
"""


def lvm(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check,
                          env={**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"})


@pytest.fixture
def volume_group(tmp_path):
    """A VG whose name holds dashes, with an LV `logger-system` in its metadata; removed after."""
    image = tmp_path / "pv.img"
    with open(image, "wb") as fh:
        fh.truncate(16 << 20)
    loop = lvm("losetup", "-f", "--show", str(image)).stdout.strip()
    vg = f"xk-test-{uuid.uuid4().hex[:6]}"
    try:
        lvm("pvcreate", "-q", "-y", loop)
        lvm("vgcreate", "-q", vg, loop)
        lvm("vgcfgbackup", "-q", "-f", str(tmp_path / "vg.meta"), vg)
        meta = (tmp_path / "vg.meta").read_text()
        end = meta.rindex("}")
        meta = meta[:end] + LV_SECTION + meta[end:]
        (tmp_path / "vg.meta").write_text(re.sub(r"seqno = (\d+)", lambda m: f"seqno = {int(m[1]) + 1}", meta))
        lvm("vgcfgrestore", "-q", "-f", str(tmp_path / "vg.meta"), vg)
        yield vg, loop
    finally:
        lvm("vgremove", "-q", "-f", "-y", vg, check=False)
        lvm("pvremove", "-q", "-y", loop, check=False)
        lvm("losetup", "-d", loop)


def test_lvs_splits_a_dev_mapper_name_whose_dashes_are_doubled(volume_group):
    vg, _ = volume_group
    mapper = "/dev/mapper/" + "-".join(name.replace("-", "--") for name in (vg, "logger-system"))
    here = Remote("kvm1", Context())
    assert logical_volume(here, mapper) == (vg, "logger-system")
    assert logical_volume(here, f"/dev/{vg}/logger-system") == (vg, "logger-system")


def test_a_path_lvm_does_not_know_is_an_error_naming_it(volume_group):
    _, loop = volume_group
    with pytest.raises(ToolError, match=rf"^kvm1: {loop} is not a logical volume LVM can name \(lvs exit 5\)"):
        logical_volume(Remote("kvm1", Context()), loop)


@pytest.mark.parametrize("text", ["", "  vg_main\n", "  vg_main logger-system\n  vg_main other\n",
                                  "  vg_main logger system\n", "  -vg logger\n", "  vg_main $(reboot)\n"])
def test_parse_lvs_names_takes_one_vg_and_lv_and_nothing_else(text):
    with pytest.raises(ValueError, match="not one VG and LV name"):
        parse_lvs_names(text)
