"""Sends whose links are signed and whose requests are built and sent by helper processes
(`delivery.send_processes`, digest.sending.send_processes), on SQLite and PostgreSQL.

The promises: the same requests as an in-process send, everyone mailed once, a helper that
dies mid-send leaves only its batch in flight (unknown to the next run), and a helper holding
the last 64 messages is always sent the one it lacks.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import pickle
import resource
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from digest.app import App
from digest.config import ConfigError
from digest.mail.message import RecipientValues
from digest.ops.logs import configure_logging
from digest.sending import send_processes
from digest.sending.send import send_issue
from digest.transports import OutgoingMessage, SendOutcome
from tests.conftest import DEFAULT_NOW, make_settings
from tests.support.sendgrid_server import SendGridServer
from tests.support.sending import add_audience, address, make_issue, outbox_messages

SLUG = "turkey-unpacked"
KEY = "SG.helpers"


@pytest.fixture
def server() -> Iterator[SendGridServer]:
    with SendGridServer(api_key=KEY, validate="rules", keep_bodies=True) as running:
        yield running


def _app(
    make_app: Callable[..., App], engine: Engine, server: SendGridServer, processes: int | str
) -> App:
    return make_app(
        engine,
        env={"SENDGRID_API_KEY": KEY},
        delivery={"transport": "sendgrid", "batch_size": 25, "concurrency": 3,
                  "send_processes": processes},
        sendgrid={"api_url": server.url},
    )  # fmt: skip


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # ended and waited for
    return usage.ru_utime + usage.ru_stime


def _normalised(body: dict[str, Any]) -> tuple[str, list[str]]:
    """A request without what names the issue or the delivery: (message part, its people)."""
    body = copy.deepcopy(body)
    people = body.pop("personalizations")
    body["custom_args"].pop("digest_issue_id")
    body["headers"].pop("X-Digest-Issue")
    for person in people:
        person.pop("custom_args")
    return repr(sorted(body.items())), sorted(repr(sorted(p.items())) for p in people)


def _sent(server: SendGridServer, first: int, end: int | None = None) -> tuple[set[str], list[str]]:
    messages, people = set(), []
    for request in server.requests[first:end]:
        assert request.body is not None
        message, persons = _normalised(request.body)
        messages.add(message)
        people += persons
    return messages, sorted(people)


def test_helpers_send_what_the_sending_process_would_and_mail_everyone_once(
    any_engine: Engine, make_app: Callable[..., App], server: SendGridServer
) -> None:
    add_audience(any_engine, SLUG, 130)
    in_process = make_issue(any_engine, SLUG, period="2026-11-23T05:00:00+00:00")
    helped = make_issue(any_engine, SLUG, period="2026-11-24T05:00:00+00:00")

    before = _children_cpu()
    report = send_issue(_app(make_app, any_engine, server, 0), in_process)
    assert report.accepted == 130 and _children_cpu() == before  # no helper: nothing ended
    done = len(server.requests)
    report = send_issue(_app(make_app, any_engine, server, 2), helped)
    assert report.accepted == 130 and report.unknown == report.failed == 0
    assert _children_cpu() > before, "no helper process ran"

    alone, people_alone = _sent(server, 0, done)
    with_helpers, people_helped = _sent(server, done)
    assert len(alone) == len(with_helpers) == 1  # one shared part per issue
    assert alone == with_helpers
    assert people_alone == people_helped and len(people_helped) == 130
    assert Counter(server.recipients()) == Counter(
        {address(i): 2 for i in range(1, 131)}
    )  # once per issue
    server.assert_all_valid()


def _helper_pids() -> list[int]:
    """This process's helpers, found as the kernel lists them."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"digest.sending.send_processes" in command:
            found.append(int(entry.name))
    return found


def test_a_helper_killed_mid_send_leaves_only_its_batch_unknown(
    any_engine: Engine, make_app: Callable[..., App], server: SendGridServer
) -> None:
    add_audience(any_engine, SLUG, 200)
    issue_id = make_issue(any_engine, SLUG)
    app = _app(make_app, any_engine, server, 1)  # one helper: every batch goes through it
    server.delay_next(3, seconds=1.5)  # the first requests wait: the kill lands mid-request
    failure: list[BaseException] = []

    def run() -> None:
        try:
            send_issue(app, issue_id)
        except BaseException as exc:  # what the test expects the send to raise
            failure.append(exc)

    sender = threading.Thread(target=run)
    sender.start()
    deadline = time.monotonic() + 30
    while server.attempts == 0 or not _helper_pids():
        assert time.monotonic() < deadline, "no request reached the server"
        time.sleep(0.01)
    for pid in _helper_pids():
        os.kill(pid, signal.SIGKILL)
    sender.join(timeout=60)
    assert failure and isinstance(failure[0], send_processes.HelperDied), failure

    report = send_issue(_app(make_app, any_engine, server, 1), issue_id)
    assert report.found_unknown, report  # the batches in flight when the helper died
    assert 0 < report.unknown <= 3 * 25, report  # concurrency 3 × batches of 25, at most
    assert report.accepted + report.unknown == 200 and report.pending == 0, report
    received = Counter(server.recipients())
    assert max(received.values()) == 1, "someone was mailed twice"

    report = send_issue(_app(make_app, any_engine, server, 1), issue_id, retry_unknown=True)
    assert report.accepted == 200, report
    assert set(server.recipients()) == {address(i) for i in range(1, 201)}


def test_a_helper_is_sent_each_message_it_does_not_hold(tmp_path: Path) -> None:
    """More messages than a helper keeps, in an order that evicts: each recipient gets its own."""
    outbox = tmp_path / "outbox"
    settings = make_settings(tmp_path, "sqlite://", {"delivery": {"outbox_dir": str(outbox)}})
    newsletter = settings.newsletter(SLUG)
    values = RecipientValues(settings, newsletter, b"key", DEFAULT_NOW, name_fallback="there")
    count = send_processes.VARIANTS_KEPT + 6
    messages = {
        key: OutgoingMessage(1, newsletter, f"Variant {key}", f"<p>v{key}</p>", f"v{key}\n")
        for key in range(count)
    }
    pool = send_processes.SendProcesses(settings, 1, 2)
    sent: list[tuple[int, str]] = []
    try:
        for turn, key in enumerate([*range(count), *range(count), 3, count - 1, 3]):
            email = f"reader{turn}@example.com"
            results = pool.send(key, messages[key], values, None, [(turn, turn, email, None, None)])
            assert [r.outcome for r in results] == [SendOutcome.ACCEPTED]
            assert results[0].email == email
            sent.append((key, email))
    finally:
        pool.close()
    subjects = {str(m["To"]): str(m["Subject"]) for m in outbox_messages(outbox)}
    assert subjects == {email: f"Variant {key}" for key, email in sent}


def test_token_values_travel_to_a_helper_unchanged(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite://", {})
    newsletter = settings.newsletter(SLUG)
    values = RecipientValues(settings, newsletter, b"key", DEFAULT_NOW, name_fallback="there")
    copied = pickle.loads(pickle.dumps(values))  # noqa: S301 - our own bytes, as on the pipe
    assert copied(7, "Ayşe") == values(7, "Ayşe") and copied(8, None) == values(8, None)


@pytest.mark.parametrize(
    ("configured", "audience", "cpus", "personal", "helpers"),
    [("auto", 249_999, 2, False, 0), ("auto", 250_000, 2, False, 2),
     ("auto", 1_000_000, 1, False, 0), ("auto", 1_000_000, 8, True, 0),
     (0, 1_000_000, 8, False, 0), (3, 10, 1, False, 3), (2, 1_000_000, 2, True, 2)],
)  # fmt: skip
def test_how_many_helpers_a_send_gets(
    tmp_path: Path, configured: int | str, audience: int, cpus: int, personal: bool, helpers: int
) -> None:
    settings = make_settings(tmp_path, "sqlite://", {"delivery": {"send_processes": configured}})
    assert send_processes.helpers_for(settings, audience, cpus, personal=personal) == helpers


@pytest.mark.parametrize("value", [-1, 17, "two"])
def test_a_wrong_number_of_helpers_is_refused_by_name(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError, match="send_processes"):
        make_settings(tmp_path, "sqlite://", {"delivery": {"send_processes": value}})


@pytest.mark.parametrize("gone", ["before its settings", "while starting"])
def test_a_helper_that_cannot_start_stops_the_send_with_nothing_in_flight(
    any_engine: Engine,
    make_app: Callable[..., App],
    server: SendGridServer,
    monkeypatch: pytest.MonkeyPatch,
    gone: str,
) -> None:
    add_audience(any_engine, SLUG, 60)
    issue_id = make_issue(any_engine, SLUG)
    monkeypatch.setattr(send_processes.sys, "executable", "/bin/false")  # exits at once
    if gone == "before its settings":  # its end of the pipe closed before the settings go
        start = subprocess.Popen

        def started_and_ended(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
            process = start(*args, **kwargs)
            process.wait()
            return process

        monkeypatch.setattr(send_processes.subprocess, "Popen", started_and_ended)
    with pytest.raises(send_processes.HelperDied, match="ended while starting"):
        send_issue(_app(make_app, any_engine, server, 2), issue_id)
    monkeypatch.undo()
    assert server.attempts == 0

    report = send_issue(_app(make_app, any_engine, server, 0), issue_id)
    assert not report.found_unknown and report.unknown == 0, report  # nothing was in flight
    assert report.accepted == 60, report


def test_a_429_a_helper_gets_is_told_to_the_sender(tmp_path: Path, server: SendGridServer) -> None:
    """So that the sender holds its other batches and, on PostgreSQL, the fleet pauses too."""
    settings = make_settings(
        tmp_path, "sqlite://",
        {"delivery": {"transport": "sendgrid"}, "sendgrid": {"api_url": server.url}},
        env={"SENDGRID_API_KEY": KEY},
    )  # fmt: skip
    newsletter = settings.newsletter(SLUG)
    values = RecipientValues(settings, newsletter, b"key", DEFAULT_NOW, name_fallback="there")
    message = OutgoingMessage(1, newsletter, "Weekly", "<p>Hi %%NAME%%</p>", "Hi %%NAME%%\n")
    server.fail_next(1, 429, headers={"Retry-After": "1"})
    pauses: list[float] = []
    pool = send_processes.SendProcesses(settings, 1, 1, on_pause=pauses.append)
    try:
        started = time.monotonic()
        results = pool.send(None, message, values, 1, [(1, 1, address(1), None, None)])
        second = pool.send(None, message, values, 2, [(2, 2, address(2), None, None)])
    finally:
        pool.close()
    assert [r.outcome for r in results + second] == [SendOutcome.ACCEPTED] * 2
    assert len(pauses) == 1 and 0.5 <= pauses[0] <= 2, pauses  # the Retry-After it was given
    assert time.monotonic() - started >= 0.9  # the first batch waited for it
    assert server.recipients() == [address(1), address(2)]


def test_a_helper_logs_as_its_sender_does(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Its records reach stderr in the sender's format (JSON here), not Python's bare default."""
    blocked = tmp_path / "outbox"
    blocked.write_text("a file where the outbox directory should be")
    settings = make_settings(tmp_path, "sqlite://", {"delivery": {"outbox_dir": str(blocked)}})
    newsletter = settings.newsletter(SLUG)
    values = RecipientValues(settings, newsletter, b"key", DEFAULT_NOW, name_fallback="there")
    message = OutgoingMessage(1, newsletter, "Weekly", "<p>Hi</p>", "Hi\n")
    level = logging.getLogger("digest").level
    handler = configure_logging("json", "info", stream=io.StringIO())
    try:
        pool = send_processes.SendProcesses(settings, 1, 1)
        try:
            results = pool.send(None, message, values, 1, [(1, 1, address(1), None, None)])
        finally:
            pool.close()
    finally:
        logging.getLogger("digest").removeHandler(handler)
        logging.getLogger("digest").setLevel(level)
    assert [r.outcome for r in results] == [SendOutcome.FAILED]
    err = capfd.readouterr().err.splitlines()
    lines = [json.loads(line) for line in err if line.startswith("{")]
    assert any(
        line["logger"] == "digest.transports.outbox" and line["level"] == "error"
        and "cannot create the directory" in line["message"] for line in lines
    ), lines  # fmt: skip
