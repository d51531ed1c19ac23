"""A personal issue's variants rendered once each, as the freeze finds them, off the senders.

Rendering and inlining a variant costs tens of milliseconds of CPU (premailer); a send of a
million readers over ten topics has hundreds of variants. In the sending process that time is
taken from the sending threads (one interpreter lock), and a sender that needs a variant not
rendered yet would wait for it. So the freeze hands each new variant to `submit` as soon as it
is planned; for a large audience a separate process renders it on the other core (`processes`),
and a sender asks `get` for the one its batch needs, waiting only for that one. The result is
stored on the variant's row (the first render stored wins, so every sender, here or on another
host, sends the same bytes).

When the freeze itself runs in a process of its own (`digest.sending.freeze_process`), that
process renders the variants it plans as well (one child, not two: the RSS of a second
interpreter). Then this object only waits: `arrived` is told which variants the child stored,
and once the child is gone (`remote_closed`), whatever it did not store is rendered here.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import update
from sqlmodel import Session

from digest.app import App
from digest.issues import personal
from digest.issues.variants import Plan
from digest.rendering.contents import IssueContents, RenderedEmail
from digest.rendering.render import Renderer
from digest.storage.models import Issue, IssueVariant

log = logging.getLogger(__name__)
_V = IssueVariant.__table__  # type: ignore[attr-defined]
_renderer: Renderer | None = None  # the rendering process's own


@dataclass(frozen=True)
class RenderedVariant:
    subject: str
    html: str
    text: str
    topics: tuple[str, ...]


def _start(templates_dir: str) -> None:
    global _renderer
    _renderer = Renderer(Path(templates_dir))


def _render(contents: IssueContents) -> RenderedEmail:
    assert _renderer is not None
    return _renderer.render(contents)


class VariantRenders:
    """Renders and stores one issue's variants; see the module docstring."""

    def __init__(
        self, app: App, issue: Issue, *, processes: bool = False, remote: bool = False
    ) -> None:
        self.app, self.issue = app, issue
        # Rendered by the freezing process: see the module docstring.
        self.remote = remote
        self._remote_open = remote
        self._arrived: set[int] = set()
        self._arrival = threading.Condition()
        with app.session() as session:
            links = app.links().issue_links(issue.newsletter, issue.id, archive=False)
            self.build = personal.VariantBuilder(session, app.settings, issue, links=links)
        self._pool: ProcessPoolExecutor | None = None
        if processes and not remote:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),  # never fork a threaded process
                initializer=_start,
                initargs=(str(app.renderer.templates_dir),),
            )
        self._pending: dict[int, tuple[Plan, Future[RenderedEmail] | None]] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._lock = threading.Lock()

    def submit(self, variant_id: int, plan: Plan) -> None:
        """Start rendering a variant the freeze just planned (in the rendering process)."""
        with self._lock:
            if variant_id in self._pending:
                return
            future = self._pool.submit(_render, self.build(plan)) if self._pool else None
            self._pending[variant_id] = (plan, future)

    def get(self, variant_id: int) -> RenderedVariant:
        """The variant's subject, bodies and topics: stored, or rendered now (once)."""
        with self._lock:
            lock = self._locks.setdefault(variant_id, threading.Lock())
        # One render per variant; other variants go on meanwhile.
        with lock, self.app.session() as session:
            variant = session.get(IssueVariant, variant_id)
            if variant is None:
                raise LookupError(f"issue {self.issue.id} has no variant {variant_id}")
            if variant.html is None and self._wait_for_remote(variant_id):
                session.refresh(variant)
            if variant.html is None:
                self._store(session, variant_id, self._rendered(variant))
                session.refresh(variant)
            return RenderedVariant(
                variant.subject, variant.html or "", variant.text or "", tuple(variant.topics)
            )

    def arrived(self, variant_ids: list[int]) -> None:
        """The freezing process stored (or failed to render) these variants."""
        with self._arrival:
            self._arrived.update(variant_ids)
            self._arrival.notify_all()

    def remote_closed(self) -> None:
        """The freezing process is gone: what it did not store is rendered here from now."""
        with self._arrival:
            self._remote_open = False
            self._arrival.notify_all()

    def _wait_for_remote(self, variant_id: int) -> bool:
        """Wait while the freezing process renders a variant it planned; False at once for
        one it was not given (planned by an earlier run)."""
        with self._lock:
            submitted = variant_id in self._pending
        if not (self.remote and submitted):
            return False
        with self._arrival:
            return self._arrival.wait_for(
                lambda: variant_id in self._arrived or not self._remote_open
            )

    def _rendered(self, variant: IssueVariant) -> RenderedEmail:
        with self._lock:
            plan, future = self._pending.get(variant.id or 0, (personal.plan_of(variant), None))
        if future is not None:
            try:
                return future.result()
            except Exception as exc:  # the process died: render here instead
                log.warning("variant %s: rendering process failed (%s)", variant.id, exc)
        return self.app.renderer.render(self.build(plan))

    def _store(self, session: Session, variant_id: int, rendered: RenderedEmail) -> None:
        """Store the render unless another sender stored one first (theirs stays)."""
        session.execute(
            update(_V)
            .where(_V.c.id == variant_id, _V.c.html.is_(None))
            .values(subject=rendered.subject, html=rendered.html, text=rendered.text,
                    html_bytes=rendered.html_bytes)
        )  # fmt: skip
        session.commit()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
