"""What the operator reads: levels for -q and -v, the VM tag, the one table layout, and
every task's own -q/-v flags and Ctrl-C line."""

import threading

import pytest
from invoke import Context

from tasks import output
from tasks.cli import task
from tasks.errors import ToolError
from tasks.output import RESULT, log, set_vm


def lines_at(quiet: bool, verbose: bool) -> list[str]:
    seen = []
    with output.live(seen.append), output.level(quiet, verbose):
        log.debug("probe")
        log.info("step")
        log.warning("! warning")
        log.log(RESULT, "== result")
    return seen


@pytest.mark.parametrize("quiet, verbose, shown", [
    (False, False, ["step", "! warning", "== result"]),
    (True, False, ["! warning", "== result"]),
    (False, True, ["probe", "step", "! warning", "== result"]),
])
def test_levels_show_what_each_flag_promises(quiet, verbose, shown):
    assert lines_at(quiet, verbose) == shown
    assert log.level == output.logging.INFO, "the task's level ends with the task"


def test_each_thread_tags_its_lines_with_its_vm():
    seen = []

    def work(name):
        set_vm(name)
        log.info("step")

    with output.live(seen.append):
        threads = [threading.Thread(target=work, args=(name,)) for name in ("logger", "web")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log.info("untagged")
    assert sorted(seen) == ["[logger] step", "[web] step", "untagged"]


def test_plain_lines_go_to_the_stdout_of_the_moment(capsys):
    log.info("to whatever stdout is now")
    assert capsys.readouterr().out == "to whatever stdout is now\n"


def test_one_table_layout_plain_columns_without_trailing_blanks():
    text = output.table_text(("VM", "runs on"), [("logger", "kvm1"), ("a-much-longer-name", "")])
    assert text.splitlines() == ["VM                  runs on", "logger              kvm1", "a-much-longer-name"]


@task(help={"vm": "a VM", "fail": "raise Ctrl-C"})
def sample(c, vm=None, fail=False):
    """A task as every task is made."""
    log.debug("probe")
    log.info("step")
    log.log(RESULT, "== done")
    if fail:
        raise KeyboardInterrupt


def test_every_task_takes_quiet_and_verbose_and_keeps_its_own_short_flags():
    names = {tuple(arg.names) for arg in sample.get_arguments()}
    assert names == {("vm", "m"), ("fail", "f"), ("quiet", "q"), ("verbose", "v")}


@pytest.mark.parametrize("flags, shown", [({}, "step\n== done\n"), ({"quiet": True}, "== done\n"),
                                          ({"verbose": True}, "probe\nstep\n== done\n")])
def test_a_task_runs_at_the_level_its_flags_ask(capsys, flags, shown):
    sample(Context(), **flags)
    assert capsys.readouterr().out == shown


def test_ctrl_c_in_a_task_is_one_line_exit_130():
    with pytest.raises(ToolError) as info:
        sample(Context(), fail=True)
    assert (info.value.message, info.value.code) == ("error: interrupted", 130)
