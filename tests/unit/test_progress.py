"""The fleet's live table: each VM's step, elapsed time frozen when it ends, and its result."""

import io

from rich.console import Console

from tasks.fleet import FleetView


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


def test_sync_bars_show_each_resources_resync_and_done_as_full():
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from tasks.progress import SyncBars

    out = io.StringIO()
    with SyncBars(["logger-system", "logger-var"], console=Console(file=out, force_terminal=True, width=100)) as bars:
        bars.update({"logger-system": SimpleNamespace(is_uptodate_pair=False, sync_percent=42.5),
                     "logger-var": SimpleNamespace(is_uptodate_pair=True, sync_percent=None)})
    last = out.getvalue().rsplit("logger-system", 1)[-1]
    assert "42.5%" in last and "100.0%" in last


def test_a_finished_move_shows_its_downtime():
    from tasks.liveness import Downtime

    view = FleetView(["logger", "web"], live=False)
    view.finish("logger", True, "kvm1", Downtime(down=14.24, shutdown=3.1, switch=0.2, boot=10.94))
    view.finish("web", False, "xen1")
    rows = [line.split() for line in render(view).splitlines()]
    assert rows[0] == ["VM", "step", "elapsed", "down", "result"]
    assert rows[1][-2:] == ["14.2s", "ok"] and rows[2] == ["web", "xen1", "FAILED"], "no downtime without a move"
