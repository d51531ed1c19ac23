"""`digest ingest`, `digest articles list`, `digest sources status`, `digest topics reclassify`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from digest.cli import app as cli_app
from tests.conftest import REPO_ROOT

SAMPLES = REPO_ROOT / "config" / "sample" / "feeds"
NOW = "2026-11-25T12:00:00+00:00"


@pytest.fixture
def config(any_engine: Engine, tmp_path: Path) -> Path:
    path = tmp_path / "digest.toml"
    path.write_text(
        f"""
[database]
url = "{any_engine.url.render_as_string(hide_password=False)}"
[[sources]]
name = "world"
url = "{SAMPLES / "world.xml"}"
[[sources]]
name = "climate"
url = "{SAMPLES / "climate.atom"}"
[[sources]]
name = "broken"
url = "{tmp_path / "missing.xml"}"
[[newsletters]]
slug = "turkey-unpacked"
title = "Turkey Unpacked"
topic = {{ tags = ["Turkey"], keywords = ["Ankara"] }}
[[newsletters]]
slug = "climate-weekly"
title = "Climate Weekly"
topic = {{ keywords = ["drought", "wildfires"] }}
""",
        encoding="utf-8",
    )
    return path


def digest(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli_app, ["--config", str(config), "--now", NOW, *args])
    return result.exit_code, result.stdout, result.stderr


def test_ingest_prints_a_table_and_a_failed_source_does_not_fail_the_run(config: Path) -> None:
    code, out, _ = digest(config, "ingest")
    assert code == 0
    for expected in ("world", "14", "climate", "10", "broken", "failed", "total", "24"):
        assert expected in out
    assert "error broken: file not found" in " ".join(out.split())
    code, out, _ = digest(config, "ingest", "--json")
    document = json.loads(out)
    assert code == 0 and document["totals"] == {
        "fetched": 24,
        "new": 0,
        "updated": 0,
        "unchanged": 24,
        "errors": 1,
    }
    assert document["sources"][2]["failed"] is True


def test_ingest_one_source_and_an_unknown_one(config: Path) -> None:
    code, out, _ = digest(config, "ingest", "--source", "climate", "--json")
    assert code == 0 and [s["name"] for s in json.loads(out)["sources"]] == ["climate"]
    code, _, err = digest(config, "ingest", "--source", "sport")
    assert code == 1 and "no source 'sport'" in err


def test_articles_list_json_and_filters(config: Path) -> None:
    digest(config, "ingest")
    code, out, _ = digest(config, "articles", "list", "--json", "--limit", "100")
    everything = json.loads(out)
    assert code == 0 and len(everything) == 24
    first = everything[0]
    for key in (
        "title",
        "url",
        "published_at",
        "source",
        "tags",
        "topics",
        "summary_text",
        "image_url",
    ):
        assert key in first
    published = [a["published_at"] for a in everything]
    assert published == sorted(published, reverse=True)

    code, out, _ = digest(
        config, "articles", "list", "--topic", "turkey-unpacked", "--json", "--limit", "100"
    )
    turkey = json.loads(out)
    assert turkey and all("turkey-unpacked" in a["topics"] for a in turkey)
    assert all(a["reasons"]["turkey-unpacked"] for a in turkey)

    code, out, _ = digest(config, "articles", "list", "--since", "1d", "--json")
    assert all(a["published_at"] >= "2026-11-24T12:00:00" for a in json.loads(out))
    code, out, _ = digest(config, "articles", "list", "--since", "2026-11-25", "--json")
    assert all(a["published_at"] >= "2026-11-25" for a in json.loads(out))

    code, out, _ = digest(config, "articles", "list", "--topic", "climate-weekly")
    assert code == 0 and "article(s)" in out
    code, _, err = digest(config, "articles", "list", "--topic", "cooking")
    assert code == 1 and "cooking" in err
    code, _, err = digest(config, "articles", "list", "--since", "last week")
    assert code == 1 and "--since" in err


def test_sources_status(config: Path) -> None:
    code, out, _ = digest(config, "sources", "status", "--json")
    assert code == 0 and [s["state"] for s in json.loads(out)] == ["never fetched"] * 3
    digest(config, "ingest")
    code, out, _ = digest(config, "sources", "status", "--json")
    by_name = {s["name"]: s for s in json.loads(out)}
    assert by_name["world"]["state"] == "ok" and by_name["world"]["articles"] == 14
    assert (
        by_name["broken"]["state"] == "failing" and by_name["broken"]["consecutive_failures"] == 1
    )
    assert by_name["broken"]["last_error"].startswith("file not found")
    code, out, _ = digest(config, "sources", "status")
    assert code == 0 and "failing" in out and "world" in out


def test_topics_reclassify(config: Path) -> None:
    digest(config, "ingest")
    code, out, _ = digest(config, "topics", "reclassify", "--json")
    assert code == 0 and json.loads(out) == {"articles": 24, "added": 0, "removed": 0, "changed": 0}
    text = config.read_text(encoding="utf-8").replace(
        'keywords = ["Ankara"]', 'keywords = ["Ankara", "lira"]'
    )
    config.write_text(text, encoding="utf-8")
    code, out, _ = digest(config, "topics", "reclassify")
    assert (
        code == 0
        and "Reclassified 24 article(s)" in out
        and "1 with new reasons" in " ".join(out.split())
    )


def test_ingest_progress_is_one_bar_redrawn_at_a_bounded_rate_and_only_on_a_terminal(
    any_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import time

    from rich.console import Console

    from digest.cli import content

    sources = "".join(
        f'[[sources]]\nname = "feed-{n:02}"\nurl = "{SAMPLES / "world.xml"}"\n' for n in range(40)
    )
    path = tmp_path / "many.toml"
    url = any_engine.url.render_as_string(hide_password=False)
    path.write_text(f'[database]\nurl = "{url}"\n{sources}', encoding="utf-8")
    code, _, err = digest(path, "ingest")  # CliRunner: stdout is not a terminal
    assert code == 0 and "items ·" not in err  # no live display at all

    out, live = io.StringIO(), io.StringIO()
    monkeypatch.setattr(content, "console", Console(file=out, force_terminal=True, width=140))
    monkeypatch.setattr(content, "err_console", Console(file=live, force_terminal=True, width=140))
    import threading

    from digest.ingest import run as ingest_run

    threads_at_pool: list[int] = []
    make_pool = ingest_run._start_workers

    def spy(run: object, requests: list[object], count: int) -> object:
        threads_at_pool.append(threading.active_count())
        return make_pool(run, requests, count)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest_run, "_start_workers", spy)
    threads_before = threading.active_count()
    started = time.monotonic()
    code, _, _ = digest(path, "ingest")
    elapsed = time.monotonic() - started
    assert code == 0
    # No refresh thread of the display's own: the parse workers can still be forked.
    assert threads_at_pool == [threads_before]
    frames = live.getvalue().count("items ·")
    assert 1 <= frames <= elapsed * content.REFRESHES_PER_SECOND + 3  # not one per update
    assert "40/40" in live.getvalue() and "feed-" not in live.getvalue()  # one bar, no rows
    table = out.getvalue()
    assert all(table.count(f"feed-{n:02}") == 1 for n in range(40))  # the table, once
