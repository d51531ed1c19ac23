"""Configuration: validated, with errors naming the file, the key and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from digest.cli import app as cli_app
from digest.config import ConfigError, load_settings, settings_from_mapping

GOOD = """
[site]
name = "Test"
base_url = "https://news.example.com/"
timezone = "Europe/Istanbul"

[[newsletters]]
slug = "turkey-unpacked"
title = "Turkey Unpacked"
schedule = "0 8 * * 1"
topic = { tags = ["Turkey"] }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "digest.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_good_config_loads_with_defaults_and_env(tmp_path: Path) -> None:
    env = {
        "DIGEST_DATABASE_URL": "sqlite:///x.db",
        "DIGEST_SECRET_KEY": "k1",
        "SENDGRID_API_KEY": "SG.x",
    }
    settings = load_settings(write(tmp_path, GOOD), env=env)
    assert settings.site.base_url == "https://news.example.com"
    assert settings.database.url == "sqlite:///x.db"
    assert settings.delivery.transport == "outbox"
    assert settings.newsletter("turkey-unpacked").window == "7d"
    assert settings.verification_keys() == [b"k1"]
    assert settings.sendgrid_api_key is not None
    assert "SG.x" not in repr(settings)  # secrets never show up in logs or reprs


@pytest.mark.parametrize(
    ("snippet", "key", "reason"),
    [
        ('schedule = "0 8 * *"', "newsletters[0] (turkey-unpacked).schedule", "5 fields"),
        ('schedule = "0 25 * * *"', "newsletters[0] (turkey-unpacked).schedule", "cron"),
        ('window = "a week"', "newsletters[0] (turkey-unpacked).window", "duration"),
        ('timezone = "Mars/Olympus"', "newsletters[0] (turkey-unpacked).timezone", "time zone"),
        ('slug2 = "x"', "newsletters[0] (turkey-unpacked).slug2", "unknown key"),
        ("min_articles = -1", "newsletters[0] (turkey-unpacked).min_articles", "greater than"),
    ],
)
def test_bad_newsletter_key_is_named(tmp_path: Path, snippet: str, key: str, reason: str) -> None:
    text = GOOD.replace(
        'topic = { tags = ["Turkey"] }', snippet + '\ntopic = { tags = ["Turkey"] }'
    )
    if snippet.startswith("schedule"):
        text = text.replace('schedule = "0 8 * * 1"\n', "", 1)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    error = caught.value
    assert error.file == str(path)
    assert error.key == key
    assert reason in error.reason
    assert str(path) in str(error) and key in str(error)


def test_bad_section_value(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + '\n[delivery]\ntransport = "pigeon"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert caught.value.key == "delivery.transport"
    assert "outbox" in caught.value.reason


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[site\nname = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert "not valid TOML" in caught.value.reason
    assert "line 1" in caught.value.reason


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.toml", env={})


def test_secrets_are_refused_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'secret_key = "oops"\n' + GOOD)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert caught.value.key == "secret_key"


def test_duplicate_slugs_refused(tmp_path: Path) -> None:
    twice = GOOD + GOOD[GOOD.index("[[newsletters]]") :]
    with pytest.raises(ConfigError, match="duplicate value 'turkey-unpacked'"):
        load_settings(write(tmp_path, twice), env={})


def test_header_injection_in_sender_refused(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + '\n[sender]\nfrom_name = "News\\r\\nBcc: x@evil.test"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert caught.value.key == "sender.from_name"
    assert "line breaks" in caught.value.reason


def test_cli_reports_bad_config_with_file_key_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"0 8 * * 1"', '"every monday"'))
    result = CliRunner().invoke(cli_app, ["--config", str(path), "status"])
    assert result.exit_code == 1
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert str(path) in output.replace("\n", "")
    assert "newsletters[0] (turkey-unpacked).schedule" in output.replace("\n", "")


def test_bundled_default_config_is_valid() -> None:
    from digest.paths import default_config_file

    settings = load_settings(default_config_file(), env={})
    slugs = [n.slug for n in settings.newsletters]
    assert "turkey-unpacked" in slugs and len(slugs) >= 2


def test_a_one_line_dkim_key_in_an_environment_file_gets_its_line_breaks_back() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"
    one_line = pem.replace("\n", "\\n")
    settings = settings_from_mapping({}, env={"DIGEST_DKIM_PRIVATE_KEY": one_line})
    assert settings.dkim_private_key is not None
    assert settings.dkim_private_key.get_secret_value() == pem


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("send_processes", '"two"'),
        ("send_processes", "17"),
        ("freeze_page", "0"),
        ("freeze_page", '"big"'),
    ],
)
def test_a_bad_delivery_number_names_its_key(tmp_path: Path, key: str, value: str) -> None:
    path = write(tmp_path, GOOD + f"\n[delivery]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert caught.value.key == f"delivery.{key}"  # not "….int", a member of the union
