"""Live reload for the studio: notice edited templates or config, swap in a fresh App.

The App is immutable once built, so a change is never patched into it: `Reloader.current`
builds a new App from the config file (keeping the engine when the database URL is the same,
so no connection pool is thrown away) and swaps it into the web app's state. A config file
that does not validate leaves the running App in place and the error is shown to the editor.

The browser learns about changes from `changes()`, an event stream that compares a
fingerprint of the watched files (path, mtime, size) with the one the page was rendered from.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digest.app import App
from digest.config import ConfigError, Settings, load_settings

POLL_SECONDS = 0.5
KEEPALIVE_POLLS = 30  # a comment line every ~15 s keeps proxies from closing the stream
MAX_POLLS = 1200  # end the stream after ~10 min; EventSource reconnects by itself
RETRY_MS = 1000


@dataclass(frozen=True)
class Watch:
    """The files whose changes reload the studio."""

    templates_dir: Path
    config_file: Path | None = None

    @classmethod
    def for_app(cls, app: App) -> Watch:
        config = Path(app.settings.source_file)
        return cls(app.renderer.templates_dir, config if config.is_file() else None)

    def fingerprint(self) -> str:
        """A short hash of every watched file's path, mtime and size."""
        digest = hashlib.sha256()
        files = sorted(p for p in self.templates_dir.rglob("*") if p.is_file())
        if self.config_file is not None:
            files.append(self.config_file)
        for path in files:
            try:
                stat = path.stat()
            except OSError:  # deleted between listing and stat: it counts as a change
                digest.update(f"{path}\0gone\n".encode())
                continue
            digest.update(f"{path}\0{stat.st_mtime_ns}\0{stat.st_size}\n".encode())
        return digest.hexdigest()[:16]


class Reloader:
    """Holds the fingerprint the current App was built from; rebuilds it when files change."""

    def __init__(
        self,
        watch: Watch,
        *,
        load: Callable[[Path], Settings] = load_settings,
    ) -> None:
        self.watch = watch
        self._load = load
        self._lock = threading.Lock()
        self.version = watch.fingerprint()
        self.error: str | None = None

    def current(self, state: Any) -> App:
        """The App in `state.digest`, replaced by a fresh one first if watched files changed."""
        with self._lock:
            version = self.watch.fingerprint()
            if version != self.version:
                state.digest = self._rebuild(state.digest)
                self.version = version
            return state.digest  # type: ignore[no-any-return]

    def _rebuild(self, old: App) -> App:
        settings = old.settings
        if self.watch.config_file is not None:
            try:
                settings = self._load(self.watch.config_file)
            except ConfigError as exc:
                self.error = f"configuration not reloaded: {exc}"
                return old
            self.error = None
        same_db = settings.database.url == old.settings.database.url
        return App(settings=settings, clock=old.clock, _engine=old.engine if same_db else None)


def event(name: str, data: str) -> str:
    """One server-sent event."""
    return f"event: {name}\ndata: {data}\n\n"


async def changes(
    watch: Watch,
    since: str,
    *,
    interval: float = POLL_SECONDS,
    max_polls: int = MAX_POLLS,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    gone: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[str]:
    """Server-sent events: `reload` as soon as the fingerprint differs from `since`.

    `gone` tells when the client has left, so an abandoned stream stops polling at once."""
    yield f"retry: {RETRY_MS}\n\n"
    for poll in range(max_polls):
        if gone is not None and await gone():
            return
        version = await asyncio.to_thread(watch.fingerprint)
        if version != since:
            yield event("reload", version)
            return
        if poll and poll % KEEPALIVE_POLLS == 0:
            yield ": keepalive\n\n"
        await sleep(interval)
