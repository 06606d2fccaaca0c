"""A page as real headless chromium (Debian's, `make deps` installs it) lays it out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import html as lxml_html

CHROMIUM = shutil.which("chromium")

# Appended to a copy of the page for the test only: chromium writes each bar's laid-out box
# into the DOM it dumps.
MEASURE = """<script>
for (const el of document.querySelectorAll('svg rect.phase, svg line.downtime')) {
  const box = el.getBBox();
  el.setAttribute('data-box', [box.x, box.y, box.width, box.height].map(n => n.toFixed(1)).join(' '));
}
</script></body>"""


def laid_out(page: str, tmp_path: Path):
    """The page as headless chromium laid it out."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (make deps installs it)", pytrace=False)
    probe = tmp_path / "measured.html"
    probe.write_text(page.replace("</body>", MEASURE))
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120, check=True)
    return lxml_html.fromstring(done.stdout)


def boxes(elements) -> list[tuple[float, ...]]:
    return [tuple(map(float, e.get("data-box").split())) for e in elements]
