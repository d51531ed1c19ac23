"""Variants rendered by the freezing process (#14): the senders wait for them, never twice, and
render themselves whatever that process did not store."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlmodel import select

from digest.app import App
from digest.issues.variant_renders import RenderedVariant, VariantRenders
from digest.issues.variants import Plan
from digest.rendering.render import Renderer
from digest.sending.send import send_issue
from digest.storage.models import Issue, IssueStatus, IssueVariant
from tests.integration.test_personal import _by_recipient, _text
from tests.integration.test_personal_freeze import _freezer, _sending


def _planned(make_app: Callable[..., App], engine: Engine) -> tuple[App, Issue, list[int]]:
    """The started personal issue, frozen by the real freezer: its variants planned, none
    rendered yet."""
    app, _, issue = _sending(make_app, engine)
    told: list[tuple[int, Plan]] = []
    freezer = _freezer(app, issue, told)
    while freezer.step() is not None:
        pass
    return app, issue, [variant_id for variant_id, _ in told]


def _told_of_every_variant(app: App, issue: Issue) -> VariantRenders:
    """A sender's renders waiting on the freezing process, told of the issue's variants as the
    process's replies tell them."""
    from digest.issues import personal

    sender = VariantRenders(app, issue, remote=True)
    with app.session() as session:
        for variant in session.exec(select(IssueVariant)).all():
            sender.submit(variant.id or 0, personal.plan_of(variant))
    return sender


def _counting_renders(monkeypatch: Any) -> list[int]:
    calls: list[int] = []
    render = Renderer.render

    def counted(self: Renderer, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return render(self, *args, **kwargs)

    monkeypatch.setattr(Renderer, "render", counted)
    return calls


def _waiting(renders: VariantRenders, variant_id: int) -> tuple[threading.Thread, list[Any]]:
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(renders.get(variant_id)), daemon=True)
    thread.start()
    return thread, got


def test_a_sender_waits_for_the_freezing_process_then_takes_its_render(
    any_engine: Engine, make_app: Callable[..., App], monkeypatch: Any
) -> None:
    app, issue, variants = _planned(make_app, any_engine)
    sender = _told_of_every_variant(app, issue)
    calls = _counting_renders(monkeypatch)
    thread, got = _waiting(sender, variants[0])
    thread.join(timeout=0.3)
    assert thread.is_alive() and got == []  # nothing stored yet: it waits, renders nothing
    VariantRenders(app, issue).get(variants[0])  # the freezing process's render, stored
    assert len(calls) == 1
    sender.arrived([variants[0]])
    thread.join(timeout=10)
    assert not thread.is_alive() and isinstance(got[0], RenderedVariant)
    assert len(calls) == 1  # the sender rendered nothing itself
    with app.session() as session:
        stored = session.get(IssueVariant, variants[0])
        assert stored is not None and stored.html == got[0].html


def test_once_the_freezing_process_is_gone_a_sender_renders_what_it_did_not_store(
    any_engine: Engine, make_app: Callable[..., App], monkeypatch: Any
) -> None:
    app, issue, variants = _planned(make_app, any_engine)
    sender = _told_of_every_variant(app, issue)
    calls = _counting_renders(monkeypatch)
    thread, got = _waiting(sender, variants[0])
    thread.join(timeout=0.3)
    assert thread.is_alive()
    sender.remote_closed()  # the process ended (or failed) without storing it
    thread.join(timeout=10)
    assert not thread.is_alive() and len(calls) == 1 and got[0].html
    # From then on nobody waits: a variant not stored is rendered at once.
    assert sender.get(variants[-1]).html and len(calls) == 2


def test_a_variant_the_freezing_process_was_not_given_is_rendered_without_waiting(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    """A variant planned by an earlier run (not announced by this run's freezing process)."""
    app, issue, variants = _planned(make_app, any_engine)
    sender = VariantRenders(app, issue, remote=True)  # told of nothing
    assert sender.get(variants[0]).html


def test_a_large_send_renders_every_variant_in_the_freezing_process(
    any_engine: Engine, make_app: Callable[..., App], monkeypatch: Any
) -> None:
    """From FREEZE_PROCESS_AUDIENCE readers: one child plans and renders, the senders none."""
    from digest.sending import send

    monkeypatch.setattr(send, "FREEZE_PROCESS_AUDIENCE", 1)
    app, groups, issue = _sending(make_app, any_engine)
    calls = _counting_renders(monkeypatch)
    report = send_issue(app, issue.id or 0)
    assert report.issue_status == IssueStatus.SENT
    assert report.accepted == len(groups["both"]) + len(groups["turkey"])
    assert calls == []  # every variant came rendered from the child
    with app.session() as session:
        stored = session.exec(select(IssueVariant)).all()
        assert stored and all(v.html for v in stored)
    mail = _by_recipient(app)
    assert all(len(messages) == 1 for messages in mail.values())
    assert all("Turkey story 1" in _text(messages[0]) for messages in mail.values())
