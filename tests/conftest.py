"""Shared fixtures: the real-data corpus that lives beside the repository."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """../shared/corpus; its absence is an error, never a silent skip."""
    if not (CORPUS / "SOURCES.md").is_file():
        pytest.fail(f"corpus not found at {CORPUS}: the tests need ../shared/corpus beside the repository")
    return CORPUS
