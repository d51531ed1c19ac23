"""A personal issue's freeze run by a process of its own, page by page, on demand.

Unlike a topic issue's freeze (SQL from table to table), a personal one passes every reader
through Python to plan their variant: for a million readers about 16 s of CPU, which in the
sending process would be taken from the sending threads (one interpreter lock). Here the
sender's freeze thread asks a child process for one page at a time and waits, without the
lock, while the child works on the other core. The child answers with what the page froze and
the variants it found (handed on to the renderer). The exactly-once rules are the freeze's own
(`personal_freeze`): the child is one more freezer taking turns on the issue row.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from digest.app import App
from digest.config import Settings
from digest.issues.variants import Plan
from digest.sending.freeze import Zoning
from digest.storage.models import Issue


class FreezeProcess:
    """`step()` freezes the next page in the child; see the module docstring."""

    def __init__(
        self,
        app: App,
        issue_id: int,
        *,
        batch_size: int,
        page_size: int | None,
        zones: Zoning | None,
        message_domain: str,
        on_variant: Callable[[int, Plan], None] | None,
    ) -> None:
        self.app, self.on_variant = app, on_variant
        context = multiprocessing.get_context("spawn")  # never fork a threaded process
        self._conn, child = context.Pipe()
        options = {"batch_size": batch_size, "page_size": page_size, "zones": zones,
                   "message_domain": message_domain}  # fmt: skip
        self._process = context.Process(
            target=_serve, args=(child, app.settings, issue_id, options), daemon=True
        )
        self._process.start()

    def step(self) -> int | None:
        """Freeze one page (in the child); the recipients frozen, or None once done."""
        self._conn.send(("step", self.app.now()))
        reply = self._conn.recv()
        if isinstance(reply, BaseException):
            raise reply
        frozen, found = reply
        for variant_id, plan in found:
            if self.on_variant is not None:
                self.on_variant(variant_id, plan)
        return frozen  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(("stop", None))
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()


def _serve(conn: Connection, settings: Settings, issue_id: int, options: dict[str, Any]) -> None:
    from digest.sending.personal_freeze import PersonalFreezer

    moment: list[datetime] = []
    app = App(settings=settings, clock=lambda: moment[0])
    found: list[tuple[int, Plan]] = []
    freezer: PersonalFreezer | None = None
    while True:
        try:
            command, now = conn.recv()
        except EOFError:  # the sender is gone (its run ended before the freeze)
            return
        if command == "stop":
            return
        moment[:] = [now]
        try:
            if freezer is None:
                with app.session() as session:
                    issue = session.get(Issue, issue_id)
                assert issue is not None
                newsletter = settings.newsletter(issue.newsletter)
                freezer = PersonalFreezer(
                    app, issue, newsletter, on_variant=lambda v, p: found.append((v, p)), **options
                )
            frozen = freezer.step()
            conn.send((frozen, list(found)))
            found.clear()
        except BaseException as exc:  # the sender raises it, as a freeze step's own error
            conn.send(exc)
