"""The Jinja2 templates in templates/, loaded on first use (importing jinja2 costs start-up time)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@lru_cache(maxsize=None)
def template(name: str, *, autoescape: bool, filters: tuple = ()):
    """A template with strict undefined values; `filters` is a tuple of (name, function) pairs."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(dict(filters))
    return env.get_template(name)
