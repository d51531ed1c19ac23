"""Real `digest send` processes, killed with SIGKILL at random moments, then resumed.

The promise: every recipient is mailed exactly once, or reported unknown (in flight when its
sender died) and then mailed at most once; and two `digest send` of the same issue running at
the same time split the work without mailing anyone twice. The SendGrid test server counts
what really arrived; it answers slowly so that kills land mid-send.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from digest.config import Settings
from digest.issues import periods
from digest.sending.counts import delivery_counts
from digest.storage.models import BatchStatus, Delivery, SendBatch
from tests.conftest import DEFAULT_NOW, make_settings
from tests.support.seeds import draw_seed
from tests.support.sendgrid_server import SendGridServer
from tests.support.sending import add_audience, address, finish, make_issue, start_send

pytestmark = pytest.mark.slow

SLUG = "turkey-unpacked"
KEY = "SG.crash-test"
AUDIENCE = 400


@pytest.fixture
def server() -> Iterator[SendGridServer]:
    with SendGridServer(api_key=KEY, validate="rules") as running:
        running.delay_next(10_000, seconds=0.04)  # every answer a little late
        yield running


def _config(
    tmp_path: Path, engine: Engine, server: SendGridServer, helpers: int = 0
) -> tuple[Path, Settings]:
    url = engine.url.render_as_string(hide_password=False)
    lines = [
        "[database]",
        f'url = "{url}"',
        "[site]",
        'base_url = "https://news.example.com"',
        "[sender]",
        'from_email = "news@example.com"',
        "[delivery]",
        'transport = "sendgrid"',
        "batch_size = 10",
        "concurrency = 3",
        "freeze_page = 30",  # 14 pages, frozen by turns while the first batches go
        f"send_processes = {helpers}",  # helper processes sign, build and send (or none)
        "[sendgrid]",
        f'api_url = "{server.url}"',
        "timeout = 20",
        "[[newsletters]]",
        f'slug = "{SLUG}"',
        'title = "Turkey Unpacked"',
        'schedule = "0 8 * * *"',
        'timezone = "Europe/Istanbul"',
    ]
    path = tmp_path / "digest.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = make_settings(
        tmp_path,
        url,
        {"newsletters": [{"slug": SLUG, "title": "Turkey Unpacked", "schedule": "0 8 * * *",
                          "timezone": "Europe/Istanbul"}]},
    )  # fmt: skip
    return path, settings


def _current_issue(engine: Engine, settings: Settings) -> int:
    newsletter = settings.newsletter(SLUG)
    period = periods.current_period(settings, newsletter, DEFAULT_NOW)
    return make_issue(engine, SLUG, period=periods.period_key(period))


def _start(config: Path, *extra: str) -> subprocess.Popen[bytes]:
    return start_send(config, SLUG, *extra, env={"SENDGRID_API_KEY": KEY})


def _wait_for_request(process: subprocess.Popen[bytes], server: SendGridServer, seen: int) -> None:
    """Until the process has sent something (or ended): the server counts every request."""
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if server.attempts > seen:
            return
        time.sleep(0.01)


def _ledger(engine: Engine, issue_id: int) -> tuple[dict[str, int], set[str]]:
    """Counts per state, and the addresses whose delivery is unknown."""
    from sqlmodel import Session

    deliveries, batches = Delivery.__table__.c, SendBatch.__table__.c  # type: ignore[attr-defined]
    unknown_batches = select(batches.id).where(batches.status == BatchStatus.UNKNOWN)
    with Session(engine) as session:
        counts = delivery_counts(session, issue_id)
        rows = session.execute(
            select(deliveries.email).where(
                deliveries.issue_id == issue_id,
                (deliveries.status == "unknown") | deliveries.batch_id.in_(unknown_batches),
            )
        )
        return counts, {row[0] for row in rows}


@pytest.mark.parametrize("helpers", [0, 2], ids=["in-process", "helpers"])
def test_killed_at_random_moments_then_resumed_mails_everyone_once_or_reports_unknown(
    any_engine: Engine, server: SendGridServer, tmp_path: Path, helpers: int
) -> None:
    config, settings = _config(tmp_path, any_engine, server, helpers)
    first, last = add_audience(any_engine, SLUG, AUDIENCE)
    issue_id = _current_issue(any_engine, settings)
    seed = draw_seed("kill moments")
    chooser = seed.rng()
    kills = 0
    for attempt in range(4):
        process = _start(config)
        if attempt == 0:  # any moment: start-up, the freeze, or the first batches
            time.sleep(chooser.uniform(0.2, 3.0))
        else:  # a moment while it is sending: after its first request reached the server
            _wait_for_request(process, server, server.attempts)
            time.sleep(chooser.uniform(0.0, 0.6))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        finish(process)

    code, output = finish(_start(config))
    assert code in (0, 2), f"{seed}: {output}"
    _, again = finish(_start(config))
    assert "nothing left to send" in again, f"{seed}: {again}"

    counts, unknown = _ledger(any_engine, issue_id)
    received = Counter(server.recipients())
    everyone = {address(i) for i in range(first, last + 1)}
    context = f"{seed} kills={kills} aborted={server.aborted_requests} counts={counts}"
    assert set(received) <= everyone, context
    assert max(received.values()) == 1, f"someone was mailed twice: {context}"
    assert counts["pending"] == counts["sending"] == counts["failed"] == 0, context
    assert counts["accepted"] + counts["unknown"] == AUDIENCE, context
    assert everyone - unknown <= set(received), f"an accepted recipient was not mailed: {context}"
    server.assert_all_valid()  # requests cut off by a kill are aborted, not invalid

    code, output = finish(_start(config, "--retry-unknown"))
    assert code == 0, f"{seed}: {output}"
    received = Counter(server.recipients())
    assert set(received) == everyone, context
    # Only the operator's resend of an unknown batch can mail someone a second time.
    assert {a for a, n in received.items() if n > 1} <= unknown, context
    counts, _ = _ledger(any_engine, issue_id)
    assert counts["accepted"] == AUDIENCE, context


def test_two_processes_sending_one_issue_mail_everyone_once(
    any_engine: Engine, server: SendGridServer, tmp_path: Path
) -> None:
    config, settings = _config(tmp_path, any_engine, server)
    first, last = add_audience(any_engine, SLUG, AUDIENCE)
    issue_id = _current_issue(any_engine, settings)

    processes = [_start(config), _start(config)]
    results = [finish(p) for p in processes]

    assert all(code == 0 for code, _ in results), results
    received = Counter(server.recipients())
    assert received == Counter({address(i): 1 for i in range(first, last + 1)})
    counts, unknown = _ledger(any_engine, issue_id)
    assert counts["accepted"] == AUDIENCE and not unknown
    server.assert_all_valid()
