"""The fleet's live table: each VM's step, elapsed time frozen when it ends, and its result."""

import io

from rich.console import Console

from tasks.progress import FleetView


def render(view: FleetView) -> str:
    console = Console(file=io.StringIO(), width=100)
    console.print(view._table())
    return console.file.getvalue()


def test_table_shows_step_elapsed_and_result():
    view = FleetView(["logger", "web"], live=False)
    view.step("logger", "promote DRBD on kvm1")
    view.finish("web", False, "xen1")
    text = render(view)
    assert "promote DRBD on kvm1" in text and "FAILED" in text and "waiting" not in text
    ended = view.rows["web"].elapsed()
    assert render(view).count(ended) >= 1 and view.rows["web"].elapsed() == ended, "frozen once finished"


def test_plain_output_adds_nothing(capsys):
    with FleetView(["logger"], live=False) as view:
        view.step("logger", "checks")
        view.finish("logger", True, "kvm1")
    assert capsys.readouterr().out == ""
