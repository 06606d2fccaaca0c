"""Shared fixtures: the real-data corpus that lives beside the repository.

A plain clone has no ../shared: the tests that read the corpus are skipped then, and the
run's summary names them loudly; in CI (CI=true) a missing corpus fails the run instead.
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
HAVE_CORPUS = (CORPUS / "SOURCES.md").is_file()
MISSING = f"../shared/corpus is not beside the repository (looked in {CORPUS})"
_skipped: list[str] = []


def need_corpus() -> Path:
    """The corpus, or a skip saying it is missing (a failure with CI=true)."""
    if not HAVE_CORPUS:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{MISSING}: CI must run every corpus test", pytrace=False)
        pytest.skip(MISSING)
    return CORPUS


@pytest.fixture(scope="session")
def corpus() -> Path:
    return need_corpus()


def corpus_params(values: list, width: int = 1) -> list:
    """A parametrize list read from the corpus at collection; without the corpus one placeholder
    case, so that the test (which takes the `corpus` fixture) is skipped loudly, not dropped."""
    return values if HAVE_CORPUS else [pytest.param(*([None] * width), id="corpus-missing")]


def pytest_runtest_logreport(report):
    if report.skipped and MISSING in str(report.longrepr):
        _skipped.append(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    if _skipped:
        terminalreporter.section("NOT RUN: the corpus is missing", sep="!", red=True, bold=True)
        terminalreporter.line(f"{len(_skipped)} tests read ../shared/corpus and were skipped: {MISSING}.",
                              red=True, bold=True)
        for nodeid in sorted({n.split("[")[0] for n in _skipped}):
            terminalreporter.line(f"  {nodeid}", red=True)
