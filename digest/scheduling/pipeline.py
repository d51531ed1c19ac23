"""The seam between the scheduler and the pipeline: ingest, build, send.

`run_due` drives these three callables; `real_pipeline()` wires the real modules in one place
and tests hand in fakes. `hand_over` (optional) gives a send to the pool of `digest worker`
processes when one is alive: the scheduler then only starts the issue.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from digest.app import App
from digest.scheduling.rules import SendSummary
from digest.storage.models import Issue


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
    # The issue started for live workers (a `worker_pool.HandOver`), or None: send it yourself.
    hand_over: Callable[[App, int], Any] | None = None


def real_pipeline() -> Pipeline:
    """The real stages, each imported when its step first runs: an idle tick imports none."""
    return Pipeline(ingest=_ingest, build=_build_issue, send=_send_issue, hand_over=_hand_over)


def _ingest(app: App) -> object:
    from digest.ingest.run import run_ingest

    return run_ingest(app)


def _build_issue(app: App, slug: str, period: datetime) -> Issue:
    from digest.issues.assemble import build_issue

    return build_issue(app, slug, period)


def _send_issue(app: App, issue_id: int, request: SendRequest) -> SendSummary:
    from digest.sending.send import send_issue

    return send_issue(app, issue_id, timezones=request.timezones, stop=request.stop)


def _hand_over(app: App, issue_id: int) -> Any:
    from digest.sending.worker_pool import hand_over

    return hand_over(app, issue_id)
