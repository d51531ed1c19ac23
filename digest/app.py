"""The composition root: builds settings, engine, clock and transports once, for CLI and web."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: a `digest --help` or an idle tick never needs them
    from sqlalchemy import Engine
    from sqlmodel import Session

    from digest.config import Settings
    from digest.mail.links import Links
    from digest.rendering.render import Renderer

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


def fixed_clock(moment: datetime) -> Clock:
    """A clock frozen at `moment` (for `--now`, tests and simulations)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return lambda: aware


@dataclass
class App:
    """Everything a command or request needs, wired once. Pass it down; never import globals."""

    settings: Settings
    clock: Clock = system_clock
    _engine: Engine | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, path: str | Path | None = None, *, clock: Clock = system_clock) -> App:
        from digest.config import load_settings

        return cls(settings=load_settings(path), clock=clock)

    @cached_property
    def engine(self) -> Engine:
        from digest.storage.db import make_engine

        return self._engine or make_engine(self.settings.database.url)

    @cached_property
    def renderer(self) -> Renderer:
        from digest.rendering.render import Renderer

        return Renderer()

    def now(self) -> datetime:
        return self.clock()

    @contextmanager
    def session(self) -> Iterator[Session]:
        from digest.storage.db import session_scope

        with session_scope(self.engine) as session:
            # Every path that adds an address (the form, imports, late webhook events) refuses
            # one that was forgotten: subscribers reads the keys its hash was made with here.
            session.info["subscribers.forget_keys"] = self.forget_keys
            yield session

    @cached_property
    def forget_keys(self) -> tuple[bytes, ...]:
        from subscribers.suppression import forget_keys

        return forget_keys(self.settings.verification_keys())

    def links(self) -> Links:
        """The site's public URLs, signed as of now (see `digest.mail.links`)."""
        from digest.mail.links import Links

        return Links.of(self.settings, self.now())

    def signing_key(self) -> bytes:
        return self.settings.secret_key.get_secret_value().encode()
