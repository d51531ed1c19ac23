"""What readers call a source: its reader-facing title, never its internal name.

`sources[].name` is an identifier for configuration, logs and the studio ("meridian-world").
Emails and public pages show `sources[].title` when the configuration sets one, else the
feed's own title as ingest last read it (RSS `<channel><title>`, Atom `<feed><title>`), else
the site's name: a source that never said what it is called (a JSON or CSV file, the push API)
is the site's own.
"""

from __future__ import annotations

from sqlmodel import Session, select

from digest.config import Settings
from digest.storage.models import Source


def reader_titles(session: Session, settings: Settings) -> dict[str, str]:
    """Source name → the title readers see, for every configured or stored source."""
    stored = {name: title for name, title in session.exec(select(Source.name, Source.title))}
    titles = {name: (title or settings.site.name) for name, title in stored.items()}
    for source in settings.sources:
        titles[source.name] = source.title or stored.get(source.name) or settings.site.name
    return titles


def reader_title(titles: dict[str, str], name: str, settings: Settings) -> str:
    """The title of source `name` in `titles` (from `reader_titles`), else the site's name."""
    return titles.get(name) or settings.site.name
