"""The real `digest` command line against a test database: a small config file and a runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from digest.cli import app as cli_app
from digest.cli import common
from tests.conftest import DEFAULT_NOW, TEST_SECRET


def cli_config(path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config file at `path` naming the engine's database and both sample newsletters; the
    environment cleared of anything that would override it, the consoles made wide (rich
    wraps and truncates at the width the console was made with)."""
    monkeypatch.setenv("DIGEST_SECRET_KEY", TEST_SECRET)
    for name in ("DIGEST_OLD_SECRET_KEYS", "DIGEST_DATABASE_URL", "DIGEST_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(common.console, "width", 300)
    monkeypatch.setattr(common.err_console, "width", 300)
    path.write_text(
        f"""
[database]
url = "{engine.url.render_as_string(hide_password=False)}"
[site]
base_url = "https://news.example.com"
[[newsletters]]
slug = "turkey-unpacked"
title = "Turkey Unpacked"
[[newsletters]]
slug = "climate-weekly"
title = "Climate Weekly"
""",
        encoding="utf-8",
    )
    return path


def digest(config: Path, *args: str) -> tuple[int, str, str]:
    """`digest --config CONFIG --now DEFAULT_NOW ARGS…`: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(
        cli_app, ["--config", str(config), "--now", DEFAULT_NOW.isoformat(), *args]
    )
    return result.exit_code, result.stdout, result.stderr
