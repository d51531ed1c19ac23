"""`digest subscribers …` and `digest stats` through the real command line (SQLite)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from digest.app import App
from digest.sending.events import apply_sendgrid_events
from digest.storage.models import Delivery
from subscribers import count_audience, find_subscriber, is_suppressed
from tests.conftest import DEFAULT_NOW
from tests.support.cli import cli_config, digest
from tests.support.sending import sent_issue

SAMPLE = Path(__file__).resolve().parents[2] / "config" / "sample" / "subscribers.csv"


@pytest.fixture
def config(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield cli_config(tmp_path / "digest.toml", engine, monkeypatch)


def test_add_then_add_again(config: Path, engine: Engine) -> None:
    code, out, _ = digest(
        config,
        "subscribers",
        "add",
        "Ayse@Example.com",
        "--newsletter",
        "turkey-unpacked",
        "--name",
        "Ayşe",
        "--timezone",
        "Europe/Istanbul",
    )
    assert code == 0 and "subscribed to turkey-unpacked (active)" in out
    code, out, _ = digest(config, "subscribers", "add", "Ayse@example.com", "-n", "turkey-unpacked")
    assert code == 0 and "already subscribed" in out
    code, _, err = digest(config, "subscribers", "add", "nope", "-n", "turkey-unpacked")
    assert code == 1 and "'nope'" in err
    code, _, err = digest(config, "subscribers", "add", "a@example.com", "-n", "cooking")
    assert code == 1 and "no newsletter 'cooking'" in err
    code, _, err = digest(
        config,
        "subscribers",
        "add",
        "a@example.com",
        "-n",
        "turkey-unpacked",
        "--timezone",
        "Nowhere/Land",
    )
    assert code == 1 and "timezone" in err
    with Session(engine) as session:
        ayse = find_subscriber(session, "Ayse@example.com")
        assert ayse and ayse.name == "Ayşe" and ayse.timezone == "Europe/Istanbul"


def test_import_reports_every_bad_line_and_exits_1(
    config: Path, engine: Engine, tmp_path: Path
) -> None:
    csv = tmp_path / "people.csv"
    csv.write_text(
        "email,name,newsletters\n"
        "ok@example.com,OK,climate-weekly\n"
        "broken,Broken,climate-weekly\n"
        "also-ok@example.com,,\n"
        "x@example.com,X,cooking\n",
        encoding="utf-8",
    )
    code, out, err = digest(
        config, "subscribers", "import", str(csv), "--newsletter", "turkey-unpacked"
    )
    assert code == 1
    assert "people.csv: 4 rows; 2 subscriptions created" in out
    assert "people.csv:3: email: 'broken':" in err
    assert "people.csv:5: newsletters: unknown newsletter 'cooking'" in err
    with Session(engine) as session:
        assert count_audience(session, "climate-weekly") == 1
        assert count_audience(session, "turkey-unpacked") == 1


def test_import_sample_twice_and_skips_are_listed(config: Path, engine: Engine) -> None:
    code, out, _ = digest(config, "subscribers", "import", str(SAMPLE))
    assert code == 0, out
    assert "25 rows; 29 subscriptions created (25 new subscribers)" in out
    code, out, _ = digest(
        config, "subscribers", "unsubscribe", "zoe.marchetti@example.net", "--all"
    )
    assert code == 0 and "unsubscribed from every newsletter" in out
    code, out, _ = digest(config, "subscribers", "import", str(SAMPLE))
    assert code == 0
    assert "0 subscriptions created" in out and "28 already subscribed" in out
    assert (
        "subscribers.csv:4: zoe.marchetti@example.net: skipped, suppressed (unsubscribed_all)"
        in out
    )


def test_import_problems_name_the_file(config: Path, tmp_path: Path) -> None:
    code, _, err = digest(config, "subscribers", "import", str(tmp_path / "missing.csv"))
    assert code == 1 and "missing.csv: no such file" in err
    latin = tmp_path / "latin.csv"
    latin.write_bytes("email,name\nzoe@example.net,Zo\xeb\n".encode("latin-1"))
    code, _, err = digest(config, "subscribers", "import", str(latin), "-n", "climate-weekly")
    assert code == 1 and "latin.csv: not UTF-8" in err


def test_export_list_unsubscribe_suppress(config: Path, engine: Engine, tmp_path: Path) -> None:
    digest(config, "subscribers", "import", str(SAMPLE))
    out_file = tmp_path / "out.csv"
    code, _, err = digest(
        config, "subscribers", "export", "--newsletter", "climate-weekly", "--out", str(out_file)
    )
    assert code == 0 and "exported 15 subscribers" in err
    lines = out_file.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "email,name,newsletters,timezone,locale" and len(lines) == 16
    code, out, _ = digest(config, "subscribers", "export")
    assert code == 0 and out.count("\n") == 26

    code, out, _ = digest(
        config,
        "subscribers",
        "unsubscribe",
        "goktug.erdem@example.org",
        "--newsletter",
        "climate-weekly",
    )
    assert code == 0 and "unsubscribed from climate-weekly" in out
    code, out, _ = digest(
        config,
        "subscribers",
        "unsubscribe",
        "goktug.erdem@example.org",
        "--newsletter",
        "climate-weekly",
    )
    assert code == 0 and "was already unsubscribed" in out
    code, _, err = digest(config, "subscribers", "unsubscribe", "goktug.erdem@example.org")
    assert code == 1 and "exactly one" in err
    code, _, err = digest(config, "subscribers", "unsubscribe", "nobody@example.org", "--all")
    assert code == 1 and "no such subscriber" in err

    code, out, _ = digest(
        config,
        "subscribers",
        "suppress",
        "mehmet.kaya@example.org",
        "--reason",
        "manual",
        "--detail",
        "asked by phone",
    )
    assert code == 0 and "suppressed (manual)" in out
    code, _, err = digest(config, "subscribers", "suppress", "x@example.org", "--reason", "whim")
    assert code == 2 and "whim" in err

    code, out, _ = digest(
        config, "subscribers", "list", "--json", "--newsletter", "climate-weekly", "--limit", "0"
    )
    people = {p["email"]: p for p in json.loads(out)}
    assert len(people) == 15
    assert people["goktug.erdem@example.org"]["subscriptions"] == {
        "climate-weekly": "unsubscribed",
        "turkey-unpacked": "active",
    }
    code, out, _ = digest(config, "subscribers", "list", "--limit", "3")
    assert code == 0 and "first 3 shown" in out
    with Session(engine) as session:
        assert is_suppressed(session, "mehmet.kaya@example.org")


def test_stats_per_issue_and_total(
    config: Path, engine: Engine, make_app: Callable[..., App]
) -> None:
    digest(config, "subscribers", "import", str(SAMPLE))
    app = make_app(engine)
    old = sent_issue(app, period="2026-11-16T05:00:00+00:00")
    new = sent_issue(app, limit=10)  # 10 of 14 sent so far
    with Session(engine) as session:
        rows = {
            d.email: d.id for d in session.exec(select(Delivery).where(Delivery.issue_id == old))
        }
        first, second = sorted(rows)[:2]
        apply_sendgrid_events(
            session,
            [
                {
                    "event": kind,
                    "email": email,
                    "sg_event_id": f"{email}-{kind}",
                    "digest_delivery_id": str(rows[email]),
                    "timestamp": 1_764_000_000,
                }
                for email, kind in ((first, "delivered"), (first, "open"), (second, "bounce"))
            ],
            now=DEFAULT_NOW,
        )
        session.commit()
    code, out, _ = digest(config, "stats", "turkey-unpacked", "--json")
    assert code == 0, out
    report = json.loads(out)
    counts = {i["issue_id"]: i["counts"] for i in report["issues"]}
    assert counts[old] == {
        "recipients": 14,
        "sent": 14,
        "delivered": 1,
        "opened": 1,
        "clicked": 0,
        "bounced": 1,
        "complained": 0,
        "unsubscribed": 0,
    }
    assert (counts[new]["recipients"], counts[new]["sent"], counts[new]["delivered"]) == (14, 10, 0)
    assert report["totals"]["sent"] == 24 and report["totals"]["recipients"] == 28
    assert [i["issue_id"] for i in report["issues"]] == [new, old]
    assert report["subscribers"] == {"active": 13, "bounced": 1}
    code, out, _ = digest(config, "stats", "turkey-unpacked")
    assert code == 0 and "total" in out and "7.1%" in out  # 1 of 14 delivered
