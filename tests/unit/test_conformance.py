"""The drbdadm simulator's 8.4 style against transcripts of Debian 12's drbd.ko 8.4.11
(tests/data/conformance, recorded by `python -m tests.lab.conformance record` in the real pair)."""

import shutil
import subprocess
import sys

from tests.conftest import REPO
from tests.lab import conformance, xlconformance


def test_every_recorded_sequence_replays_the_same_on_the_simulator():
    matching, total, differences = conformance.check()
    assert differences == []
    assert (matching, total) == (len(conformance.SEQUENCES), len(conformance.SEQUENCES))


def tamper(module, name: str, old: str, new: str, tmp_path, mocker):
    """The module's transcripts, with one answer changed in transcript `name`."""
    fixtures = tmp_path / "fixtures"
    shutil.copytree(module.FIXTURES, fixtures)
    path = fixtures / f"{name}.txt"
    path.write_text(path.read_text().replace(old, new))
    mocker.patch.object(module, "FIXTURES", fixtures)


def test_a_transcript_the_simulator_does_not_reproduce_is_named(tmp_path, mocker):
    tamper(conformance, "held-open", "(-12) Device is held open by someone", "(-12) Device is busy", tmp_path, mocker)
    matching, total, differences = conformance.check()
    assert (matching, total) == (total - 1, len(conformance.SEQUENCES))
    assert differences == ["held-open: kernel '! 1: State change failed: (-12) Device is busy', simulator "
                           "'! 1: State change failed: (-12) Device is held open by someone'"]


def test_make_conformance_prints_one_line_per_simulator():
    done = subprocess.run([sys.executable, "-m", "tests.lab.conformance", "check"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    drbd, xl = len(conformance.SEQUENCES), xlconformance.COMMANDS
    assert (done.returncode, done.stdout) == (0, f"conformance: drbd {drbd}/{drbd} sequences match the kernel "
                                                 f"(8.4.11)\nconformance: xl {xl}/{xl} commands match xl 4.17\n")


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


def test_every_recorded_xl_command_answers_the_same_on_the_simulator():
    matching, total, differences = xlconformance.check()
    assert differences == []
    assert total == sum(len(parse) for parse in map(conformance.parse_transcript, (
        (xlconformance.FIXTURES / f"{case.name}.txt").read_text() for case in xlconformance.CASES)))
    assert matching == total


def test_an_xl_answer_the_simulator_does_not_give_is_named(tmp_path, mocker):
    tamper(xlconformance, "create", "libxl_create.c:1318:", "libxl_create.c:1313:", tmp_path, mocker)
    matching, total, differences = xlconformance.check()
    assert (matching, total) == (total - 1, xlconformance.COMMANDS)
    assert differences == ["create: xl '! libxl: error: libxl_create.c:1313:initiate_domain_create: Domain N:Unable "
                           "to set disk defaults for disk 0', simulator '! libxl: error: libxl_create.c:1318:"
                           "initiate_domain_create: Domain N:Unable to set disk defaults for disk 0'"]


def test_xl_list_rows_keep_name_and_state_and_must_keep_xl_layout():
    text = ("$ xl list\n"
            "> Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
            "> Domain-0                                     0   768     2     r-----      66.6\n"
            "> conf                                         1   256     1     -b----       6.3\n"
            "> web 3 512 1 ---s-d 1.0\n"
            "! Shutting down domain 12\n= 0\n")
    assert xlconformance.normalise(text) == (
        "$ xl list\n"
        "> Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
        "> Domain-0 ID MEM VCPUS running TIME\n"
        "> conf ID MEM VCPUS running TIME\n"
        "> web ID MEM VCPUS ---s-d TIME (layout differs)\n"
        "! Shutting down domain N\n= 0\n")
