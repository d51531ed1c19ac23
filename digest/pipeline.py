"""The seam between the scheduler and the pipeline: ingest, build, send.

`run_due` drives these three callables; `real_pipeline()` wires the real modules in one place
and tests hand in fakes.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from digest.app import App
from digest.models import Issue

# Without a `stop` hook in send_issue, a stop waits for at most this many rounds of batches.
SLICE_BATCHES = 4


class SendSummary(Protocol):
    """What `digest.sending.send_issue` reports (its `SendReport`)."""

    @property
    def accepted(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    @property
    def unknown(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def already_done(self) -> bool: ...


@dataclass(frozen=True)
class SendRequest:
    """How the scheduler asks for a send: stop between batches when `stop` is set; only the
    recipients whose time zone is in `timezones` (None: everyone)."""

    stop: threading.Event | None = None
    timezones: frozenset[str] | None = None


@dataclass(frozen=True)
class Pipeline:
    """The three steps a tick drives; the real ones come from `real_pipeline()`."""

    ingest: Callable[[App], object]
    build: Callable[[App, str, datetime], Issue]
    send: Callable[[App, int, SendRequest], SendSummary]


def real_pipeline() -> Pipeline:
    from digest.assemble import build_issue
    from digest.ingest import run_ingest

    return Pipeline(ingest=lambda app: run_ingest(app), build=build_issue, send=_send_issue)


def _send_issue(app: App, issue_id: int, request: SendRequest) -> SendSummary:
    from digest.sending import send_issue

    accepted = inspect.signature(send_issue).parameters
    kwargs: dict[str, Any] = {}
    if request.timezones is not None:
        if "timezones" not in accepted:
            raise RuntimeError(
                "send_in_subscriber_timezone needs digest.sending.send_issue(timezones=...)"
            )
        kwargs["timezones"] = set(request.timezones)
    if request.stop is None:
        return send_issue(app, issue_id, **kwargs)
    if "stop" in accepted:
        kwargs["stop"] = request.stop
        return send_issue(app, issue_id, **kwargs)
    return _send_in_slices(app, issue_id, request.stop, kwargs)


def _send_in_slices(
    app: App, issue_id: int, stop: threading.Event, kwargs: dict[str, Any]
) -> SendSummary:
    """Stop between batches without help from `send_issue`: send a few batches per call
    (`limit`) and look at `stop` between calls. Each call resumes where the last stopped."""
    from digest.sending import send_issue

    delivery = app.settings.delivery
    size = delivery.batch_size * delivery.concurrency * SLICE_BATCHES
    while True:
        report = send_issue(app, issue_id, limit=size, **kwargs)
        if stop.is_set() or not report.pending or not report.processed:
            return report
