"""What a newcomer meets first: one clear line instead of a traceback, nothing created as a side
effect, options named in their errors, flags shown as flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from digest.cli import app as cli_app


def digest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digest", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        check=False,
    )


def test_before_db_upgrade_a_command_says_what_to_run_and_creates_nothing(tmp_path: Path) -> None:
    for args in (["status"], ["subscribers", "list"], ["issue", "list", "turkey-unpacked"]):
        result = digest(tmp_path, *args)
        assert result.returncode == 1, result
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines == ["error: the database var/digest.db does not exist yet: run `digest db "
                         "upgrade` first"], result.stderr  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # no var/, no database file


def test_an_empty_database_is_the_same_one_line(tmp_path: Path) -> None:
    import sqlite3

    (tmp_path / "var").mkdir()
    sqlite3.connect(tmp_path / "var" / "digest.db").close()
    result = digest(tmp_path, "status")
    assert result.returncode == 1
    assert "no digest schema yet: run `digest db upgrade` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_newsletter_is_the_options_error(tmp_path: Path) -> None:
    assert digest(tmp_path, "db", "upgrade").returncode == 0
    result = digest(tmp_path, "subscribers", "add", "x@example.com", "-n", "nope")
    assert result.returncode == 1
    assert result.stderr.startswith("error: --newsletter: no newsletter 'nope'"), result.stderr
    assert "digest.toml" not in result.stderr


def test_help_shows_flags_as_flags() -> None:
    result = CliRunner().invoke(cli_app, ["send", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--dry-run " in result.output and "<bool>" not in result.output
