"""Real `digest send` over SMTP, killed with SIGKILL mid-send: only messages in flight are unknown.

SMTP answers every message on its own and the sender records each answer before the next
message goes (`digest.sending.stream`), so a kill leaves at most one message per sending thread
unknown, not the rest of its batch; the next run sends the untouched rows, once.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from digest.issues import periods
from tests.conftest import DEFAULT_NOW, make_settings
from tests.integration.test_send_crash import _ledger
from tests.support.seeds import draw_seed
from tests.support.sending import add_audience, address, finish, make_issue, start_send
from tests.support.smtp_sink import SmtpSink

pytestmark = pytest.mark.slow

SLUG = "turkey-unpacked"
AUDIENCE = 240
CONCURRENCY = 3


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink(keep=True, answer_delay=0.01) as running:  # answers a little late
        yield running


def _config(tmp_path: Path, engine: Engine, port: int) -> Path:
    url = engine.url.render_as_string(hide_password=False)
    newsletter = (f'[[newsletters]]\nslug = "{SLUG}"\ntitle = "Turkey Unpacked"\n'
                  'schedule = "0 8 * * *"\ntimezone = "Europe/Istanbul"\n')  # fmt: skip
    path = tmp_path / "digest.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\n[site]\nbase_url = "https://news.example.com"\n'
        '[sender]\nfrom_email = "news@example.com"\n'
        f'[delivery]\ntransport = "smtp"\nbatch_size = 40\nconcurrency = {CONCURRENCY}\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\ntimeout = 20\n'
        + newsletter,
        encoding="utf-8",
    )
    return path


def _issue(engine: Engine, tmp_path: Path) -> int:
    settings = make_settings(tmp_path, str(engine.url), {"newsletters": [
        {"slug": SLUG, "title": "Turkey Unpacked", "schedule": "0 8 * * *",
         "timezone": "Europe/Istanbul"}]})  # fmt: skip
    newsletter = settings.newsletter(SLUG)
    period = periods.current_period(settings, newsletter, DEFAULT_NOW)
    return make_issue(engine, SLUG, period=periods.period_key(period))


def _run(config: Path, *extra: str) -> subprocess.Popen[bytes]:
    return start_send(config, SLUG, *extra)


def _kill_after(process: subprocess.Popen[bytes], sink: SmtpSink, messages: int) -> bool:
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if sink.state.messages >= messages:
            process.send_signal(signal.SIGKILL)
            finish(process)
            return True
        time.sleep(0.002)
    finish(process)
    return False


def test_a_kill_mid_send_leaves_at_most_the_messages_in_flight_unknown(
    any_engine: Engine, sink: SmtpSink, tmp_path: Path
) -> None:
    config = _config(tmp_path, any_engine, sink.port)
    first, last = add_audience(any_engine, SLUG, AUDIENCE)
    issue_id = _issue(any_engine, tmp_path)
    chooser = (seed := draw_seed("smtp kill moments")).rng()
    everyone = {address(i) for i in range(first, last + 1)}
    kills, unknown = 0, set[str]()
    for _ in range(2):
        if _kill_after(_run(config), sink, sink.state.messages + chooser.randint(5, 60)):
            kills += 1
        counts, unknown = _ledger(any_engine, issue_id)
        received = Counter(sink.recipients())
        context = f"{seed} kills={kills} counts={counts} received={sum(received.values())}"
        assert len(unknown) <= kills * CONCURRENCY, context  # not the rest of the batches
        assert max(received.values()) == 1, f"someone was mailed twice: {context}"
        assert counts["accepted"] <= len(received), context
    assert kills >= 1, f"{seed}: the send ended before a kill"

    code, output = finish(_run(config))
    assert code in (0, 2), f"{seed}: {output}"
    counts, unknown = _ledger(any_engine, issue_id)
    received = Counter(sink.recipients())
    context = f"{seed} counts={counts}"
    assert counts["pending"] == counts["sending"] == counts["failed"] == 0, context
    assert counts["accepted"] + counts["unknown"] == AUDIENCE, context
    assert len(unknown) <= kills * CONCURRENCY, context
    assert max(received.values()) == 1, context
    assert everyone - unknown <= set(received), f"an accepted recipient was not mailed: {context}"

    code, output = finish(_run(config, "--retry-unknown"))
    assert code == 0, f"{seed}: {output}"
    received = Counter(sink.recipients())
    assert set(received) == everyone, context
    assert {a for a, n in received.items() if n > 1} <= unknown, context
    counts, _ = _ledger(any_engine, issue_id)
    assert counts["accepted"] == AUDIENCE, context


def test_two_smtp_senders_of_one_issue_mail_everyone_once(
    any_engine: Engine, sink: SmtpSink, tmp_path: Path
) -> None:
    config = _config(tmp_path, any_engine, sink.port)
    first, last = add_audience(any_engine, SLUG, AUDIENCE)
    issue_id = _issue(any_engine, tmp_path)
    results = [finish(p) for p in [_run(config), _run(config)]]
    assert all(code == 0 for code, _ in results), results
    assert Counter(sink.recipients()) == Counter({address(i): 1 for i in range(first, last + 1)})
    counts, unknown = _ledger(any_engine, issue_id)
    assert counts["accepted"] == AUDIENCE and not unknown
