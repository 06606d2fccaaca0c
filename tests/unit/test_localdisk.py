"""The swap guard against real volumes: image files made by the real tools (sfdisk, mkfs.ext4,
pvcreate, drbdmeta, mkswap), surveyed by the real wipefs, cmp and blkid through the tool's own
probe, run by sh here as on a host."""

from __future__ import annotations

import os
import subprocess

import pytest
from invoke import Context

from tasks.errors import GuardError
from tasks.localdisk import Signature, check_swap_target, needs_swap, parse_survey, signature
from tasks.remote import Remote

GUEST_SWAP = "5d1c0b4e-0000-4000-8000-00000000a001"
OTHER_SWAP = "5d1c0b4e-0000-4000-8000-00000000b002"
SIZE = 8 << 20


def run(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True)


def partition_table(path: str) -> None:
    run("sfdisk", "-q", path, stdin="label: dos\n,4M,L\n")


def lvm_member(path: str) -> None:
    """pvcreate writes only to a block device: through a loop device, detached again."""
    loop = subprocess.run(["losetup", "-f", "--show", path], text=True, check=True,
                          capture_output=True).stdout.strip()
    try:
        run("pvcreate", "-ff", "-y", loop)
    finally:
        run("losetup", "-d", loop)


def garbage(path: str) -> None:
    with open(path, "r+b") as fh:
        fh.seek(4096)
        fh.write(os.urandom(1000) + b"\xff")


VOLUMES = {
    "blank": lambda path: None,
    "swap": lambda path: run("mkswap", "-U", OTHER_SWAP, path),
    "guest swap": lambda path: run("mkswap", "-U", GUEST_SWAP, path),
    "partition table": partition_table,
    "swap over a partition table": lambda path: (partition_table(path), run("mkswap", "-U", OTHER_SWAP, path)),
    "ext4": lambda path: run("mkfs.ext4", "-q", "-F", path),
    "LVM member": lvm_member,
    "DRBD metadata at its end": lambda path: run("drbdmeta", "--force", "/dev/drbd99", "v09", path, "internal",
                                                 "create-md", "1"),
    "garbage": garbage,
}


@pytest.fixture
def volume(tmp_path):
    def make(kind: str) -> str:
        path = str(tmp_path / f"{kind.replace(' ', '-')}.img")
        with open(path, "wb") as fh:
            fh.truncate(SIZE)
        VOLUMES[kind](path)
        return path
    return make


HOST = Remote("kvm1", Context())


@pytest.mark.parametrize("kind, writes", [("blank", True), ("swap", True), ("guest swap", False)])
def test_only_a_blank_volume_or_a_swap_is_written(volume, kind, writes):
    assert needs_swap(HOST, volume(kind), GUEST_SWAP) is writes


@pytest.mark.parametrize("kind, named", [
    ("partition table", r"holds dos \(at 0x1fe\)"),
    ("swap over a partition table", r"holds swap \(at 0xff6\), dos \(at 0x1fe\)"),
    ("ext4", r"holds ext4 \(at 0x438\)"),
    ("LVM member", r"holds LVM2_member \(at 0x218\)"),
    ("DRBD metadata at its end", r"holds drbd \(at 0x7ff[0-9a-f]+\)"),     # its first MiB is zeros
    ("garbage", r"holds no signature wipefs knows, but its first 1 MiB is not zeros"),
])
def test_anything_else_is_refused_and_named(volume, kind, named):
    path = volume(kind)
    with pytest.raises(GuardError, match=rf"^kvm1:{path} {named}: refusing to format it as the guest's swap"):
        needs_swap(HOST, path, GUEST_SWAP)


def test_a_missing_volume_is_refused(tmp_path):
    with pytest.raises(GuardError, match=r"^kvm1:\S+/none does not exist"):
        needs_swap(HOST, str(tmp_path / "none"), GUEST_SWAP)


def test_blkid_reads_a_partition_table_without_a_type(volume):
    """Why blkid alone misled the old check: a bare partition table has PTTYPE and no TYPE."""
    found = signature(HOST, volume("partition table"))
    assert found["PTTYPE"] == "dos" and "TYPE" not in found
    assert signature(HOST, volume("guest swap"))["UUID"] == GUEST_SWAP
    assert signature(HOST, volume("blank")) == {}


def test_parse_survey_of_older_util_linux_skips_its_header_and_keeps_commas_in_labels():
    found, zeros = parse_survey("# offset,uuid,label,type\n0x438,0e0e,data, old,ext4\nzeros\n")
    assert found == [Signature("0x438", "0e0e", "ext4")] and zeros


@pytest.mark.parametrize("text", ["", "0x438,0e0e,,ext4\n", "0x438 ext4\nzeros\n", "zero\n",
                                  "0x1fe,,,dos\x1b[2J\ndata\n"])
def test_a_survey_it_does_not_understand_is_an_error(text):
    with pytest.raises(ValueError, match="gave a survey this tool does not understand"):
        parse_survey(text)


def test_check_swap_target_writes_nothing_over_a_swap_that_has_the_uuid_already():
    swap = Signature("0xff6", GUEST_SWAP, "swap")
    assert check_swap_target([swap], zeros=False, uuid=GUEST_SWAP) is False
    assert check_swap_target([swap], zeros=False, uuid=OTHER_SWAP) is True
    assert check_swap_target([], zeros=True, uuid=GUEST_SWAP) is True
