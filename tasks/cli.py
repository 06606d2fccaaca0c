"""Every task's command line: invoke's @task, plus -q/--quiet and -v/--verbose on each task.

The two flags set the output level (output.level) around the task, and a task's own --json
sends every line but its JSON document to stderr (output.json_on_stdout); a Ctrl-C that reaches a
task outside a move (whose signals fleet.run_fleet handles) ends it in one line, exit 130,
instead of invoke's silent exit 1.
"""

from __future__ import annotations

from invoke import Argument, Task
from invoke import task as invoke_task

from . import output
from .errors import ToolError

QUIET_HELP = "print only results, warnings and errors"
VERBOSE_HELP = "also print every read-only probe sent to a host"


class OperatorTask(Task):
    def arg_opts(self, name, default, taken_names):
        return super().arg_opts(name, default, {*taken_names, "q", "v"})   # -q and -v are ours

    def get_arguments(self, ignore_unknown_help=None):
        return [*super().get_arguments(ignore_unknown_help),
                Argument(names=("quiet", "q"), kind=bool, default=False, help=QUIET_HELP),
                Argument(names=("verbose", "v"), kind=bool, default=False, help=VERBOSE_HELP)]

    def __call__(self, *args, **kwargs):
        quiet, verbose = kwargs.pop("quiet", False), kwargs.pop("verbose", False)
        with output.level(quiet, verbose), output.json_on_stdout(bool(kwargs.get("json"))):
            try:
                return super().__call__(*args, **kwargs)
            except KeyboardInterrupt:
                raise ToolError("interrupted", 130) from None


def task(*args, **kwargs):
    """invoke's @task, making an OperatorTask."""
    return invoke_task(*args, klass=OperatorTask, **kwargs)
