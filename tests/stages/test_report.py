"""`fab report` from what real runs of the tool recorded (moves over the command-level hosts:
their audit log and journals), with the downtime records the moves write and without them (an older audit log); the page opened in
a real headless chromium, whose layout of the chart is read back."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tasks import flows, report
from tasks.errors import InputError
from tasks.formats import FormatError
from tasks.formats.report import argv_of, parse_since, read_audit
from tests.browser import boxes, laid_out
from tests.stages.guestsite import World


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def move(world: World, to: str):
    ctx = flows.Ctx(world.site(), world.inv, world.inv.vm("logger"), timeout=0.2, rollback_timeout=0.2)
    try:
        return flows.move(ctx, to, world.dirs.journals, world.dirs.locks)
    finally:
        ctx.site.close()


def three_moves(world: World) -> None:
    """To KVM, a move back that fails at the start on Xen and is rolled back, then back for good."""
    assert move(world, "kvm").ok
    world.shared.faults["xen1:xl create"] = 1
    assert not move(world, "xen").ok
    world.shared.faults.clear()
    assert move(world, "xen").ok


def drop_downtime(world: World) -> None:
    """The audit log as a version of the tool before the downtime records left it: commands only."""
    lines = world.audit.read_text().splitlines(keepends=True)
    world.audit.write_text("".join(line for line in lines if json.loads(line)["kind"] != "downtime"))


def add_downtime(world: World, source: str, target: str, when: datetime, down=(14.2, 3.1, 0.2, 10.9)) -> None:
    """A downtime record as a move writes it, one per move, written when the guest
    answered on the target (before the move's journal closed)."""
    record = {"time": when.isoformat(timespec="milliseconds"), "kind": "downtime", "vm": "logger",
              "from": source, "to": target, **dict(zip(("down", "shutdown", "switch", "boot"), down, strict=True))}
    with world.audit.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def write_report(world: World, mocker, path: Path, **options) -> str:
    mocker.patch.object(report.inventory, "from_context", lambda c: world.inv)
    report.report(world.context, html=str(path), **options)
    return path.read_text()


def test_phases_derived_from_the_commands_of_each_move(world):
    three_moves(world)
    drop_downtime(world)
    commands, downtimes, bad = read_audit(world.audit.read_text().splitlines())
    assert (downtimes, bad) == ([], 0)
    journals, notes = report.read_journals(world.dirs.journals)
    assert notes == [] and len(journals) == 3
    names = {"logger": report.VmNames("logger", "/etc/xen/auto/logger.cfg", frozenset({"logger-system", "logger-var"}))}
    moves = report.collect_moves(journals, commands, [], names)
    assert [(m.source, m.target, m.outcome) for m in moves] == [
        ("xen1", "kvm1", "done"), ("kvm1", "xen1", "rolled-back"), ("kvm1", "xen1", "done")]
    to_kvm = moves[0]
    assert list(to_kvm.phases) == ["shutdown", "switch", "boot"] and not to_kvm.measured
    shutdown, switch, boot = (to_kvm.phases[p] for p in ("shutdown", "switch", "boot"))
    assert shutdown[0] <= shutdown[1] == switch[0] <= switch[1] == boot[0] <= boot[1]
    start = next(c for c in commands if c.argv == ("virsh", "-c", "qemu:///system", "start", "logger"))
    assert boot == (start.start, start.end), "derived, the boot is the start command alone"
    failed = moves[1]
    assert set(failed.phases) == {"shutdown", "switch", "boot"}, "it got as far as the failed start"
    assert failed.phases["boot"][0] >= failed.phases["switch"][1]


def test_the_moves_own_downtime_records_are_their_measured_phases(world):
    three_moves(world)
    journals, _ = report.read_journals(world.dirs.journals)
    commands, downtimes, _ = read_audit(world.audit.read_text().splitlines())
    names = {"logger": report.VmNames("logger", "/etc/xen/auto/logger.cfg", frozenset({"logger-system"}))}
    moves = report.collect_moves(journals, commands, downtimes, names)
    assert [m.measured for m in moves] == [True, False, True], "the rolled-back move never answered on Xen"
    records = [json.loads(line) for line in world.audit.read_text().splitlines()]
    for got, record in zip((moves[0], moves[2]), [r for r in records if r["kind"] == "downtime"], strict=True):
        assert (got.source, got.target) == (record["from"], record["to"])
        assert got.downtime == record["down"]
        assert [round(got.seconds(p), 3) for p in ("shutdown", "switch", "boot")] == pytest.approx(
            [record["shutdown"], record["switch"], record["boot"]], abs=0.002)


def test_a_downtime_record_gives_the_measured_phases(world):
    three_moves(world)
    drop_downtime(world)
    journals, _ = report.read_journals(world.dirs.journals)
    add_downtime(world, "xen1", "kvm1", datetime.fromisoformat(journals[0]["finished"]))
    commands, downtimes, _ = read_audit(world.audit.read_text().splitlines())
    names = {"logger": report.VmNames("logger", "/etc/xen/auto/logger.cfg", frozenset({"logger-system"}))}
    moves = report.collect_moves(journals, commands, downtimes, names)
    assert [m.measured for m in moves] == [True, False, False]
    assert [round(moves[0].seconds(p), 3) for p in ("shutdown", "switch", "boot")] == [3.1, 0.2, 10.9]
    assert moves[0].downtime == 14.2


def test_a_downtime_record_without_its_journal_is_still_a_move(world):
    add_downtime(world, "kvm1", "xen1", datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc))
    commands, downtimes, _ = read_audit(world.audit.read_text().splitlines())
    (only,) = report.collect_moves([], commands, downtimes, {})
    assert (only.source, only.target, only.started) == \
        ("kvm1", "xen1", datetime(2026, 12, 1, 11, 59, 45, 800000, tzinfo=timezone.utc))


def test_since_and_the_audit_log_read_as_written():
    now = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
    assert parse_since("12h", now) == datetime(2026, 12, 2, 0, 0, tzinfo=timezone.utc)
    assert parse_since("7d", now) == datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
    assert parse_since("2026-12-01", now) == datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert parse_since("2026-12-01T10:00:00+01:00", now) == datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
    with pytest.raises(FormatError, match="neither an ISO-8601 date or time nor an age"):
        parse_since("yesterday", now)
    assert argv_of("sudo -n -- env LC_ALL=C DEBIAN_FRONTEND=x xl shutdown 'a b'") == ("xl", "shutdown", "a b")
    commands, _, bad = read_audit(['{"time": "2026-12-01T10:00:00.000+00:00", "host": "xen1", "kind": "change", '
                                   '"command": "env LC_ALL=C xl create /etc/xen/auto/logger.cfg", "exit": 0, '
                                   '"duration": 0.5}', "not json", '{"kind": "change"}'])
    assert bad == 2 and commands[0].end - commands[0].start == timedelta(seconds=0.5)


def test_the_page_in_chromium_draws_each_phase_and_marks_measured_downtime(world, mocker, tmp_path):
    three_moves(world)
    drop_downtime(world)
    journals, _ = report.read_journals(world.dirs.journals)
    add_downtime(world, "xen1", "kvm1", datetime.fromisoformat(journals[0]["finished"]))
    page = write_report(world, mocker, tmp_path / "moves.html")
    for reference in ("src=", "href=", "url(", "@import", "<link", "<script"):
        assert reference not in page, f"the page fetches nothing and runs nothing: {reference}"

    dom = laid_out(page, tmp_path)
    (section,) = dom.xpath("//section[@class='vm']")
    assert section.get("data-vm") == "logger"
    moves = section.xpath(".//svg//g[@class='move']")
    assert [m.get("data-outcome") for m in moves] == ["done", "rolled-back", "done"]
    bars = moves[0].xpath("./rect")
    assert [r.get("class") for r in bars] == ["phase shutdown", "phase switch", "phase boot"]
    measured = boxes(bars)
    assert all(width > 0 for _, _, width, _ in measured)
    assert measured[0][0] < measured[1][0] < measured[2][0], "shutdown, then switch, then boot"
    assert measured[0][0] + measured[0][2] == pytest.approx(measured[1][0], abs=0.2)
    assert measured[2][2] / measured[0][2] == pytest.approx(10.9 / 3.1, rel=0.01), "widths scale with seconds"
    (mark,) = boxes(moves[0].xpath("./line[@class='downtime']"))
    assert mark[0] == pytest.approx(measured[0][0], abs=0.2)
    assert mark[0] + mark[2] == pytest.approx(measured[2][0] + measured[2][2], abs=0.2)
    assert moves[0].xpath("./text[@class='downtime-label']/text()") == ["down 14.2 s"]
    assert not moves[2].xpath("./line")
    assert moves[2].xpath("./text[@class='not-measured']/text()") == ["not measured"]
    rows = section.xpath(".//table[@class='moves']/tbody/tr")
    assert [row.xpath("./td")[-1].text for row in rows] == ["14.20", "not measured", "not measured"]
    assert "their downtime was not measured" in dom.text_content()


def test_since_keeps_later_moves_and_bad_input_contacts_nothing(world, mocker, tmp_path):
    three_moves(world)
    assert write_report(world, mocker, tmp_path / "all.html").count("<g class=\"move\"") == 3
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat(timespec="seconds")
    page = write_report(world, mocker, tmp_path / "none.html", since=future)
    assert "<g class=\"move\"" not in page and "No move found." in page
    with pytest.raises(InputError, match="^--since: --since 'soon' is neither"):
        write_report(world, mocker, tmp_path / "x.html", since="soon")
    with pytest.raises(InputError, match="no such directory"):
        write_report(world, mocker, tmp_path / "missing" / "x.html")


def test_a_journal_of_a_wrong_shape_is_left_out_and_named(world, mocker, tmp_path, capsys):
    three_moves(world)
    bad = world.dirs.journals / "done" / "logger-0000.json"
    bad.write_text('{"vm": "logger", "steps": 3}')
    page = write_report(world, mocker, tmp_path / "moves.html")
    assert page.count("<g class=\"move\"") == 3
    assert f"! left out {bad}: not a journal this tool can use (run: expected str, got NoneType)" in capsys.readouterr().out
