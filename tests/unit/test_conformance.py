"""The drbdadm simulator's 8.4 style against transcripts of Debian 12's drbd.ko 8.4.11
(tests/data/conformance, recorded by `python -m tests.lab.conformance record` in the real pair)."""

import shutil
import subprocess
import sys

from tests.conftest import REPO
from tests.lab import conformance


def test_every_recorded_sequence_replays_the_same_on_the_simulator():
    matching, total, differences = conformance.check()
    assert differences == []
    assert (matching, total) == (len(conformance.SEQUENCES), len(conformance.SEQUENCES))


def test_a_transcript_the_simulator_does_not_reproduce_is_named(tmp_path, mocker):
    fixtures = tmp_path / "fixtures"
    shutil.copytree(conformance.FIXTURES, fixtures)
    held = fixtures / "held-open.txt"
    held.write_text(held.read_text().replace("(-12) Device is held open by someone", "(-12) Device is busy"))
    mocker.patch.object(conformance, "FIXTURES", fixtures)
    matching, total, differences = conformance.check()
    assert (matching, total) == (total - 1, len(conformance.SEQUENCES))
    assert differences == ["held-open: kernel '! 1: State change failed: (-12) Device is busy', simulator "
                           "'! 1: State change failed: (-12) Device is held open by someone'"]


def test_make_conformance_prints_one_line_per_simulator():
    done = subprocess.run([sys.executable, "-m", "tests.lab.conformance", "check"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert (done.returncode, done.stdout) == (0, f"conformance: drbd {len(conformance.SEQUENCES)}/"
                                                 f"{len(conformance.SEQUENCES)} sequences match the kernel (8.4.11)\n")


def test_normalising_keeps_only_which_generations_are_equal():
    text = ("> 8B42F21E6AD0A921:0000000000000000:077AC550E515D24C:0000000000000004:1:1:1:1:0:0:0\n"
            "> 1413D887562B7C2B:8B42F21E6AD0A920:077AC550E515D24C:0000000000000004:1:1:1:0:0:0:0\n"
            ">     replication:SyncSource peer-disk:Inconsistent done:37.21\n")
    assert conformance.normalise(text) == ("> U1+:0000000000000000:U2:0000000000000004:1:1:1:1:0:0:0\n"
                                           "> U3+:U1:U2:0000000000000004:1:1:1:0:0:0:0\n"
                                           ">     replication:SyncSource peer-disk:Inconsistent done:*\n")


def test_transcripts_read_back_as_written():
    steps = [("rxen: drbdadm status nosuch", conformance.Answer(1, "", "'nosuch' not defined\n")),
             ("rkvm: drbdadm up r", conformance.Answer(0, "a\n\nb\n", ""))]
    assert conformance.parse_transcript(conformance.transcript(steps)) == steps
