"""A personal issue's freeze run by a process of its own, page by page, on demand.

Unlike a topic issue's freeze (SQL from table to table), a personal one passes every reader
through Python to plan their variant: for a million readers about 16 s of CPU, which in the
sending process would be taken from the sending threads (one interpreter lock). Here the
sender's freeze thread asks a child process for one page at a time and waits, without the
lock, while the child works on the other core. The child answers with what the page froze and
the variants it found. Given the sender's `VariantRenders`, the child also renders each
variant it plans, in a thread of its own, and stores it on the variant's row (one child process
rather than a freezing and a rendering one: an interpreter costs ~60 MB); each reply names the
variants stored since, for senders waiting on them. The exactly-once rules are the freeze's own
(`personal_freeze`): the child is one more freezer taking turns on the issue row.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import threading
from collections.abc import Callable
from datetime import datetime
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from digest.app import App
from digest.config import Settings
from digest.issues.variants import Plan
from digest.sending.freeze import Zoning
from digest.storage.models import Issue

if TYPE_CHECKING:
    from digest.issues.variant_renders import VariantRenders

log = logging.getLogger(__name__)
# The child's SQLite page cache. Its fill writes each batch's rows at scattered places of the
# delivery table's unique (issue, subscriber) index; with SQLite's 2 MB cache most of them were
# read from the file again (a scratch fill of 1M rows: 8.7 s, 6.3 s with 32 MB, 5.4 s with 64 MB).
# 32 MB keeps a personal send of a million readers under its 300 MB (bench_personal.py).
SQLITE_CACHE_KIB = 32_000


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
        renders: VariantRenders | None = None,
    ) -> None:
        self.app, self.on_variant, self.renders = app, on_variant, renders
        context = multiprocessing.get_context("spawn")  # never fork a threaded process
        self._conn, child = context.Pipe()
        options = {"batch_size": batch_size, "page_size": page_size, "zones": zones,
                   "message_domain": message_domain}  # fmt: skip
        render = renders is not None and renders.remote
        self._process = context.Process(
            target=_serve, args=(child, app.settings, issue_id, options, render), daemon=True
        )
        self._process.start()

    def step(self) -> int | None:
        """Freeze one page (in the child); the recipients frozen, or None once done."""
        self._conn.send(("step", self.app.now()))
        reply = self._conn.recv()
        if isinstance(reply, BaseException):
            raise reply
        frozen, found, rendered = reply
        for variant_id, plan in found:
            if self.on_variant is not None:
                self.on_variant(variant_id, plan)
        if rendered and self.renders is not None:
            self.renders.arrived(rendered)
        return frozen  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.renders is not None:  # senders waiting on a variant render it themselves now
            self.renders.remote_closed()
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(("stop", None))
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()


class _Rendering:
    """The child's rendering thread: each variant planned, rendered and stored in turn."""

    def __init__(self, app: App, issue: Issue) -> None:
        from digest.issues.variant_renders import VariantRenders

        self.renders = VariantRenders(app, issue)
        self.todo: queue.Queue[int] = queue.Queue()
        self._done: list[int] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._work, name="digest-render", daemon=True).start()

    def submit(self, variant_id: int, plan: Plan) -> None:
        self.renders.submit(variant_id, plan)
        self.todo.put(variant_id)

    def _work(self) -> None:
        while True:
            variant_id = self.todo.get()
            try:
                self.renders.get(variant_id)  # renders and stores it, unless stored already
            except Exception:  # the sender renders it itself (told it arrived, finds none)
                log.exception("variant %s: rendering failed in the freezing process", variant_id)
            with self._lock:
                self._done.append(variant_id)
            self.todo.task_done()

    def taken(self, *, wait: bool = False) -> list[int]:
        """The variants handled since last asked (all of them, with `wait`)."""
        if wait:
            self.todo.join()
        with self._lock:
            done, self._done = self._done, []
        return done


def _serve(
    conn: Connection, settings: Settings, issue_id: int, options: dict[str, Any], render: bool
) -> None:
    from digest.sending.personal_freeze import PersonalFreezer
    from digest.storage.db import make_engine

    moment: list[datetime] = []
    engine = make_engine(settings.database.url, sqlite_cache_kib=SQLITE_CACHE_KIB)
    app = App(settings=settings, clock=lambda: moment[0], _engine=engine)
    found: list[tuple[int, Plan]] = []
    freezer: PersonalFreezer | None = None
    rendering: _Rendering | None = None
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
                rendering = _Rendering(app, issue) if render else None
                freezer = PersonalFreezer(
                    app, issue, newsletter, on_variant=_found(found, rendering), **options
                )
            frozen = freezer.step()
            # The freeze's end waits for its renders: none is left to the senders.
            rendered = [] if rendering is None else rendering.taken(wait=frozen is None)
            conn.send((frozen, list(found), rendered))
            found.clear()
        except BaseException as exc:  # the sender raises it, as a freeze step's own error
            conn.send(exc)


def _found(
    found: list[tuple[int, Plan]], rendering: _Rendering | None
) -> Callable[[int, Plan], None]:
    def on_variant(variant_id: int, plan: Plan) -> None:
        found.append((variant_id, plan))
        if rendering is not None:
            rendering.submit(variant_id, plan)

    return on_variant
